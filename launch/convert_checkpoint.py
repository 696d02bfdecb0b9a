r"""Checkpoint conversion: training workdir -> Hugging Face folder, and HF folder -> ready to train.

Workdir mode: the params of an orbax checkpoint of launch/train_sft.py or launch/train_grpo.py
(``<workdir>/checkpoints/<step>/state``; newest step, or --step) become a Hugging Face folder:
config.json + safetensors (the backbone's save_hf_checkpoint), the tokenizer the run used (with
</Silence> and </Response>), and the non-weight files (processor / generation configs) of the
run's ``model.hf_checkpoint`` when it has one. --config is the ml_collections config file of
that run (it rebuilds the model config and the tokenizer; overrides such as
``--config.model.family=qwen3_vl`` work as in the trainers):

  .venv/bin/python launch/convert_checkpoint.py --workdir=/tmp/tiny \
      --config=configs/tiny_synthetic.py --output=/tmp/tiny_hf [--step=20] [--dtype=bfloat16]

HF input mode: a Hugging Face Qwen2.5-VL / Qwen3-VL folder gets the decision tokens in its
tokenizer (data/tokenizer.load_tokenizer); when the tokenizer then has more tokens than the
embedding has rows, the embedding (and an untied LM head) grows to a multiple of --pad_vocab_to;
the rows of newly added decision tokens are re-initialised to the mean of the other rows
(data/tokenizer._resize_vocab_rows; --reinit_decision_rows=always|never to force). The original
config.json is kept with vocab_size (and dtype) updated:

  .venv/bin/python launch/convert_checkpoint.py --hf_input=/ckpt/Qwen2.5-VL-3B-Instruct \
      --output=/ckpt/Qwen2.5-VL-3B-StreamPro-init

Both outputs load with ``models.load_hf_checkpoint`` (and launch/evaluate.py --checkpoint) and
with transformers' ``from_pretrained``. A ``streampro_conversion.json`` in the output records
the source, step and decision token ids. The conversion runs on the host CPU (params are
gathered there one tensor at a time on save); single process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from streampro_jax.bench import checkpoints as bench_checkpoints

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cli  # launch/_cli.py: one-line usage errors (exit 2)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file of the run "
                                          "(workdir mode).", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of launch/train_sft.py or "
                               "launch/train_grpo.py (holds checkpoints/).")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step (-1: the newest).")
_HF_INPUT = flags.DEFINE_string("hf_input", None, "HF Qwen2.5-VL / Qwen3-VL folder to prepare "
                                "for training (instead of --workdir).")
_OUTPUT = flags.DEFINE_string("output", None, "HF folder to write.")
_DTYPE = flags.DEFINE_enum("dtype", "auto", ("auto", "float32", "bfloat16"),
                           "Stored dtype (auto: the checkpoint's own: the run's param_dtype, or "
                           "the HF folder's dtype).")
_REINIT = flags.DEFINE_enum("reinit_decision_rows", "auto", ("auto", "always", "never"),
                            "--hf_input: re-initialise the decision tokens' embedding rows "
                            "(auto: only tokens the tokenizer did not have).")
_PAD_VOCAB = flags.DEFINE_integer("pad_vocab_to", 64, "--hf_input: a grown vocabulary is "
                                  "rounded up to a multiple of this.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Write into an existing output folder.")

_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json",
                    ".pt", ".pth", ".msgpack", ".h5")
_TOKENIZER_PREFIXES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens")


def copy_aux_files(src: str, dst: str) -> list[str]:
  """Copies the non-weight, non-config, non-tokenizer files of HF folder ``src`` (processor and
  generation configs, chat template) that ``dst`` does not have yet. Returns their names."""
  copied = []
  for name in sorted(os.listdir(src)):
    path = os.path.join(src, name)
    if (not os.path.isfile(path) or name == "config.json" or name.endswith(_WEIGHT_SUFFIXES)
        or name.startswith(_TOKENIZER_PREFIXES) or name == bench_checkpoints.CONVERSION_FILE
        or os.path.exists(os.path.join(dst, name))):
      continue
    shutil.copy2(path, os.path.join(dst, name))
    copied.append(name)
  return copied


def _cast(params, dtype: str):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), params)


def _prepare_output(output: str, sources: list[str]):
  for src in sources:
    if src and os.path.abspath(src) == os.path.abspath(output):
      raise ValueError(f"--output {output} is the input folder; write to a new folder")
  if os.path.exists(os.path.join(output, "config.json")) and not _OVERWRITE.value:
    raise FileExistsError(f"{output} already holds a checkpoint (config.json); pass "
                          "--overwrite to replace it")
  os.makedirs(output, exist_ok=True)


def _write_record(output: str, record: dict):
  with open(os.path.join(output, bench_checkpoints.CONVERSION_FILE), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2, sort_keys=True)


def _tokenizer_of_run(config, workdir: str):
  """The tokenizer the run used: the synthetic one the trainer built under
  ``<workdir>/tokenizer/process_0`` (rebuilt when absent), or config.tokenizer's folder with the
  decision tokens added."""
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  if config.get("tokenizer", "synthetic") == "synthetic":
    built = os.path.join(workdir, "tokenizer", "process_0")
    if os.path.isfile(os.path.join(built, "tokenizer.json")):
      return tok_lib.load_tokenizer(built)[0]
    with tempfile.TemporaryDirectory() as tmp:
      return setup_lib.make_tokenizer(config, tmp)
  return setup_lib.make_tokenizer(config, workdir)


def _checkpoint_steps(ckpt_dir: str) -> list[int]:
  from streampro_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"{ckpt_dir} does not exist (not a train workdir?)")
  return ckpt_lib.complete_steps(ckpt_dir)[0]


def convert_workdir(workdir: str, config, output: str, *, step: int = -1,
                    dtype: str = "auto") -> dict:
  """Params of checkpoint ``step`` of a train workdir -> HF folder ``output``. Returns the
  conversion record."""
  import functools  # pylint: disable=g-import-not-at-top

  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import grpo_policy  # pylint: disable=g-import-not-at-top

  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = _checkpoint_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(f"no finished checkpoint in {ckpt_dir}")
  if step < 0:
    step = steps[-1]
  elif step not in steps:
    raise FileNotFoundError(f"checkpoint step {step} not in {ckpt_dir} (has {steps})")
  hf_src = config.model.get("hf_checkpoint", "") or ""
  _prepare_output(output, [workdir, hf_src])

  tokenizer = _tokenizer_of_run(config, workdir)
  model_config = models.config_from_section(config.model, tokenizer)
  backbone = models.backbone_module(model_config)
  if len(tokenizer) > model_config.text.vocab_size:
    raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model only "
                     f"{model_config.text.vocab_size} embedding rows")
  cpu = jax.devices("cpu")[0]
  abstract = nn.unbox(jax.eval_shape(functools.partial(backbone.init_params, model_config),
                                     jax.random.key(0)))
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(cpu), abstract)
  params = grpo_policy.restore_params(ckpt_dir, abstract, shardings, step)
  if dtype != "auto":
    params = _cast(params, dtype)
    model_config = dataclasses.replace(model_config, param_dtype=dtype)
  backbone.save_hf_checkpoint(model_config, params, output)
  tokenizer.save_pretrained(output)
  copied = copy_aux_files(hf_src, output) if hf_src and os.path.isdir(hf_src) else []
  record = dict(source="workdir", workdir=os.path.abspath(workdir), step=int(step),
                model_type=backbone.MODEL_TYPE, dtype=str(model_config.param_dtype),
                vocab_size=int(model_config.text.vocab_size), tokenizer_size=len(tokenizer),
                decision_token_ids=list(tok_lib.decision_token_ids(tokenizer)),
                copied_files=copied)
  data = config.get("data", None)
  if data is not None and "frame_height" in data:
    # What the model was trained on: launch/evaluate.py streams frames of this size.
    record.update(frame_height=int(data.frame_height), frame_width=int(data.frame_width))
  _write_record(output, record)
  return record


def _source_dtype(d: dict) -> str:
  for cfg in (d, d.get("text_config") or {}):
    for key in ("dtype", "torch_dtype"):
      if cfg.get(key) in ("float32", "bfloat16"):
        return cfg[key]
  return "float32"


def patch_config_json(d: dict, *, vocab_size: int, dtype: str) -> dict:
  """The original config.json dict with vocab_size (top level and text_config, where present;
  text_config when neither is) and the dtype keys that are present set anew."""
  d = json.loads(json.dumps(d))
  text = d.get("text_config")
  placed = False
  for cfg in (d, text):
    if isinstance(cfg, dict) and "vocab_size" in cfg:
      cfg["vocab_size"] = int(vocab_size)
      placed = True
  if not placed:
    (text if isinstance(text, dict) else d)["vocab_size"] = int(vocab_size)
  for cfg in (d, text):
    if isinstance(cfg, dict):
      for key in ("dtype", "torch_dtype"):
        if key in cfg:
          cfg[key] = dtype
  return d


def convert_hf(hf_input: str, output: str, *, dtype: str = "auto", reinit: str = "auto",
               pad_vocab_to: int = 64) -> dict:
  """HF folder -> HF folder with the decision tokens (tokenizer and embedding rows)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top

  from streampro_jax import models, prompts  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top

  tok_lib.require_tokenizer_files(hf_input)   # before anything is written
  _prepare_output(output, [hf_input])
  with open(os.path.join(hf_input, "config.json"), encoding="utf-8") as f:
    source_json = json.load(f)
  if dtype == "auto":
    dtype = _source_dtype(source_json)
  had = set(AutoTokenizer.from_pretrained(hf_input, local_files_only=True).get_vocab())
  added = [t for t in prompts.DECISION_TOKENS if t not in had]
  tokenizer, needs_resize = tok_lib.load_tokenizer(hf_input)
  ids = tok_lib.decision_token_ids(tokenizer)
  if reinit == "always":
    reinit_ids = list(ids)
  elif reinit == "never":
    reinit_ids = []
  else:
    reinit_ids = [tokenizer.convert_tokens_to_ids(t) for t in added]

  with jax.default_device(jax.devices("cpu")[0]):
    config, params = models.load_hf_checkpoint(hf_input, dtype=jnp.dtype(dtype))
    backbone = models.backbone_module(config)
    v_old = int(config.text.vocab_size)
    v_new = models.round_up(len(tokenizer), max(pad_vocab_to, 1)) if needs_resize else v_old
    if v_new != v_old or reinit_ids:
      params = tok_lib.resize_param_vocab(params, v_new, reinit_ids=reinit_ids)
      config = dataclasses.replace(
          config, text=dataclasses.replace(config.text, vocab_size=v_new))
    backbone.save_hf_checkpoint(config, params, output)
  out_json = patch_config_json(source_json, vocab_size=v_new, dtype=dtype)
  check = type(config).from_hf(out_json)
  if check.text.vocab_size != v_new:
    raise RuntimeError(f"patched config.json reads vocab_size {check.text.vocab_size}, "
                       f"expected {v_new}")
  with open(os.path.join(output, "config.json"), "w", encoding="utf-8") as f:
    json.dump(out_json, f, indent=2, sort_keys=True)
  tokenizer.save_pretrained(output)
  copied = copy_aux_files(hf_input, output)
  record = dict(source="hf", hf_input=os.path.abspath(hf_input), model_type=backbone.MODEL_TYPE,
                dtype=dtype, vocab_size_before=v_old, vocab_size=v_new,
                tokenizer_size=len(tokenizer), added_tokens=added,
                decision_token_ids=list(ids), reinitialised_rows=[int(i) for i in reinit_ids],
                copied_files=copied)
  _write_record(output, record)
  return record


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if bool(_WORKDIR.value) == bool(_HF_INPUT.value):
    raise app.UsageError("give exactly one of --workdir (with --config) and --hf_input")
  if not _OUTPUT.value:
    raise app.UsageError("--output is required")
  if _WORKDIR.value and not os.path.isdir(os.path.join(_WORKDIR.value, "checkpoints")):
    raise app.UsageError(f"--workdir={_WORKDIR.value} is not a training workdir (no "
                         "checkpoints/ there)")
  if _HF_INPUT.value and not os.path.isfile(os.path.join(_HF_INPUT.value, "config.json")):
    raise app.UsageError(f"--hf_input={_HF_INPUT.value} is not a Hugging Face checkpoint folder "
                         "(no config.json there)")
  try:
    if _WORKDIR.value:
      if _CONFIG.value is None:
        raise app.UsageError("--workdir needs --config (the run's training config file)")
      record = convert_workdir(_WORKDIR.value, _CONFIG.value, _OUTPUT.value, step=_STEP.value,
                               dtype=_DTYPE.value)
    else:
      record = convert_hf(_HF_INPUT.value, _OUTPUT.value, dtype=_DTYPE.value,
                          reinit=_REINIT.value, pad_vocab_to=_PAD_VOCAB.value)
  except (ValueError, OSError) as err:
    logging.error("%s", err)
    print(f"error: {err}", file=sys.stderr)
    return 1
  print(f"wrote {_OUTPUT.value}: {json.dumps(record, sort_keys=True)}")
  return 0


if __name__ == "__main__":
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  _cli.run(main)
