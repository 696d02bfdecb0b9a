"""The SFT step: one donated, jitted update with explicit shardings (big_vision style).

Two layers:

* :func:`build_update_step` is generic (the GRPO trainer reuses it). It takes a *sum-and-count*
  loss ``loss_fn(params, micro_batch, context) -> (loss_sum, (count, metric_sums))`` and a
  ``context_fn(batch) -> context`` evaluated once on the whole global batch (e.g. the CB-Stream
  class counts n_k). With ``num_microbatches = m > 1`` the global batch is split into m
  micro-batches and a ``lax.scan`` sums loss sums, counts, metric sums and gradients of the sums;
  the gradient is divided by the total count once, so accumulation equals the big batch exactly
  (up to float summation order). Frozen parameters enter the loss through ``stop_gradient`` (no
  backward pass through the vision tower) and the optimizer gives them zero updates.

* :func:`make_sft_loss_fn` is the SFT loss: forward the model (bfloat16 compute with float32 master
  weights is the model's ``dtype``), then the loss named by ``config.loss.kind`` ("cb_stream",
  "ce" or "focal", from ``streampro_jax.losses``), optionally chunked over the vocabulary from the
  final hidden states, plus metric sums (decision accuracy, silence / response recall).

Metrics returned by the step (float32 scalars, global over the batch): loss, grad_norm, lr,
token_accuracy, decision_accuracy, silence_recall, response_recall, n_silence, n_response,
supervised_tokens, tokens (real, non-pad tokens: host-side tokens/s = tokens / step time).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from streampro_jax import losses, parallel
from streampro_jax.train import state as state_lib

# Batch keys whose batch dimension is not 0 (position_ids is [3, B, T]).
BATCH_DIMS = {"position_ids": 1}
# Batch keys without a batch dimension (static per config, replicated, never split).
UNBATCHED_KEYS = ("video_grid_thw", "second_per_grid_ts")

LossFn = Callable[[Any, Mapping[str, jax.Array], Any], tuple[jax.Array, tuple[jax.Array, dict]]]


# ----------------------------------------------------------------------------------------------
# Batch layout helpers.
# ----------------------------------------------------------------------------------------------


def batch_dim(key: str) -> int | None:
  """Batch dimension of a batch entry (None for unbatched entries)."""
  if key in UNBATCHED_KEYS:
    return None
  return BATCH_DIMS.get(key, 0)


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
  """NamedShardings of a batch dict: batch dimension over ('data', 'fsdp'), the rest replicated."""
  out = {}
  for key, x in batch.items():
    dim = batch_dim(key)
    if dim is None:
      out[key] = NamedSharding(mesh, PartitionSpec())
    else:
      out[key] = parallel.batch_sharding(mesh, len(x.shape), batch_dim=dim)
  return out


def global_batch_size(batch: Mapping[str, Any]) -> int:
  return int(batch["input_ids"].shape[0])


def split_microbatches(batch: Mapping[str, jax.Array], num: int, mesh=None):
  """[B, ...] -> [num, B / num, ...] per entry; micro-batch i holds rows i, i + num, i + 2 num, ...

  Strided rows keep every micro-batch spread over all data-parallel shards (with B sharded in
  contiguous blocks, each shard holds B / (num * shards) rows of every micro-batch). Unbatched
  entries are passed through unchanged (returned in a second dict).
  """
  split, static = {}, {}
  for key, x in batch.items():
    dim = batch_dim(key)
    if dim is None:
      static[key] = x
      continue
    b = x.shape[dim]
    if b % num:
      raise ValueError(f"batch entry '{key}' has batch size {b}, not divisible by "
                       f"{num} micro-batches")
    shape = x.shape[:dim] + (b // num, num) + x.shape[dim + 1:]
    y = jnp.moveaxis(x.reshape(shape), dim + 1, 0)  # [num, ..., B / num, ...]
    if mesh is not None:
      spec = [None] * y.ndim
      spec[dim + 1] = ("data", "fsdp")
      y = jax.lax.with_sharding_constraint(y, PartitionSpec(*spec))
    split[key] = y
  return split, static


# ----------------------------------------------------------------------------------------------
# Generic update step.
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
    batch: dict of global batch arrays.
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
    split, static = split_microbatches(batch, num_microbatches, mesh)

    def body(carry, mb):
      mb = {**mb, **static}
      loss_sum, count, sums, grads = grad_fn(params, mb)
      return jax.tree.map(jnp.add, carry, (loss_sum, count, sums, grads)), None

    first = jax.tree.map(lambda x: x[0], split)
    shapes = jax.eval_shape(grad_fn, params, {**first, **static})
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    (loss_sum, count, sums, grads), _ = jax.lax.scan(body, zeros, split)
  denom = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
  return loss_sum / denom, grads, count, sums


def build_update_step(loss_fn: LossFn, tx: optax.GradientTransformation, *,
                      context_fn: Callable[[Mapping[str, jax.Array]], Any] = lambda batch: None,
                      metrics_fn: Callable[[dict], dict] = lambda sums: sums,
                      trainable=None, num_microbatches: int = 1,
                      schedule: optax.Schedule | None = None):
  """The un-jitted update ``(state, batch) -> (new_state, metrics)``.

  new params = params + tx.update(grads) (frozen leaves: zero update); step += 1.
  metrics = metrics_fn(metric_sums) + loss, grad_norm, lr (when ``schedule`` is given),
  supervised_tokens (the loss count) and tokens (sum of attention_mask, when present).
  """
  def update(state: state_lib.TrainState, batch):
    mesh = _current_mesh()
    context = context_fn(batch)
    loss, grads, count, sums = accumulate_gradients(
        loss_fn, state.params, batch, context, num_microbatches=num_microbatches,
        trainable=trainable, mesh=mesh)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics_fn(sums))
    metrics["loss"] = loss
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["supervised_tokens"] = count
    if "attention_mask" in batch:
      metrics["tokens"] = jnp.sum(batch["attention_mask"].astype(jnp.float32))
    if schedule is not None:
      metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return update


def _current_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def jit_update_step(update, state_shardings, batch_sharding, mesh: Mesh, *, rules=None,
                    donate: bool = True):
  """``jax.jit`` with explicit in/out shardings and the state donated; traced under the mesh.

  Returns a function (state, batch) -> (state, metrics); metrics are replicated scalars.
  """
  jitted = jax.jit(
      update, in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
      donate_argnums=(0,) if donate else ())

  @functools.wraps(update)
  def step(state, batch):
    with state_lib.sharding_context(mesh, rules):
      return jitted(state, batch)

  step.jitted = jitted
  return step


# ----------------------------------------------------------------------------------------------
# The SFT loss.
# ----------------------------------------------------------------------------------------------


def _weighted_nll(nll, labels, loss_mask, **kwargs):
  """losses' shared weighting of per-token nll."""
  return losses.weighted_nll_sum_and_count(nll, labels, loss_mask, **kwargs)


def make_sft_loss_fn(forward_fn: Callable[..., jax.Array], loss_cfg: Mapping[str, Any],
                     decision_token_ids, *, unembed_fn: Callable[[Any], jax.Array] | None = None
                     ) -> LossFn:
  """SFT loss in sum-and-count form.

  Args:
    forward_fn: (params, batch, return_hidden: bool) -> logits f32[B, T, V] (return_hidden False)
      or final hidden states [B, T, D] (return_hidden True).
    loss_cfg: ``config.loss``: kind ("cb_stream" | "ce" | "focal"), beta, text_weight, gamma,
      chunk_size (0: plain loss on full logits; > 0: chunked vocabulary from hidden states),
      count_scope (COUNT_SCOPES: where the decision-class counts n_k of CB-Stream / focal are
      taken: "global" the whole global batch, "microbatch" each micro-batch, "device" each
      device's rows of each micro-batch).
    decision_token_ids: (silence_id, response_id).
    unembed_fn: params -> unembedding [D, V]; needed when chunk_size > 0.

  Returns:
    loss_fn(params, batch, class_counts) -> (sum_i mask_i w_i nll_i, (N, metric sums)); the
    context is the global decision-class counts f32[2] (:func:`sft_context`; None for the
    "microbatch" and "device" scopes, whose counts are taken inside loss_fn).
  """
  kind = loss_cfg.get("kind", "cb_stream")
  scope = count_scope_of(loss_cfg)
  if kind not in losses.LOSS_KINDS:
    raise ValueError(f"config.loss.kind = {kind!r}; expected one of {losses.LOSS_KINDS}")
  chunk = int(loss_cfg.get("chunk_size", 0) or 0)
  if chunk and unembed_fn is None:
    raise ValueError(f"loss.chunk_size = {chunk} needs an unembed_fn (params -> [D, V])")
  ids = tuple(int(i) for i in decision_token_ids)
  weights = dict(kind=kind, decision_token_ids=ids, beta=float(loss_cfg.get("beta", 0.9999)),
                 text_weight=float(loss_cfg.get("text_weight", 2.0)),
                 gamma=float(loss_cfg.get("gamma", 2.0)))

  def loss_fn(params, batch, class_counts):
    labels, mask = batch["labels"], batch["loss_mask"]
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
                                                 num_groups=data_shards(_current_mesh()))
    elif kind != "ce" and scope == "microbatch":
      class_counts = losses.decision_class_counts(labels, mask, ids)
    loss_sum, count = _weighted_nll(nll, labels, mask, class_counts=class_counts, **weights)
    sums = losses.metrics_sums(jax.lax.stop_gradient(predictions), labels, mask,
                               decision_token_ids=ids)
    return loss_sum, (count, sums)

  return loss_fn


COUNT_SCOPES = ("global", "microbatch", "device")
"""Where CB-Stream / focal count n_k (config loss.count_scope; BUILD_NOTES has the table):
global      the whole global batch, all devices and micro-batches (SPEC: "the current global
            batch"; the default);
microbatch  each micro-batch of the gradient accumulation, all devices;
device      each device's rows of each micro-batch (what a data-parallel PyTorch trainer that
            does not all-reduce the counts computes, as Streamo's code; with one row per device,
            one trajectory's counts)."""


def count_scope_of(loss_cfg: Mapping[str, Any]) -> str:
  scope = str(loss_cfg.get("count_scope", "global") or "global")
  if scope not in COUNT_SCOPES:
    raise ValueError(f"config.loss.count_scope = {scope!r}; expected one of {COUNT_SCOPES}")
  return scope


def data_shards(mesh) -> int:
  """Number of batch shards of a mesh (product of its 'data' and 'fsdp' axes; 1 without one)."""
  if mesh is None:
    return 1
  shape = dict(mesh.shape)
  return int(shape.get("data", 1)) * int(shape.get("fsdp", 1))


def sft_context(decision_token_ids, count_scope: str = "global"):
  """context_fn: global decision-class counts n_k over the whole (sharded) batch ("global"
  scope); None for the other scopes (the loss counts per micro-batch or per device)."""
  ids = tuple(int(i) for i in decision_token_ids)
  if count_scope != "global":
    return lambda batch: None
  return lambda batch: losses.decision_class_counts(batch["labels"], batch["loss_mask"], ids)


def make_sft_update(forward_fn, loss_cfg, decision_token_ids, tx, *, unembed_fn=None,
                    trainable=None, num_microbatches: int = 1, schedule=None):
  """The un-jitted SFT update (state, batch) -> (state, metrics); see build_update_step."""
  return build_update_step(
      make_sft_loss_fn(forward_fn, loss_cfg, decision_token_ids, unembed_fn=unembed_fn), tx,
      context_fn=sft_context(decision_token_ids, count_scope_of(loss_cfg)),
      metrics_fn=losses.metrics_from_sums,
      trainable=trainable, num_microbatches=num_microbatches, schedule=schedule)


def make_sft_step(forward_fn, loss_cfg, decision_token_ids, tx, *, state_shardings,
                  batch_sharding, mesh: Mesh, unembed_fn=None, trainable=None,
                  num_microbatches: int = 1, schedule=None, rules=None, donate: bool = True):
  """Jitted SFT step (state, batch) -> (state, metrics), state donated."""
  update = make_sft_update(forward_fn, loss_cfg, decision_token_ids, tx, unembed_fn=unembed_fn,
                           trainable=trainable, num_microbatches=num_microbatches,
                           schedule=schedule)
  return jit_update_step(update, state_shardings, batch_sharding, mesh, rules=rules,
                         donate=donate)


# ----------------------------------------------------------------------------------------------
# Model, tokenizer and data glue (config sections -> objects), shared with the GRPO trainer.
# ----------------------------------------------------------------------------------------------


def make_tokenizer(config, workdir: str):
  """Tokenizer from ``config.tokenizer``: "synthetic" (built under ``<workdir>/tokenizer`` of
  this process) or a folder (``data.tokenizer.load_tokenizer``, decision tokens added)."""
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  name = config.get("tokenizer", "synthetic")
  if name == "synthetic":
    from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    out = os.path.join(workdir, "tokenizer", f"process_{jax.process_index()}")
    return tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(), out)
  tokenizer, _ = tok_lib.load_tokenizer(name)
  return tokenizer


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def make_model_config(model_cfg, tokenizer):
  """Backbone config (``model.family``: qwen2_5_vl | qwen3_vl) from ``config.model``.

  See ``models.config_from_section``: an HF checkpoint's config.json, or a tiny random config
  carrying the tokenizer's special ids.
  """
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  return models.config_from_section(model_cfg, tokenizer)


def make_forward(module, video_grid_thw):
  """forward_fn(params, batch, return_hidden) for either backbone on the batched layout.

  Args:
    module: ``models.build(config)`` (``Qwen2_5_VL`` or ``Qwen3_VL``).
    video_grid_thw: i64[K, 3], the grids of ONE row's K turns (static: host-side index plans).
  """
  grid = np.asarray(video_grid_thw)

  def forward(params, batch, return_hidden=False):
    return module.apply({"params": params}, batch["input_ids"],
                        pixel_values_videos=batch["pixel_values_videos"], video_grid_thw=grid,
                        attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], return_hidden=return_hidden)

  return forward


def make_unembed(model_config):
  """params -> unembedding [D, V] in the model's compute dtype (as its own logits use it)."""
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  dtype = model_config.compute_dtype
  backbone = models.backbone_module(model_config)
  return lambda params: backbone.unembedding(params, model_config).astype(dtype)


def make_data(config, tokenizer, model_config):
  """(iterator, pipeline) of this host from ``config.data``; source "synth" generates
  SynthStream in memory (``data.num_videos`` videos of ``data.split``, frames rendered lazily),
  other sources go through ``pipeline.make_train_iterator``. ``data.narration=True`` (SynthStream
  sources only) trains on ``synthetic.narration_record`` of each video instead of its questions:
  a caption on every turn (pretraining a base model from scratch)."""
  from streampro_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  data_cfg = dict(config.data)
  data_cfg["batch_size"] = int(config.global_batch_size)
  source = None
  if data_cfg.get("source") == "synth":
    from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    synth_cfg = synthetic.SynthConfig.from_dict(dict(data_cfg.get("synth", {})))
    pairs = synthetic.generate(data_cfg.get("split", "train"), int(data_cfg["num_videos"]),
                               seed=int(data_cfg.get("synth_seed", 0)), config=synth_cfg,
                               with_frames=False)
    source = pipeline.RecordSource([r for r, _ in pairs], frames=synthetic.render_frames)
  if data_cfg.get("narration", False):
    from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    source = synthetic.NarrationSource(
        source if source is not None else pipeline.source_from_config(data_cfg))
  return pipeline.make_train_iterator(data_cfg, tokenizer=tokenizer, model_config=model_config,
                                      source=source)


def total_steps_of(config, num_trajectories: int) -> int:
  """config.total_steps if > 0, else floor(num_epochs * trajectories / global batch)."""
  if config.get("total_steps", -1) and config.total_steps > 0:
    return int(config.total_steps)
  steps = int(float(config.num_epochs) * num_trajectories // int(config.global_batch_size))
  if steps < 1:
    raise ValueError(f"{config.num_epochs} epochs of {num_trajectories} trajectories at global "
                     f"batch {config.global_batch_size} is less than one step")
  return steps


# ----------------------------------------------------------------------------------------------
# The training loop (launch/train_sft.py calls this).
# ----------------------------------------------------------------------------------------------

STEP_BATCH_KEYS = ("input_ids", "labels", "loss_mask", "attention_mask", "position_ids",
                   "pixel_values_videos")


def _load_hf_state(config, model_config, tokenizer, tx, shardings, mesh):
  """TrainState from a Hugging Face checkpoint, loaded straight into the param shardings."""
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  _, params = models.backbone_module(model_config).load_hf_checkpoint(
      config.model.hf_checkpoint, dtype=jnp.float32, shardings=shardings.params,
      scan_layers=model_config.scan_layers)
  if config.model.get("reinit_decision_rows", True):
    ids = tok_lib.decision_token_ids(tokenizer)
    v = model_config.text.vocab_size

    def reinit(params):
      params = dict(params)
      params["embed_tokens"] = {"embedding": tok_lib.resize_vocab_rows(
          params["embed_tokens"]["embedding"], v, axis=0, reinit_ids=ids)}
      if "lm_head" in params:
        params["lm_head"] = {"kernel": tok_lib.resize_vocab_rows(
            params["lm_head"]["kernel"], v, axis=1, reinit_ids=ids)}
      return params

    params = jax.jit(reinit, out_shardings=shardings.params)(params)
    logging.info("re-initialised embedding rows of the decision tokens %s", ids)
  return state_lib.state_from_params(params, tx, shardings, mesh)


def train(config, workdir: str):
  """Runs (or resumes) SFT as configured; returns the final TrainState.

  Resumes from the newest complete checkpoint in ``<workdir>/checkpoints`` when there is one
  (params, optimizer state, step and data iterator position), so a killed run continues exactly.
  Raises config_check.ConfigError for a key no code reads, or when ``<workdir>/config.json``
  holds another config (a different run); writes it otherwise.
  """
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import config_check  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import optim  # pylint: disable=g-import-not-at-top

  config_check.check_config(config, "sft")
  # The workdir holds one run: another config stops here (launch/_common.py already compared and
  # wrote it under --allow_config_change; then this finds the same config).
  config_check.check_workdir_config(workdir, config, write=jax.process_index() == 0)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(dict(config.mesh))
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.devices.size,
               jax.process_count())
  tokenizer = make_tokenizer(config, workdir)
  model_config = make_model_config(config.model, tokenizer)
  decision_ids = (tokenizer.convert_tokens_to_ids("</Silence>"),
                  tokenizer.convert_tokens_to_ids("</Response>"))
  data_iter, pipe = make_data(config, tokenizer, model_config)
  total_steps = total_steps_of(config, pipe.num_trajectories)
  gb, micro = int(config.global_batch_size), int(config.get("num_microbatches", 1))
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if gb % (micro * dp):
    raise ValueError(f"global batch {gb} is not divisible by {micro} micro-batches x {dp} "
                     f"data-parallel shards")
  logging.info("batch: %s; %d micro-batch(es) of %d rows (%d per data-parallel shard); "
               "seq_len %d; %d steps", parallel.describe_batch(gb, mesh), micro, gb // micro,
               gb // micro // dp, pipe.cfg.seq_len, total_steps)

  module = models.build(model_config)
  grid = np.tile(np.asarray(pipe.video_grid_thw).reshape(1, 3), (pipe.cfg.max_turns, 1))
  tx = optim.make_optimizer(config.optim, total_steps)
  schedule = optim.make_schedule(config.optim, total_steps)
  init_fn = functools.partial(models.backbone_module(model_config).init_params, model_config)
  rng = jax.random.key(int(config.seed))
  boxed = jax.eval_shape(init_fn, rng)
  shardings = state_lib.state_shardings(tx, boxed, mesh)
  counts = optim.count_params(nn_unbox(boxed), config.optim.frozen)
  logging.info("parameters: %s", counts)

  ckpt_cfg = config.checkpoint
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=ckpt_cfg.keep,
                               every_steps=ckpt_cfg.every_steps,
                               async_save=ckpt_cfg.get("async_save", True))
  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(latest, state_lib.abstract_state(tx, boxed), shardings, data_iter)
    logging.info("resumed from step %d%s", latest, ckpt_lib.skipped_note(ckpt))
  elif config.model.get("hf_checkpoint"):
    state = _load_hf_state(config, model_config, tokenizer, tx, shardings, mesh)
  else:
    state, _ = state_lib.create_train_state(init_fn, tx, mesh, rng)

  example = {k: np.zeros(s, np.float32) for k, s in pipe.batch_shapes().items()
             if k in STEP_BATCH_KEYS}
  step_fn = make_sft_step(
      make_forward(module, grid), config.loss, decision_ids, tx, state_shardings=shardings,
      batch_sharding=batch_shardings(example, mesh), mesh=mesh,
      unembed_fn=make_unembed(model_config),
      trainable=optim.trainable_mask(nn_unbox(boxed), config.optim.frozen),
      num_microbatches=micro, schedule=schedule)

  writer = metrics_lib.create_writer(workdir, total_steps=total_steps,
                                     enabled=jax.process_index() == 0,
                                     tensorboard=config.get("tensorboard", True))
  start = int(jax.device_get(state.step))
  progress = metrics_lib.Progress(total_steps, start)
  pending, tokens_since, t_last = [], 0.0, None
  log_every = max(int(config.log_every_steps), 1)
  kill_after = int(config.get("debug_kill_after_step", -1))
  step = start
  for step in range(start + 1, total_steps + 1):
    try:
      host_batch = next(data_iter)
    except StopIteration:
      logging.warning("data ran out at step %d of %d", step, total_steps)
      step -= 1
      break
    batch = parallel.shard_batch({k: host_batch[k] for k in STEP_BATCH_KEYS}, mesh,
                                 batch_dims=BATCH_DIMS)
    state, metrics = step_fn(state, batch)
    pending.append((step, metrics))
    if t_last is None:  # The first step compiles: time from its end.
      jax.block_until_ready(metrics)
      t_last = time.perf_counter()
      progress.update(step, t_last)
      pending = [(s, jax.device_get(m)) for s, m in pending]
      tokens_since = 0.0
      _write(writer, pending, {})
      pending = []
    elif step % log_every == 0 or step == total_steps:
      fetched = [(s, jax.device_get(m)) for s, m in pending]
      now = time.perf_counter()
      tokens_since = sum(float(m["tokens"]) for _, m in fetched)
      rates = progress.update(step, now)
      rates["tokens_per_sec"] = tokens_since / max(now - t_last, 1e-9)
      t_last = now
      _write(writer, fetched, rates)
      pending = []
    ckpt.maybe_save(step, state, data_iter, last_step=total_steps)
    if step == kill_after:
      logging.warning("debug_kill_after_step=%d: sending SIGKILL to myself", step)
      writer.flush()
      os.kill(os.getpid(), signal.SIGKILL)
  if step >= 1 and step not in ckpt.all_steps():
    ckpt.save(step, state, data_iter)
  ckpt.close()
  logging.info("data pipeline: %s", data_iter.stats.as_dict())
  writer.close()
  return state


def _write(writer, fetched, rates):
  """Writes each step's metrics; the rates go with the last one."""
  for i, (step, m) in enumerate(fetched):
    scalars = {k: float(v) for k, v in m.items()}
    if i == len(fetched) - 1:
      scalars.update({k: v for k, v in rates.items() if v == v})
    writer.write_scalars(step, scalars)
  writer.flush()


def nn_unbox(tree):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.unbox(tree)
