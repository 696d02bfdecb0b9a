"""What an evaluation loads: a Hugging Face checkpoint folder, a training workdir or a random model.

`checkpoint_kind` tells the three apart; `load_model` returns (params, model_config, tokenizer,
training config or None); `checkpoint_identity` is what identifies the weights in a results
file (bench/harness._check_results_identity); `trained_frame_size` is the frame size the model
was trained on. launch/evaluate.py, launch/stream.py and launch/serve.py read their --checkpoint
/ --config / --tokenizer flags through these.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os

from absl import logging

__all__ = [
    "CONVERSION_FILE", "CheckpointError", "checkpoint_identity", "checkpoint_kind", "file_id",
    "load_model", "trained_frame_size"
]

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DEFAULT_CONFIG = os.path.join(_ROOT, "configs", "tiny_synthetic.py")
"""The config of a "random" checkpoint when none is given (the tiny synthetic model)."""
CONVERSION_FILE = "streampro_conversion.json"
"""The record launch/convert_checkpoint.py writes into an exported folder (frame size, source)."""


class CheckpointError(ValueError):
  """A checkpoint path that is none of the three kinds (the message names the path)."""


def _load_config_file(path: str | None):
  """get_config() of a config file (default _DEFAULT_CONFIG)."""
  spec = importlib.util.spec_from_file_location("eval_config", path or _DEFAULT_CONFIG)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def checkpoint_kind(checkpoint: str) -> str:
  """"random", "workdir" (holds checkpoints/) or "hf" (holds config.json); a CheckpointError
  naming the path otherwise."""
  if checkpoint == "random":
    return "random"
  if not os.path.isdir(checkpoint):
    raise CheckpointError(f"{checkpoint}: no such folder (expected a Hugging Face folder, a "
                          "training workdir or 'random')")
  if os.path.isdir(os.path.join(checkpoint, "checkpoints")):
    return "workdir"
  if os.path.isfile(os.path.join(checkpoint, "config.json")):
    return "hf"
  raise CheckpointError(f"{checkpoint} holds neither config.json (a Hugging Face folder) nor "
                        "checkpoints/ (a training workdir)")


def file_id(path: str) -> dict:
  """{"size", "mtime_ns"} of a file."""
  st = os.stat(path)
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

def checkpoint_identity(checkpoint: str, *, config_path: str | None = None) -> dict:
  """What identifies the weights under evaluation: the folder and, per weight file, its size
  and modification time (a re-export into the same folder is another model); a workdir's newest
  complete step; "random" with its config."""
  kind = checkpoint_kind(checkpoint)
  if kind == "random":
    return {"kind": "random", "config": os.path.abspath(config_path) if config_path else
            "configs/tiny_synthetic.py"}
  path = os.path.abspath(checkpoint)
  if kind == "workdir":
    from streampro_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    ckpt_dir = os.path.join(path, "checkpoints")
    step = ckpt_lib.newest_complete_step(ckpt_dir)
    return {"kind": "workdir", "path": path, "step": step,
            "state": file_id(os.path.join(ckpt_dir, str(step), "_CHECKPOINT_METADATA"))}
  files = {n: file_id(os.path.join(path, n)) for n in sorted(os.listdir(path))
           if n.endswith((".safetensors", ".bin", "config.json"))}
  return {"kind": "hf", "path": path, "files": files}


def _workdir_config(workdir: str):
  """The config.json a training workdir was run with, as a ConfigDict (None if absent)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def trained_frame_size(checkpoint: str, train_cfg) -> tuple[int, str]:
  """(frame size, where it came from): the training config's data.frame_height, else the one an
  exported folder records (streampro_conversion.json), else 224 (with a warning)."""
  if train_cfg is not None and "data" in train_cfg:
    return int(train_cfg.data.frame_height), "the training config"
  record = os.path.join(checkpoint, CONVERSION_FILE)
  if os.path.isfile(record):
    with open(record, encoding="utf-8") as f:
      size = json.load(f).get("frame_height")
    if size:
      return int(size), record
  logging.warning("%s records no training frame size; using 224 x 224 (set the frame size)",
                  checkpoint)
  return 224, "the default"


def load_model(checkpoint: str, *, config_path: str | None, tokenizer_dir: str | None,
               workdir: str):
  """(params, model_config, tokenizer, train_config or None) of a checkpoint (checkpoint_kind).

  A training workdir is read with the config.json it was run with; config_path (a config file)
  overrides it (a warning names the differences); "random" uses config_path or _DEFAULT_CONFIG.
  tokenizer_dir: a tokenizer folder (default: the checkpoint's); workdir: where a "random"
  model's tokenizer is built."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top

  kind = checkpoint_kind(checkpoint)
  if kind in ("random", "workdir"):
    cfg = _workdir_config(checkpoint) if kind == "workdir" else None
    if cfg is None or config_path:
      given = _load_config_file(config_path)
      if cfg is not None:
        from streampro_jax.train import config_check  # pylint: disable=g-import-not-at-top
        diffs = config_check.config_diff(cfg, given)
        if diffs:
          logging.warning("the given config differs from %s/config.json (the run's own):\n  %s",
                          checkpoint, "\n  ".join(diffs))
      cfg = given
    tok_home = workdir if checkpoint == "random" else checkpoint
    tokenizer = (tok_lib.load_tokenizer(tokenizer_dir)[0] if tokenizer_dir
                 else setup_lib.make_tokenizer(cfg, tok_home))
    model_config = models.config_from_section(cfg.model, tokenizer)
    if checkpoint == "random":
      init = jax.jit(functools.partial(models.backbone_module(model_config).init_params,
                                       model_config))
      params = nn.unbox(init(jax.random.key(int(cfg.get("seed", 0)))))
      logging.info("random model of %s", config_path or "configs/tiny_synthetic.py")
    else:
      params = _restore_train_params(os.path.join(checkpoint, "checkpoints"))
    return params, model_config, tokenizer, cfg
  model_config, params = models.load_hf_checkpoint(checkpoint, dtype=jnp.float32)
  tokenizer, needs_resize = tok_lib.load_tokenizer(tokenizer_dir or checkpoint)
  if needs_resize:
    raise ValueError(f"the tokenizer of {tokenizer_dir or checkpoint} has {len(tokenizer)} tokens, "
                     f"more than the model's {model_config.text.vocab_size} rows; evaluate a "
                     "checkpoint trained with the decision tokens")
  return params, model_config, tokenizer, None


def _restore_train_params(ckpt_dir: str):
  """Params of the newest orbax checkpoint in ``<workdir>/checkpoints``, on this process's
  first device, whatever mesh and device count saved them (the shapes come from the
  checkpoint's metadata; the optimizer state is not read)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  step = ckpt_lib.newest_complete_step(ckpt_dir)
  path = os.path.join(os.path.abspath(ckpt_dir), str(step), ckpt_lib.STATE)
  ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  meta = ckptr.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  meta = getattr(meta, "tree", meta)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {"params": jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta["params"])}
  state = ckptr.restore(path, args=ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True))
  logging.info("restored params of step %d from %s", step, path)
  return state["params"]
