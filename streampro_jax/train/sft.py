"""The SFT recipe: the CB-Stream loss (or CE / focal) in sum-and-count form, run through the
generic sharded update (train/step.py) by the one training loop (train/loop.py).

* :func:`make_sft_loss_fn` is the SFT loss: forward the model (bfloat16 compute with float32 master
  weights is the model's ``dtype``), then the loss named by ``config.loss.kind`` ("cb_stream",
  "ce" or "focal", from ``streampro_jax.losses``), optionally chunked over the vocabulary from the
  final hidden states, plus metric sums (decision accuracy, silence / response recall).
* :func:`sft_context` is the context computed once on the whole global batch (the CB-Stream class
  counts n_k of the "global" count scope).
* :func:`train` builds the run (train/run.build_run with the SFT pipeline, then
  Run.attach_state) and hands its step to train/loop.train_loop.

Metrics returned by the step (float32 scalars, global over the batch): loss, grad_norm, lr,
token_accuracy, decision_accuracy, silence_recall, response_recall, n_silence, n_response,
supervised_tokens, tokens (real, non-pad tokens: host-side tokens/s = tokens / step time).

"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from streampro_jax import losses, models, parallel
from streampro_jax.data import tokenizer as tok_lib
from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import config_check, loop, optim
from streampro_jax.train import run as run_lib
from streampro_jax.train import metrics as metrics_lib
from streampro_jax.train import state as state_lib
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import step as step_lib

__all__ = ["make_sft_loss_fn", "make_sft_step", "make_sft_update", "sft_context", "train"]

# ----------------------------------------------------------------------------------------------
# The SFT loss.
# ----------------------------------------------------------------------------------------------


def _weighted_nll(nll, labels, loss_mask, **kwargs):
  """losses' shared weighting of per-token nll."""
  return losses.weighted_nll_sum_and_count(nll, labels, loss_mask, **kwargs)


def make_sft_loss_fn(forward_fn: Callable[..., jax.Array], loss_cfg: Mapping[str, Any],
                     decision_token_ids, *, unembed_fn: Callable[[Any], jax.Array] | None = None
                     ) -> step_lib.LossFn:
  """SFT loss in sum-and-count form.

  Args:
    forward_fn: (params, batch, return_hidden: bool) -> logits f32[B, T, V] (return_hidden False)
      or final hidden states [B, T, D] (return_hidden True).
    loss_cfg: ``config.loss`` (config_check.LossConfig fields, or a config_check.LossConfig):
      kind ("cb_stream" | "ce" | "focal"), beta, text_weight, gamma,
      chunk_size (0: plain loss on full logits; > 0: chunked vocabulary from hidden states),
      count_scope (config_check._COUNT_SCOPES: where the decision-class counts n_k of CB-Stream /
      focal are taken: "global" the whole global batch, "microbatch" each micro-batch, "device" each
      device's rows of each micro-batch).
    decision_token_ids: (silence_id, response_id).
    unembed_fn: params -> unembedding [D, V]; needed when chunk_size > 0.

  Returns:
    loss_fn(params, batch, class_counts) -> (sum_i mask_i w_i nll_i, (N, metric sums)); the
    context is the global decision-class counts f32[2] (:func:`sft_context`; None for the
    "microbatch" and "device" scopes, whose counts are taken inside loss_fn).
  """
  cfg = config_check.LossConfig.from_config(loss_cfg)
  kind, scope, chunk = cfg.kind, cfg.count_scope, cfg.chunk_size
  if chunk and unembed_fn is None:
    raise ValueError(f"loss.chunk_size = {chunk} needs an unembed_fn (params -> [D, V])")
  ids = tuple(int(i) for i in decision_token_ids)
  weights = dict(kind=kind, decision_token_ids=ids, beta=cfg.beta, text_weight=cfg.text_weight,
                 gamma=cfg.gamma)

  def loss_fn(params, batch, class_counts):
    labels, mask = batch.labels, batch.loss_mask
    if chunk:
      hidden = forward_fn(params, batch, True)
      nll, predictions = losses.chunked_token_stats(hidden, unembed_fn(params), labels,
                                                    chunk_size=chunk, loss_mask=mask)
    else:
      logits = forward_fn(params, batch, False)
      nll = losses.token_nll(logits, labels, mask)
      predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if kind != "ce" and scope == "device":
      class_counts = losses.grouped_class_counts(labels, mask, ids,
                                                 num_groups=step_lib.data_shards(step_lib.current_mesh()))
    elif kind != "ce" and scope == "microbatch":
      class_counts = losses.decision_class_counts(labels, mask, ids)
    loss_sum, count = _weighted_nll(nll, labels, mask, class_counts=class_counts, **weights)
    sums = losses.metrics_sums(jax.lax.stop_gradient(predictions), labels, mask,
                               decision_token_ids=ids)
    return loss_sum, (count, sums)

  return loss_fn


def _count_scope_of(loss_cfg: Mapping[str, Any] | config_check.LossConfig) -> str:
  """The count scope of a ``config.loss`` section (config_check.LossConfig.count_scope)."""
  return config_check.LossConfig.from_config(loss_cfg).count_scope


def sft_context(decision_token_ids, count_scope: str = "global"):
  """context_fn: global decision-class counts n_k over the whole (sharded) batch ("global"
  scope); None for the other scopes (the loss counts per micro-batch or per device)."""
  ids = tuple(int(i) for i in decision_token_ids)
  if count_scope != "global":
    return lambda batch: None
  return lambda batch: losses.decision_class_counts(batch.labels, batch.loss_mask, ids)


def make_sft_update(forward_fn, loss_cfg, decision_token_ids, tx, *, unembed_fn=None,
                    trainable=None, num_microbatches: int = 1, schedule=None):
  """The un-jitted SFT update (state, batch) -> (state, metrics); see step.build_update_step."""
  return step_lib.build_update_step(
      make_sft_loss_fn(forward_fn, loss_cfg, decision_token_ids, unembed_fn=unembed_fn), tx,
      context_fn=sft_context(decision_token_ids, _count_scope_of(loss_cfg)),
      metrics_fn=losses.metrics_from_sums,
      trainable=trainable, num_microbatches=num_microbatches, schedule=schedule)


def make_sft_step(forward_fn, loss_cfg, decision_token_ids, tx, *, state_shardings,
                  batch_sharding, mesh: Mesh, unembed_fn=None, trainable=None,
                  num_microbatches: int = 1, schedule=None, rules=None, donate: bool = True):
  """Jitted SFT step (state, batch) -> (state, metrics), state donated."""
  update = make_sft_update(forward_fn, loss_cfg, decision_token_ids, tx, unembed_fn=unembed_fn,
                           trainable=trainable, num_microbatches=num_microbatches,
                           schedule=schedule)
  return step_lib.jit_update_step(update, state_shardings, batch_sharding, mesh, rules=rules,
                         donate=donate)


# ----------------------------------------------------------------------------------------------
# The run (launch/train_sft.py calls this).
# ----------------------------------------------------------------------------------------------

def train(config, workdir: str, *, allow_config_change: bool = False):
  """Runs (or resumes) SFT as configured; returns the final TrainState.

  The run is built by train/run.build_run (the config tree config_check.build(config, "sft"),
  strict; mesh, tokenizer, model config, the SFT pipeline) and completed by Run.attach_state
  (optimizer, shardings, config.json, checkpointer, state). Resumes from the newest complete
  checkpoint in ``<workdir>/checkpoints`` when there is one (params, optimizer state, step and
  data iterator position), so a killed run continues exactly; else the state is the HF
  checkpoint of ``model.hf_checkpoint`` or a random init. Raises config_check.ConfigError for a
  key no field declares, or when ``<workdir>/config.json`` holds another config (a different run;
  unless `allow_config_change`); config.json is written once the tokenizer, model config, data
  and shardings are built (a run that stops before leaves none).
  """

  def data_fn(r: run_lib.Run) -> run_lib.Data:
    data_iter, pipe = setup_lib.make_data(r.tree.data, r.tokenizer, r.model_config)
    return run_lib.Data(data_iter, pipe.num_trajectories, extra=pipe)

  run = run_lib.build_run(config, workdir, "sft", data_fn=data_fn,
                          allow_config_change=allow_config_change)
  tree, mesh, rules, pipe = run.tree, run.mesh, run.rules, run.data.extra
  gb, micro = tree.global_batch_size, tree.num_microbatches
  dp = step_lib.data_shards(mesh)
  if gb % (micro * dp):
    raise ValueError(f"global batch {gb} is not divisible by {micro} micro-batches x {dp} "
                     f"data-parallel shards")
  logging.info("batch: %s; %d micro-batch(es) of %d rows (%d per data-parallel shard); "
               "seq_len %d; %d steps", parallel.describe_batch(gb, mesh), micro, gb // micro,
               gb // micro // dp, pipe.cfg.seq_len, run.total_steps)

  def fresh_state(r: run_lib.Run):
    if tree.model.hf_checkpoint:
      return setup_lib.load_hf_state(r.tree.model, r.model_config, r.tokenizer, r.tx,
                                     r.shardings, r.mesh)
    state, _ = state_lib.create_train_state(r.init_fn(), r.tx, r.mesh, r.rng, rules=r.rules)
    return state

  run.attach_state(optimizer_steps=run.total_steps, fresh_state=fresh_state)
  if run.resumed_from is not None:
    logging.info("resumed from step %d%s", run.resumed_from,
                 ckpt_lib.skipped_note(run.checkpointer))

  module = models.build(run.model_config)
  grid = np.tile(np.asarray(pipe.video_grid_thw).reshape(1, 3), (pipe.cfg.max_turns, 1))
  run.step = make_sft_step(
      setup_lib.make_forward(module, grid), tree.loss,
      tok_lib.decision_token_ids(run.tokenizer), run.tx, state_shardings=run.shardings,
      batch_sharding=pipe.abstract_batch().model_inputs().shardings(mesh), mesh=mesh,
      unembed_fn=setup_lib.make_unembed(run.model_config),
      trainable=optim.trainable_mask(run.abstract_params, tree.optim.frozen),
      num_microbatches=micro, schedule=run.schedule, rules=rules)
  data_iter = run.data.iterator

  def step_fn(state, step):
    del step
    return run.step(state, next(data_iter).model_inputs().shard(mesh))

  start = int(jax.device_get(run.state.step))
  writer = metrics_lib.create_writer(workdir, total_steps=run.total_steps,
                                     enabled=jax.process_index() == 0,
                                     tensorboard=tree.tensorboard, start_step=start)
  state, _ = loop.train_loop(
      run.state, step_fn, start_step=start, total_steps=run.total_steps,
      checkpointer=run.checkpointer, data_iterator=data_iter, writer=writer,
      log_every=tree.log_every_steps, kill_after=tree.debug_kill_after_step,
      kill_mid_save=tree.debug_kill_mid_save)
  logging.info("data pipeline: %s", data_iter.stats.as_dict())
  return state
