"""streampro_jax.models: VLM backbones (Qwen2.5-VL, Qwen3-VL), KV cache, HF checkpoint I/O.

  models.load_hf_checkpoint(path, dtype=jnp.float32, shardings=None) -> (config, params)
      dispatches on config.json's model_type ('qwen2_5_vl', 'qwen3_vl').
  models.build(config) -> the Flax module for that config.
"""

from __future__ import annotations

import importlib
import json
import os

import jax.numpy as jnp

# model_type -> (module, config class name, model class name)
_BACKBONES = {
    "qwen2_5_vl": ("streampro_jax.models.qwen2_5_vl", "Qwen2_5_VLConfig", "Qwen2_5_VL"),
    "qwen3_vl": ("streampro_jax.models.qwen3_vl", "Qwen3_VLConfig", "Qwen3_VL"),
}


def _backbone(model_type: str):
  if model_type not in _BACKBONES:
    raise ValueError(f"unsupported model_type {model_type!r}; known: {sorted(_BACKBONES)}")
  return importlib.import_module(_BACKBONES[model_type][0])


def load_hf_checkpoint(path: str, dtype=jnp.float32, shardings=None):
  """Loads a HF checkpoint directory (config.json + safetensors) -> (config, params)."""
  with open(os.path.join(path, "config.json")) as f:
    model_type = json.load(f).get("model_type")
  return _backbone(model_type).load_hf_checkpoint(path, dtype, shardings=shardings)


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
