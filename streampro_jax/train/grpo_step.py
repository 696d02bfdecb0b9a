"""The sharded GRPO update: grpo.py's loss run through train/step.py's generic optimizer step.

  R      = combine(R_fmt, R_turn, R_traj)  (or batch.rewards)
  A      = group_advantages(R)                                    (on the global array)
  ref    = token_logps(forward(ref_params))                       (skipped when beta == 0)
  old    = batch.old_logps (the sampler's)  or  token_logps(forward(params)) ("recompute")
  repeat num_passes times: step.gradient_step(grpo loss)          (one optimizer step per pass)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from streampro_jax import grpo, rewards
from streampro_jax.train import step as step_lib

__all__ = ["build_grpo_update", "make_grpo_step"]


def build_grpo_update(logps_fn: Callable, tx, cfg: grpo.GRPOStepConfig, *, trainable=None,
                      schedule=None) -> Callable:
  """The un-jitted GRPO update ``(state, ref_params, batch) -> (new_state, metrics)``.

  Args:
    logps_fn: (params, batch) -> f32[N, T] (grpo.make_logps_fn).
    tx: optax optimizer (train/optim.make_optimizer; frozen parameters get zero updates).
    cfg: grpo.GRPOStepConfig.
    trainable: pytree of bools (train/optim.trainable_mask); frozen leaves get no gradient.
    schedule: the optimizer's learning-rate schedule (for the "lr" metric).

  The batch (a data.batch.Batch) holds the model inputs, old_logps f32[N, T] (unless old_logps =
  "recompute") and either rewards f32[N] or the three reward components grpo.REWARD_KEYS f32[N].
  ref_params: the frozen reference parameters (same structure as state.params; None when
  beta == 0).

  Metrics (f32 scalars, global over the batch): reward, reward_fmt / reward_turn / reward_traj
  (when given), reward_group_std, zero_variance_groups, advantage_abs_mean; averaged over the
  passes: loss, pg_loss, kl, clip_fraction, ratio_mean, abs_log_ratio, grad_norm; behaviour_gap
  (mean |logp - old_logp| of the first pass, before any update: the rollout-vs-teacher-forced
  numerical gap, 0 with "recompute") and behaviour_corr (their correlation over the tokens,
  grpo.agreement_from_sums; 1 with "recompute"), loss_first_pass, lr (of the first pass),
  policy_tokens, tokens (real tokens), rows.
  """
  loss_fn = grpo.make_grpo_loss_fn(logps_fn, cfg)

  def batch_logps(params, model_batch, mesh):
    """logps_fn over the whole batch one micro-batch at a time (cfg.num_microbatches, the rows
    of step.split_microbatches), back in row order: the reference (and recomputed behaviour)
    forward then holds one micro-batch's activations, as the update does, instead of the whole
    batch's (the 3B GRPO update on 16 v5p chips: 46 GiB of temporaries per chip before)."""
    m = cfg.num_microbatches
    if m == 1:
      return logps_fn(params, model_batch)
    split = step_lib.split_microbatches(model_batch, m, mesh)
    out = jax.lax.map(lambda mb: logps_fn(params, mb), split)  # [m, N / m, T]
    return jnp.swapaxes(out, 0, 1).reshape((-1,) + out.shape[2:])  # row r * m + i

  def update(state, ref_params, batch):
    mesh = step_lib.current_mesh()
    n = batch.num_rows
    if n % cfg.group_size:
      raise ValueError(f"{n} rollouts do not split into groups of {cfg.group_size}")
    metrics = {}
    if batch.rewards is not None:
      r = batch.rewards.astype(jnp.float32)
    else:
      missing = [k for k in grpo.REWARD_KEYS if getattr(batch, k) is None]
      if missing:
        raise ValueError(f"the batch has neither 'rewards' nor the reward components {missing}")
      r = rewards.combine(batch.reward_fmt, batch.reward_turn, batch.reward_traj,
                          cfg.reward_weights)
      for k in grpo.REWARD_KEYS:
        metrics[k] = jnp.mean(getattr(batch, k).astype(jnp.float32))
    adv = step_lib.seq_sharded(
        grpo.group_advantages(r, cfg.group_size, eps=cfg.adv_eps, ddof=cfg.adv_ddof), mesh)
    metrics.update(grpo.group_statistics(r, cfg.group_size))
    metrics["advantage_abs_mean"] = jnp.mean(jnp.abs(adv))

    model_batch = batch.model_inputs()
    sg = jax.lax.stop_gradient
    if cfg.old_logps == "recompute":
      old_logps = step_lib.seq_sharded(sg(batch_logps(state.params, model_batch, mesh)), mesh)
    else:
      old_logps = batch.old_logps.astype(jnp.float32)
    ref_logps = None
    if cfg.beta != 0.0:
      if ref_params is None:
        raise ValueError(f"ref_params is None but the KL coefficient beta is {cfg.beta}")
      ref_logps = step_lib.seq_sharded(sg(batch_logps(ref_params, model_batch, mesh)), mesh)
    train_batch = model_batch.replace(advantages=adv, old_logps=old_logps, ref_logps=ref_logps)

    def one_pass(st):
      new, m, count, sums = step_lib.gradient_step(
          loss_fn, tx, st, train_batch, None, num_microbatches=cfg.num_microbatches,
          trainable=trainable, mesh=mesh, schedule=schedule)
      m.update(grpo.finish_pass_metrics(sums, count))
      return new, {k: jnp.asarray(v, jnp.float32) for k, v in m.items()}

    if cfg.num_passes == 1:
      state, per_pass = one_pass(state)
      per_pass = jax.tree.map(lambda x: x[None], per_pass)
    else:
      state, per_pass = jax.lax.scan(lambda st, _: one_pass(st), state, None,
                                     length=cfg.num_passes)
    for k, v in per_pass.items():
      metrics[k] = v[0] if k in ("lr", "policy_tokens") else jnp.mean(v)
    metrics["behaviour_gap"] = per_pass["abs_log_ratio"][0]
    metrics["behaviour_corr"] = per_pass["logp_corr"][0]
    metrics["loss_first_pass"] = per_pass["loss"][0]
    metrics["tokens"] = jnp.sum(batch.attention_mask.astype(jnp.float32))
    metrics["rows"] = jnp.float32(n)
    return state, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  return update


def make_grpo_step(logps_fn: Callable, tx, cfg: grpo.GRPOStepConfig, *, state_shardings,
                   batch_sharding, mesh, trainable=None, schedule=None, rules=None,
                   donate: bool = True) -> Callable:
  """Jitted GRPO step ``(state, ref_params, batch) -> (state, metrics)``.

  jax.jit with explicit in/out shardings (step.jit_update_step): state (donated) and ref_params
  follow ``state_shardings`` (ref_params = state_shardings.params; pass None when beta == 0),
  the batch follows ``batch_sharding`` (``Batch.shardings`` of an example batch), metrics are
  replicated scalars.
  Traced under the mesh and logical-axis rules.
  """
  update = build_grpo_update(logps_fn, tx, cfg, trainable=trainable, schedule=schedule)
  ref_sharding = state_shardings.params if cfg.beta != 0.0 else None
  jitted_step = step_lib.jit_update_step(update, state_shardings, batch_sharding, mesh,
                                         rules=rules, donate=donate,
                                         extra_in_shardings=(ref_sharding,))

  def step(state, ref_params, batch):
    return jitted_step(state, None if cfg.beta == 0.0 else ref_params, batch)

  step.jitted = jitted_step.jitted
  return step
