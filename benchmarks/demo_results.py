r"""README's demo results, written from the raw result files (never by hand), and checked.

  .venv/bin/python benchmarks/demo_results.py            # rewrite README.md's results block
  .venv/bin/python benchmarks/demo_results.py --check    # exit 1 when README.md differs

The raw files are the demo's own results.json, copied into benchmarks/results/:
  demo_seed0.json        README's first command (launch/demo.py --workdir=<new dir>: default
                         budget, seed 0) on a fresh clone;
  demo_seeds_0_1_2.json  launch/demo.py --workdir=<the same dir> --seeds=0,1,2 (the same data, base
                         model and seed 0, seeds 1 and 2 added).
The block between README's BEGIN / END markers holds seed 0's tables, the three seeds' W-Avg, the
paired gaps and the findings (streampro_jax.bench.seeds), the run's wall time, host and load;
README's two figures (benchmarks/results/demo_f1_by_task.png, demo_seeds.png) are drawn from the
same files.
tests/test_demo.py checks that README holds what this script writes, and (slow) that a fresh run
of README's first command prints the raw file's numbers.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from streampro_jax.bench import seeds as seeds_lib  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
SEED0 = os.path.join(RESULTS, "demo_seed0.json")
SEEDS = os.path.join(RESULTS, "demo_seeds_0_1_2.json")
README = os.path.join(ROOT, "README.md")
BEGIN = ("<!-- BEGIN demo results: written by benchmarks/demo_results.py from "
         "benchmarks/results/demo_*.json; do not edit by hand -->")
END = "<!-- END demo results -->"


def read(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def run_line(res: dict) -> str:
  """Where and how long: wall time of the stages run, the host, the load before and after."""
  total = res["timings"]["total_this_run"]
  m, s = divmod(round(total["wall_s"]), 60)
  skipped = [k for k, t in res["timings"].items() if t.get("skipped")]
  num = res["numerics"]
  line = (f"{m} min {s} s wall, {round(total['cpu_s'])} s CPU, on {num['cpu']} ({num['cores']} "
          f"cores, numerics {'pinned' if num['pinned'] else 'not pinned'}); load average "
          f"{res['load']['before'][0]:.2f} before, {res['load']['after'][0]:.2f} after")
  if skipped:
    groups = sorted({k.split("/")[0] for k in skipped}, key=lambda g: (g.startswith("seed_"), g))
    line += (f"; the stages of {', '.join(groups)} reused from the first run (their own times in "
             f"its raw file)")
  return line


def seed0_mismatch(one: dict, many: dict) -> list[str]:
  """Where the 3-seed file's seed 0 differs from the single-seed file's (they must agree: the
  same code on pinned numerics gives the same bits)."""
  out = []
  if one["numerics"]["base_params_sha256"] != many["numerics"]["base_params_sha256"]:
    out.append("base model parameters differ (base_params_sha256)")
  for split in ("test", "validation"):
    a, b = one["per_seed"]["0"][split], many["per_seed"]["0"][split]
    for v in a:
      if a[v]["W-Avg"] != b[v]["W-Avg"] or a[v]["decisions"] != b[v]["decisions"]:
        out.append(f"seed 0, {split}, {v}: W-Avg {a[v]['W-Avg']} vs {b[v]['W-Avg']}")
  return out


def render(one: dict, many: dict) -> str:
  """README's results block (markers included)."""
  bad = seed0_mismatch(one, many)
  if bad:
    raise ValueError(f"{SEED0} and {SEEDS} disagree on seed 0 (different code or numerics?): "
                     + "; ".join(bad))
  parts = [BEGIN, "",
           f"README's first command (budget `{one['budget']}`, seed 0) printed this in "
           f"{run_line(one)} (raw: `benchmarks/results/demo_seed0.json`):", "",
           seeds_lib.seed_tables(one).rstrip(), "",
           f"Three seeds, paired (`launch/demo.py --workdir=<the same dir> --seeds=0,1,2`: the "
           f"same data and base model, only the SFT / GRPO seed changes; {run_line(many)}; raw: "
           f"`benchmarks/results/demo_seeds_0_1_2.json`):", "",
           seeds_lib.seeds_text(many).rstrip(), "", END]
  return "\n".join(parts)


def current_block(text: str) -> str:
  """README's block between the markers (markers included); ValueError when absent."""
  i, j = text.find(BEGIN), text.find(END)
  if i < 0 or j < i:
    raise ValueError(f"README.md has no results block ({BEGIN!r} ... {END!r})")
  return text[i:j + len(END)]


def check(readme_text: str, block: str) -> list[str]:
  """The lines where README's block differs from what the raw files give ([] when equal)."""
  have = current_block(readme_text)
  if have == block:
    return []
  return [line for line in difflib.unified_diff(have.splitlines(), block.splitlines(),
                                                "README.md", "from the raw files", lineterm="",
                                                n=0)]


def compare_run(res: dict, raw: dict) -> list[str]:
  """Where a fresh demo run's results differ from a raw file's (scores to the last bit,
  decisions, findings); [] when they agree."""
  out = []
  for seed in map(str, raw["seeds"]):
    for split in ("test", "validation"):
      for v, want in raw["per_seed"][seed][split].items():
        got = res["per_seed"].get(seed, {}).get(split, {}).get(v)
        if got is None:
          out.append(f"seed {seed}, {split}, {v}: missing from the run")
          continue
        for key in ("W-Avg", "Avg", "PU", "TR", "PA", "per_task", "decisions"):
          if got[key] != want[key]:
            out.append(f"seed {seed}, {split}, {v}, {key}: run {got[key]} vs raw {want[key]}")
  if res.get("findings") != raw.get("findings"):
    out.append(f"findings: run {res.get('findings')} vs raw {raw.get('findings')}")
  return out


def write_figures(one: dict, many: dict) -> list[str]:
  """README's two figures, drawn from the raw files with the demo's own plotting
  (streampro_jax.bench.report), so they cannot lag the tables: demo_f1_by_task.png (seed 0's test
  split, per task) and demo_seeds.png (every seed's W-Avg on both splits). Returns the paths."""
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  from streampro_jax.bench import report  # pylint: disable=g-import-not-at-top
  test0 = one["per_seed"]["0"]["test"]
  variants = {v: {"scores": {**r["per_task"], **{k: r[k] for k in ("PU", "TR", "PA", "Avg",
                                                                    "W-Avg")}}}
              for v, r in test0.items()}
  f1_path = os.path.join(RESULTS, "demo_f1_by_task.png")
  with tempfile.TemporaryDirectory() as tmp:
    shutil.copyfile(report.write_report(variants, tmp)["f1"], f1_path)
  seeds_path = report.plot_seeds(many, os.path.join(RESULTS, "demo_seeds.png"))
  return [f1_path, seeds_path]


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--check", action="store_true", help="exit 1 when README.md differs")
  args = ap.parse_args()
  block = render(read(SEED0), read(SEEDS))
  with open(README, encoding="utf-8") as f:
    text = f.read()
  if args.check:
    diff = check(text, block)
    print("\n".join(diff) if diff else "README.md holds the raw files' results")
    sys.exit(1 if diff else 0)
  have = current_block(text)
  with open(README, "w", encoding="utf-8") as f:
    f.write(text.replace(have, block))
  figures = write_figures(read(SEED0), read(SEEDS))
  print(f"README.md: results block and {', '.join(os.path.relpath(p, ROOT) for p in figures)} "
        f"written from {os.path.relpath(SEED0, ROOT)} and {os.path.relpath(SEEDS, ROOT)}")


if __name__ == "__main__":
  main()
