r"""What makes XLA:CPU's float results host-dependent, and whether streampro_jax.numerics pins them.

  .venv/bin/python benchmarks/cpu_numerics.py [--steps 12] [--out <path>.json]

Runs the same short SFT (configs/tiny_synthetic.py, --steps steps, one CPU device) in a fresh
process under each host setting below, and compares the trained parameters bit for bit (SHA-256
of every leaf's bytes) and the per-step losses. The settings stand in for the hosts a run may
land on: one core instead of two (``taskset -c 0``), an AVX2-only CPU's code (``--xla_cpu_max_isa
=AVX2`` on an AVX-512 host), XLA's CPU-specific math off, YNNPACK's dots off, and the other
core busy. A setting that changes
the hash changes every later number of a training run.

Each run of this script appends one JSON line (commit, date, machine, load before and after,
versions, and every setting's hash and losses) to --out's .jsonl sibling and writes --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from streampro_jax import numerics  # noqa: E402

import cpu_rounds  # noqa: E402  (benchmarks/, beside this file)

_PIN = " ".join(numerics.XLA_FLAGS)
# name -> (extra XLA flags, NPROC or None, command prefix, busy other core)
SETTINGS = {
    "default": ("", None, [], False),
    "default, 1 core": ("", None, ["taskset", "-c", "0"], False),
    "default, AVX2 code": ("--xla_cpu_max_isa=AVX2", None, [], False),
    "default, YNNPACK off": ("--xla_cpu_experimental_ynn_fusion_type=", None, [], False),
    "default, portable math": ("--xla_cpu_enable_platform_dependent_math=false", None, [], False),
    "default, 2 threads on 1 core": ("", "2", ["taskset", "-c", "0"], False),
    "pinned": (_PIN, str(numerics.THREADS), [], False),
    "pinned, 1 core": (_PIN, str(numerics.THREADS), ["taskset", "-c", "0"], False),
    "pinned, other core busy": (_PIN, str(numerics.THREADS), [], True),
}

_READ = r"""
import hashlib, json, os, sys
import jax, numpy as np, orbax.checkpoint as ocp
d = os.path.join(sys.argv[1], "checkpoints")
step = max(int(x) for x in os.listdir(d) if x.isdigit())
params = ocp.StandardCheckpointer().restore(os.path.join(d, str(step), "state"))["params"]
h = hashlib.sha256()
for leaf in jax.tree.leaves(params):
  h.update(np.asarray(leaf).tobytes())
rows = [json.loads(l) for l in open(os.path.join(sys.argv[1], "metrics.jsonl"))]
print("RESULT " + json.dumps({"sha256": h.hexdigest(), "step": step,
                              "losses": [r["loss"] for r in rows if "loss" in r]}))
"""


def run_one(name: str, steps: int, tmp: str) -> dict:
  flags, nproc, prefix, busy = SETTINGS[name]
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "NPROC")}
  env.update({"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"})
  if nproc:
    env["NPROC"] = nproc
  workdir = os.path.join(tmp, name.replace(" ", "_").replace(",", ""))
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = prefix + [sys.executable, os.path.join(ROOT, "launch", "train_sft.py"),
                  "--config", os.path.join(ROOT, "configs", "tiny_synthetic.py"),
                  f"--workdir={workdir}", f"--config.total_steps={steps}",
                  "--config.log_every_steps=1", f"--config.checkpoint.every_steps={steps}"]
  hog = None
  if busy:   # a busy loop on the other core for the whole run
    hog = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", "while True: pass"])  # pylint: disable=consider-using-with
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  finally:
    if hog is not None:
      hog.kill()
  if proc.returncode != 0:
    raise RuntimeError(f"{name}: train_sft failed:\n{proc.stderr[-3000:]}")
  out = subprocess.run([sys.executable, "-c", _READ, workdir], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=True).stdout
  res = json.loads(out.split("RESULT ", 1)[1])
  res.update(xla_flags=flags, nproc=nproc or "", prefix=" ".join(prefix), busy_other_core=busy)
  return res


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=12)
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                "cpu_numerics.json"))
  ap.add_argument("--settings", default=";".join(SETTINGS),
                  help="names separated by ';', from: " + "; ".join(SETTINGS))
  args = ap.parse_args()
  names = [n.strip() for n in args.settings.split(";") if n.strip()]
  load0 = os.getloadavg()
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      results[name] = run_one(name, args.steps, tmp)
      r = results[name]
      print(f"{name:<30} {r['sha256'][:12]}  last losses "
            + " ".join(f"{x:.9f}" for x in r["losses"][-3:]), flush=True)
  ref = results.get("pinned") or results[names[0]]
  print(f"\n| setting | parameters after {args.steps} steps | max abs loss difference vs "
        f"pinned | same bits as pinned |\n|---|---|---:|:---:|")
  for name, r in results.items():
    dl = max(abs(a - b) for a, b in zip(r["losses"], ref["losses"]))
    r["same_as_pinned"] = r["sha256"] == ref["sha256"]
    same = "yes" if r["same_as_pinned"] else "no"
    print(f"| {name} | `{r['sha256'][:12]}` | {dl:.3g} | {same} |")
  commit = cpu_rounds.commit()
  import jax  # pylint: disable=g-import-not-at-top
  record = {"benchmark": "cpu_numerics", "commit": commit,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": numerics.fingerprint(), "load_before": load0,
            "load_after": os.getloadavg(),
            "versions": {"jax": jax.__version__, "python": sys.version.split()[0]},
            "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
            "steps": args.steps, "results": results}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
  with open(os.path.splitext(args.out)[0] + ".jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")
  print(f"\nwritten: {args.out}")


if __name__ == "__main__":
  main()
