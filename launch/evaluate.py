r"""Streaming evaluation of a checkpoint on a benchmark (StreamPro-Bench, SynthStream, peers).

  .venv/bin/python launch/evaluate.py --benchmark=synthstream --checkpoint=/path/hf_dir \
      --workdir=/tmp/eval --batch_size=4 --max_videos=20 --judge=exact
  .venv/bin/python launch/evaluate.py --benchmark=streampro --annotations=bench.jsonl \
      --checkpoint=/tmp/sft_run --config=configs/tiny_synthetic.py \
      --judge=openai:Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1

--checkpoint is one of
  * a Hugging Face checkpoint folder (config.json + safetensors + tokenizer files); the backbone
    (Qwen2.5-VL or Qwen3-VL) is read from config.json's model_type;
  * an SFT / GRPO workdir written by streampro_jax.train (``<dir>/checkpoints/<step>/state``);
    --config names the training config that built it (model and tokenizer sections; the backbone
    is its model.family, qwen2_5_vl by default);
  * "random": a randomly initialised model of --config (default: the tiny synthetic config), for
    smoke tests of the pipeline.
--judge: exact | openai:<model>@<base_url> | local:<dir>.

Writes into --workdir: results.jsonl (resumable), scores.json, and the report of
bench/report.write_report (results.json, table.md, f1_by_task.png, response_offsets.png,
precision_recall.png). For streamingbench / ovo / proactivevideoqa the peer scores go to
peer_scores.json (StreamPro-F1 of the converted records is written as well).
"""

from __future__ import annotations

import functools
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BENCHMARKS = ("synthstream", "streampro", "streamingbench", "ovo", "proactivevideoqa")

_BENCHMARK = flags.DEFINE_enum("benchmark", "synthstream", BENCHMARKS, "Benchmark to run.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "HF folder, train workdir, or 'random'.")
_CONFIG = flags.DEFINE_string(
    "config", None, "Training config file (for a train workdir or 'random'; default "
    "configs/tiny_synthetic.py).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer folder (default: the checkpoint).")
_JUDGE = flags.DEFINE_string("judge", "exact", "exact | openai:<model>@<base_url> | local:<dir>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.")
_ANNOTATIONS = flags.DEFINE_string(
    "annotations", None, "Annotation file: StreamPro JSONL, StreamingBench / OVO-Bench / "
    "ProactiveVideoQA JSON (synthstream: unused).")
_VIDEO_DIR = flags.DEFINE_string("video_dir", None, "Folder of relative video paths.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "Videos streamed together.")
_MAX_VIDEOS = flags.DEFINE_integer("max_videos", None, "Evaluate only the first N videos.")
_FRAME_SIZE = flags.DEFINE_integer("frame_size", 0, "Frame height = width (0: the config's "
                                   "data.frame_height, else 224).")
_MAX_TEXT_TOKENS = flags.DEFINE_integer("max_text_tokens", 32, "Response length limit.")
_WINDOW_TURNS = flags.DEFINE_integer("window_turns", 200, "Sliding window in turns.")
_MAX_TURNS = flags.DEFINE_integer("max_turns", None, "Cut streams after N turns.")
_PROMPT_STYLE = flags.DEFINE_enum("prompt_style", "streampro", ("streampro", "wait"),
                                  "streampro: decision tokens; wait: plain-model 'Wait' prompt.")
_CONSTRAIN = flags.DEFINE_boolean("constrain_decision", False,
                                  "First token restricted to </Silence> / </Response>.")
_SYNTH_SPLIT = flags.DEFINE_string("synth_split", "test", "SynthStream split.")
_SYNTH_NUM = flags.DEFINE_integer("synth_num_videos", 50, "SynthStream videos to generate.")
_SYNTH_SEED = flags.DEFINE_integer("synth_seed", 0, "SynthStream seed.")
_SYNTH_RES = flags.DEFINE_integer("synth_resolution", 0, "SynthStream resolution (0: default / "
                                  "the config's data.synth.resolution).")
_NO_PROGRESS = flags.DEFINE_boolean("noprogress_bar", False, "Hide the progress bar.")


def _load_config(path: str | None):
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = path or os.path.join(root, "configs", "tiny_synthetic.py")
  spec = importlib.util.spec_from_file_location("eval_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def load_model(checkpoint: str, *, config_path: str | None, tokenizer_dir: str | None,
               workdir: str):
  """(params, model_config, tokenizer, train_config or None) of --checkpoint."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import sft  # pylint: disable=g-import-not-at-top

  if checkpoint == "random" or os.path.isdir(os.path.join(checkpoint, "checkpoints")):
    cfg = _load_config(config_path)
    tok_home = workdir if checkpoint == "random" else checkpoint
    tokenizer = (tok_lib.load_tokenizer(tokenizer_dir)[0] if tokenizer_dir
                 else sft.make_tokenizer(cfg, tok_home))
    model_config = models.config_from_section(cfg.model, tokenizer)
    if checkpoint == "random":
      init = jax.jit(functools.partial(models.backbone_module(model_config).init_params,
                                       model_config))
      params = nn.unbox(init(jax.random.key(int(cfg.get("seed", 0)))))
      logging.info("random model of %s", config_path or "configs/tiny_synthetic.py")
    else:
      params = restore_train_params(os.path.join(checkpoint, "checkpoints"))
    return params, model_config, tokenizer, cfg
  model_config, params = models.load_hf_checkpoint(checkpoint, dtype=jnp.float32)
  tokenizer, needs_resize = tok_lib.load_tokenizer(tokenizer_dir or checkpoint)
  if needs_resize:
    raise ValueError(f"the tokenizer of {tokenizer_dir or checkpoint} has {len(tokenizer)} tokens, "
                     f"more than the model's {model_config.text.vocab_size} rows; evaluate a "
                     "checkpoint trained with the decision tokens")
  return params, model_config, tokenizer, None


def restore_train_params(ckpt_dir: str):
  """Params of the newest orbax checkpoint in ``<workdir>/checkpoints`` (host arrays)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  step = ckpt_lib.newest_complete_step(ckpt_dir)
  path = os.path.join(os.path.abspath(ckpt_dir), str(step), "state")
  state = ocp.StandardCheckpointer().restore(path)
  logging.info("restored params of step %d from %s", step, path)
  return state["params"]


def make_judge(spec: str):
  from streampro_jax import judges  # pylint: disable=g-import-not-at-top
  if spec == "exact":
    return judges.MatchJudge()
  kind, _, rest = spec.partition(":")
  if kind == "openai":
    model, at, base_url = rest.partition("@")
    if not model or not at or not base_url:
      raise ValueError(f"--judge={spec!r}: expected openai:<model>@<base_url>")
    return judges.build_judge({"kind": "openai", "model": model, "base_url": base_url})
  if kind == "local" and rest:
    return judges.build_judge({"kind": "local", "path": rest})
  raise ValueError(f"--judge={spec!r}: expected exact, openai:<model>@<base_url> or local:<dir>")


def load_records(benchmark: str, train_cfg):
  """(records, loader extras) of --benchmark."""
  from streampro_jax.data import peer_loaders, schema, synthetic  # pylint: disable=g-import-not-at-top
  if benchmark == "synthstream":
    synth = dict(train_cfg.data.get("synth", {})) if train_cfg is not None else {}
    if _SYNTH_RES.value:
      synth["resolution"] = _SYNTH_RES.value
    cfg = synthetic.SynthConfig.from_dict(synth)
    n = _SYNTH_NUM.value if _MAX_VIDEOS.value is None else min(_SYNTH_NUM.value,
                                                                 _MAX_VIDEOS.value)
    return [synthetic.make_record(_SYNTH_SPLIT.value, i, seed=_SYNTH_SEED.value, config=cfg)
            for i in range(n)]
  if not _ANNOTATIONS.value:
    raise app.UsageError(f"--benchmark={benchmark} needs --annotations")
  path = _ANNOTATIONS.value
  if benchmark == "streampro":
    records, report = schema.load_jsonl(path, on_error="skip")
    if report.num_skipped:
      logging.warning("%s", report.summary())
    if _VIDEO_DIR.value:
      import dataclasses  # pylint: disable=g-import-not-at-top
      records = [dataclasses.replace(r, video=os.path.join(_VIDEO_DIR.value, r.video))
                 if not os.path.isabs(r.video) else r for r in records]
    return records
  loader = {"streamingbench": peer_loaders.load_streamingbench,
            "ovo": peer_loaders.load_ovo_bench,
            "proactivevideoqa": peer_loaders.load_proactivevideoqa}[benchmark]
  records, report = loader(path, video_dir=_VIDEO_DIR.value, on_error="skip")
  if report.errors:
    logging.warning("%s: %d bad items skipped", path, len(report.errors))
  return records


def peer_scores(benchmark: str, results, records, judge) -> dict:
  """The peer benchmark's own scores from the harness results (bench/harness.py adapters)."""
  from streampro_jax import judges  # pylint: disable=g-import-not-at-top
  from streampro_jax.bench import harness, ovo, pauc, streamingbench  # pylint: disable=g-import-not-at-top
  if benchmark == "streamingbench":
    questions = streamingbench.load_questions(_ANNOTATIONS.value)
    out = {}
    rtvu_q = [q for q in questions if q["task_type"] != "Proactive Output"]
    if rtvu_q:
      out["rtvu"] = streamingbench.score_rtvu(rtvu_q, harness.streamingbench_rtvu_responses(
          results))
    pro_q = [q for q in questions if q["task_type"] == "Proactive Output"]
    if pro_q:
      out["proactive"] = streamingbench.score_proactive(
          pro_q, harness.streamingbench_proactive_histories(results, pro_q))
    return out
  if benchmark == "ovo":
    return {"ovo": ovo.score(harness.ovo_results(results, records))}
  if benchmark == "proactivevideoqa":
    def grade(question, reference, prediction):
      s = judge.score_answers([judges.AnswerItem(question, prediction, reference)])[0]
      return None if s is None else 2.0 * float(s)
    return {"pauc": pauc.score(harness.pauc_examples(results, records, grade))}
  return {}


def main(argv):
  del argv
  if not _CHECKPOINT.value or not _WORKDIR.value:
    raise app.UsageError("--checkpoint and --workdir are required")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  from streampro_jax.bench import harness  # pylint: disable=g-import-not-at-top

  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  params, model_config, tokenizer, train_cfg = load_model(
      _CHECKPOINT.value, config_path=_CONFIG.value, tokenizer_dir=_TOKENIZER.value,
      workdir=workdir)
  frame = _FRAME_SIZE.value
  if not frame:
    frame = int(train_cfg.data.frame_height) if train_cfg is not None else 224
  benchmark = _BENCHMARK.value
  hcfg = harness.HarnessConfig(
      batch_size=_BATCH_SIZE.value, frame_height=frame, frame_width=frame,
      max_text_tokens=_MAX_TEXT_TOKENS.value, window_turns=_WINDOW_TURNS.value,
      max_turns=_MAX_TURNS.value, prompt_style=_PROMPT_STYLE.value,
      constrain_decision=_CONSTRAIN.value,
      force_response_at_ask=benchmark in ("streamingbench", "ovo"),
      progress=not _NO_PROGRESS.value)
  records = load_records(benchmark, train_cfg)
  judge = make_judge(_JUDGE.value)
  logging.info("evaluate %s on %s: %d videos, batch %d, frames %dx%d, window %d turns",
               _CHECKPOINT.value, benchmark, len(records), hcfg.batch_size, frame, frame,
               hcfg.window_turns)
  out = harness.evaluate(params, model_config, tokenizer, records, judge, workdir, hcfg,
                         max_videos=_MAX_VIDEOS.value,
                         name=os.path.basename(os.path.normpath(_CHECKPOINT.value)))
  scores = out["scores"]["scores"]
  logging.info("StreamPro-F1: %s", {k: v for k, v in scores.items() if v is not None})
  if benchmark in ("streamingbench", "ovo", "proactivevideoqa"):
    items = harness.benchmark_items(records, max_videos=_MAX_VIDEOS.value)
    results = harness.run_benchmark(params, model_config, tokenizer, items,
                                    os.path.join(workdir, harness.RESULTS_FILE), hcfg)
    peer = peer_scores(benchmark, results, records[:len(records) if _MAX_VIDEOS.value is None
                                                   else _MAX_VIDEOS.value], judge)
    with open(os.path.join(workdir, "peer_scores.json"), "w", encoding="utf-8") as f:
      json.dump(peer, f, indent=1, default=str)
    logging.info("peer scores: %s", json.dumps(peer, default=str)[:2000])
  print(open(out["paths"]["table"], encoding="utf-8").read())


if __name__ == "__main__":
  app.run(main)
