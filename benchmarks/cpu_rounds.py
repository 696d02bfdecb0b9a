"""The CPU method for a ratio between two sides (A against B) a reviewer can check.

Every CPU ratio in the docs is measured this way (docs/benchmarks.md, "CPU method"):

- at least 5 rounds, interleaved (A, B, A, B, ...), so that a change of the shared machine's load
  hits both sides alike;
- equal work on both sides: each side reports its work counts (rows, tokens, steps) and
  `check_equal_work` refuses a round whose counts differ;
- the load average (1, 5, 15 min) before and after every round;
- median and range (min-max) of each side and of the per-round ratio; a ratio "holds" only when
  its whole range stays on one side of 1;
- one raw JSON-lines file per figure in benchmarks/results/: every line carries the provenance
  (commit, date, machine, versions, command); one line per round, then one summary line.

benchmarks/figures.py renders the docs' figures from these files only.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_ROUNDS = 5
_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "transformers", "orbax-checkpoint")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine() -> dict:
  """The host: CPU model, cores this process may use, and the node name."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count() or 0
  return {"cpu": _cpu_model(), "cores": cores, "node": platform.node()}


def versions() -> dict:
  """Installed versions of the libraries a CPU figure depends on (absent ones left out)."""
  out = {"python": platform.python_version()}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def commit(root: str = ROOT) -> str:
  """HEAD of the checkout at `root`, with "+changes" when tracked files differ from it;
  "unknown" in a copy without .git or on a machine without git (the device machine's)."""
  try:
    head = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True, check=False, timeout=30).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False,
                           timeout=30).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    return "unknown"
  return (head or "unknown") + ("+changes" if head and dirty else "")


def provenance(figure: str, command: str | None = None) -> dict:
  """The fields every raw line carries: figure name, commit, date, machine, versions, command."""
  if command is None:
    command = " ".join([os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:])
  return {"figure": figure, "commit": commit(),
          "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
          "machine": machine(), "versions": versions(), "command": command}


def spread(xs: Sequence[float]) -> dict:
  """{median, min, max, n} of the values."""
  return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def ratio_summary(a: Sequence[float], b: Sequence[float]) -> dict:
  """Per-round ratios a_i / b_i with their spread, and whether the ratio holds (its whole range
  above 1 or below 1)."""
  if len(a) != len(b) or not a:
    raise ValueError(f"need the same non-zero number of rounds on both sides, got {len(a)} and "
                     f"{len(b)}")
  ratios = [x / y for x, y in zip(a, b)]
  s = spread(ratios)
  return {"ratios": ratios, **s, "holds": s["min"] > 1.0 or s["max"] < 1.0}


def check_equal_work(round_index: int, work_a: dict, work_b: dict) -> None:
  """Raises AssertionError naming the round and the count when the two sides' work differs."""
  if work_a != work_b:
    diff = {k: (work_a.get(k), work_b.get(k)) for k in sorted(set(work_a) | set(work_b))
            if work_a.get(k) != work_b.get(k)}
    raise AssertionError(f"round {round_index}: unequal work on the two sides {diff}")


def _write(out: str, lines: list[dict]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(json.dumps(line) + "\n")


def run_rounds(figure: str, sides: Sequence[tuple[str, Callable[[], dict]]], *, rounds: int,
               out: str, command: str | None = None, metric: str = "seconds",
               work_keys: Sequence[str] = (), also: Sequence[str] = (),
               extra: dict | None = None,
               log: Callable[[str], None] = print) -> dict:
  """Runs `rounds` interleaved rounds of two sides and writes the figure's raw file.

  sides: ((name_a, fn_a), (name_b, fn_b)); each fn runs its side once and returns a dict of
  measurements holding `metric` (seconds: smaller is faster) and the `work_keys` counts (equal
  on both sides, checked every round). Round r runs A then B when r is even, B then A when odd,
  so neither side always runs second. A round whose work differs stops the run: `out` then
  holds the rounds so far and a "dropped" line with the reason (both sides' counts), and the
  AssertionError propagates. Writes (overwrites) `out`: one line per round (both
  sides' measurements and the load average before / after each side) and a summary line
  (spread of each side's metric, and of the ratio B / A of the metric: how many times faster A
  is when the metric is seconds), and the same for each of the measurements named in `also`.
  Returns the summary line.
  """
  if rounds < MIN_ROUNDS:
    raise ValueError(f"--rounds must be at least {MIN_ROUNDS}, got {rounds}")
  (name_a, fn_a), (name_b, fn_b) = sides
  head = provenance(figure, command)
  if extra:
    head.update(extra)
  lines = []
  values = {k: {name_a: [], name_b: []} for k in (metric, *also)}
  for r in range(rounds):
    order = ((name_a, fn_a), (name_b, fn_b)) if r % 2 == 0 else ((name_b, fn_b), (name_a, fn_a))
    got = {}
    for name, fn in order:
      load0 = os.getloadavg()
      m = fn()
      load1 = os.getloadavg()
      got[name] = {**m, "load_before": list(load0), "load_after": list(load1)}
      log(f"round {r} {name}: {metric} {m[metric]:.4g} (load {load0[0]:.1f} -> {load1[0]:.1f})")
    work = {name: {k: got[name][k] for k in work_keys} for name in got}
    try:
      check_equal_work(r, work[name_a], work[name_b])
    except AssertionError as e:   # the raw file keeps the evidence; the figure is dropped
      lines.append({**head, "kind": "round", "round": r, "order": [n for n, _ in order],
                    "work": work, "sides": got})
      _write(out, lines + [{**head, "kind": "dropped", "rounds": r + 1, "reason": str(e),
                            "work": work}])
      raise
    for k, per_side in values.items():
      for name in got:
        per_side[name].append(float(got[name][k]))
    lines.append({**head, "kind": "round", "round": r, "order": [n for n, _ in order],
                  "work": work[name_a], "sides": got})
  loads = [x for line in lines for s in line["sides"].values()
           for x in (s["load_before"][0], s["load_after"][0])]
  summary = {**head, "kind": "summary", "rounds": rounds, "metric": metric,
             "sides": {n: spread(v) for n, v in values[metric].items()},
             "ratio": ratio_summary(values[metric][name_b], values[metric][name_a]),
             "ratio_meaning": f"{name_b} {metric} / {name_a} {metric}, per round",
             "also": {k: {"sides": {n: spread(v) for n, v in values[k].items()},
                          "ratio": ratio_summary(values[k][name_b], values[k][name_a])}
                      for k in also},
             "work": lines[0]["work"], "load_1min": spread(loads)}
  _write(out, lines + [summary])
  r = summary["ratio"]
  log(f"{figure}: {name_b}/{name_a} {metric} median {r['median']:.2f}x "
      f"(range {r['min']:.2f}-{r['max']:.2f}, holds: {r['holds']}) over {rounds} rounds -> {out}")
  return summary
