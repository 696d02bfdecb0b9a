"""The paper-shape SFT step on one accelerator: streampro_jax against transformers + PyTorch.

  python3 benchmarks/gpu_train_step.py            # one GPU, about 8 minutes
  python3 benchmarks/gpu_train_step.py --tiny     # the same code paths on CPU in about a minute

Shapes of the paper's SFT (figures: docs/benchmarks.md#accelerator-training-h200): the Qwen2.5-VL-3B
architecture with random weights, 224 x 224 frames (16 x 16 patches, 64 visual tokens per
1-second turn), 96 turns of 80 tokens per row, batch 2, T = 7,680; bfloat16 compute with float32
master weights, remat, the chunked CB-Stream loss, vision tower frozen (merger + LLM trained),
AdamW. The batch is built directly in the layout the grain pipeline produces (this script must
run where grain, tensorflow-datasets, PyAV and ml_collections are not installed).

Parts, each variant in its own process, so that the frameworks never share the device's memory
and each variant's peak memory is its own (a process's high-water mark is all there is to read):
  jax     (one process per --policies remat policy, e.g. dots_attn: the matmul outputs, the
          attention output and the softmax statistics saved) bf16 matmul ceiling; random init of the
          TrainState; compile, 2 warm-up and 5 timed SFT steps.
  grpo    (one process, the first policy) the GRPO update (policy + reference) at the same shapes.
  torch   (one process per --torch_variants entry) transformers
          Qwen2_5_VLForConditionalGeneration (sdpa attention, autocast bf16, fused AdamW, vision
          frozen), the same batch and CB-Stream weights: 2 warm-up and 5 timed steps. A variant is
          "eager|compile:full|dots_no_batch": eager PyTorch or `torch.compile` of the model, with
          transformers' full-layer activation checkpointing or with selective checkpointing that
          saves the matmul outputs (aten.mm / addmm, not the batched attention products), the
          counterpart of our dots_no_batch remat. transformers offers no chunked loss for this
          model: its logits are computed in full, in bf16 under autocast, then cast to float32.
Every result is one JSON line prefixed "RESULT "; the driver prints a summary table last. The
decode figures of the rollout path come from benchmarks/rollout_decode.py (same import limits).

Model FLOPs per step = 6 (P_dec + D V) B T + 6 L D T^2 B (causal attention, forward and
backward, half the square) + 2 P_vis N_patches (frozen vision forward); no recomputation
counted. MFU = model FLOPs / step time / peak, against the spec peak (989 TFLOP/s dense bf16 on
an H100/H200) and against the bf16 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPEC_PEAK = 989e12  # dense bf16 FLOP/s, H100/H200 SXM datasheet
FROZEN = r"^visual/(?!merger/)"
DECISION_IDS = (151665, 151666)  # two ids inside the 3B vocabulary (tiny: vocab - 2, - 1)


def emit(**kw):
  print("RESULT " + json.dumps(kw), flush=True)


def shape_args(tiny: bool) -> dict:
  if tiny:
    return dict(batch=2, turns=6, frame=32, text_per_turn=16, chunk=128)
  return dict(batch=2, turns=96, frame=224, text_per_turn=16, chunk=16384)


def model_config(tiny: bool, **kw):
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top
  common = dict(dtype="bfloat16", param_dtype="float32", remat=True, scan_layers=True,
                attention_impl="jax")
  common.update(kw)
  if tiny:
    # patch 8, 32 x 32 frames: 4 x 4 patches, 4 visual tokens per turn; window = whole frame.
    return q.tiny_config(text=dict(vocab_size=512, num_hidden_layers=4),
                         vision=dict(depth=4, patch_size=8, window_size=32,
                                     fullatt_block_indexes=(1, 3)), **common)
  return q.Qwen2_5_VLConfig(**common)  # the defaults are Qwen2.5-VL-3B-Instruct


def decision_ids(cfg) -> tuple[int, int]:
  v = cfg.text.vocab_size
  return (v - 2, v - 1) if v < 151936 else DECISION_IDS


def build_batch(cfg, *, batch, turns, frame, text_per_turn, seed=0, **_):
  """A pipeline-layout batch: per turn `text_per_turn` text tokens around <vision_start>
  <video_pad> x (visual tokens) <vision_end>; per turn one supervised decision (10 % responses
  with 6 supervised text tokens). Returns (a data.batch.Batch of NumPy arrays, one row's grids
  [turns, 3])."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import batch as batch_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  v = cfg.vision
  g = frame // v.patch_size
  per_turn_vis = g * g // v.spatial_merge_size ** 2
  silence, response = decision_ids(cfg)
  low = min(cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id,
            cfg.vision_end_token_id, cfg.text.vocab_size - 2)
  rows_ids, rows_labels, rows_mask = [], [], []
  for _ in range(batch):
    ids, labels, mask = [], [], []
    for _k in range(turns):
      user = list(rng.integers(0, low, text_per_turn - 8))
      turn = user + [cfg.vision_start_token_id] + [cfg.video_token_id] * per_turn_vis + [
          cfg.vision_end_token_id]
      answer = list(rng.integers(0, low, 6))
      turn_labels = [0] * len(turn) + [0] * 6
      turn_mask = [0.0] * len(turn) + [0.0] * 6
      turn += answer
      is_response = rng.random() < 0.1
      turn_labels[len(user) + per_turn_vis + 2] = response if is_response else silence
      turn_mask[len(user) + per_turn_vis + 2] = 1.0
      if is_response:
        for j in range(1, 6):
          turn_labels[len(user) + per_turn_vis + 2 + j] = int(answer[j])
          turn_mask[len(user) + per_turn_vis + 2 + j] = 1.0
      ids += turn
      labels += turn_labels
      mask += turn_mask
    rows_ids.append(ids)
    rows_labels.append(labels)
    rows_mask.append(mask)
  ids = np.asarray(rows_ids, np.int32)
  grid = np.tile(np.array([[1, g, g]], np.int64), (turns, 1))
  am = np.ones_like(ids)
  pos = q.host_position_ids(cfg, ids, grid, np.ones(turns, np.float32), am, batched=True)
  pix = rng.standard_normal((batch, turns * g * g, v.patch_dim)).astype(np.float32)
  return batch_lib.Batch(input_ids=ids, labels=np.asarray(rows_labels, np.int32),
                         loss_mask=np.asarray(rows_mask, np.float32), attention_mask=am,
                         position_ids=pos.astype(np.int32), pixel_values_videos=pix), grid


def model_flops(cfg, params_abstract, batch: int, seq: int, patches: int) -> dict:
  """The model FLOPs per step of the module docstring (and the parameter counts it uses)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  size = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  p_dec = size(params_abstract["layers"])
  p_vis = size(params_abstract["visual"])
  t = cfg.text
  dv = t.hidden_size * t.vocab_size
  flops = (6 * (p_dec + dv) * batch * seq
           + 6 * t.num_hidden_layers * t.hidden_size * seq ** 2 * batch
           + 2 * p_vis * patches)
  return dict(model_flops=float(flops), decoder_layer_params=p_dec, vision_params=p_vis,
              embed_params=dv)


def _median_time(fn, warmup: int, steps: int) -> tuple[float, list[float]]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def matmul_rate(n: int) -> float:
  """bf16 n^3 jnp.dot FLOP/s (median of 10 after 3 warm-ups), random inputs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.bfloat16))
  med, _ = _median_time(lambda: f(a, b).block_until_ready(), 3, 10)
  return 2 * n ** 3 / med


def peak_memory() -> int | None:
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def run_jax(args):
  import functools  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import optim, sft  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  shp = shape_args(args.tiny)
  first = args.policies.split(",")[0]
  cfg = model_config(args.tiny, remat_policy=first.partition(":")[0].partition("+")[0])
  if args.grpo_only:
    return run_grpo(args, cfg, args.policies.split(",")[0])
  emit(part="device", backend=jax.default_backend(), device=str(jax.devices()[0]),
       jax=jax.__version__)
  rate = matmul_rate(1024 if args.tiny else 8192)
  emit(part="matmul", bf16_flops_per_s=rate)

  batch, grid = build_batch(cfg, **shp)
  b, t = batch.input_ids.shape
  patches = batch.pixel_values_videos.shape[1] * b
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  ocfg = dict(lr=1e-5, warmup_steps=0, schedule="constant", grad_clip_norm=1.0,
              weight_decay=0.0, frozen=FROZEN)
  tx = optim.make_optimizer(ocfg, total_steps=1000)
  init_fn = functools.partial(q.init_params, cfg)
  boxed = jax.eval_shape(init_fn, jax.random.key(0))
  counts = model_flops(cfg, nn.unbox(boxed), b, t, patches)
  t0 = time.perf_counter()
  state, shardings = state_lib.create_train_state(init_fn, tx, mesh, jax.random.key(0))
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  emit(part="init", seconds=init_s, layout="scanned", **counts)
  gb = batch.shard(mesh)
  ids = decision_ids(cfg)
  loss_cfg = dict(kind="cb_stream", beta=0.9999, text_weight=2.0, chunk_size=shp["chunk"])
  trainable = optim.trainable_mask(nn.unbox(boxed), FROZEN)
  variants = []
  for spec in args.policies.split(","):  # "policy[+fp8][:chunk_size]"
    policy, _, chunk = spec.partition(":")
    variants.append((policy, "jax", int(chunk) if chunk else shp["chunk"]))
  while variants:
    spec_policy, impl, chunk = variants.pop(0)
    policy, _, matmul = spec_policy.partition("+")
    matmul = matmul or "default"
    pcfg = cfg.replace(remat_policy=policy, attention_impl=impl, matmul_dtype=matmul)
    loss_cfg = dict(loss_cfg, chunk_size=chunk)
    step = sft.make_sft_step(
        setup_lib.make_forward(q.Qwen2_5_VL(pcfg), grid), loss_cfg, ids, tx,
        state_shardings=shardings, batch_sharding=batch.shardings(mesh), mesh=mesh,
        unembed_fn=setup_lib.make_unembed(pcfg), trainable=trainable)
    try:
      t0 = time.perf_counter()
      with state_lib.sharding_context(mesh):
        compiled = step.jitted.lower(state, gb).compile()
      compile_s = time.perf_counter() - t0
      holder = {"state": state}

      def run(compiled=compiled, holder=holder):
        with state_lib.sharding_context(mesh):
          holder["state"], m = compiled(holder["state"], gb)
        holder["loss"] = float(m["loss"])

      med, times = _median_time(run, 2, args.steps)
      state = holder["state"]
    except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory: report, go on)
      emit(part="sft_step", policy=policy, matmul=matmul, attention=impl, chunk=chunk,
           error=f"{type(e).__name__}: {str(e)[:600]}")
      if impl == "jax" and "RESOURCE_EXHAUSTED" not in str(e):
        variants.insert(0, (spec_policy, "xla", chunk))  # the fused path failed: measure XLA's
      if any(x.is_deleted() for x in jax.tree.leaves(state)):  # donated to the failed call
        state, shardings = state_lib.create_train_state(init_fn, tx, mesh, jax.random.key(0))
      continue
    mfu = counts["model_flops"] / med
    emit(part="sft_step", policy=policy, matmul=matmul, attention=impl, chunk=chunk,
         compile_s=compile_s,
         step_s=med,
         times=times,
         tokens_per_s=b * t / med, loss=holder["loss"], mfu_spec=mfu / SPEC_PEAK,
         mfu_matmul=mfu / rate, achieved_flops_per_s=mfu, peak_bytes=peak_memory(),
         batch=b, seq_len=t)

def one_device_train_state(cfg, *, lr: float):
  """(mesh, tx, trainable, state, shardings) of a random TrainState of backbone config `cfg` on
  the first device: AdamW at constant `lr`, clip 1, the vision tower frozen (FROZEN)."""
  import functools  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import optim  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  tx = optim.make_optimizer(dict(lr=lr, warmup_steps=0, schedule="constant", grad_clip_norm=1.0,
                                 weight_decay=0.0, frozen=FROZEN), total_steps=1000)
  init_fn = functools.partial(q.init_params, cfg)
  trainable = optim.trainable_mask(nn.unbox(jax.eval_shape(init_fn, jax.random.key(0))), FROZEN)
  state, shardings = state_lib.create_train_state(init_fn, tx, mesh, jax.random.key(0))
  return mesh, tx, trainable, state, shardings


def run_grpo(args, cfg, policy_spec: str):
  """The GRPO update (policy + reference) at the SFT step's shapes, remat `policy_spec`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from streampro_jax import grpo  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import grpo_step  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  shp = shape_args(args.tiny)
  policy, _, chunk = policy_spec.partition(":")
  policy = policy.partition("+")[0]
  chunk = int(chunk) if chunk else shp["chunk"]
  batch, grid = build_batch(cfg, **shp)
  b, t = batch.input_ids.shape
  mesh, tx, trainable, state, shardings = one_device_train_state(cfg, lr=1e-5)
  pcfg = cfg.replace(remat_policy=policy)
  gcfg = grpo.GRPOStepConfig(group_size=b, beta=0.04, logps_chunk_size=chunk)
  logps_fn = grpo.make_logps_fn(setup_lib.make_forward(q.Qwen2_5_VL(pcfg), grid), temperature=1.0,
                                chunk_size=chunk, unembed_fn=setup_lib.make_unembed(pcfg))
  rng = np.random.default_rng(1)
  gbatch = batch.replace(
      old_logps=(-rng.random(batch.labels.shape) * batch.loss_mask).astype(np.float32),
      rewards=rng.random(b).astype(np.float32))
  ggb = gbatch.shard(mesh)
  ref = jax.tree.map(lambda x: x.copy(), state.params)
  gstep = grpo_step.make_grpo_step(logps_fn, tx, gcfg, state_shardings=shardings,
                                   batch_sharding=gbatch.shardings(mesh),
                                   mesh=mesh, trainable=trainable)
  try:
    t0 = time.perf_counter()
    with state_lib.sharding_context(mesh):
      compiled = gstep.jitted.lower(state, ref, ggb).compile()
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def grun():
      with state_lib.sharding_context(mesh):
        holder["state"], m = compiled(holder["state"], ref, ggb)
      holder["loss"] = float(m["loss"])

    med, times = _median_time(grun, 2, args.steps)
    # The GRPO update = the policy's forward + backward and the reference forward (beta > 0).
    emit(part="grpo_step", policy=policy, compile_s=compile_s, step_s=med, times=times,
         tokens_per_s=b * t / med, loss=holder["loss"], peak_bytes=peak_memory())
  except Exception as e:  # pylint: disable=broad-except
    emit(part="grpo_step", error=f"{type(e).__name__}: {str(e)[:400]}")


def torch_checkpoint_kwargs(remat: str) -> dict:
  """torch.utils.checkpoint arguments of transformers' activation checkpointing: "full" recomputes
  each decoder layer (transformers' default); "dots_no_batch" saves the outputs of the 2-D
  matmuls (aten.mm / addmm: the projections and the MLP) and recomputes the rest, batched
  attention products included, as our remat policy of the same name does."""
  if remat == "full":
    return {"use_reentrant": False}
  import functools  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  saved = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}

  def policy(ctx, op, *args, **kwargs):
    del ctx, args, kwargs
    return (ckpt.CheckpointPolicy.MUST_SAVE if op in saved
            else ckpt.CheckpointPolicy.PREFER_RECOMPUTE)

  return {"use_reentrant": False,
          "context_fn": functools.partial(ckpt.create_selective_checkpoint_contexts, policy)}


def run_torch(args):
  # The CB-Stream weights below are computed by streampro_jax.losses: keep JAX on the host so it
  # takes none of the device's memory.
  os.environ["JAX_PLATFORMS"] = "cpu"
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from streampro_jax import losses  # pylint: disable=g-import-not-at-top

  shp = shape_args(args.tiny)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  cfg = model_config(args.tiny)
  batch, grid = build_batch(cfg, **shp)
  b, t = batch.input_ids.shape
  hf = transformers.Qwen2_5_VLConfig(**cfg.replace(scan_layers=False).to_hf(),
                                     attn_implementation="sdpa")
  mode, _, remat = args.torch_variant.partition(":")
  if mode not in ("eager", "compile") or remat not in ("full", "dots_no_batch"):
    raise SystemExit(f"--torch_variant={args.torch_variant}: expected eager|compile:"
                     "full|dots_no_batch")
  t0 = time.perf_counter()
  torch.manual_seed(0)
  with torch.device(dev):
    model = transformers.Qwen2_5_VLForConditionalGeneration(hf).float().train()
  model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=torch_checkpoint_kwargs(remat))
  if dev == "cuda":
    torch.cuda.synchronize()
  init_s = time.perf_counter() - t0
  for name, prm in model.named_parameters():
    prm.requires_grad = not ("visual" in name and "merger" not in name)
  params = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=dev == "cuda")
  ids = decision_ids(cfg)
  labels, mask = batch.labels, batch.loss_mask
  w_k = np.asarray(losses.cb_stream_class_weights(
      np.asarray(losses.decision_class_counts(labels, mask, ids))))
  w = np.where(labels == ids[0], w_k[0], np.where(labels == ids[1], w_k[1], 2.0)) * mask
  w_t = torch.tensor(w, dtype=torch.float32, device=dev)
  labels_t = torch.tensor(labels, dtype=torch.long, device=dev)
  n = float(mask.sum())
  turns = grid.shape[0]
  inputs = dict(
      input_ids=torch.tensor(batch.input_ids, dtype=torch.long, device=dev),
      attention_mask=torch.tensor(batch.attention_mask, dtype=torch.long, device=dev),
      mm_token_type_ids=torch.tensor(np.where(batch.input_ids == cfg.video_token_id, 2, 0),
                                     device=dev),
      pixel_values_videos=torch.tensor(batch.pixel_values_videos.reshape(
          -1, batch.pixel_values_videos.shape[-1]), device=dev),
      video_grid_thw=torch.tensor(np.tile(grid, (b, 1)), device=dev),
      second_per_grid_ts=torch.ones(b * turns, device=dev))

  forward = torch.compile(model) if mode == "compile" else model

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev, dtype=torch.bfloat16):
      logits = forward(**inputs).logits
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels_t.flatten(),
                                            reduction="none").view(labels_t.shape)
    loss = (nll * w_t).sum() / n
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if dev == "cuda":
      torch.cuda.synchronize()
    return float(loss)

  t0 = time.perf_counter()
  step()  # the first step compiles under torch.compile
  first_s = time.perf_counter() - t0
  med, times = _median_time(step, 1, args.steps)
  emit(part="torch_step", variant=args.torch_variant, first_step_s=first_s, init_s=init_s,
       step_s=med, times=times, tokens_per_s=b * t / med,
       peak_bytes=torch.cuda.max_memory_allocated() if dev == "cuda" else None,
       torch=torch.__version__, transformers=transformers.__version__)


def summary(results: list[dict]) -> None:
  by = {}
  for r in results:
    by.setdefault(r["part"], []).append(r)
  print("\n== summary ==")
  for r in by.get("device", [])[:1]:   # every JAX process reports it
    print(f"device: {r['device']} ({r['backend']}), jax {r['jax']}")
  rate = by.get("matmul", [{}])[0].get("bf16_flops_per_s")
  if rate:
    print(f"bf16 matmul: {rate / 1e12:.0f} TFLOP/s")
  for r in by.get("init", []):
    print(f"init of the TrainState ({r['layout']}): {r['seconds']:.1f} s; model FLOPs/step "
          f"{r['model_flops'] / 1e12:.1f} T")
  torch_r = [r for r in by.get("torch_step", []) if "step_s" in r]
  for r in by.get("sft_step", []):
    if "error" in r:
      print(f"SFT step, remat {r['policy']}, chunk {r['chunk']}: {r['error'][:200]}")
      continue
    ratio = "".join(f", {tr['step_s'] / r['step_s']:.2f}x transformers {tr['variant']}"
                    for tr in torch_r)
    print(f"SFT step, remat {r['policy']}, matmul {r.get('matmul', 'default')}, attention "
          f"{r['attention']}, loss chunk {r['chunk']}: "
          f"{r['step_s']:.3f} s, {r['tokens_per_s']:.0f} tok/s, "
          f"MFU {100 * r['mfu_spec']:.1f}% of spec ({100 * r['mfu_matmul']:.1f}% of matmul), "
          f"compile {r['compile_s']:.1f} s, peak {(r['peak_bytes'] or 0) / 2**30:.1f} GiB{ratio}")
  for r in by.get("grpo_step", []):
    print("GRPO update: " + (r["error"] if "error" in r else
                             f"{r['step_s']:.3f} s, {r['tokens_per_s']:.0f} tok/s, compile "
                             f"{r['compile_s']:.1f} s"))
  for r in by.get("torch_step", []):
    print("transformers step " + (f"{r['variant']}: {r['error'][:200]}" if "error" in r else
          f"{r['variant']}: {r['step_s']:.3f} s, {r['tokens_per_s']:.0f} tok/s, first step "
          f"{r['first_step_s']:.1f} s, peak {(r['peak_bytes'] or 0) / 2**30:.1f} GiB"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiny", action="store_true", help="tiny config on CPU (a test runs it)")
  parser.add_argument("--part", default="all", choices=("all", "jax", "grpo", "torch"))
  parser.add_argument("--torch_variants", default="eager:full,compile:full,compile:dots_no_batch",
                      help="the transformers variants, comma-separated, each "
                      "eager|compile:full|dots_no_batch, each in its own process")
  parser.add_argument("--torch_variant", default="eager:full", help=argparse.SUPPRESS)
  parser.add_argument("--policies", default="dots_attn,dots_no_batch,full",
                      help="variants of the SFT step, comma-separated: a remat policy "
                      "(streampro_jax.models.layers._REMAT_POLICIES), policy+fp8 (the decoder's "
                      "projections and MLP in FP8, model matmul_dtype), each optionally "
                      ":chunk_size (loss vocabulary chunk; 0 = full logits)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--skip_grpo", action="store_true")
  parser.add_argument("--skip", default="", help="parts to skip in 'all' (e.g. torch)")
  parser.add_argument("--out", default="", help="also write the JSON lines here")
  args = parser.parse_args()
  if args.tiny:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if args.part in ("jax", "grpo"):
    args.grpo_only = args.part == "grpo"
    return run_jax(args)
  if args.part == "torch":
    return run_torch(args)
  results = []
  env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=os.environ.get(
      "XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92"), PYTHONUNBUFFERED="1")
  skip = set(filter(None, args.skip.split(",")))
  runs = [("jax", ["--policies", p]) for p in args.policies.split(",")]
  if not args.skip_grpo:
    runs.append(("grpo", ["--policies", args.policies.split(",")[0]]))
  runs += [("torch", ["--torch_variant", v]) for v in args.torch_variants.split(",")]
  for part, extra in runs:
    if part in skip:
      continue
    cmd = [sys.executable, os.path.abspath(__file__), "--part", part, "--steps",
           str(args.steps)] + extra + (["--tiny"] if args.tiny else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    for line in proc.stdout:
      if line.startswith("RESULT "):
        results.append(json.loads(line[len("RESULT "):]))
      print(line, end="", flush=True)
    rc = proc.wait()
    print(f"[{part} {' '.join(extra)}] exit {rc} after {time.perf_counter() - t0:.0f} s",
          flush=True)
  if args.out:
    with open(args.out, "w") as f:
      for r in results:
        f.write(json.dumps(r) + "\n")
  summary(results)


if __name__ == "__main__":
  main()
