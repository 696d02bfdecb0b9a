"""The model flags of launch/evaluate.py, launch/stream.py and launch/serve.py (defined once).

--checkpoint (an HF folder, a training workdir or "random"), --config, --tokenizer,
--frame_size and the decoding flags (--max_text_tokens, --window_turns, --prompt_style,
--constrain_decision); `load_model` / `frame_size` read them through
streampro_jax/bench/checkpoints.py. --realtime and --force_response_at_ask are the live
launchers' (stream.py, serve.py), with `load_live_model`.
"""

from __future__ import annotations

from absl import app
from absl import flags

CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF folder, train workdir, or 'random'.")
CONFIG = flags.DEFINE_string(
    "config", None, "Training config file (for a train workdir or 'random'; default "
    "configs/tiny_synthetic.py).")
TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer folder (default: the checkpoint).")
FRAME_SIZE = flags.DEFINE_integer("frame_size", 0, "Frame height = width (0: what the model "
                                  "was trained on: the training config's data.frame_height, or "
                                  "the frame size an exported folder records; else 224).")
MAX_TEXT_TOKENS = flags.DEFINE_integer("max_text_tokens", 32, "Response length limit.")
WINDOW_TURNS = flags.DEFINE_integer("window_turns", 200, "Sliding window in turns.")
PROMPT_STYLE = flags.DEFINE_enum("prompt_style", "streampro", ("streampro", "wait"),
                                 "streampro: decision tokens; wait: plain-model 'Wait' prompt.")
CONSTRAIN = flags.DEFINE_boolean("constrain_decision", False,
                                 "First token restricted to </Silence> / </Response>.")


def check_checkpoint() -> str:
  """The kind of --checkpoint (checkpoints.checkpoint_kind); a UsageError naming the flag when
  it is missing or none of the three kinds."""
  from streampro_jax.bench import checkpoints  # pylint: disable=g-import-not-at-top
  if not CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required (an HF folder, a training workdir or random)")
  try:
    return checkpoints.checkpoint_kind(CHECKPOINT.value)
  except checkpoints.CheckpointError as e:
    raise app.UsageError(f"--checkpoint={e}") from None


def load_model(workdir: str):
  """(params, model_config, tokenizer, training config or None) of --checkpoint / --config /
  --tokenizer (workdir: where a random model's tokenizer is built)."""
  from streampro_jax.bench import checkpoints  # pylint: disable=g-import-not-at-top
  return checkpoints.load_model(CHECKPOINT.value, config_path=CONFIG.value,
                                tokenizer_dir=TOKENIZER.value, workdir=workdir)


def frame_size(train_cfg) -> tuple[int, str]:
  """(frame size, where it came from): --frame_size, else what the model was trained on."""
  from streampro_jax.bench import checkpoints  # pylint: disable=g-import-not-at-top
  if FRAME_SIZE.value:
    return FRAME_SIZE.value, "--frame_size"
  return checkpoints.trained_frame_size(CHECKPOINT.value, train_cfg)


def define_live_flags():
  """--realtime and --force_response_at_ask (stream.py and serve.py); returns their holders."""
  realtime = flags.DEFINE_boolean("realtime", False, "Pace at 1 s per turn, dropping seconds the "
                                  "model falls behind on.")
  force = flags.DEFINE_boolean("force_response_at_ask", False, "Force </Response> on the "
                               "second a question is asked (as the harness does for "
                               "multiple-choice benchmarks).")
  return realtime, force


def load_live_model(force_response_at_ask: bool):
  """The live.LiveModel of the model flags."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from streampro_jax import live  # pylint: disable=g-import-not-at-top
  workdir = tempfile.mkdtemp(prefix="live_model_")   # where "random" builds its tokenizer
  params, model_config, tokenizer, train_cfg = load_model(workdir)
  frame, _ = frame_size(train_cfg)
  cfg = live.LiveConfig(
      frame_height=frame, frame_width=frame, max_text_tokens=MAX_TEXT_TOKENS.value,
      window_turns=WINDOW_TURNS.value, prompt_style=PROMPT_STYLE.value,
      constrain_decision=CONSTRAIN.value, force_response_at_ask=force_response_at_ask)
  return live.LiveModel(params, model_config, tokenizer, cfg)
