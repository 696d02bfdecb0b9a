r"""Latency and memory of one long live stream (streampro_jax/live.py) on the tiny random model.

  .venv/bin/python benchmarks/live_stream.py --turns=3600 \
      --out=benchmarks/results/live_stream_cpu.json

Streams `--turns` seconds (default 3,600 = one hour) of deterministic random 32 x 32 frames
through one LiveSession (the harness's greedy sampler, KV cache with the 200-turn sliding window
and the pinned system prefix), asking a question every `--ask_every` seconds. Records the
per-turn latency (median, p95 overall and per block of `--every` turns), the process RSS
(/proc/self/status VmRSS) and the bytes of live device buffers (jax.live_arrays()) every
`--every` turns, and whether the KV cache ever overflowed. Memory is flat when the last
samples equal the ones just after the window filled (turn 200).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_bytes() -> int:
  with open("/proc/self/status", encoding="utf-8") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  return -1


def stream(model, *, turns: int, every: int, ask_every: int, frame_hw: tuple[int, int],
           seed: int = 0, log=print) -> dict:
  """Streams `turns` seconds of random frames (uint8 [frames_per_turn, H, W, 3], H, W =
  frame_hw) through one session of the live.LiveModel `model`, a question every `ask_every`
  seconds. Returns {"lat": seconds per turn, "samples": every `every` turns (and the first) the
  turn, RSS, live device buffer MB and that block's median / p95 latency in ms, "decisions":
  counts, "overflow": whether the KV cache ever overflowed, "wall_s"}."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  session = model.new_session("bench")
  rng = np.random.default_rng(seed)
  lat, samples, decisions = [], [], {"silence": 0, "response": 0, "invalid": 0}
  overflow = False
  t0 = time.perf_counter()
  for k in range(turns):
    frames = rng.integers(0, 256, (model.frames_per_turn, *frame_hw, 3), dtype=np.uint8)
    qs = [f"What is on screen at second {k}?"] if k % ask_every == 0 else ()
    r = session.step(frames, qs)
    lat.append(r.latency_s)
    decisions[r.decision] += 1
    overflow |= r.overflow
    if (k + 1) % every == 0 or k == 0:
      block = np.asarray(lat[-every:])
      samples.append({"turn": k + 1, "rss_mb": rss_bytes() / 2 ** 20,
                      "device_mb": sum(a.nbytes for a in jax.live_arrays()) / 2 ** 20,
                      "median_ms": float(np.median(block) * 1e3),
                      "p95_ms": float(np.percentile(block, 95) * 1e3)})
      s = samples[-1]
      log(f"turn {s['turn']:>5d}: rss {s['rss_mb']:.1f} MB, device buffers "
          f"{s['device_mb']:.2f} MB, latency median {s['median_ms']:.1f} ms p95 "
          f"{s['p95_ms']:.1f} ms")
  return {"lat": lat, "samples": samples, "decisions": decisions, "overflow": overflow,
          "wall_s": time.perf_counter() - t0}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--turns", type=int, default=3600)
  p.add_argument("--every", type=int, default=100)
  p.add_argument("--ask_every", type=int, default=60)
  p.add_argument("--max_text_tokens", type=int, default=16)
  p.add_argument("--constrain_decision", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--out", default=None)
  args = p.parse_args()

  import tempfile
  import jax
  from configs import tiny_synthetic
  from streampro_jax import live
  from streampro_jax.train import setup

  config = tiny_synthetic.get_config()
  params, mcfg, tok = setup.random_model(config, tempfile.mkdtemp(prefix="live_bench_"))
  frame = int(config.data.frame_height)
  model = live.LiveModel(params, mcfg, tok, live.LiveConfig(
      frame_height=frame, frame_width=frame, max_text_tokens=args.max_text_tokens,
      constrain_decision=args.constrain_decision, force_response_at_ask=True))
  compile_s = model.warm_up()
  run = stream(model, turns=args.turns, every=args.every, ask_every=args.ask_every,
               frame_hw=(32, 32), log=lambda s: print(s, flush=True))
  lat, samples, decisions, overflow = (run["lat"], run["samples"], run["decisions"],
                                       run["overflow"])
  wall = run["wall_s"]
  summary = live.latency_summary(lat, float(args.turns))
  after_window = [s for s in samples if s["turn"] >= 200]
  out = {
      "command": "python3 benchmarks/live_stream.py " + " ".join(sys.argv[1:]),
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                 f"jax {jax.__version__} {jax.devices()[0].platform}",
      "turns": args.turns, "wall_s": wall, "compile_s": compile_s, "decisions": decisions,
      "kv_capacity": model.capacity, "overflow": overflow, **summary,
      "rss_mb_after_window": [min(s["rss_mb"] for s in after_window),
                              max(s["rss_mb"] for s in after_window)] if after_window else None,
      "device_mb_after_window": [min(s["device_mb"] for s in after_window),
                                 max(s["device_mb"] for s in after_window)]
      if after_window else None,
      "samples": samples}
  print(json.dumps({k: v for k, v in out.items() if k != "samples"}, indent=1))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
