"""Ahead-of-time compilation of the training and sampling steps for a TPU slice, on any machine.

libtpu (installed with ``pip install "jax[tpu]==<the pinned jax>"``) has a compile-only TPU
backend: ``jax.experimental.topologies.get_topology_desc`` returns the devices of a slice
("v5e:4x4", "v5p:2x2x2", ...) without any TPU attached, a Mesh on them takes NamedShardings, and
``jax.jit(f).lower(*abstract_args).compile()`` returns a real TPU executable whose
``memory_analysis()`` and ``cost_analysis()`` give per-chip bytes and FLOPs (MaxText's
train_compile.py works this way). This module builds everything a step takes from a training
config with ``jax.eval_shape`` (no weights, no data files), places it with the project's own
sharding rules on the slice's mesh and compiles the real jitted functions:

  sft      the SFT update (train/sft.make_sft_step) on one global batch of config.data's shapes;
  grpo     the GRPO update (train/grpo_step.make_grpo_step): policy forward + backward and the
           reference forward, on global_batch_size x group_size rows;
  prefill  the sampler's user-chunk prefill (sampling.sampler_step_fns' user_fn: vision tower on
           the B samples, [N, C_user] through the KV cache) for the rollout batch N = B x G;
  decode   the sampler's message decode (decode_fn: a while loop of [N, 1] steps through the cache).

``_compile_stage`` returns one report per stage (``Report``): mesh, per-chip bytes (arguments,
outputs, aliased, temporaries, generated code, total) against the chip's HBM (``_HBM_BYTES``), the
model FLOPs of the step (``model_flops``) and per chip, the compiler's FLOPs per chip, and the
compile time. These are compile-time figures (what the TPU compiler allocates), not measured step
times. launch/aot_compile.py is the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from streampro_jax import grpo, models, parallel, sampling
from streampro_jax.data import batch as batch_lib
from streampro_jax.data import pipeline, pipeline_config
from streampro_jax.models import kv_cache
from streampro_jax.train import config_check, grpo_rollouts, grpo_step, optim, sft
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

__all__ = ["HBM_SOURCE", "Report", "STAGE_GROUPS", "compile_config", "generation",
           "quiet_libtpu_env"]

_GiB = 2 ** 30

# HBM per chip by TPU generation (the name before ':' of a topology). Source: Google Cloud TPU
# system architecture pages, https://cloud.google.com/tpu/docs/v4 (v4: 32 GiB HBM2),
# https://cloud.google.com/tpu/docs/v5e (v5e: 16 GiB HBM2), https://cloud.google.com/tpu/docs/v5p
# (v5p: 95 GiB HBM2e), https://cloud.google.com/tpu/docs/v6e (v6e / Trillium: 32 GiB HBM).
# The runtime keeps a little for itself: on v5e the compiler allows 15.75 GiB of the 16.
_HBM_BYTES = {"v4": 32 * _GiB, "v5e": 16 * _GiB, "v5p": 95 * _GiB, "v6e": 32 * _GiB}
HBM_SOURCE = ("cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}: HBM per chip 32 / 16 / 95 / 32 GiB")

_STAGES = ("sft", "grpo", "prefill", "decode")
STAGE_GROUPS = {"sft": ("sft",), "grpo": ("grpo",), "decode": ("prefill", "decode"),
                "all": _STAGES}


def quiet_libtpu_env() -> None:
  """Sets the variables libtpu reads at load: the two that locate its TPU VM (absent on a
  machine without one: it then prints warnings about TPU_ACCELERATOR_TYPE and
  TPU_WORKER_HOSTNAMES), and ALLOW_MULTIPLE_LIBTPU_LOAD, because a compile-only client touches
  no chip and otherwise holds /tmp/libtpu_lockfile, so that a second compile (another process,
  a parallel test) fails with "Internal error when accessing libtpu multi-process lockfile".
  Values already set (on a real TPU VM) are kept. Call before the first topology query."""
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def generation(topology: str) -> str:
  """'v5e' of 'v5e:4x4'; raises for a generation without an _HBM_BYTES entry."""
  gen = topology.split(":")[0].lower()
  if gen not in _HBM_BYTES:
    raise ValueError(f"topology {topology!r}: unknown TPU generation {gen!r}; known: "
                     f"{sorted(_HBM_BYTES)}")
  return gen


def _topology_devices(topology: str, num_slices: int = 1) -> list:
  """The devices of a TPU slice (compile-only; no TPU needed), e.g. 'v5e:2x2', 'v5p:2x2x1'.

  The chip grid after ':' is 2-D (v5e, v6e: 'AxB') or 3-D (v4, v5p: 'AxBxC'); one host holds at
  most 2x2 chips of it (chips_per_host_bounds), as on the TPU VMs of these generations."""
  generation(topology)
  m = re.fullmatch(r"[a-z0-9]+:(\d+(?:x\d+){1,2})", topology.lower())
  if not m:
    raise ValueError(f"topology {topology!r}: expected e.g. v5e:4x4 or v5p:2x2x2")
  dims = [int(d) for d in m.group(1).split("x")]
  bounds = (min(dims[0], 2), min(dims[1], 2), 1)
  quiet_libtpu_env()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  desc = topologies.get_topology_desc(
      platform="tpu", topology_name=topology, chip_config_name="default",
      chips_per_host_bounds=bounds, num_slices=int(num_slices))
  return list(desc.devices)


# ----------------------------------------------------------------------------------------------
# What a config builds (abstract).


@dataclasses.dataclass
class _Setup:
  """The abstract pieces of a run: backbone config, optimizer, boxed params, state shardings."""
  config: Any
  mesh: Any
  rules: Any
  model_config: Any
  tx: Any
  boxed: Any
  shardings: Any
  pcfg: pipeline_config.PipelineConfig
  grid: tuple[int, int, int]
  patch_dim: int


def _model_config_of(config):
  """The backbone config of ``config.model`` without weights: the config.json of
  ``model.hf_checkpoint`` when that folder exists (vocabulary from it), the published
  architecture of the family when it does not (Qwen2.5-VL-3B-Instruct, Qwen3-VL-4B-Instruct),
  and for configs without a checkpoint (the tiny ones) the tokenizer-sized tiny config."""
  model_cfg = config.model
  mod = models.backbone_module(model_cfg)
  ckpt = model_cfg.get("hf_checkpoint", None)
  if ckpt:
    if os.path.isfile(os.path.join(ckpt, "config.json")):
      import json  # pylint: disable=g-import-not-at-top
      with open(os.path.join(ckpt, "config.json"), encoding="utf-8") as f:
        d = json.load(f)
      return models.config_class(mod.MODEL_TYPE).from_hf(d, **_compute_kwargs(mod, model_cfg))
    return _published_config(mod.MODEL_TYPE, **_compute_kwargs(mod, model_cfg))
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer = setup_lib.make_tokenizer(config, tmp)
    return setup_lib.make_model_config(model_cfg, tokenizer)


def _compute_kwargs(mod, model_cfg) -> dict:
  from streampro_jax import _config  # pylint: disable=g-import-not-at-top
  return _config.field_values(
      models.config_class(mod.MODEL_TYPE),
      {k: model_cfg[k] for k in models.COMPUTE_KEYS if k in model_cfg}, section_name="model")


def _published_config(model_type: str, **compute):
  """The architecture the paper trains for a backbone: Qwen2.5-VL-3B-Instruct (the config
  defaults of qwen2_5_vl) or Qwen3-VL-4B-Instruct (qwen3_vl.qwen3_vl_4b_config)."""
  mod = models.backbone_module(model_type)
  if mod.MODEL_TYPE == "qwen3_vl":
    return mod.qwen3_vl_4b_config(**compute)
  return models.config_class(mod.MODEL_TYPE)(**compute)


def _build_setup(config, devices: Sequence) -> _Setup:
  """Mesh (config.mesh over `devices`), rules, backbone config (attention_impl 'jax' taken as
  'splash', its path on a TPU), optimizer, boxed abstract params and TrainState shardings of a
  training config."""
  mesh_node = config_check.MeshSection.from_config(config.mesh)
  mesh = parallel.make_mesh(mesh_node.sizes, devices=devices)
  rules = mesh_node.rules
  mcfg = _model_config_of(config)
  if mcfg.attention_impl == "jax":
    # What 'jax' resolves to on a TPU (layers.resolve_impl); this process's own backend (the
    # CPU) would resolve it to the XLA path.
    mcfg = mcfg.replace(attention_impl="splash")
  tx = optim.make_optimizer(config.optim, 1000)
  init_fn = functools.partial(models.backbone_module(mcfg).init_params, mcfg)
  boxed = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = state_lib.state_shardings(tx, boxed, mesh, rules)
  pcfg = pipeline_config.PipelineConfig.from_config(config.data)
  proc = pipeline.processor_config(pcfg, mcfg)
  _, gh, gw = proc.grid(pcfg.frame_height, pcfg.frame_width)
  return _Setup(config, mesh, rules, mcfg, tx, boxed, shardings, pcfg, (1, gh, gw),
               int(proc.patch_dim))


def _sds(shape, dtype, sharding=None):
  if not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    dtype = jnp.dtype(dtype)
  return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), dtype, sharding=sharding)


def _with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying the matching NamedShardings."""
  return jax.tree.map(lambda x, s: _sds(x.shape, x.dtype, s), tree, shardings)


def _abstract_train_state(s: _Setup):
  """The TrainState as sharded ShapeDtypeStructs (state_lib.abstract_state + shardings)."""
  return _with_shardings(state_lib.abstract_state(s.tx, s.boxed), s.shardings)


def _rows_per_turn(s: _Setup) -> int:
  return s.grid[1] * s.grid[2]


def _sft_batch(s: _Setup, rows: int) -> batch_lib.Batch:
  """The SFT step's batch (Batch.model_inputs) of `rows` rows at config.data's shapes, sharded
  by Batch.shardings (rows over data x fsdp)."""
  return _sharded_batch(s, rows)


def _grpo_batch(s: _Setup, rows: int) -> batch_lib.Batch:
  """The GRPO step's batch (the fields of the GRPO learner's update batch) of `rows` rows."""
  return _sharded_batch(s, rows, optional=("old_logps",) + grpo.REWARD_KEYS)


def _sharded_batch(s: _Setup, rows: int, optional: tuple[str, ...] = ()) -> batch_lib.Batch:
  abstract = batch_lib.abstract_batch(rows, s.pcfg.seq_len, s.pcfg.max_turns * _rows_per_turn(s),
                                      s.patch_dim, optional=optional)
  return _with_shardings(abstract, abstract.shardings(s.mesh))


def _tree_bytes_per_chip(tree) -> int:
  """Bytes one chip holds of a tree of sharded ShapeDtypeStructs: each leaf's shard shape
  (NamedSharding.shard_shape) times its item size, unpadded."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += int(np.prod(shape, dtype=np.int64)) * x.dtype.itemsize
  return total


def _tiled_bytes(shape: Sequence[int], dtype, layout) -> int:
  """Bytes of an array of `shape` in a TPU layout: the minor dims (in the layout's
  major_to_minor order) rounded up to its first tile (f32 (8, 128), bf16 (8, 128) (2, 1), 1-D
  (128,) .. (1024,)), e.g. f32[5, 7] -> 8 x 128 x 4 = 4096 bytes, a scalar -> 128 x 4."""
  if layout is None:  # an argument the executable does not read: not allocated
    return 0
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):  # uint32[..., 2] underneath
    shape, dtype = tuple(shape) + (dtype.itemsize // 4,), np.dtype(np.uint32)
  dims = [int(shape[i]) for i in layout.major_to_minor] if len(shape) else [1]
  tile = layout.tiling[0] if layout.tiling else ()
  for j, t in enumerate(reversed(tile)):
    k = len(dims) - 1 - j
    if k >= 0:
      dims[k] = -(-dims[k] // t) * t
  return int(np.prod(dims, dtype=np.int64)) * dtype.itemsize


def _tiled_tree_bytes_per_chip(tree, formats) -> int:
  """_tree_bytes_per_chip with each leaf's shard in the compiled executable's layout (the
  `Format`s of `compiled.input_formats`, a tree of the same structure as `tree`)."""
  total = 0
  # Up to tree's structure: a None field of a Batch is no leaf on either side.
  for x, f in zip(jax.tree.leaves(tree), jax.tree.structure(tree).flatten_up_to(formats)):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += _tiled_bytes(shape, x.dtype, None if f is None else f.layout)
  return total


# ----------------------------------------------------------------------------------------------
# Model FLOPs.


def _param_count(tree) -> int:
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def _param_counts(s: _Setup) -> dict[str, int]:
  """Parameter counts: vision tower (incl. merger), embedding / unembedding (D V each), the rest
  (decoder layers and final norm)."""
  params = nn.unbox(s.boxed)
  t = s.model_config.text
  vis = _param_count(params["visual"])
  dv = t.hidden_size * t.vocab_size
  emb = _param_count(params["embed_tokens"]) + _param_count(params.get("lm_head", {}))
  return dict(vision=vis, embed_vocab=dv, decoder=_param_count(params) - vis - emb)


def _model_flops(s: _Setup, stage: str, *, rows: int, seq: int, patches: int,
                cache_len: int = 0) -> float:
  """Model FLOPs of one call of a stage (matmuls only, no recomputation):

  sft:     6 (P_dec + D V) B T + 6 L D_attn T^2 B (causal attention, fwd + bwd, half the square)
           + 2 P_vis N_patches (frozen vision tower, forward only);
  grpo:    the sft figure (policy) + 2 (P_dec + D V) B T + 2 L D_attn T^2 B + 2 P_vis N_patches
           (reference forward);
  prefill: 2 P_dec B C + 4 L D_attn C S B (C chunk queries against S cache slots) + 2 D V B
           (last logits) + 2 P_vis N_patches;
  decode:  per decoded token: 2 (P_dec + D V) B + 4 L D_attn S B.
  D_attn = query heads x head dim; B rows, T tokens per row, S = cache_len.
  """
  c = _param_counts(s)
  t = s.model_config.text
  d_attn = t.num_attention_heads * t.head_dim
  layers = t.num_hidden_layers
  dec, dv, vis = c["decoder"], c["embed_vocab"], c["vision"]
  if stage in ("sft", "grpo"):
    fwd = 2 * (dec + dv) * rows * seq + 2 * layers * d_attn * seq ** 2 * rows
    out = 3 * fwd + 2 * vis * patches
    if stage == "grpo":
      out += fwd + 2 * vis * patches
    return float(out)
  if stage == "prefill":
    return float(2 * dec * rows * seq + 4 * layers * d_attn * seq * cache_len * rows
                 + 2 * dv * rows + 2 * vis * patches)
  if stage == "decode":
    return float(2 * (dec + dv) * rows + 4 * layers * d_attn * cache_len * rows)
  raise ValueError(f"unknown stage {stage!r}; known: {_STAGES}")


# ----------------------------------------------------------------------------------------------
# The compiled functions of each stage.


@dataclasses.dataclass
class _Lowerable:
  """A jitted function, its abstract arguments, the argument bytes per chip by our own count,
  and the shape facts of the call."""
  jitted: Any
  args: tuple
  counted_argument_bytes: dict[str, int]
  shapes: dict[str, int]
  flops: float


def _sft_lowerable(s: _Setup) -> _Lowerable:
  cfg = s.config
  rows = int(cfg.global_batch_size)
  batch = _sft_batch(s, rows)
  mcfg = s.model_config
  grid = np.tile(np.asarray(s.grid, np.int64).reshape(1, 3), (s.pcfg.max_turns, 1))
  ids = _decision_ids(mcfg)
  step = sft.make_sft_step(
      setup_lib.make_forward(models.build(mcfg), grid), cfg.loss, ids, s.tx,
      state_shardings=s.shardings,
      batch_sharding=jax.tree.map(lambda x: x.sharding, batch), mesh=s.mesh,
      unembed_fn=setup_lib.make_unembed(mcfg),
      trainable=optim.trainable_mask(nn.unbox(s.boxed), cfg.optim.frozen),
      num_microbatches=int(cfg.num_microbatches), rules=s.rules)
  state = _abstract_train_state(s)
  patches = rows * s.pcfg.max_turns * _rows_per_turn(s)
  return _Lowerable(step.jitted, (state, batch),
                    dict(state=_tree_bytes_per_chip(state), batch=_tree_bytes_per_chip(batch)),
                    dict(rows=rows, seq_len=s.pcfg.seq_len, patches=patches,
                         num_microbatches=int(cfg.num_microbatches)),
                    _model_flops(s, "sft", rows=rows, seq=s.pcfg.seq_len, patches=patches))


def _grpo_step_config(config) -> grpo.GRPOStepConfig:
  """config.grpo / config.reward's GRPOStepConfig; the defaults for a config without them (an
  SFT config compiled at its own batch as the GRPO update)."""
  if "grpo" not in config:
    return grpo.GRPOStepConfig(group_size=1, adv_ddof=0)
  return grpo.GRPOStepConfig.from_config(config.grpo, config.get("reward"))


def _grpo_rows(config, cfg: grpo.GRPOStepConfig) -> int:
  """Rows of a GRPO update: global_batch_size samples x group_size."""
  return int(config.global_batch_size) * cfg.group_size


def _grpo_lowerable(s: _Setup) -> _Lowerable:
  cfg = s.config
  gcfg = _grpo_step_config(cfg)
  rows = _grpo_rows(cfg, gcfg)
  batch = _grpo_batch(s, rows)
  mcfg = s.model_config
  grid = np.tile(np.asarray(s.grid, np.int64).reshape(1, 3), (s.pcfg.max_turns, 1))
  logps_fn = grpo.make_logps_fn(
      setup_lib.make_forward(models.build(mcfg), grid), temperature=gcfg.temperature,
      chunk_size=gcfg.logps_chunk_size, unembed_fn=setup_lib.make_unembed(mcfg))
  step = grpo_step.make_grpo_step(
      logps_fn, s.tx, gcfg, state_shardings=s.shardings,
      batch_sharding=jax.tree.map(lambda x: x.sharding, batch), mesh=s.mesh,
      trainable=optim.trainable_mask(nn.unbox(s.boxed), cfg.optim.frozen), rules=s.rules)
  state = _abstract_train_state(s)
  ref = None
  if gcfg.beta != 0.0:
    ref_dtype = ("grpo" in cfg and cfg.grpo.get("ref_param_dtype", "")) or None
    ref = jax.tree.map(lambda x: _sds(x.shape, ref_dtype or x.dtype, x.sharding), state.params)
  patches = rows * s.pcfg.max_turns * _rows_per_turn(s)
  counted = dict(state=_tree_bytes_per_chip(state), batch=_tree_bytes_per_chip(batch))
  if ref is not None:
    counted["reference"] = _tree_bytes_per_chip(ref)
  return _Lowerable(step.jitted, (state, ref, batch), counted,
                    dict(rows=rows, seq_len=s.pcfg.seq_len, patches=patches,
                         num_microbatches=gcfg.num_microbatches, group_size=gcfg.group_size),
                    _model_flops(s, "grpo", rows=rows, seq=s.pcfg.seq_len, patches=patches))


def _decision_ids(model_config) -> tuple[int, int]:
  """Two token ids standing for </Silence> and </Response> (the last two rows of the
  vocabulary): they are constants of the compiled step, the memory and FLOPs do not depend on
  them, and no tokenizer is needed."""
  v = model_config.text.vocab_size
  return v - 2, v - 1


def _sampler_config_of(config) -> sampling.SamplerConfig:
  """The GRPO config's sampler settings (grpo_rollouts.sampler_config); SamplerConfig defaults
  with config.rollout (if any) for a config without a grpo section."""
  if "grpo" in config:
    return grpo_rollouts.sampler_config(config_check.build(config, "grpo"))
  from streampro_jax import _config  # pylint: disable=g-import-not-at-top
  return sampling.SamplerConfig(**_config.field_values(
      sampling.SamplerConfig, _config.as_dict(config.get("rollout")), section_name="rollout"))


def _sampler_shapes(s: _Setup) -> dict[str, int]:
  """Rollout rows N = global_batch_size x G, samples B, the user-chunk bucket C and the cache
  capacity: SamplerConfig.user_chunk_len / capacity when set, else C = 128 and the capacity
  StreamingSampler.capacity_for gives the config's max_turns (a 16-token system prefix)."""
  cfg = s.config
  scfg = _sampler_config_of(cfg)
  g = _grpo_step_config(cfg).group_size
  b = int(cfg.global_batch_size)
  c = scfg.user_chunk_len or 128
  if scfg.capacity:
    cap = scfg.capacity
  else:
    turns = min(s.pcfg.max_turns, scfg.window_turns)
    need = 16 + turns * (c + scfg.max_message_tokens) + c
    cap = -(-need // scfg.capacity_multiple) * scfg.capacity_multiple
  return dict(samples=b, rows=b * g, group_size=g, chunk=c, capacity=cap,
              window_turns=scfg.window_turns, max_text_tokens=scfg.max_text_tokens)


def _abstract_cache(s: _Setup, rows: int, capacity: int, window_turns: int):
  """The sampler's KV cache as sharded ShapeDtypeStructs: rows over (data, fsdp) (dim 1 of the
  scanned [L, B, K, cap, H] stacks, dim 0 elsewhere), as StreamingSampler places it."""
  shapes = jax.eval_shape(lambda: kv_cache.init_cache(s.model_config, rows, capacity,
                                                      window_turns=window_turns))
  return jax.tree.map(lambda x: _sds(x.shape, x.dtype, NamedSharding(
      s.mesh, parallel.row_spec(x.ndim, 1 if x.ndim == 5 else 0))), shapes)


def _sampler_fns(s: _Setup, scfg: sampling.SamplerConfig):
  mcfg = s.model_config
  silence, response = _decision_ids(mcfg)
  vision = tuple(sorted({int(getattr(mcfg, n)) for n in (
      "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}))
  return sampling.sampler_step_fns(mcfg, scfg, s.grid, im_end_id=mcfg.text.vocab_size - 3,
                                  silence_id=silence, response_id=response,
                                  vision_token_ids=vision)


def _row_sharded(s: _Setup, shape, dtype, row_dim=0):
  return _sds(shape, dtype, NamedSharding(s.mesh, parallel.row_spec(len(shape), row_dim)))


def _replicated(s: _Setup, shape, dtype):
  return _sds(shape, dtype, NamedSharding(s.mesh, PartitionSpec()))


def _params_abstract(s: _Setup):
  return _with_shardings(nn.unbox(s.boxed), s.shardings.params)


def _prefill_lowerable(s: _Setup) -> _Lowerable:
  sh = _sampler_shapes(s)
  scfg = _sampler_config_of(s.config)
  user_fn, _ = _sampler_fns(s, scfg)
  n, b, c = sh["rows"], sh["samples"], sh["chunk"]
  params = _params_abstract(s)
  cache = _abstract_cache(s, n, sh["capacity"], sh["window_turns"])
  key = jax.eval_shape(lambda: jax.random.key(0))
  args = (params, cache, _row_sharded(s, (n, c), jnp.int32),
          _row_sharded(s, (3, n, c), jnp.int32, 1), _replicated(s, (), jnp.int32),
          _row_sharded(s, (n, c), jnp.int32),
          _row_sharded(s, (b, _rows_per_turn(s), s.patch_dim), jnp.float32),
          _replicated(s, key.shape, key.dtype), _row_sharded(s, (n,), jnp.int32),
          _row_sharded(s, (n,), jnp.bool_))
  jitted = jax.jit(user_fn, donate_argnums=(1,))
  counted = dict(params=_tree_bytes_per_chip(params), cache=_tree_bytes_per_chip(cache),
                 inputs=_tree_bytes_per_chip(args[2:]))
  return _Lowerable(jitted, args, counted, sh,
                    _model_flops(s, "prefill", rows=n, seq=c, patches=b * _rows_per_turn(s),
                                cache_len=sh["capacity"]))


def _decode_lowerable(s: _Setup) -> _Lowerable:
  sh = _sampler_shapes(s)
  scfg = _sampler_config_of(s.config)
  _, decode_fn = _sampler_fns(s, scfg)
  n = sh["rows"]
  params = _params_abstract(s)
  cache = _abstract_cache(s, n, sh["capacity"], sh["window_turns"])
  key = jax.eval_shape(lambda: jax.random.key(0))
  first = (_row_sharded(s, (n,), jnp.int32), _row_sharded(s, (n,), jnp.float32),
           _row_sharded(s, (n,), jnp.float32), _row_sharded(s, (n,), jnp.bool_))
  args = (params, cache, first, _row_sharded(s, (n,), jnp.bool_),
          _row_sharded(s, (n,), jnp.int32), _replicated(s, (), jnp.int32),
          _replicated(s, key.shape, key.dtype))
  jitted = jax.jit(decode_fn, donate_argnums=(1,))
  counted = dict(params=_tree_bytes_per_chip(params), cache=_tree_bytes_per_chip(cache),
                 inputs=_tree_bytes_per_chip(args[2:]))
  return _Lowerable(jitted, args, counted, sh,
                    _model_flops(s, "decode", rows=n, seq=1, patches=0, cache_len=sh["capacity"]))


_LOWERABLES = {"sft": _sft_lowerable, "grpo": _grpo_lowerable, "prefill": _prefill_lowerable,
               "decode": _decode_lowerable}


# ----------------------------------------------------------------------------------------------
# Compile and report.


@dataclasses.dataclass
class Report:
  """One stage compiled for one topology (JSON-ready through ``as_dict``)."""
  stage: str
  topology: str
  num_slices: int
  chips: int
  mesh: dict[str, int]
  hbm_bytes: int
  per_chip_bytes: dict[str, int]
  counted_argument_bytes: dict[str, int]
  tiled_argument_bytes: int
  fits: bool
  model_flops: float
  flops_per_chip: float
  compiler_flops_per_chip: float | None
  compile_s: float
  shapes: dict[str, int]
  model: dict[str, Any]
  error: str = ""

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def advice(self) -> str:
    """What to change when it does not fit ('' when it fits)."""
    if self.fits:
      return ""
    over = self.per_chip_bytes.get("total", 0) - self.hbm_bytes
    temp = self.per_chip_bytes.get("temp", 0)
    args = self.per_chip_bytes.get("argument", 0)
    lines = [f"{self.stage} on {self.topology}: {self.per_chip_bytes.get('total', 0) / _GiB:.2f} "
             f"GiB per chip, {over / _GiB:.2f} GiB over the {self.hbm_bytes / _GiB:.2f} GiB of HBM "
             f"(arguments {args / _GiB:.2f} GiB, temporaries {temp / _GiB:.2f} GiB)."]
    changes = ["a larger slice (--topology; with --config.mesh.fsdp=-1 the parameters, "
               "gradients and optimizer state shard over every chip)"]
    if temp >= args:
      changes.append("more micro-batches (--config.num_microbatches, grpo.num_microbatches: "
                     "fewer rows per chip at a time)")
      if self.model.get("remat_policy") != "full" or not self.model.get("remat"):
        changes.append("--config.model.remat=True --config.model.remat_policy=full")
      if self.model.get("attention_impl") not in ("splash", "jax"):
        changes.append("--config.model.attention_impl=splash")
      lines.append("Temporaries dominate; change: " + "; ".join(changes) + ".")
    else:
      changes.append("a smaller global batch per step (--config.global_batch_size)")
      lines.append("Arguments dominate (parameters, optimizer state, batch); change: "
                   + "; ".join(changes) + ".")
    return " ".join(lines)


def _memory_bytes(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  out = dict(argument=int(m.argument_size_in_bytes), output=int(m.output_size_in_bytes),
             alias=int(m.alias_size_in_bytes), temp=int(m.temp_size_in_bytes),
             generated_code=int(m.generated_code_size_in_bytes))
  out["total"] = (out["argument"] + out["output"] - out["alias"] + out["temp"]
                  + out["generated_code"])
  return out


_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _parse_resource_exhausted(message: str) -> dict[str, int]:
  """Per-chip bytes from the TPU compiler's out-of-memory error ('... HLO temporaries (66.37G)
  exceeds available HBM (15.75G) ...'): temp and the HBM it compared against, when present."""
  out = {}
  for key, pattern in (("temp", r"temporaries \((\d+(?:\.\d+)?)([KMGT]?)\)"),
                       ("available", r"available HBM \((\d+(?:\.\d+)?)([KMGT]?)\)"),
                       ("total", r"[Uu]sed (\d+(?:\.\d+)?)([KMGT]?) of")):
    m = re.search(pattern, message)
    if m:
      out[key] = int(float(m.group(1)) * _UNITS[m.group(2)])
  return out


def _compile_stage(s: _Setup, stage: str, topology: str, num_slices: int = 1) -> Report:
  """Lowers and compiles one stage on the setup's mesh; a compile the TPU compiler refuses for
  lack of memory comes back as a Report with fits False and the error's figures."""
  low = _LOWERABLES[stage](s)
  hbm = _HBM_BYTES[generation(topology)]
  t0 = time.perf_counter()
  error = ""
  compiled = None
  try:
    with state_lib.sharding_context(s.mesh, s.rules):
      compiled = low.jitted.lower(*low.args).compile()
  except Exception as e:  # pylint: disable=broad-except
    if "RESOURCE_EXHAUSTED" not in str(e) and "exceeds" not in str(e):
      raise
    error = str(e)
  compile_s = time.perf_counter() - t0
  chips = int(s.mesh.devices.size)
  if compiled is not None:
    mem = _memory_bytes(compiled)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    compiler_flops = float(cost["flops"]) if cost and "flops" in cost else None
    tiled = _tiled_tree_bytes_per_chip(low.args, compiled.input_formats[0])
  else:
    tiled = 0
    parsed = _parse_resource_exhausted(error)
    mem = dict(argument=sum(low.counted_argument_bytes.values()), temp=parsed.get("temp", 0))
    mem["total"] = parsed.get("total", mem["argument"] + mem["temp"])
    compiler_flops = None
  fits = compiled is not None and mem["total"] <= hbm
  mcfg = s.model_config
  return Report(
      stage=stage, topology=topology, num_slices=int(num_slices), chips=chips,
      mesh={k: int(v) for k, v in s.mesh.shape.items()}, hbm_bytes=hbm, per_chip_bytes=mem,
      counted_argument_bytes=low.counted_argument_bytes, tiled_argument_bytes=tiled,
      fits=bool(fits),
      model_flops=low.flops, flops_per_chip=low.flops / chips,
      compiler_flops_per_chip=compiler_flops, compile_s=compile_s, shapes=low.shapes,
      model=dict(family=mcfg.model_type, layers=mcfg.text.num_hidden_layers,
                 hidden=mcfg.text.hidden_size, attention_impl=mcfg.attention_impl,
                 remat=mcfg.remat, remat_policy=mcfg.remat_policy,
                 scan_layers=mcfg.scan_layers, dtype=str(mcfg.dtype), **_param_counts(s)),
      error=error[:2000])


def compile_config(config, topology: str, stages: Sequence[str], num_slices: int = 1
                   ) -> list[Report]:
  """Compiles each of `stages` (_STAGES names) of a training config for a TPU topology."""
  for st in stages:
    if st not in _STAGES:
      raise ValueError(f"unknown stage {st!r}; known: {_STAGES}")
  s = _build_setup(config, _topology_devices(topology, num_slices))
  return [_compile_stage(s, st, topology, num_slices) for st in stages]
