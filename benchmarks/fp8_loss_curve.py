"""SFT loss curves of a small config with the FP8 switch off and on (model.matmul_dtype).

  python3 benchmarks/fp8_loss_curve.py --steps 200 --out=benchmarks/results/fp8_loss_curve_cpu.jsonl

The tiny Qwen2.5-VL of benchmarks/gpu_train_step.py --tiny (bf16 compute, float32 master weights,
remat dots_attn, the chunked CB-Stream loss, vision tower frozen, AdamW at lr 1e-3 constant), the
same initial parameters and the same 4 batches in turn (so the loss falls), `--steps` steps each
way: the issue's criterion is the final loss (mean of the last 10 steps) of fp8 within 1 % of
bf16's. On the CPU the FP8 rounding is emulated (fp8_qdq around each product), so only the loss,
not the time, is a figure here. One JSON line per matmul_dtype (the curve) and one comparison.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cpu_rounds  # noqa: E402  (beside this file)


def curve(matmul: str, steps: int, lr: float) -> list[float]:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import optim, sft  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  import gpu_train_step  # pylint: disable=g-import-not-at-top

  cfg = gpu_train_step.model_config(True, remat_policy="dots_attn", matmul_dtype=matmul)
  shp = gpu_train_step.shape_args(True)
  batches = []
  for seed in range(4):
    batch, grid = gpu_train_step.build_batch(cfg, **shp, seed=seed)
    batches.append(batch)
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  tx = optim.make_optimizer(dict(lr=lr, warmup_steps=0, schedule="constant", grad_clip_norm=1.0,
                                 weight_decay=0.0, frozen=gpu_train_step.FROZEN),
                            total_steps=steps)
  init_fn = functools.partial(q.init_params, cfg)
  trainable = optim.trainable_mask(nn.unbox(jax.eval_shape(init_fn, jax.random.key(0))),
                                   gpu_train_step.FROZEN)
  state, shardings = state_lib.create_train_state(init_fn, tx, mesh, jax.random.key(0))
  loss_cfg = dict(kind="cb_stream", beta=0.9999, text_weight=2.0, chunk_size=shp["chunk"])
  step = sft.make_sft_step(
      setup_lib.make_forward(q.Qwen2_5_VL(cfg), grid), loss_cfg, gpu_train_step.decision_ids(cfg),
      tx, state_shardings=shardings, batch_sharding=batches[0].shardings(mesh),
      mesh=mesh, unembed_fn=setup_lib.make_unembed(cfg), trainable=trainable)
  device_batches = [b.shard(mesh) for b in batches]
  losses = []
  for i in range(steps):
    with state_lib.sharding_context(mesh):
      state, m = step(state, device_batches[i % len(device_batches)])
    losses.append(float(m["loss"]))
  return losses


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--out", default="")
  args = p.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  commit = cpu_rounds.commit(os.path.dirname(HERE))
  header = {"commit": commit, "command": "python3 benchmarks/fp8_loss_curve.py " +
            " ".join(sys.argv[1:]), "machine": f"{platform.node()}, {os.cpu_count()} CPUs, "
            f"{jax.devices()[0].platform}", "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_before": os.getloadavg()}
  rows = []
  final = {}
  for matmul in ("default", "fp8"):
    t0 = time.perf_counter()
    losses = curve(matmul, args.steps, args.lr)
    tail = losses[-min(10, len(losses)):]
    final[matmul] = sum(tail) / len(tail)
    rows.append({**header, "part": "curve", "matmul_dtype": matmul, "steps": args.steps,
                 "lr": args.lr, "seconds": time.perf_counter() - t0, "final_loss": final[matmul],
                 "losses": losses})
    print(f"{matmul}: loss {losses[0]:.4f} -> {final[matmul]:.4f} (mean of the last "
          f"{len(tail)}), {rows[-1]['seconds']:.0f} s", flush=True)
  rel = abs(final["fp8"] - final["default"]) / abs(final["default"])
  rows.append({**header, "part": "compare", "steps": args.steps, "final_loss_bf16":
               final["default"], "final_loss_fp8": final["fp8"], "relative_difference": rel,
               "target": 0.01, "load_after": os.getloadavg()})
  print(json.dumps(rows[-1]))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
