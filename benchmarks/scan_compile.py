"""Random init and compile time of the loss gradient: scanned layer stacks against unrolled ones.

  .venv/bin/python benchmarks/scan_compile.py [--layers 32] [--vision_blocks 16] [--repeats 3]

A narrow Qwen2.5-VL (width 64, `--layers` decoder layers, `--vision_blocks` vision blocks), on
CPU: for each layout, the wall time of `create_train_state`-style random init (jit of init_params,
first call) and of lowering + compiling the gradient of the SFT loss on a small batch; each
measured --repeats times with the layouts interleaved (a fresh trace and compile every time), the
minimum kept, so that a load spike on a shared machine touches one sample, not the ratio. Prints
one JSON line per layout and the scanned / unrolled ratios.

With --rounds N --out FILE, the CPU method (benchmarks/cpu_rounds.py) instead: N (at least 5)
rounds alternating the layouts (scanned first in even rounds), every sample kept, the same model
on both sides (layers, vision blocks, parameter count: recorded and checked), the load average
around every sample, one raw JSON-lines file; the ratio is unrolled over scanned (how many times
faster the scanned layout compiles the gradient; random init alongside).

  .venv/bin/python benchmarks/scan_compile.py --rounds 5 \\
      --out benchmarks/results/cpu_scan_compile.jsonl
"""

import argparse
import functools
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn
import jax
import jax.numpy as jnp

from streampro_jax.models import qwen2_5_vl as q


def measure(cfg) -> dict:
  t0 = time.perf_counter()
  params = jax.jit(functools.partial(q.init_params, cfg))(jax.random.key(0))
  jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  params = nn.unbox(params)
  inp = q.synthetic_inputs(cfg, [(1, 8, 8)] * 4, batch=2, seed=0)
  pos = q.host_position_ids(cfg, inp["input_ids"], inp["video_grid_thw"])
  grid = inp.pop("video_grid_thw")
  inp.pop("second_per_grid_ts")

  def loss(p):
    out = q.Qwen2_5_VL(cfg).apply({"params": p}, video_grid_thw=grid, position_ids=pos, **inp)
    return jnp.mean(jax.nn.logsumexp(out, axis=-1))

  t0 = time.perf_counter()
  jax.jit(jax.grad(loss)).lower(params).compile()
  compile_s = time.perf_counter() - t0
  return dict(scan_layers=cfg.scan_layers, init_s=init_s, grad_compile_s=compile_s,
              params=int(sum(x.size for x in jax.tree.leaves(params))))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=32)
  p.add_argument("--vision_blocks", type=int, default=16)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--rounds", type=int, default=0,
                 help="the CPU method: this many interleaved rounds, written to --out")
  p.add_argument("--out", default="", help="with --rounds: the raw JSON-lines file")
  args = p.parse_args()
  if args.rounds and not args.out:
    p.error("--rounds needs --out")
  base = q.tiny_config(text=dict(num_hidden_layers=args.layers),
                       vision=dict(depth=args.vision_blocks,
                                   fullatt_block_indexes=tuple(range(3, args.vision_blocks, 4))),
                       attention_impl="xla", remat=True)
  if args.rounds:
    import sys  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cpu_rounds  # pylint: disable=g-import-not-at-top  (benchmarks/cpu_rounds.py)
    shape = dict(layers=args.layers, vision_blocks=args.vision_blocks)

    def side(scan):
      return lambda: {**measure(base.replace(scan_layers=scan)), **shape}

    cpu_rounds.run_rounds("scan_compile", [("scanned", side(True)), ("unrolled", side(False))],
                          rounds=args.rounds, out=args.out, metric="grad_compile_s",
                          also=("init_s",), work_keys=(*shape, "params"))
    return
  samples = {False: [], True: []}
  for _ in range(args.repeats):
    for scan in (False, True):
      samples[scan].append(measure(base.replace(scan_layers=scan)))
  rows = {}
  for scan, runs in samples.items():
    rows[scan] = dict(scan_layers=scan, init_s=min(r["init_s"] for r in runs),
                      grad_compile_s=min(r["grad_compile_s"] for r in runs),
                      samples=runs)
    print(json.dumps(dict(rows[scan], layers=args.layers, vision_blocks=args.vision_blocks,
                          load_average=os.getloadavg())), flush=True)
  print(f"scanned / unrolled: init {rows[True]['init_s'] / rows[False]['init_s']:.2f}, "
        f"gradient compile {rows[True]['grad_compile_s'] / rows[False]['grad_compile_s']:.2f}")


if __name__ == "__main__":
  main()
