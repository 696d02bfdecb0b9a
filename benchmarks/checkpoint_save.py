"""Blocking time of a checkpoint save, asynchronous against synchronous, on CPU.

  .venv/bin/python benchmarks/checkpoint_save.py [--params_m 32] [--rounds 6] \
      [--figure docs/checkpoint_save.png]

A train state of `--params_m` million float32 parameters (AdamW, so three times that in arrays:
parameters and the two moments), born sharded over an (fsdp 8) mesh of 8 CPU devices, saved with
the trainers' own `train/checkpoint.Checkpointer` into a fresh folder under `--dir`:
`async_save=True` (orbax's background write: the loop waits only for the copy off the devices) and
`async_save=False` (the loop waits for the whole write). Per save: the time `save()` blocks the
caller, and the time until the checkpoint is on disk (`wait()` returns). `--rounds` rounds, each
one async and one sync save in alternating order, so that a load change on a shared machine
touches both; every sample is kept. Appends one JSON line (commit, date, machine, load average
before and after, versions, command, samples, medians and ranges) to
benchmarks/results/checkpoint_save.jsonl and, with --figure, draws the samples there.
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
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
import orbax.checkpoint as ocp  # noqa: E402

from streampro_jax import numerics, parallel  # noqa: E402
from streampro_jax.train import checkpoint as ckpt_lib  # noqa: E402
from streampro_jax.train import optim  # noqa: E402
from streampro_jax.train import state as state_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "checkpoint_save.jsonl")
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


def summary(xs):
  return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def draw(record: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 3.6))
  labels = []
  for i, (mode, what) in enumerate([("async", "blocking_s"), ("sync", "blocking_s"),
                                    ("async", "written_s"), ("sync", "written_s")]):
    xs = [s[what] for s in record["samples"][mode]]
    ax.scatter([i] * len(xs), xs, s=18, color="C0" if mode == "async" else "C1", alpha=0.7)
    ax.hlines(statistics.median(xs), i - 0.25, i + 0.25, color="k")
    labels.append(f"{mode}\n{'save() blocks' if what == 'blocking_s' else 'on disk after'}")
  ax.set_xticks(range(4), labels)
  ax.set_ylabel("seconds")
  ax.set_ylim(bottom=0)
  ax.set_title(f"Checkpoint save of a {record['state_bytes'] / 2**20:.0f} MiB train state "
               f"({record['params'] / 1e6:.0f} M params + AdamW), 8 CPU devices\n"
               f"{record['rounds']} interleaved rounds; bar = median", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--params_m", type=float, default=32.0, help="million parameters")
  ap.add_argument("--rounds", type=int, default=6)
  ap.add_argument("--dir", default=None, help="where the checkpoints go (default: a temp dir)")
  ap.add_argument("--out", default=RESULTS)
  ap.add_argument("--figure", default=None, help="PNG of the samples (e.g. docs/...png)")
  args = ap.parse_args()
  if args.rounds < 5:
    ap.error("--rounds must be at least 5")
  load0 = os.getloadavg()
  state, params, nbytes = make_state(args.params_m)
  print(f"train state: {params / 1e6:.1f} M params, {nbytes / 2**20:.0f} MiB with AdamW moments, "
        f"{jax.device_count()} devices", flush=True)
  samples = {"async": [], "sync": []}
  with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
    save_once(state, os.path.join(tmp, "warmup"), True)    # orbax's first-use costs
    for r in range(args.rounds):
      order = ("async", "sync") if r % 2 == 0 else ("sync", "async")
      for mode in order:
        s = save_once(state, os.path.join(tmp, mode), mode == "async")
        samples[mode].append(s)
        print(f"round {r} {mode:5s} save() blocked {s['blocking_s']:.3f} s, on disk after "
              f"{s['written_s']:.3f} s", flush=True)
  stats = {m: {k: summary([s[k] for s in samples[m]]) for k in ("blocking_s", "written_s")}
           for m in samples}
  commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=False).stdout.strip()
  record = {"benchmark": "checkpoint_save", "commit": commit,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": numerics.fingerprint(), "load_before": load0,
            "load_after": os.getloadavg(),
            "versions": {"jax": jax.__version__, "orbax": ocp.__version__,
                         "python": sys.version.split()[0]},
            "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
            "params": params, "state_bytes": nbytes, "devices": jax.device_count(),
            "rounds": args.rounds, "samples": samples, "stats": stats}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")
  for m in ("async", "sync"):
    b, w = stats[m]["blocking_s"], stats[m]["written_s"]
    print(f"{m:5s}: save() blocks median {b['median']:.3f} s [{b['min']:.3f}, {b['max']:.3f}]; "
          f"on disk after median {w['median']:.3f} s [{w['min']:.3f}, {w['max']:.3f}]")
  if args.figure:
    draw(record, args.figure)
    print("figure:", args.figure)


if __name__ == "__main__":
  main()
