"""Optimizer for the SFT (and later GRPO) stages: AdamW, warmup + cosine decay, clipping, freezing.

The optimizer is one optax transformation built from a config section (``config.optim``)::

  tx = optim.make_optimizer(config.optim, total_steps=1000)

* Learning rate: linear warmup from 0 to ``lr`` over ``warmup_steps`` (or ``warmup_ratio`` of the
  run), then cosine decay to ``lr * end_lr_factor`` at ``total_steps``.
* Gradient clipping by global norm (``grad_clip_norm``; 0 or None disables it). The norm is taken
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

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import optax

TRAIN = "train"
FROZEN = "frozen"


def path_str(path) -> str:
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
      lambda path, _: pattern is None or pattern.search(path_str(path)) is None, params)


def param_labels(params, frozen: str | None) -> Any:
  """Labels for ``optax.multi_transform``: 'train' or 'frozen' per parameter."""
  return jax.tree.map(lambda t: TRAIN if t else FROZEN, trainable_mask(params, frozen))


def count_params(params, frozen: str | None = None) -> dict[str, int]:
  """Number of parameters: total, trainable and frozen."""
  mask = trainable_mask(params, frozen)
  sizes = jax.tree.map(lambda p: math.prod(p.shape), params)
  total = sum(jax.tree.leaves(sizes))
  trained = sum(s for s, m in zip(jax.tree.leaves(sizes), jax.tree.leaves(mask)) if m)
  return {"total": total, "trainable": trained, "frozen": total - trained}


def warmup_steps(cfg: Mapping[str, Any], total_steps: int) -> int:
  """Warmup length: ``cfg.warmup_steps`` if set (>= 0), else ``round(warmup_ratio * total)``."""
  steps = cfg.get("warmup_steps", -1)
  if steps is None or steps < 0:
    steps = int(round(float(cfg.get("warmup_ratio", 0.0)) * total_steps))
  return int(min(steps, total_steps))


def make_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Learning rate schedule: linear warmup 0 -> lr, then cosine decay to lr * end_lr_factor.

  lr(s) = lr * s / W                                                    for s < W
  lr(s) = lr * (f + (1 - f) * 0.5 * (1 + cos(pi * (s - W) / (S - W))))  for W <= s <= S
  with W = warmup steps, S = total_steps, f = end_lr_factor. ``schedule: constant`` keeps lr fixed
  after the warmup.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  lr = float(cfg["lr"])
  warm = warmup_steps(cfg, total_steps)
  kind = cfg.get("schedule", "cosine")
  if kind == "constant":
    if warm == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])
  if kind != "cosine":
    raise ValueError(f"unknown schedule '{kind}' (expected 'cosine' or 'constant')")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warm, decay_steps=max(total_steps, warm + 1),
      end_value=lr * float(cfg.get("end_lr_factor", 0.0)))


def _decay_mask(params):
  return jax.tree.map(lambda p: len(p.shape) >= 2, params)


def make_optimizer(cfg: Mapping[str, Any], total_steps: int) -> optax.GradientTransformation:
  """AdamW + schedule + clipping on trainable parameters, zero updates on frozen ones.

  Args:
    cfg: the ``config.optim`` section: lr, warmup_steps / warmup_ratio, schedule, end_lr_factor,
      b1, b2, eps, weight_decay, grad_clip_norm, frozen (regex of frozen parameter paths).
    total_steps: number of optimizer steps of the run (the cosine horizon).

  Returns:
    An optax GradientTransformation whose parameter labels are computed from the params tree.
  """
  schedule = make_schedule(cfg, total_steps)
  parts = []
  clip = cfg.get("grad_clip_norm", 1.0)
  if clip:
    parts.append(optax.clip_by_global_norm(float(clip)))
  parts.append(optax.adamw(
      learning_rate=schedule, b1=float(cfg.get("b1", 0.9)), b2=float(cfg.get("b2", 0.999)),
      eps=float(cfg.get("eps", 1e-8)), weight_decay=float(cfg.get("weight_decay", 0.0)),
      mask=_decay_mask))
  train_tx = optax.chain(*parts)
  frozen = cfg.get("frozen", None)
  return optax.multi_transform(
      {TRAIN: train_tx, FROZEN: optax.set_to_zero()},
      lambda params: param_labels(params, frozen))
