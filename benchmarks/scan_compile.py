"""Random init and compile time of the loss gradient: scanned layer stacks against unrolled ones.

  .venv/bin/python benchmarks/scan_compile.py [--layers 32] [--vision_blocks 16] [--repeats 3]

A narrow Qwen2.5-VL (width 64, `--layers` decoder layers, `--vision_blocks` vision blocks), on
CPU: for each layout, the wall time of `create_train_state`-style random init (jit of init_params,
first call) and of lowering + compiling the gradient of the SFT loss on a small batch; each
measured --repeats times with the layouts interleaved (a fresh trace and compile every time), the
minimum kept, so that a load spike on a shared machine touches one sample, not the ratio. Prints
one JSON line per layout and the scanned / unrolled ratios.
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
  return dict(scan_layers=cfg.scan_layers, init_s=init_s, grad_compile_s=compile_s)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=32)
  p.add_argument("--vision_blocks", type=int, default=16)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  base = q.tiny_config(text=dict(num_hidden_layers=args.layers),
                       vision=dict(depth=args.vision_blocks,
                                   fullatt_block_indexes=tuple(range(3, args.vision_blocks, 4))),
                       attention_impl="xla", remat=True)
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
