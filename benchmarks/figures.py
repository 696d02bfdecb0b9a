"""Writes the docs' figure blocks from the raw result files in benchmarks/results/.

A figure block in a doc is the text between `<!-- BEGIN figures:NAME -->` and
`<!-- END figures:NAME -->`; `BLOCKS` maps each NAME to its doc and to the function that renders
it from raw files only (nothing typed by hand), so a figure in the docs is what its raw file says.

  .venv/bin/python benchmarks/figures.py           # rewrite every block
  .venv/bin/python benchmarks/figures.py --check   # exit 1 naming each block that differs

tests/test_figures.py runs the check (and shows it failing on a planted wrong digit). README's
demo block has its own writer, benchmarks/demo_results.py (checked by tests/test_demo.py).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def _jsonl(name: str) -> list[dict]:
  with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _json(name: str):
  with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
    return json.load(f)


def _log_dict(name: str, prefix: str) -> dict:
  """The dict printed on the line starting with `prefix` ("ours: ") of a raw log."""
  with open(os.path.join(RESULTS, name), encoding="utf-8") as f:
    line = next(l for l in f if l.startswith(prefix))
  return ast.literal_eval(line[len(prefix):])


def _span(values, fmt: str, unit: str = "") -> str:
  """'a-b<unit>' over the values (one value: 'a<unit>'), each formatted with `fmt`."""
  lo, hi = format(min(values), fmt), format(max(values), fmt)
  return (lo if lo == hi else f"{lo}-{hi}") + unit


# ------------------------------------------------------------------------------------------------
# Renderers: raw files -> markdown.

GPU_RUNS = ("gpu_train_step_h200_run1.jsonl", "gpu_train_step_h200_run2.jsonl",
            "gpu_train_step_h200_run3.jsonl")
DECODE_LOG, DECODE_BOUND = "rollout_decode_h200_run1.log", "rollout_decode_h200_run1_bound.json"


def gpu_summary() -> str:
  """The H200 rows of docs/benchmarks.md's summary table."""
  rows = [r | {"_file": f} for f in GPU_RUNS for r in _jsonl(f)]
  sft = [r for r in rows if r["part"] == "sft_step" and r.get("policy") == "dots_no_batch"
         and r.get("attention") == "jax" and not r.get("chunk") and "step_s" in r]
  full = [r for r in rows if r["part"] == "sft_step" and r.get("policy") == "full"
          and "step_s" in r]
  torch = [r for r in rows if r["part"] == "torch_step"]
  grpo = [r for r in rows if r["part"] == "grpo_step" and "step_s" in r]
  init = [r for r in rows if r["part"] == "init"]
  t_step = torch[0]["step_s"]
  files = lambda rs: ", ".join(sorted({f"`{r['_file']}`" for r in rs}))  # noqa: E731
  ours = decode = _log_dict(DECODE_LOG, "ours: ")
  hf = _log_dict(DECODE_LOG, "transformers: ")
  bound = _json(DECODE_BOUND)
  del ours
  lines = [
      "| figure | value | raw files | command |",
      "|---|---|---|---|",
      f"| paper-shape SFT step, Qwen2.5-VL-3B (T {sft[0]['seq_len']:,}, bf16, remat "
      f"dots_no_batch) | {_span([r['step_s'] for r in sft], '.3f', ' s')}, "
      f"{_span([r['tokens_per_s'] for r in sft], ',.0f')} tokens/s, MFU "
      f"{_span([100 * r['mfu_spec'] for r in sft], '.0f', ' %')} ({len(sft)} runs) | "
      f"{files(sft)} | `python3 benchmarks/gpu_train_step.py` |",
      f"| transformers SFT step, eager PyTorch, full-layer checkpointing (untuned baseline) | "
      f"{t_step:.2f} s: ours is {t_step / max(r['step_s'] for r in sft):.1f}x faster with "
      f"dots_no_batch, {t_step / max(r['step_s'] for r in full):.1f}x at equal remat (full); "
      f"torch.compile baseline pending a GPU | {files(torch + full)} | same |",
      f"| paper-shape GRPO update (policy + reference) | "
      f"{_span([r['step_s'] for r in grpo], '.3f', ' s')}, "
      f"{_span([r['tokens_per_s'] for r in grpo], ',.0f')} tokens/s | {files(grpo)} | same |",
      f"| 3B TrainState random init / SFT step compile | "
      f"{_span([r['seconds'] for r in init], '.1f', ' s')} / "
      f"{_span([r['compile_s'] for r in sft], '.0f', ' s')} | {files(init + sft)} | same |",
      f"| decode, 3B shapes, {decode['rows']} rows x {decode['new_tokens']} tokens after "
      f"{decode['prefix_len']} | {decode['tokens_per_s']:,.0f} tokens/s (decode alone "
      f"{decode['decode_tokens_per_s']:,.0f}); transformers eager `generate` "
      f"{hf['tokens_per_s']:,.0f} ({decode['tokens_per_s'] / hf['tokens_per_s']:.2f}x); "
      f"{100 * bound['bandwidth_fraction']:.0f} % of the HBM bandwidth bound "
      f"({bound['decode_step_bytes'] / 1e9:.2f} GB read per step) | `{DECODE_LOG}`, "
      f"`{DECODE_BOUND}` | `python3 benchmarks/rollout_decode.py --model=3b --rows=16 "
      f"--new_tokens=64 --dtype=bfloat16 --hbm_bytes_per_s=4.8e12 --scan_layers` |",
  ]
  return "\n".join(lines)


def cpu_numerics() -> str:
  """docs/decisions.md's table of what changes XLA:CPU's bits."""
  raw = _json("cpu_numerics.json")
  res = raw["results"]
  pinned = res["pinned"]["losses"]
  m = raw["machine"]
  lines = [f"Raw `benchmarks/results/cpu_numerics.json` ({raw['date'][:10]}, {m['cpu']} with "
           f"{m['isa'].upper().replace('F', '')}, {m['cores']} cores, {raw['steps']} steps, "
           f"load {raw['load_before'][0]:.1f} before / {raw['load_after'][0]:.1f} after):",
           "",
           f"| setting | parameters after {raw['steps']} steps (SHA-256) | max abs loss difference "
           "vs pinned | same bits as pinned |",
           "|---|---|---:|:---:|"]
  for name, r in res.items():
    diff = max(abs(a - b) for a, b in zip(r["losses"], pinned))
    lines.append(f"| {name} | `{r['sha256'][:12]}` | {format(diff, '.2e') if diff else '0'} | "
                 f"{'yes' if r['same_as_pinned'] else 'no'} |")
  return "\n".join(lines)


def deviations() -> str:
  """The demo's settings that differ from the paper's (configs/demo.py: PAPER_DEVIATIONS, the
  values read from get_config())."""
  sys.path.insert(0, ROOT)
  from configs import demo  # pylint: disable=g-import-not-at-top
  lines = ["| Setting | Paper | Demo | Why, and how it was chosen |", "|---|---|---|---|"]
  lines += [f"| {d['setting']} | {d['paper']} | {d['demo']} | {d['why']} |"
            for d in demo.paper_deviations(demo.get_config())]
  return "\n".join(lines)


def test_split_size() -> str:
  """docs/ablations.md's paired test-split gaps of the same 3-seed models on 140 and 560 test
  videos (README's raw 3-seed file and the rescoring's)."""
  small = _json("demo_seeds_0_1_2.json")["summary"]["test"]["gaps"]
  big = _json("demo_test560_seeds_0_1_2.json")["summary_test"]["gaps"]
  lines = ["| Paired W-Avg gap x100 | test videos | per seed | mean +- std | mean >= 2 std |",
           "|---|---:|---:|---:|:---:|"]
  for gap in small:
    for n, g in ((140, small[gap]), (560, big[gap])):
      per = ", ".join(f"{100 * v:+.1f}" for v in g["values"])
      lines.append(f"| {gap} | {n} | {per} | {100 * g['mean']:+.1f} +- {100 * g['std']:.1f} | "
                   f"{'yes' if g['holds'] else 'no'} |")
  return "\n".join(lines)


# name -> (the docs that hold the block, its renderer)
BLOCKS: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {
    "gpu_summary": (("docs/benchmarks.md",), gpu_summary),
    "cpu_numerics": (("docs/decisions.md",), cpu_numerics),
    "deviations": (("README.md", "docs/method.md"), deviations),
    "test_split_size": (("docs/ablations.md",), test_split_size),
}


# ------------------------------------------------------------------------------------------------


def _pattern(name: str) -> re.Pattern:
  return re.compile(rf"(<!-- BEGIN figures:{re.escape(name)} -->\n)(.*?)(<!-- END figures:"
                    rf"{re.escape(name)} -->)", re.DOTALL)


def render(text: str, name: str, body: str, doc: str) -> str:
  """`text` with block `name`'s body replaced by `body`; ValueError when the markers are not
  there exactly once."""
  pat = _pattern(name)
  if len(pat.findall(text)) != 1:
    raise ValueError(f"{doc}: expected one '<!-- BEGIN figures:{name} -->' ... "
                     f"'<!-- END figures:{name} -->' block")
  return pat.sub(lambda m: m.group(1) + body + "\n" + m.group(3), text)


def stale_blocks(root: str = ROOT) -> list[str]:
  """Names of the blocks whose text in their doc differs from what the raw files give."""
  stale = []
  for name, (docs, fn) in BLOCKS.items():
    body = fn()
    for doc in docs:
      with open(os.path.join(root, doc), encoding="utf-8") as f:
        text = f.read()
      if render(text, name, body, doc) != text:
        stale.append(f"{doc}: figures:{name}")
  return stale


def write_all(root: str = ROOT) -> list[str]:
  """Rewrites every block; returns the docs that changed."""
  changed = []
  for name, (docs, fn) in BLOCKS.items():
    body = fn()
    for doc in docs:
      path = os.path.join(root, doc)
      with open(path, encoding="utf-8") as f:
        text = f.read()
      new = render(text, name, body, doc)
      if new != text:
        with open(path, "w", encoding="utf-8") as f:
          f.write(new)
        changed.append(doc)
  return changed


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--check", action="store_true", help="exit 1 when a block is out of date")
  args = p.parse_args()
  if args.check:
    stale = stale_blocks()
    for s in stale:
      print(f"out of date (rerun benchmarks/figures.py): {s}")
    return 1 if stale else 0
  for doc in write_all():
    print(f"wrote {doc}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
