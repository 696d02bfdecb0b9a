r"""Seed spread of the end-to-end demo: runs launch/demo.py for several seeds, then reports the
mean and standard deviation of every variant's scores and of the paired differences
(sft_cb_stream - sft_ce, grpo - sft_cb_stream, same seed).

  .venv/bin/python benchmarks/demo_seeds.py --workdir=workdir/demo_seeds [--seeds=0,1,2] \
      [--budget=default] [--parallel=1]

Each seed runs in <workdir>/seed_<n> (resumable, like the demo itself); the summary goes to
<workdir>/seeds_summary.json and is printed as a markdown table (x100). Standard deviations are
sample standard deviations (ddof = 1) over the seeds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKDIR = flags.DEFINE_string("workdir", None, "Parent folder of the per-seed demo workdirs.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_BUDGET = flags.DEFINE_enum("budget", "default", ("smoke", "default"), "Demo budget.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Seeds run at the same time.")
flags.mark_flags_as_required(["workdir"])

VARIANTS = ("sft_ce", "sft_focal", "sft_cb_stream", "grpo")
KEYS = ("W-Avg", "PU", "TR", "PA")
PAIRS = (("sft_cb_stream", "sft_ce"), ("grpo", "sft_cb_stream"), ("sft_focal", "sft_ce"))


def mean_std(xs):
  """(mean, sample standard deviation with ddof = 1; 0 for a single value)."""
  xs = [float(x) for x in xs]
  m = sum(xs) / len(xs)
  if len(xs) < 2:
    return m, 0.0
  return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summarize(results: dict[int, dict]) -> dict:
  """{variant: {key: {mean, std, values}}, "differences": {"a - b": {...}}} from per-seed
  demo results.json contents."""
  seeds = sorted(results)
  out = {"seeds": seeds, "variants": {}, "differences": {}}
  for v in VARIANTS:
    out["variants"][v] = {}
    for k in KEYS:
      vals = [results[s]["variants"][v][k] for s in seeds]
      m, sd = mean_std(vals)
      out["variants"][v][k] = {"mean": m, "std": sd, "values": vals}
  for a, b in PAIRS:
    vals = [results[s]["variants"][a]["W-Avg"] - results[s]["variants"][b]["W-Avg"]
            for s in seeds]
    m, sd = mean_std(vals)
    out["differences"][f"{a} - {b}"] = {"mean": m, "std": sd, "values": vals,
                                         "all_positive": all(x > 0 for x in vals)}
  return out


def markdown(summary: dict) -> str:
  lines = [f"Seeds {summary['seeds']}: mean +- std (x100, ddof 1)", "",
           "| Variant | " + " | ".join(KEYS) + " | W-Avg per seed |",
           "|---|" + "---:|" * (len(KEYS) + 1)]
  for v, rows in summary["variants"].items():
    cells = [f"{100 * rows[k]['mean']:.1f} +- {100 * rows[k]['std']:.1f}" for k in KEYS]
    per_seed = ", ".join(f"{100 * x:.1f}" for x in rows["W-Avg"]["values"])
    lines.append(f"| {v} | " + " | ".join(cells) + f" | {per_seed} |")
  lines += ["", "| Paired W-Avg difference | mean +- std | per seed | all > 0 |",
            "|---|---:|---:|:---:|"]
  for name, d in summary["differences"].items():
    per_seed = ", ".join(f"{100 * x:+.1f}" for x in d["values"])
    lines.append(f"| {name} | {100 * d['mean']:+.1f} +- {100 * d['std']:.1f} | {per_seed} | "
                 f"{'yes' if d['all_positive'] else 'no'} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  seeds = [int(s) for s in _SEEDS.value]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  pending = list(seeds)
  running: dict[int, tuple[subprocess.Popen, float, object]] = {}
  timings = {}
  while pending or running:
    while pending and len(running) < max(_PARALLEL.value, 1):
      s = pending.pop(0)
      d = os.path.join(workdir, f"seed_{s}")
      os.makedirs(d, exist_ok=True)
      log = open(os.path.join(d, "demo.log"), "a", encoding="utf-8")  # pylint: disable=consider-using-with
      cmd = [sys.executable, os.path.join(ROOT, "launch", "demo.py"), f"--workdir={d}",
             f"--budget={_BUDGET.value}", f"--seed={s}", "--noprogress_bar"]
      print(f"seed {s}: {' '.join(cmd)}  (log: {log.name})", flush=True)
      running[s] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,  # pylint: disable=consider-using-with
                                     stderr=subprocess.STDOUT), time.perf_counter(), log)
    time.sleep(2.0)
    for s, (proc, t0, log) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del running[s]
      if proc.returncode != 0:
        raise RuntimeError(f"seed {s} failed (exit {proc.returncode}); see {log.name}")
      timings[s] = time.perf_counter() - t0
      print(f"seed {s}: done in {timings[s]:.0f} s", flush=True)
  results = {}
  for s in seeds:
    with open(os.path.join(workdir, f"seed_{s}", "results.json"), encoding="utf-8") as f:
      results[s] = json.load(f)
  summary = summarize(results)
  summary["budget"] = _BUDGET.value
  summary["timings"] = {str(s): results[s]["timings"] for s in seeds}
  with open(os.path.join(workdir, "seeds_summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  print(markdown(summary))


if __name__ == "__main__":
  app.run(main)
