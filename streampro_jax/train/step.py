"""The generic sharded update step, shared by SFT and GRPO (big_vision / MaxText style).

The batch is a data/batch.Batch (sharded by ``Batch.shard``, its shardings ``Batch.shardings``).

* :func:`accumulate_gradients` takes a *sum-and-count* loss
  ``loss_fn(params, micro_batch, context) -> (loss_sum, (count, metric_sums))``. With
  ``num_microbatches = m > 1`` the global batch is split into m micro-batches and a ``lax.scan``
  sums loss sums, counts, metric sums and gradients of the sums; the gradient is divided by the
  total count once, so accumulation equals the big batch exactly (up to float summation order).
  Frozen parameters enter the loss through ``stop_gradient`` (no backward pass through the
  vision tower) and the optimizer gives them zero updates.
* :func:`gradient_step` is one optimizer step of such a loss (gradients, ``tx.update``, the loss,
  grad_norm and lr metrics); :func:`build_update_step` wraps it into ``(state, batch) ->
  (state, metrics)`` with a ``context_fn(batch)`` evaluated once on the whole global batch (e.g.
  the CB-Stream class counts n_k); the GRPO update (train/grpo_step.py) runs it num_passes times.
* :func:`jit_update_step` jits an update with explicit in/out shardings, the state donated, traced
  under the mesh and logical-axis rules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from streampro_jax.data import batch as batch_lib
from streampro_jax.train import state as state_lib

__all__ = ["LossFn", "accumulate_gradients", "build_update_step", "current_mesh", "data_shards",
           "gradient_step", "jit_update_step", "seq_sharded", "split_microbatches"]

LossFn = Callable[[Any, batch_lib.Batch, Any], tuple[jax.Array, tuple[jax.Array, dict]]]


# ----------------------------------------------------------------------------------------------
# Batch layout helpers.
# ----------------------------------------------------------------------------------------------


def split_microbatches(batch: batch_lib.Batch, num: int, mesh=None) -> batch_lib.Batch:
  """[B, ...] -> [num, B / num, ...] per field (position_ids [3, B, T] -> [num, 3, B / num, T]);
  micro-batch i holds rows i, i + num, i + 2 num, ...

  Strided rows keep every micro-batch spread over all data-parallel shards (with B sharded in
  contiguous blocks, each shard holds B / (num * shards) rows of every micro-batch).
  """
  def split(path, x, dim):
    b = x.shape[dim]
    if b % num:
      raise ValueError(f"batch field '{jax.tree_util.keystr(path, simple=True)}' has batch size "
                       f"{b}, not divisible by {num} micro-batches")
    shape = x.shape[:dim] + (b // num, num) + x.shape[dim + 1:]
    y = jnp.moveaxis(x.reshape(shape), dim + 1, 0)  # [num, ..., B / num, ...]
    if mesh is not None:
      spec = [None] * y.ndim
      spec[dim + 1] = ("data", "fsdp")
      y = jax.lax.with_sharding_constraint(y, PartitionSpec(*spec))
    return y

  return jax.tree_util.tree_map_with_path(split, batch, batch.batch_dims())


def current_mesh():
  """The mesh in scope while tracing (state.sharding_context), or None outside one."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def data_shards(mesh) -> int:
  """Number of batch shards of a mesh (product of its 'data' and 'fsdp' axes; 1 without one)."""
  if mesh is None:
    return 1
  shape = dict(mesh.shape)
  return int(shape.get("data", 1)) * int(shape.get("fsdp", 1))


def seq_sharded(x: jax.Array, mesh) -> jax.Array:
  """Constrains a per-row array [N, ...] to the batch sharding (rows over 'data', 'fsdp')."""
  if mesh is None:
    return x
  spec = PartitionSpec(("data", "fsdp"), *([None] * (x.ndim - 1)))
  return jax.lax.with_sharding_constraint(x, spec)


# ----------------------------------------------------------------------------------------------
# Gradients and one optimizer step.
# ----------------------------------------------------------------------------------------------


def _freeze(params, mask):
  """Frozen leaves (mask False) enter the loss through stop_gradient."""
  if mask is None:
    return params
  return jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)


def accumulate_gradients(loss_fn: LossFn, params, batch, context, *, num_microbatches: int = 1,
                         trainable=None, mesh=None):
  """Gradient of sum-and-count losses over micro-batches.

  total_sum   = sum_m loss_sum_m,   total_count = sum_m count_m
  loss        = total_sum / max(total_count, 1)
  grads       = (sum_m d loss_sum_m / d params) / max(total_count, 1)

  Args:
    loss_fn: (params, micro_batch, context) -> (loss_sum, (count, metric_sums dict)).
    params: parameter pytree.
    batch: the global batch (a Batch of arrays).
    context: anything computed once on the whole batch (passed to every micro-batch).
    num_microbatches: m (the batch size must be divisible by m).
    trainable: optional pytree of bools; False leaves get zero gradients (stop_gradient).
    mesh: when given (the mesh in scope, see state.sharding_context), micro-batches are
      constrained to stay sharded over ('data', 'fsdp').

  Returns:
    (loss, grads, count, metric_sums).
  """
  def grad_fn(p, mb):
    def f(p):
      loss_sum, (count, sums) = loss_fn(_freeze(p, trainable), mb, context)
      return loss_sum, (count, sums)
    (loss_sum, (count, sums)), grads = jax.value_and_grad(f, has_aux=True)(p)
    return loss_sum, count, sums, grads

  if num_microbatches == 1:
    loss_sum, count, sums, grads = grad_fn(params, batch)
  else:
    split = split_microbatches(batch, num_microbatches, mesh)

    def body(carry, mb):
      loss_sum, count, sums, grads = grad_fn(params, mb)
      return jax.tree.map(jnp.add, carry, (loss_sum, count, sums, grads)), None

    first = jax.tree.map(lambda x: x[0], split)
    shapes = jax.eval_shape(grad_fn, params, first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    (loss_sum, count, sums, grads), _ = jax.lax.scan(body, zeros, split)
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
  return loss_sum / denom, grads, count, sums


def gradient_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                  state: state_lib.TrainState, batch, context, *, num_microbatches: int = 1,
                  trainable=None, mesh=None, schedule: optax.Schedule | None = None):
  """One optimizer step of a sum-and-count loss: new params = params + tx.update(grads).

  Returns:
    (new_state (step + 1), metrics {loss, grad_norm, lr (when ``schedule`` is given)},
    count (the loss denominator), metric_sums).
  """
  loss, grads, count, sums = accumulate_gradients(
      loss_fn, state.params, batch, context, num_microbatches=num_microbatches,
      trainable=trainable, mesh=mesh)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  if schedule is not None:
    metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
  new = state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state)
  return new, metrics, count, sums


def build_update_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                      context_fn: Callable[[batch_lib.Batch], Any] = lambda batch: None,
                      metrics_fn: Callable[[dict], dict] = lambda sums: sums,
                      trainable=None, num_microbatches: int = 1,
                      schedule: optax.Schedule | None = None):
  """The un-jitted update ``(state, batch) -> (new_state, metrics)``.

  new params = params + tx.update(grads) (frozen leaves: zero update); step += 1.
  metrics = metrics_fn(metric_sums) + loss, grad_norm, lr (when ``schedule`` is given),
  supervised_tokens (the loss count) and tokens (sum of attention_mask).
  """
  def update(state: state_lib.TrainState, batch):
    new, step_metrics, count, sums = gradient_step(
        loss_fn, tx, state, batch, context_fn(batch), num_microbatches=num_microbatches,
        trainable=trainable, mesh=current_mesh(), schedule=schedule)
    metrics = dict(metrics_fn(sums))
    metrics.update(step_metrics)
    metrics["supervised_tokens"] = count
    metrics["tokens"] = jnp.sum(batch.attention_mask.astype(jnp.float32))
    return new, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  return update


def jit_update_step(update, state_shardings, batch_sharding, mesh: Mesh, *, rules=None,
                    donate: bool = True, extra_in_shardings: tuple = ()):
  """``jax.jit`` with explicit in/out shardings and the state donated; traced under the mesh.

  Args:
    update: (state, *extra, batch) -> (state, metrics).
    state_shardings, batch_sharding: shardings of the state and the batch.
    mesh: the device mesh; rules: logical-axis rules (parallel.DEFAULT_RULES when None).
    donate: donate the state.
    extra_in_shardings: shardings of arguments between the state and the batch (GRPO passes the
      reference params).

  Returns a function (state, *extra, batch) -> (state, metrics); metrics are replicated scalars.
  """
  jitted = jax.jit(
      update, in_shardings=(state_shardings, *extra_in_shardings, batch_sharding),
      out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
      donate_argnums=(0,) if donate else ())

  @functools.wraps(update)
  def step(state, *args):
    with state_lib.sharding_context(mesh, rules):
      return jitted(state, *args)

  step.jitted = jitted
  return step
