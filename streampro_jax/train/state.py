"""Train state: born sharded, as big_vision builds it.

  abstract = jax.eval_shape(init_params)            # boxed nn.Partitioned ShapeDtypeStructs
  shardings = parallel.logical_shardings(...)       # NamedSharding per parameter
  opt-state shardings follow their parameter (optax.tree_map_params), counters replicated
  state = jax.jit(init, out_shardings=shardings)()  # never materialised whole on one device

Parameters are float32 master weights (the model computes in its own ``dtype``, e.g. bfloat16).
A later stage (GRPO) reuses :class:`TrainState`, :func:`state_shardings` and
:func:`create_train_state` with its own optimizer; :func:`state_from_params` starts from existing
(e.g. SFT or Hugging Face) parameters instead of a random init.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from streampro_jax import parallel

__all__ = ["TrainState", "abstract_state", "create_train_state", "sharding_context",
           "state_from_params", "state_shardings"]


@flax.struct.dataclass
class TrainState:
  """Everything a step updates. ``step`` counts optimizer updates (int32 scalar)."""
  step: jax.Array
  params: Any
  opt_state: Any


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules=None):
  """Mesh + logical-axis rules in scope while tracing (for ``nn.with_logical_constraint``)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(
      tuple(parallel.DEFAULT_RULES if rules is None else rules)):
    yield


def _replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _param_shardings(boxed_abstract_params, mesh: Mesh, rules=None):
  """NamedShardings (unboxed structure) for a boxed abstract parameter tree."""
  return parallel.logical_shardings(boxed_abstract_params, mesh, rules=rules)


def _opt_state_shardings(tx: optax.GradientTransformation, abstract_params, params_sharding,
                         mesh: Mesh):
  """Optimizer-state shardings: each per-parameter leaf (Adam mu, nu) follows its parameter.

  A leaf of the optimizer state follows the parameter whose key path is a suffix of the leaf's key
  path and whose shape equals the leaf's shape (``mu/visual/kernel`` follows ``visual/kernel``);
  every other leaf (step counts, masked placeholders) is replicated.
  """
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  by_path = {}
  for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                    jax.tree.leaves(params_sharding)):
    by_path[tuple(path)] = (tuple(leaf.shape), sharding)

  def one(path, leaf):
    path = tuple(path)
    for start in range(len(path)):
      hit = by_path.get(path[start:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return _replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, abstract_opt)


def state_shardings(tx: optax.GradientTransformation, boxed_abstract_params, mesh: Mesh,
                    rules=None) -> TrainState:
  """TrainState of NamedShardings for boxed abstract params (from ``jax.eval_shape``)."""
  p_sh = _param_shardings(boxed_abstract_params, mesh, rules)
  abstract_params = nn.unbox(boxed_abstract_params)
  return TrainState(step=_replicated(mesh), params=p_sh,
                    opt_state=_opt_state_shardings(tx, abstract_params, p_sh, mesh))


def abstract_state(tx: optax.GradientTransformation, boxed_abstract_params) -> TrainState:
  """TrainState of ShapeDtypeStructs (no memory used)."""
  def build(params):
    params = nn.unbox(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return jax.eval_shape(build, boxed_abstract_params)


def create_train_state(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                       mesh: Mesh, rng: jax.Array, *, rules=None,
                       param_dtype=jnp.float32) -> tuple[TrainState, TrainState]:
  """Initialises a TrainState directly sharded over ``mesh``.

  Args:
    init_params: rng -> boxed parameter tree (``model.init(rng, ...)["params"]``).
    tx: the optimizer.
    mesh: device mesh.
    rng: PRNG key.
    rules: logical-axis rules (default parallel.DEFAULT_RULES).
    param_dtype: dtype of the master weights (float32).

  Returns:
    (state, shardings): the sharded TrainState and its TrainState of NamedShardings.
  """
  def init(rng):
    params = nn.unbox(init_params(rng))
    params = jax.tree.map(lambda p: p.astype(param_dtype), params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  boxed = jax.eval_shape(init_params, rng)
  shardings = state_shardings(tx, boxed, mesh, rules)
  with sharding_context(mesh, rules):
    state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


def _put_params(params_host, shardings):
  """Places host (NumPy) parameters onto devices with the given shardings.

  Every process must hold the full host arrays (as after reading a checkpoint file); each device
  receives only its shard (``jax.make_array_from_callback``), so nothing is replicated first.
  """
  def one(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(one, params_host, shardings)


def state_from_params(params, tx: optax.GradientTransformation, shardings: TrainState,
                      mesh: Mesh) -> TrainState:
  """A fresh TrainState (step 0, new optimizer state) around existing parameters.

  Args:
    params: parameter tree, host NumPy arrays or jax arrays (they are resharded to
      ``shardings.params``).
    tx: the optimizer.
    shardings: TrainState of NamedShardings (from :func:`state_shardings`).
    mesh: device mesh.
  """
  if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params)):
    params = _put_params(params, shardings.params)
  else:
    params = jax.device_put(params, shardings.params)

  def init(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  with sharding_context(mesh):
    return jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings)(params)
