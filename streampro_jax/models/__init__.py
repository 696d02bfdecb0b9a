"""streampro_jax.models: VLM backbones (Qwen2.5-VL, Qwen3-VL), KV cache, HF checkpoint I/O.

  models.load_hf_checkpoint(path, dtype=jnp.float32, shardings=None) -> (config, params)
      dispatches on config.json's model_type ('qwen2_5_vl', 'qwen3_vl').
  models.build(config) -> the Flax module for that config.

Backbone registry
-----------------
`backbone_module(x)` returns the backbone module (`qwen2_5_vl` or `qwen3_vl`) of x, where x is a
model_type / family string, a backbone config (anything with a `model_type` attribute) or a
mapping / ConfigDict with a `family` or `model_type` key (a training config's `model` section).
Every backbone module provides the same names, so that consumers (data pipeline, trainers,
sampler, evaluation) never import a backbone directly:

  MODEL_TYPE                      'qwen2_5_vl' | 'qwen3_vl'
  <Name>Config                    the frozen config class (.from_hf(dict, **overrides), .to_hf());
                                  `config_class(x)` returns it (Qwen2_5_VLConfig, Qwen3_VLConfig)
  <Name>                          the Flax module class: `model_class(x)(config).apply(
                                  {"params": p}, input_ids, pixel_values_videos=,
                                  video_grid_thw=, attention_mask=, position_ids=,
                                  return_hidden=, video_embeds=, kv=) (Qwen2_5_VL, Qwen3_VL)
  TextConfig, VisionConfig        the frozen sub-configs of <Name>Config.text / .vision
  tiny_config(text=, vision=, **top)   a small random-test config
  hf_key_map(config)              HF safetensors key -> (our param path, transform)
  init_params(config, rng)        boxed random params
  get_rope_index(input_ids, *, video_grid_thw=, attention_mask=, config=)   host M-RoPE positions
                                  (pass the arguments by keyword: positional orders differ)
  chunk_position_ids(ids, start, *, config=, video_grid_thw=, chunk_mask=)   streaming positions
  load_hf_checkpoint(path, dtype, shardings=None), save_hf_checkpoint(config, params, path)
  video_processor_config(config, **overrides)   per-turn processor settings (patch sizes of the
                                  config, the backbone's normalisation, do_resize=False)
  <Name>.encode_vision(pixels, grid) -> a backbone-specific pytree (Qwen2.5-VL: one array;
                                  Qwen3-VL: (merged, deepstack tuple)), leading axis B in the
                                  batched layout, accepted back by `video_embeds=`.

Helpers on top: `model_type_of`, `config_class`, `model_class`, `build`,
`video_processor_config`, `process_turns` (dispatches on the processor config's type),
`config_from_section` (a training config's `model` section -> backbone config).
"""

from __future__ import annotations

__all__ = [
    "BACKBONES",
    "COMPUTE_KEYS",
    "DEFAULT_FAMILY",
    "backbone_module",
    "build",
    "config_class",
    "config_from_section",
    "layout_of",
    "load_hf_checkpoint",
    "model_class",
    "model_type_of",
    "process_turns",
    "round_up",
    "scan_params",
    "unscan_params",
    "video_processor_config",
    "common",
    "hf_io",
    "kv_cache",
    "layers",
    "processing",
    "processing_qwen3",
    "qwen2_5_vl",
    "qwen3_vl",
]


import importlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from streampro_jax import _config

# Parameter trees between the unrolled (layers_i, visual/blocks_i) and the scanned (stacked
# `layers`, `visual/blocks`) layouts.
from streampro_jax.models.common import layout_of, round_up, scan_params, unscan_params

# model_type -> (module, config class name, model class name)
_BACKBONES = {
    "qwen2_5_vl": ("streampro_jax.models.qwen2_5_vl", "Qwen2_5_VLConfig", "Qwen2_5_VL"),
    "qwen3_vl": ("streampro_jax.models.qwen3_vl", "Qwen3_VLConfig", "Qwen3_VL"),
}
BACKBONES = tuple(_BACKBONES)

# Other spellings accepted for a family / model_type string.
_ALIASES = {"qwen2.5_vl": "qwen2_5_vl", "qwen2.5-vl": "qwen2_5_vl", "qwen2_5-vl": "qwen2_5_vl",
            "qwen3-vl": "qwen3_vl"}

DEFAULT_FAMILY = "qwen2_5_vl"


def _backbone(model_type: str):
  if model_type not in _BACKBONES:
    raise ValueError(f"unsupported model_type {model_type!r}; known: {sorted(_BACKBONES)}")
  return importlib.import_module(_BACKBONES[model_type][0])


def model_type_of(x: Any) -> str:
  """The backbone name ('qwen2_5_vl' | 'qwen3_vl') of a string, a config or a config section.

  x: a model_type / family string (aliases such as 'qwen3-vl' accepted); a backbone config
  (its `model_type` attribute); or a mapping / ConfigDict with key `family` or `model_type`
  (missing both: 'qwen2_5_vl', the trainers' default family).
  """
  if isinstance(x, str):
    name = _ALIASES.get(x.lower(), x.lower())
  elif hasattr(x, "model_type") and isinstance(x.model_type, str):
    name = x.model_type
  elif isinstance(x, Mapping) or hasattr(x, "get"):
    name = x.get("family", None) or x.get("model_type", None) or DEFAULT_FAMILY
    name = _ALIASES.get(str(name).lower(), str(name).lower())
  else:
    raise TypeError(f"cannot tell the backbone of a {type(x).__name__}")
  if name not in _BACKBONES:
    raise ValueError(f"unsupported backbone {name!r}; known: {sorted(_BACKBONES)}")
  return name


def backbone_module(x: Any):
  """The backbone module (qwen2_5_vl or qwen3_vl) of x (see `model_type_of` for what x may be)."""
  return _backbone(model_type_of(x))


def config_class(x: Any) -> type:
  """The backbone config class of x (Qwen2_5_VLConfig or Qwen3_VLConfig; see `model_type_of`
  for what x may be)."""
  name = model_type_of(x)
  return getattr(_backbone(name), _BACKBONES[name][1])


def model_class(x: Any) -> type:
  """The backbone's Flax module class of x (Qwen2_5_VL or Qwen3_VL; see `model_type_of` for what
  x may be)."""
  name = model_type_of(x)
  return getattr(_backbone(name), _BACKBONES[name][2])


def load_hf_checkpoint(path: str, dtype=jnp.float32, shardings=None, *,
                       scan_layers: bool = False, **overrides):
  """Loads a HF checkpoint directory (config.json + safetensors) -> (config, params), the
  params in the layout `scan_layers` asks for (scanned stacks or unrolled layers_i); overrides
  set other config fields (dtype, attention_impl, remat, remat_policy)."""
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint folder (no config.json)")
  with open(os.path.join(path, "config.json")) as f:
    model_type = json.load(f).get("model_type")
  return _backbone(model_type).load_hf_checkpoint(path, dtype, shardings=shardings,
                                                  scan_layers=scan_layers, **overrides)



def build(config):
  """The Flax module for `config` (Qwen2_5_VL or Qwen3_VL)."""
  for _mt, (mod_name, cfg_name, model_name) in _BACKBONES.items():
    try:
      mod = importlib.import_module(mod_name)
    except ImportError:
      continue
    if isinstance(config, getattr(mod, cfg_name, ())):
      return getattr(mod, model_name)(config)
  raise TypeError(f"no backbone for config type {type(config).__name__}")


def video_processor_config(model_config, **overrides):
  """Per-turn video processor settings matching `model_config`'s vision tower.

  Qwen2.5-VL: processing.VideoProcessorConfig (CLIP mean/std); Qwen3-VL:
  processing_qwen3.Qwen3VideoProcessorConfig (mean = std = 0.5). do_resize=False unless
  overridden (frames are resized to a fixed size first). Both have patch_size, merge_size,
  temporal_patch_size, patch_dim, grid(height, width) and from_config.
  """
  return backbone_module(model_config).video_processor_config(model_config, **overrides)


def process_turns(frames_kthwc: np.ndarray, processor_config
                  ) -> tuple[np.ndarray, tuple[int, int, int]]:
  """uint8 frames [K, tp, H, W, 3] -> (patches f32[K, gh*gw, D], (1, gh, gw)) with the processor
  of `processor_config`'s type (processing or processing_qwen3)."""
  from streampro_jax.models import processing, processing_qwen3  # pylint: disable=g-import-not-at-top
  if isinstance(processor_config, processing_qwen3.Qwen3VideoProcessorConfig):
    return processing_qwen3.process_turns(frames_kthwc, processor_config)
  if isinstance(processor_config, processing.VideoProcessorConfig):
    return processing.process_turns(frames_kthwc, processor_config)
  raise TypeError(f"unknown video processor config {type(processor_config).__name__}")


COMPUTE_KEYS = ("dtype", "param_dtype", "attention_impl", "attention_block_q",
                "attention_block_kv", "remat", "remat_policy", "scan_layers", "matmul_dtype")
"""The compute settings a ``model`` section may set: the backbone Config's fields of these
names."""


def config_from_section(model_cfg, tokenizer):
  """A backbone config from a training config's `model` section (+ the tokenizer).

  Keys: family ('qwen2_5_vl' default | 'qwen3_vl'), the compute settings COMPUTE_KEYS (dtype,
  param_dtype, attention_impl, remat, remat_policy, scan_layers, matmul_dtype: the backbone
  Config's fields of those names, a key left out keeps the Config default); hf_checkpoint: a HF
  folder whose config.json gives the architecture (its vocabulary must hold the tokenizer's);
  otherwise a tiny random config of the family (`tiny_config`) with the tokenizer's special ids,
  vocab = len(tokenizer) rounded up to 64, updated by `tiny_text` / `tiny_vision` dicts.
  """
  mod = backbone_module(model_cfg)
  common = _config.field_values(
      config_class(model_cfg), {k: model_cfg[k] for k in COMPUTE_KEYS if k in model_cfg},
      section_name="model")
  if model_cfg.get("hf_checkpoint", None):
    with open(os.path.join(model_cfg["hf_checkpoint"], "config.json"), encoding="utf-8") as f:
      d = json.load(f)
    if d.get("model_type") not in (None, mod.MODEL_TYPE):
      raise ValueError(f"model.family is {mod.MODEL_TYPE!r} but {model_cfg['hf_checkpoint']} "
                       f"holds a {d.get('model_type')!r} checkpoint")
    mcfg = config_class(model_cfg).from_hf(d, **common)
    if len(tokenizer) > mcfg.text.vocab_size:
      raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the checkpoint's embedding "
                       f"has {mcfg.text.vocab_size} rows; resize the checkpoint first")
    return mcfg
  ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
      ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
      ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
  text = dict(vocab_size=round_up(len(tokenizer), 64))
  text.update(dict(model_cfg.get("tiny_text", None) or {}))
  return mod.tiny_config(text=text, vision=dict(model_cfg.get("tiny_vision", None) or {}),
                         **ids, **common)
