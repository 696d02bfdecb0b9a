"""SFT step throughput: JAX (this library) against a transformers PyTorch training step.

  .venv/bin/python benchmarks/train_step.py [--steps 3] [--config small|mid] [--batch 4]
      [--seq_len 768] [--attention xla|jax] [--skip_torch] [--skip_memory]

Same model config (a small Qwen2.5-VL: 4 decoder layers of width 512 ("small") or 768 with a
vocabulary of 8192 ("mid"), 2 vision blocks), same weights, same SynthStream batch from the grain
pipeline, same loss (CB-Stream), same optimizer (AdamW, vision tower frozen, merger + LLM
trained), float32, on this CPU, default XLA flags. Reports:

* tokens/s of each framework's full training step (forward, backward, AdamW update), counting
  real (non-pad) tokens; compilation and one warm-up step are excluded. The JAX step, the
  PyTorch step and a 2048^3 float32 jnp.dot run interleaved (one of each per round) so a load
  change on this shared machine hits all three; reported: median wall time, median process CPU
  time (all threads), the median per-round speed ratio JAX / PyTorch and the CPU-time ratio;
* the fraction of the matmul peak (three 2048^3 jnp.dots in the same round; also against the best
  round) that the JAX step reaches, from XLA's FLOP count of the compiled step;
* peak temporary memory (XLA buffer assignment) of the loss + gradient with the plain
  full-vocabulary loss against the chunked one, at Qwen2.5-VL's vocabulary size (151,936).

The machine is shared: numbers are indicative; run it briefly.

With --rounds N --out FILE: the CPU method (benchmarks/cpu_rounds.py) for the JAX / PyTorch
ratio instead: N (at least 5) rounds alternating one JAX step and one PyTorch step (wall and
process CPU time), the same batch on both sides (rows, sequence length and real tokens recorded
and checked), the load average around every step, one raw JSON-lines file.

  .venv/bin/python benchmarks/train_step.py --rounds 5 --torch_threads 1 --skip_memory \
      --out benchmarks/results/cpu_sft_step_jax_vs_torch_1thread.jsonl
"""

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np


from streampro_jax import losses, parallel
from streampro_jax.models import qwen2_5_vl
from streampro_jax.train import config_check, optim, sft
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

FROZEN = r"^visual/(?!merger/)"

# Decoder presets (--config); the vision tower is the same small one (2 blocks of width 128).
# small: 12.3 M params, vocabulary from the synthetic tokenizer (320); mid: width 768, 4 layers,
# vocabulary 8192 (38.0 M params, untied).
TEXT_CONFIGS = {
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12)),
    "mid": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=4,
                num_attention_heads=12, num_key_value_heads=2, mrope_section=(8, 12, 12),
                vocab_size=8192),
}


def build(args, workdir):
  cfg = ml_collections.ConfigDict(dict(
      tokenizer="synthetic", global_batch_size=args.batch,
      model=dict(family="qwen2_5_vl", hf_checkpoint="", dtype="float32", param_dtype="float32",
                 attention_impl=args.attention, remat=False,
                 tiny_text=dict(TEXT_CONFIGS[args.config]),
                 tiny_vision=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
                                  fullatt_block_indexes=(1,))),
      data=dict(source="synth", num_videos=16, split="train", synth_seed=0,
                synth=dict(resolution=32, min_duration=12, max_duration=16),
                seq_len=args.seq_len, max_turns=16, frame_height=16, frame_width=16, seed=0,
                shuffle=True, num_threads=2, prefetch_buffer_size=8)))
  tokenizer = setup_lib.make_tokenizer(cfg, workdir)
  mcfg = setup_lib.make_model_config(cfg.model, tokenizer)
  it, pipe = setup_lib.make_data(config_check.build(cfg, "sft").data, tokenizer, mcfg)
  batch = next(it)
  ids = (tokenizer.convert_tokens_to_ids("</Silence>"),
         tokenizer.convert_tokens_to_ids("</Response>"))
  return mcfg, pipe, batch, ids


def torch_model(mcfg):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  hf = transformers.Qwen2_5_VLConfig(**mcfg.to_hf(), attn_implementation="sdpa")
  torch.manual_seed(0)
  return transformers.Qwen2_5_VLForConditionalGeneration(hf).train()


def torch_inputs(mcfg, pipe, batch):
  """HF flat layout: only the real turns' patches, one video per turn."""
  import torch  # pylint: disable=g-import-not-at-top
  p = int(np.prod(pipe.video_grid_thw))
  m = mcfg.vision.spatial_merge_size
  pix, grids = [], []
  for row in range(batch.input_ids.shape[0]):
    k = int(np.sum(batch.input_ids[row] == mcfg.video_token_id)) // (p // (m * m))
    pix.append(batch.pixel_values_videos[row, :k * p])
    grids += [np.asarray(pipe.video_grid_thw)] * k
  ids = batch.input_ids
  types = np.where(ids == mcfg.video_token_id, 2, 0)
  return dict(input_ids=torch.tensor(ids, dtype=torch.long),
              attention_mask=torch.tensor(batch.attention_mask, dtype=torch.long),
              mm_token_type_ids=torch.tensor(types),
              pixel_values_videos=torch.tensor(np.concatenate(pix)),
              video_grid_thw=torch.tensor(np.stack(grids)),
              second_per_grid_ts=torch.ones(len(grids)))


def torch_step_fn(model, inputs, batch, ids, lr=1e-4):
  """transformers forward + CB-Stream loss (host-computed constant weights) + AdamW."""
  import torch  # pylint: disable=g-import-not-at-top
  for name, prm in model.named_parameters():
    prm.requires_grad = not ("visual" in name and "merger" not in name)
  opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr,
                          weight_decay=0.0)
  labels, mask = batch.labels, batch.loss_mask
  counts = np.asarray(losses.decision_class_counts(labels, mask, ids))
  w_k = np.asarray(losses.cb_stream_class_weights(counts))
  w = np.where(labels == ids[0], w_k[0], np.where(labels == ids[1], w_k[1], 2.0)) * mask
  w_t = torch.tensor(w, dtype=torch.float32)
  labels_t = torch.tensor(labels, dtype=torch.long)
  n = float(mask.sum())

  def step():
    opt.zero_grad(set_to_none=True)
    logits = model(**inputs).logits
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels_t.flatten(),
                                            reduction="none").view(labels_t.shape)
    loss = (nll * w_t).sum() / n
    loss.backward()
    torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
    opt.step()
    return float(loss)

  return step


def jax_step(mcfg, pipe, batch, ids, params):
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  ocfg = ml_collections.ConfigDict(dict(lr=1e-4, warmup_steps=0, schedule="constant",
                                        grad_clip_norm=1.0, weight_decay=0.0, frozen=FROZEN))
  tx = optim.make_optimizer(ocfg, total_steps=100)
  boxed = jax.eval_shape(lambda r: qwen2_5_vl.init_params(mcfg, r), jax.random.key(0))
  shardings = state_lib.state_shardings(tx, boxed, mesh)
  state = state_lib.state_from_params(jax.tree.map(np.asarray, params), tx, shardings, mesh)
  grid = np.tile(pipe.video_grid_thw.reshape(1, 3), (pipe.cfg.max_turns, 1))
  b = batch.model_inputs()
  step = sft.make_sft_step(
      setup_lib.make_forward(qwen2_5_vl.Qwen2_5_VL(mcfg), grid), dict(kind="cb_stream"), ids, tx,
      state_shardings=shardings, batch_sharding=b.shardings(mesh), mesh=mesh,
      trainable=optim.trainable_mask(state.params, FROZEN))
  gb = b.shard(mesh)
  with state_lib.sharding_context(mesh):
    compiled = step.jitted.lower(state, gb).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return step, state, gb, float(cost.get("flops", float("nan")))


def timed(fn):
  """(wall seconds, process CPU seconds over all threads) of one call."""
  w, c = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - w, time.process_time() - c


def matmul_peak_fn(n=2048):
  """A jitted n^3 float32 jnp.dot; returns (run, flops)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  return lambda: f(a, b).block_until_ready(), 2 * n ** 3


def loss_memory(b=2, t=1024, d=512, v=151936, chunk=8192):
  """XLA temp bytes of value_and_grad of the CB-Stream loss: plain logits vs chunked."""
  h = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
  w = jax.ShapeDtypeStruct((d, v), jnp.float32)
  lab = jax.ShapeDtypeStruct((b, t), jnp.int32)
  msk = jax.ShapeDtypeStruct((b, t), jnp.float32)
  ids = (v - 2, v - 1)

  def plain(h, w, lab, msk):
    return losses.cb_stream_loss(jnp.einsum("btd,dv->btv", h, w), lab, msk, decision_token_ids=ids)

  def chunked(h, w, lab, msk):
    return losses.chunked_stream_loss(h, w, lab, msk, kind="cb_stream", decision_token_ids=ids,
                                      chunk_size=chunk)

  out = {}
  for name, fn in (("plain", plain), ("chunked", chunked)):
    c = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(h, w, lab, msk).compile()
    mem = c.memory_analysis()
    out[name] = int(mem.temp_size_in_bytes)
  out["shape"] = dict(B=b, T=t, D=d, V=v, chunk=chunk)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq_len", type=int, default=768)
  parser.add_argument("--config", default="small", choices=sorted(TEXT_CONFIGS))
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--skip_memory", action="store_true")
  parser.add_argument("--attention", default="xla", help="jax | xla (layers.attention)")
  parser.add_argument("--rounds", type=int, default=0,
                      help="the CPU method: this many interleaved rounds, written to --out")
  parser.add_argument("--out", default="", help="with --rounds: the raw JSON-lines file")
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="torch.set_num_threads (0: torch's default)")
  args = parser.parse_args()
  if args.rounds and (not args.out or args.skip_torch):
    parser.error("--rounds needs --out and the PyTorch side")
  import torch  # pylint: disable=g-import-not-at-top
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)

  with tempfile.TemporaryDirectory() as tmp:
    mcfg, pipe, batch, ids = build(args, tmp)
  tokens = int(batch.attention_mask.sum())
  result = {"config": args.config, "batch": args.batch, "seq_len": args.seq_len,
            "attention": args.attention, "real_tokens_per_step": tokens,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg()}

  model = torch_model(mcfg)
  params = qwen2_5_vl.params_from_hf_state_dict(
      mcfg, {k: v.detach().numpy() for k, v in model.state_dict().items()})
  result["params"] = optim.count_params(params, FROZEN)

  t0 = time.perf_counter()
  step, state, gb, flops = jax_step(mcfg, pipe, batch, ids, params)
  result["jax_compile_s"] = time.perf_counter() - t0
  holder = {"state": state}

  def run_jax():
    holder["state"], m = step(holder["state"], gb)
    holder["loss"] = float(m["loss"])

  peak_run, peak_flops = matmul_peak_fn()
  run_jax()  # warm-up (compiled above; first-run allocations)
  result["jax_first_loss"] = holder["loss"]
  runs = {"jax": run_jax, "matmul": lambda: [peak_run() for _ in range(3)]}
  if not args.skip_torch:
    tstep = torch_step_fn(model, torch_inputs(mcfg, pipe, batch), batch, ids)
    result["torch_first_loss"] = tstep()
    runs["torch"] = tstep
  if args.rounds:
    _cpu_method(args, runs, tokens, result, torch.get_num_threads())
    return
  # Interleaved: every round runs each contender once, so a load change on this shared machine
  # hits all of them; ratios are taken per round.
  times = {k: [] for k in runs}
  for _ in range(args.steps):
    for name, fn in runs.items():
      times[name].append(timed(fn))
  med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
         for k, v in times.items()}
  peak = [3 * peak_flops / w for w, _ in times["matmul"]]
  frac = [flops / w / p for (w, _), p in zip(times["jax"], peak)]
  # Conservative figure: the best matmul rate seen in the run against the median step time.
  frac_best = flops / med["jax"][0] / max(peak)
  result["jax"] = {"step_s": med["jax"][0], "cpu_s": med["jax"][1],
                   "all_s": [w for w, _ in times["jax"]],
                   "tokens_per_s": tokens / med["jax"][0], "step_flops": flops,
                   "achieved_flops_per_s": flops / med["jax"][0],
                   "fraction_of_matmul_peak": statistics.median(frac),
                   "fraction_of_best_matmul_peak": frac_best}
  result["matmul_peak_flops_per_s"] = statistics.median(peak)
  result["matmul_peak_best_flops_per_s"] = max(peak)
  if "torch" in runs:
    result["torch"] = {"step_s": med["torch"][0], "cpu_s": med["torch"][1],
                       "all_s": [w for w, _ in times["torch"]],
                       "tokens_per_s": tokens / med["torch"][0]}
    result["jax_over_torch_speed"] = statistics.median(
        t / j for (j, _), (t, _) in zip(times["jax"], times["torch"]))
    result["jax_over_torch_cpu"] = med["torch"][1] / med["jax"][1]
  if not args.skip_memory:
    result["loss_memory_temp_bytes"] = loss_memory()
  print(json.dumps(result, indent=1))
  print(f"tokens/s  JAX {result['jax']['tokens_per_s']:.0f}"
        + (f"  PyTorch {result['torch']['tokens_per_s']:.0f}  JAX/PyTorch speed "
           f"{result['jax_over_torch_speed']:.2f} (CPU time ratio "
           f"{result['jax_over_torch_cpu']:.2f})" if "torch" in result else "")
        + f"  JAX fraction of matmul peak {result['jax']['fraction_of_matmul_peak']:.2f} "
        f"(of the best matmul rate seen: {result['jax']['fraction_of_best_matmul_peak']:.2f})")
  if "loss_memory_temp_bytes" in result:
    m = result["loss_memory_temp_bytes"]
    print(f"loss+grad peak temp memory: plain {m['plain'] / 2**30:.2f} GiB, "
          f"chunked {m['chunked'] / 2**30:.2f} GiB")


def _cpu_method(args, runs, tokens: int, result: dict, torch_threads: int) -> None:
  """One JAX step against one PyTorch step per turn, by benchmarks/cpu_rounds.run_rounds."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import cpu_rounds  # pylint: disable=g-import-not-at-top  (benchmarks/cpu_rounds.py)
  work = {"rows": args.batch, "seq_len": args.seq_len, "real_tokens": tokens, "steps": 1}

  def side(name):
    def fn():
      wall, cpu = timed(runs[name])
      return {"seconds": wall, "cpu_s": cpu, "tokens_per_s": tokens / wall, **work}
    return fn

  cpu_rounds.run_rounds(
      f"sft_step_jax_vs_torch_{args.config}_torch_threads_{torch_threads}",
      [("jax", side("jax")), ("torch", side("torch"))], rounds=args.rounds, out=args.out,
      also=("cpu_s",), work_keys=tuple(work),
      extra={k: result[k] for k in ("config", "attention", "params", "jax_compile_s",
                                    "jax_first_loss", "torch_first_loss")}
      | {"torch_threads": torch_threads})


if __name__ == "__main__":
  main()
