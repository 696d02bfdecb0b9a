"""Optimizer for the SFT (and later GRPO) stages: AdamW, warmup + cosine decay, clipping, freezing.

The optimizer is one optax transformation built from a config section (``config.optim``, read
as an :class:`OptimConfig`: each default is written there once)::

  tx = optim.make_optimizer(config.optim, total_steps=1000)

* Learning rate: linear warmup from 0 to ``lr`` over ``warmup_steps`` (or ``warmup_ratio`` of the
  run), then cosine decay to ``lr * end_lr_factor`` at ``total_steps``.
* Gradient clipping by global norm (``grad_clip_norm``; 0 disables it). The norm is taken
  over the *trainable* parameters only.
* AdamW with decoupled weight decay on parameters with ``ndim >= 2`` (kernels, embeddings); biases
  and norm scales are not decayed.
* Frozen parameters (those whose '/'-joined path matches the regular expression ``frozen``, e.g.
  the vision tower but not its patch merger) get zero updates via ``optax.multi_transform`` with
  ``optax.set_to_zero()``, and carry no optimizer state (no Adam moments are allocated for them).

Parameter paths are the Flax param dict keys joined with '/', e.g.
``visual/blocks_0/attn/qkv/kernel``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import optax

from streampro_jax import _config

__all__ = ["OptimConfig", "count_params", "make_optimizer", "make_schedule", "trainable_mask"]

_TRAIN = "train"
_FROZEN = "frozen"
_SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The ``config.optim`` section.

  Attributes:
    lr: peak learning rate (required).
    warmup_steps: linear warmup steps; < 0: ``round(warmup_ratio * total_steps)``.
    warmup_ratio: warmup as a fraction of the run (when warmup_steps < 0).
    schedule: "cosine" (decay to lr * end_lr_factor at total_steps) or "constant".
    end_lr_factor: the cosine schedule's final lr / lr.
    b1, b2, eps: AdamW's moment decays and epsilon.
    weight_decay: decoupled weight decay of parameters with ndim >= 2.
    grad_clip_norm: clip by global norm over the trainable parameters; 0 (or None in a config
      section) disables it.
    frozen: regular expression of frozen parameter paths (see trainable_mask); None or ''
      freezes nothing.
  """
  lr: float
  warmup_steps: int = -1
  warmup_ratio: float = 0.0
  schedule: str = "cosine"
  end_lr_factor: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip_norm: float = 1.0
  frozen: str | None = None

  def __post_init__(self):
    if self.schedule not in _SCHEDULES:
      raise ValueError(f"config.optim.schedule = {self.schedule!r}; expected one of {_SCHEDULES}")

  @classmethod
  def from_config(cls, cfg: Any) -> OptimConfig:
    """From a ``config.optim`` mapping / ConfigDict (an OptimConfig is returned as is); a key left
    out keeps the field's default; ``lr`` is required."""
    if isinstance(cfg, cls):
      return cfg
    values = _config.as_dict(cfg)
    if values.get("lr") is None:
      raise ValueError("config.optim.lr is required (the peak learning rate)")
    kw = _config.field_values(cls, values, section_name="optim")
    if "grad_clip_norm" in values and values["grad_clip_norm"] is None:
      kw["grad_clip_norm"] = 0.0  # None disables clipping, as 0 does.
    return cls(**kw)


def _path_str(path) -> str:
  """'/'-joined string of a jax key path (dict keys, attributes, sequence indices)."""
  parts = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      parts.append(str(key.name))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    else:
      parts.append(str(key))
  return "/".join(parts)


def trainable_mask(params, frozen: str | None) -> Any:
  """Pytree of bools (same structure as ``params``): True where the parameter is trained.

  Args:
    params: parameter pytree (arrays or ShapeDtypeStructs).
    frozen: regular expression searched (``re.search``) in each '/'-joined path; a match freezes
      the parameter. None or '' freezes nothing.
  """
  pattern = re.compile(frozen) if frozen else None
  return jax.tree_util.tree_map_with_path(
      lambda path, _: pattern is None or pattern.search(_path_str(path)) is None, params)


def _param_labels(params, frozen: str | None) -> Any:
  """Labels for ``optax.multi_transform``: 'train' or 'frozen' per parameter."""
  return jax.tree.map(lambda t: _TRAIN if t else _FROZEN, trainable_mask(params, frozen))


def count_params(params, frozen: str | None = None) -> dict[str, int]:
  """Number of parameters: total, trainable and frozen."""
  mask = trainable_mask(params, frozen)
  sizes = jax.tree.map(lambda p: math.prod(p.shape), params)
  total = sum(jax.tree.leaves(sizes))
  trained = sum(s for s, m in zip(jax.tree.leaves(sizes), jax.tree.leaves(mask)) if m)
  return {"total": total, "trainable": trained, "frozen": total - trained}


def _warmup_steps(cfg: Mapping[str, Any] | OptimConfig, total_steps: int) -> int:
  """Warmup length: ``cfg.warmup_steps`` if set (>= 0), else ``round(warmup_ratio * total)``."""
  c = OptimConfig.from_config(cfg)
  steps = c.warmup_steps
  if steps < 0:
    steps = int(round(c.warmup_ratio * total_steps))
  return int(min(steps, total_steps))


def make_schedule(cfg: Mapping[str, Any] | OptimConfig, total_steps: int) -> optax.Schedule:
  """Learning rate schedule: linear warmup 0 -> lr, then cosine decay to lr * end_lr_factor.

  lr(s) = lr * s / W                                                    for s < W
  lr(s) = lr * (f + (1 - f) * 0.5 * (1 + cos(pi * (s - W) / (S - W))))  for W <= s <= S
  with W = warmup steps, S = total_steps, f = end_lr_factor. ``schedule: constant`` keeps lr fixed
  after the warmup.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  c = OptimConfig.from_config(cfg)
  lr = c.lr
  warm = _warmup_steps(c, total_steps)
  if c.schedule == "constant":
    if warm == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warm, decay_steps=max(total_steps, warm + 1),
      end_value=lr * c.end_lr_factor)


def _decay_mask(params):
  return jax.tree.map(lambda p: len(p.shape) >= 2, params)


def make_optimizer(cfg: Mapping[str, Any] | OptimConfig,
                   total_steps: int) -> optax.GradientTransformation:
  """AdamW + schedule + clipping on trainable parameters, zero updates on frozen ones.

  Args:
    cfg: the ``config.optim`` section (OptimConfig fields: lr, warmup_steps / warmup_ratio,
      schedule, end_lr_factor, b1, b2, eps, weight_decay, grad_clip_norm, frozen), or an
      OptimConfig.
    total_steps: number of optimizer steps of the run (the cosine horizon).

  Returns:
    An optax GradientTransformation whose parameter labels are computed from the params tree.
  """
  c = OptimConfig.from_config(cfg)
  schedule = make_schedule(c, total_steps)
  parts = []
  if c.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
  parts.append(optax.adamw(learning_rate=schedule, b1=c.b1, b2=c.b2, eps=c.eps,
                           weight_decay=c.weight_decay, mask=_decay_mask))
  train_tx = optax.chain(*parts)
  frozen = c.frozen
  return optax.multi_transform(
      {_TRAIN: train_tx, _FROZEN: optax.set_to_zero()},
      lambda params: _param_labels(params, frozen))
