"""The small train state of the checkpoint tests (tests/test_train_checkpoint.py and its
two-process worker): a two-matrix Flax model with logical axis names, AdamW with a frozen part, and
one optimizer step, so that parameters and Adam moments are all non-trivial."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from streampro_jax.train import optim
from streampro_jax.train import state as state_lib


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                     ("embed", "mlp")), (16, 32))
    v = self.param("visual", nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("vision_patch", "vision_embed")), (4, 16))
    return x @ v @ w


def init(rng):
  return Tiny().init(rng, jnp.ones((2, 4)))["params"]


TX = optim.make_optimizer(ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0,
                                                         frozen="^visual")), total_steps=10)


def stepped_state(mesh):
  """(state, shardings): the state born sharded over mesh, after one AdamW step on the gradient
  sin(params)."""
  state, shardings = state_lib.create_train_state(init, TX, mesh, jax.random.key(0))

  def step(s):
    grads = jax.tree.map(jnp.sin, s.params)
    updates, opt_state = TX.update(grads, s.opt_state, s.params)
    return s.replace(step=s.step + 1, params=optax.apply_updates(s.params, updates),
                     opt_state=opt_state)

  return jax.jit(step, out_shardings=shardings)(state), shardings


def abstract_and_shardings(mesh):
  """(abstract TrainState, TrainState of NamedShardings on mesh): a restore target."""
  boxed = jax.eval_shape(init, jax.random.key(0))
  return state_lib.abstract_state(TX, boxed), state_lib.state_shardings(TX, boxed, mesh)
