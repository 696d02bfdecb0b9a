"""Blocking time of a checkpoint save, asynchronous against synchronous, on CPU.

  .venv/bin/python benchmarks/checkpoint_save.py [--params_m 32] [--rounds 6] \
      [--figure docs/checkpoint_save.png]

A train state of `--params_m` million float32 parameters (AdamW, so three times that in arrays:
parameters and the two moments), born sharded over an (fsdp 8) mesh of 8 CPU devices, saved with
the trainers' own `train/checkpoint.Checkpointer` into a fresh folder under `--dir`:
`async_save=True` (orbax's background write: the loop waits only for the copy off the devices) and
`async_save=False` (the loop waits for the whole write). Per save: the time `save()` blocks the
caller, and the time until the checkpoint is on disk (`wait()` returns). The CPU method
(benchmarks/cpu_rounds.py): `--rounds` (at least 5) rounds, each one async and one sync save,
in alternating order (async first in even rounds), so that a load change on a shared machine
touches both; the same state on both sides (its parameter count and bytes checked every round);
the load average before and after every save. Writes benchmarks/results/cpu_checkpoint_save.jsonl
(one line per round, then the summary: median and range of each side and of the ratio sync /
async, for the blocking time and the time until on disk) and, with --figure, draws the samples.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from streampro_jax import numerics, parallel  # noqa: E402
from streampro_jax.train import checkpoint as ckpt_lib  # noqa: E402
from streampro_jax.train import optim  # noqa: E402
from streampro_jax.train import state as state_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "cpu_checkpoint_save.jsonl")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import cpu_rounds  # noqa: E402  (benchmarks/cpu_rounds.py)
WIDTH = 2048   # each layer a [WIDTH, WIDTH] kernel, split over fsdp by rows


class Stack(nn.Module):
  """`layers` [WIDTH, WIDTH] kernels with logical names (embed, mlp), as a decoder's MLPs."""
  layers: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.layers):
      w = self.param(f"layer_{i}", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), ("embed", "mlp")), (WIDTH, WIDTH))
      x = x @ w
    return x


def make_state(params_m: float):
  layers = max(1, round(params_m * 1e6 / WIDTH**2))
  module = Stack(layers)
  init = lambda rng: module.init(rng, jnp.ones((1, WIDTH)))["params"]
  tx = optim.make_optimizer(ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0)),
                            total_steps=10)
  mesh = parallel.make_mesh({"fsdp": 8})
  state, _ = state_lib.create_train_state(init, tx, mesh, jax.random.key(0))
  jax.block_until_ready(state)
  nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  return state, layers * WIDTH**2, nbytes


def save_once(state, directory: str, async_save: bool) -> dict:
  """One save into a fresh folder: seconds save() blocked, seconds until written."""
  if os.path.exists(directory):
    shutil.rmtree(directory)
  ckpt = ckpt_lib.Checkpointer(directory, keep=1, every_steps=1, async_save=async_save)
  t0 = time.perf_counter()
  ckpt.save(1, state)
  blocking = time.perf_counter() - t0
  ckpt.wait()
  written = time.perf_counter() - t0
  ckpt.close()
  assert ckpt_lib.is_complete(os.path.join(directory, "1"))
  return {"blocking_s": blocking, "written_s": written}


def draw(rounds: list[dict], summary: dict, path: str) -> None:
  """The samples of every round (dots) and their medians (bars), async against sync."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 3.6))
  labels = []
  for i, (mode, what) in enumerate([("async", "blocking_s"), ("sync", "blocking_s"),
                                    ("async", "written_s"), ("sync", "written_s")]):
    xs = [r["sides"][mode][what] for r in rounds]
    ax.scatter([i] * len(xs), xs, s=18, color="C0" if mode == "async" else "C1", alpha=0.7)
    ax.hlines(statistics.median(xs), i - 0.25, i + 0.25, color="k")
    labels.append(f"{mode}\n{'save() blocks' if what == 'blocking_s' else 'on disk after'}")
  ax.set_xticks(range(4), labels)
  ax.set_ylabel("seconds")
  ax.set_ylim(bottom=0)
  work = summary["work"]
  ax.set_title(f"Checkpoint save of a {work['state_bytes'] / 2**20:.0f} MiB train state "
               f"({work['params'] / 1e6:.0f} M params + AdamW), 8 CPU devices\n"
               f"{summary['rounds']} interleaved rounds; bar = median", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--params_m", type=float, default=32.0, help="million parameters")
  ap.add_argument("--rounds", type=int, default=cpu_rounds.MIN_ROUNDS)
  ap.add_argument("--dir", default=None, help="where the checkpoints go (default: a temp dir)")
  ap.add_argument("--out", default=RESULTS)
  ap.add_argument("--figure", default=None, help="PNG of the samples (e.g. docs/...png)")
  args = ap.parse_args()
  state, params, nbytes = make_state(args.params_m)
  print(f"train state: {params / 1e6:.1f} M params, {nbytes / 2**20:.0f} MiB with AdamW moments, "
        f"{jax.device_count()} devices", flush=True)
  with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
    save_once(state, os.path.join(tmp, "warmup"), True)    # orbax's first-use costs

    def side(mode):
      def fn():
        s = save_once(state, os.path.join(tmp, mode), mode == "async")
        return {**s, "params": params, "state_bytes": nbytes}
      return fn

    summary = cpu_rounds.run_rounds(
        "checkpoint_save", [("async", side("async")), ("sync", side("sync"))],
        rounds=args.rounds, out=args.out, metric="blocking_s", also=("written_s",),
        work_keys=("params", "state_bytes"),
        extra={"devices": jax.device_count(), "numerics": numerics.fingerprint()})
  if args.figure:
    with open(args.out, encoding="utf-8") as f:
      rounds = [r for r in map(json.loads, f) if r["kind"] == "round"]
    draw(rounds, summary, args.figure)
    print("figure:", args.figure)


if __name__ == "__main__":
  main()
