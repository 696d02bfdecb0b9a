"""The tables of docs/scale.md from the JSON lines launch/aot_compile.py appends.

  python3 benchmarks/aot_table.py benchmarks/results/aot/*.jsonl

docs/scale.md's table is its figures block `aot_table` (benchmarks/figures.py, checked by
tests/test_figures.py), rendered from the two models' files.

One markdown row per compiled stage: model, stage, topology (chips, mesh), attention and remat,
rows x tokens, per-chip arguments / temporaries / total against HBM (GiB), fits, model FLOPs per
chip, compile seconds; then each row's command. Plain Python (no jax).
"""

from __future__ import annotations

import json
import sys

GIB = 2 ** 30


def rows_of(paths):
  for path in paths:
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          yield json.loads(line)


def render(paths) -> str:
  """The table and its numbered commands, as markdown."""
  out = ["| # | model | stage | topology (chips) | mesh (data, fsdp, tensor) | attention, remat | "
         "rows x tokens | arguments | temporaries | total / HBM (GiB) | fits | model TFLOP per "
         "chip | compile s |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  commands = []
  for i, r in enumerate(rows_of(paths), 1):
    b, m, s = r["per_chip_bytes"], r["model"], r["shapes"]
    mesh = r["mesh"]
    size = (f"{s['rows']} x {s['seq_len']}" if "seq_len" in s else
            f"{s['rows']} x cache {s['capacity']}")
    if "num_microbatches" in s and s["num_microbatches"] > 1:
      size += f" ({s['num_microbatches']} micro-batches)"
    total = b.get("total", 0) / GIB
    out.append(f"| {i} | {m['family']} | {r['stage']} | {r['topology']} ({r['chips']}) | "
               f"{mesh.get('data')}, {mesh.get('fsdp')}, {mesh.get('tensor')} | "
               f"{m['attention_impl']}, {m['remat_policy'] if m['remat'] else 'none'} | {size} | "
               f"{b.get('argument', 0) / GIB:.2f} | {b.get('temp', 0) / GIB:.2f} | "
               f"{total:.2f} / {r['hbm_bytes'] / GIB:.0f} | {'yes' if r['fits'] else '**no**'} | "
               f"{r['flops_per_chip'] / 1e12:.1f} | {r['compile_s']:.0f} |")
    commands.append((i, r["command"], r["commit"][:10], r["date"][:16], r["machine"],
                     r["load_before"][0], r["load_after"][0]))
  out.append("")
  for i, cmd, commit, date, machine, lb, la in commands:
    out.append(f"{i}. `{cmd}` (commit {commit}, {date} UTC, {machine}, load {lb:.1f} -> "
               f"{la:.1f})")
  return "\n".join(out)


def main(paths) -> None:
  print(render(paths))


if __name__ == "__main__":
  main(sys.argv[1:])
