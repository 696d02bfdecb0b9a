"""Qwen2.5-VL forward throughput (JAX vs transformers PyTorch) and streaming per-turn latency.

  .venv/bin/python benchmarks/model_forward.py [--runs 5] [--turns 200]

1. Forward: the same mid-size random config and inputs (batch 1, several 1 x 16 x 16 videos plus
   text) through our jitted forward and transformers' Qwen2_5_VLForConditionalGeneration (eager
   PyTorch, sdpa attention, no_grad); median wall time of `runs` runs after a warm-up, in one
   process. Prints tokens/s and the ratio.
2. Streaming: one stream (system prefix, then per turn a user chunk with one 1 x 8 x 8 video and
   a 4-token assistant chunk) through the KV cache (`kv_cache.make_extend`); the latency of a
   whole turn (user + assistant chunk) at turn 10 and at the last turn, against recomputing the
   whole context (one jitted full forward over prefix + all turns so far).

With --rounds N --out FILE, the CPU method (benchmarks/cpu_rounds.py) for the forward's
torch / JAX ratio only: N (at least 5) rounds alternating the two forwards (each turn the median
of `--runs` calls), the same input on both sides (tokens and patches recorded and checked), the
load average around every turn, one raw JSON-lines file; `--torch_threads` sets torch's threads
(default: one per core). The streaming comparison is not a ratio of equal work (a cached turn
against recomputing the context) and is not run then.

  .venv/bin/python benchmarks/model_forward.py --rounds 5 --runs 3 --torch_threads 1 \
      --out benchmarks/results/cpu_qwen2_5_forward_mid_1thread.jsonl
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from streampro_jax.models import kv_cache as kc  # noqa: E402
from streampro_jax.models import qwen2_5_vl as q  # noqa: E402


def mid_config() -> q.Qwen2_5_VLConfig:
  return q.tiny_config(
      text=dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12)),
      vision=dict(depth=4, hidden_size=256, intermediate_size=688, num_heads=4, patch_size=14,
                  window_size=112, fullatt_block_indexes=(3,), out_hidden_size=512),
      image_token_id=8186, video_token_id=8187, vision_start_token_id=8188,
      vision_end_token_id=8189)


def timed(fn, runs: int) -> float:
  fn()  # warm-up / compile
  ts = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


def bench_forward(cfg, runs: int, n_videos: int, torch_threads: int = 0,
                  rounds: int = 0, out: str = "") -> dict:
  import torch
  import transformers
  torch.set_num_threads(torch_threads or os.cpu_count() or 1)
  hf = transformers.Qwen2_5_VLConfig(**cfg.to_hf(), attn_implementation="sdpa")
  torch.manual_seed(0)
  m = transformers.Qwen2_5_VLForConditionalGeneration(hf).eval()
  params = q.params_from_hf_state_dict(
      cfg, {k: v.detach().numpy() for k, v in m.state_dict().items()})
  inp = q.synthetic_inputs(cfg, [(1, 16, 16)] * n_videos, batch=1, text_len=32)
  ids = inp["input_ids"]
  grid = inp["video_grid_thw"]
  pos = q.host_position_ids(cfg, ids, grid)
  model = q.Qwen2_5_VL(cfg)
  fwd = jax.jit(lambda p, i, x, ps: model.apply({"params": p}, i, pixel_values_videos=x,
                                                video_grid_thw=grid, position_ids=ps))
  args = (params, jnp.asarray(ids), jnp.asarray(inp["pixel_values_videos"]), jnp.asarray(pos))
  t_jax = timed(lambda: fwd(*args).block_until_ready(), runs)
  tkw = dict(input_ids=torch.tensor(ids, dtype=torch.long),
             pixel_values_videos=torch.tensor(inp["pixel_values_videos"]),
             video_grid_thw=torch.tensor(grid),
             second_per_grid_ts=torch.tensor(inp["second_per_grid_ts"]),
             mm_token_type_ids=torch.tensor(np.where(ids == cfg.video_token_id, 2, 0)))

  def torch_fwd():
    with torch.no_grad():
      return m(**tkw).logits

  if rounds:
    import sys  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cpu_rounds  # pylint: disable=g-import-not-at-top  (benchmarks/cpu_rounds.py)
    torch_fwd()   # warm-up
    ref = torch_fwd().numpy()
    work = dict(rows=1, tokens=int(ids.size), patches=int(inp["pixel_values_videos"].shape[0]))
    sides = [("jax", lambda: dict(seconds=timed(lambda: fwd(*args).block_until_ready(), runs),
                                  **work)),
             ("torch", lambda: dict(seconds=timed(torch_fwd, runs), **work))]
    return cpu_rounds.run_rounds(
        f"qwen2_5_forward_mid_torch_threads_{torch.get_num_threads()}", sides, rounds=rounds,
        out=out, work_keys=tuple(work),
        extra=dict(rel_err=float(np.abs(np.asarray(fwd(*args)) - ref).max()
                                 / np.abs(ref).max())))
  t_torch = timed(torch_fwd, runs)
  ref = torch_fwd().numpy()
  err = float(np.abs(np.asarray(fwd(*args)) - ref).max() / np.abs(ref).max())
  tokens = ids.size
  return dict(tokens=tokens, patches=int(inp["pixel_values_videos"].shape[0]),
              jax_s=t_jax, torch_s=t_torch, jax_tok_s=tokens / t_jax,
              torch_tok_s=tokens / t_torch, speedup=t_torch / t_jax, rel_err=err)


def bench_stream(cfg, turns: int, runs: int) -> dict:
  import flax.linen as nn
  params = nn.unbox(q.init_params(cfg, jax.random.key(0)))
  rng = np.random.default_rng(0)
  grid = np.array([[1, 8, 8]])
  n_vis = 16
  low = 8000
  prefix = list(rng.integers(0, low, 24))
  user = [list(rng.integers(0, low, 6)) + [cfg.vision_start_token_id]
          + [cfg.video_token_id] * n_vis + [cfg.vision_end_token_id] + list(rng.integers(0, low, 2))
          for _ in range(turns)]
  asst = [list(rng.integers(0, low, 4)) for _ in range(turns)]
  pix = rng.standard_normal((turns, 64, cfg.vision.patch_dim)).astype(np.float32)
  ub, ab, pb = 32, 4, 32
  cap = pb + turns * (len(user[0]) + 4) + ub
  ext = kc.make_extend(cfg, output="last")

  def pad(x, n):
    ids = np.zeros((1, n), np.int32)
    mask = np.zeros((1, n), np.int32)
    ids[0, :len(x)], mask[0, :len(x)] = x, 1
    return ids, mask

  cache = kc.init_cache(cfg, 1, cap, window_turns=200)
  ids, msk = pad(prefix, pb)
  pos, start = q.chunk_position_ids(ids, 0, config=cfg, chunk_mask=msk)
  _, cache = ext(params, cache, ids, pos, 0, msk, pin=True)
  turn_times = []
  for k in range(turns):
    t0 = time.perf_counter()
    ids, msk = pad(user[k], ub)
    pos, start = q.chunk_position_ids(ids, start, config=cfg, chunk_mask=msk, video_grid_thw=grid)
    out, cache = ext(params, cache, ids, pos, k, msk, pixel_values=pix[k][None],
                     video_grid_thw=grid)
    ids, msk = pad(asst[k], ab)
    pos, start = q.chunk_position_ids(ids, start, config=cfg, chunk_mask=msk)
    out, cache = ext(params, cache, ids, pos, k, msk)
    out.block_until_ready()
    turn_times.append(time.perf_counter() - t0)
  assert not bool(np.asarray(cache.overflow).any())
  model = q.Qwen2_5_VL(cfg)

  def recompute(k):
    ids = np.array([prefix + sum((user[j] + asst[j] for j in range(k + 1)), [])], np.int32)
    g = np.tile(grid, (k + 1, 1))
    p = q.host_position_ids(cfg, ids, g)
    x = pix[:k + 1].reshape(-1, pix.shape[-1])
    fn = jax.jit(lambda pr, i, x, ps: model.apply({"params": pr}, i, pixel_values_videos=x,
                                                  video_grid_thw=g, position_ids=ps,
                                                  return_hidden=True)[:, -1])
    return timed(lambda: fn(params, ids, x, p).block_until_ready(), runs), ids.shape[1]

  res = {}
  for k in (10, turns - 1):
    med = statistics.median(turn_times[max(k - 2, 1):k + 1])
    t_full, length = recompute(k)
    res[f"turn{k + 1}"] = dict(stream_ms=1e3 * med, recompute_ms=1e3 * t_full,
                               context_tokens=length, speedup=t_full / med)
  res["compiled_variants"] = ext.compiled_count()
  return res


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--runs", type=int, default=5)
  ap.add_argument("--videos", type=int, default=4)
  ap.add_argument("--turns", type=int, default=200)
  ap.add_argument("--skip-forward", action="store_true")
  ap.add_argument("--rounds", type=int, default=0,
                  help="the CPU method for the forward: this many interleaved rounds, to --out")
  ap.add_argument("--out", default="", help="with --rounds: the raw JSON-lines file")
  ap.add_argument("--torch_threads", type=int, default=0, help="0: one per core")
  args = ap.parse_args()
  cfg = mid_config()
  if args.rounds:
    if not args.out:
      ap.error("--rounds needs --out")
    bench_forward(cfg, args.runs, args.videos, args.torch_threads, args.rounds, args.out)
    return
  print(f"jax {jax.__version__} devices {jax.devices()} cpus {os.cpu_count()}")
  if not args.skip_forward:
    r = bench_forward(cfg, args.runs, args.videos)
    print(f"forward: {r['tokens']} tokens ({r['patches']} patches): jax {r['jax_s'] * 1e3:.1f} ms "
          f"({r['jax_tok_s']:.0f} tok/s), torch {r['torch_s'] * 1e3:.1f} ms "
          f"({r['torch_tok_s']:.0f} tok/s), torch/jax time ratio {r['speedup']:.2f}, "
          f"max rel logit diff {r['rel_err']:.1e}")
  s = bench_stream(cfg, args.turns, max(1, args.runs // 2))
  for k, v in s.items():
    print(k, v)


if __name__ == "__main__":
  main()
