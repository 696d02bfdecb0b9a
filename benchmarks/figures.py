"""Writes the docs' figure blocks from the raw result files in benchmarks/results/.

A figure block in a doc is the text between `<!-- BEGIN figures:NAME -->` and
`<!-- END figures:NAME -->`; `BLOCKS` maps each NAME to its doc and to the function that renders
it from raw files only (nothing typed by hand), so a figure in the docs is what its raw file says.

  .venv/bin/python benchmarks/figures.py           # rewrite every block
  .venv/bin/python benchmarks/figures.py --check   # exit 1 naming each block that differs

tests/test_figures.py runs the check (and shows it failing on a planted wrong digit). README's
demo block has its own writer, benchmarks/demo_results.py (checked by tests/test_demo.py).
The CPU ratios come from the raw files of the CPU method (benchmarks/cpu_rounds.py): each ends
with a summary line (spreads, per-round ratio, whether it holds) or a "dropped" line (unequal
work), and the blocks render what that line says.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import statistics
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


def readme_gpu() -> str:
  """README's one accelerator figure: the paper-shape SFT step on one H200."""
  rows = [r for f in GPU_RUNS for r in _jsonl(f)]
  sft = [r for r in rows if r["part"] == "sft_step" and r.get("policy") == "dots_no_batch"
         and r.get("attention") == "jax" and not r.get("chunk") and "step_s" in r]
  torch = [r for r in rows if r["part"] == "torch_step"]
  fastest = min(r["step_s"] for r in sft)
  return (f"On one H200 the paper-shape SFT step of the 3B model (T {sft[0]['seq_len']:,}, bf16) "
          f"runs in {fastest:.2f} s, {torch[0]['step_s'] / max(r['step_s'] for r in sft):.0f}x "
          "eager transformers (an untuned baseline: the `torch.compile` one is pending a GPU); "
          "[docs/benchmarks.md](docs/benchmarks.md#accelerator-training-h200), raw "
          f"{', '.join(f'`benchmarks/results/{f}`' for f in GPU_RUNS)}, "
          "`python3 benchmarks/gpu_train_step.py`.")


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


# The rescorings of a 3-seed demo run on 560 test videos; each raw file holds both test sizes of
# the same models (summary_test_140: the run's own 140-video summary), so no row pairs two runs.
TEST560_FILES = ("demo_test560_seeds_0_1_2.json", "demo_test560_lr4_seeds_0_1_2.json")


def test_split_size() -> str:
  """docs/ablations.md's paired test-split gaps of the same 3-seed models on 140 and 560 test
  videos, per rescoring (TEST560_FILES: the demo at each SFT lr it had)."""
  lines = ["| SFT lr | Paired W-Avg gap x100 | test videos | per seed | mean +- std | "
           "mean >= 2 std |", "|---:|---|---:|---:|---:|:---:|"]
  for name in TEST560_FILES:
    raw = _json(name)
    small, big = raw["summary_test_140"]["gaps"], raw["summary_test"]["gaps"]
    for gap in small:
      for n, g in ((140, small[gap]), (560, big[gap])):
        per = ", ".join(f"{100 * v:+.1f}" for v in g["values"])
        lines.append(f"| {raw['sft_lr']:g} | {gap} | {n} | {per} | {100 * g['mean']:+.1f} +- "
                     f"{100 * g['std']:.1f} | {'yes' if g['holds'] else 'no'} |")
  return "\n".join(lines)


def _setting_change(name: str, effective: dict) -> str:
  """A demo setting as the table's column, from the values its record stored when it ran
  (demo_settings.RECORDED_KEYS): "difficulty <d>, base <captions | captions + answers>, SFT
  <steps> x <batch> at lr <lr>, text weight <w>"; a record without them is a KeyError naming
  the setting."""
  import demo_settings  # pylint: disable=g-import-not-at-top  (benchmarks/, beside this file)
  missing = [k for k in demo_settings.RECORDED_KEYS if k not in (effective or {})]
  if missing:
    raise KeyError(f"demo_settings.json, setting {name!r}: no effective value of {missing} "
                   f"(re-collect it with benchmarks/demo_settings.py; finished stages are reused)")
  base = "captions + answers" if effective["base.answers"] else "captions"
  return (f"difficulty {effective['data.synth.difficulty']}, base {base}, SFT "
          f"{effective['sft.steps']} x {effective['sft.batch_size']} at lr "
          f"{effective['sft.lr']:g}, text weight {effective['sft.text_weight']:g}")


def demo_settings() -> str:
  """docs/ablations.md's demo settings tried for CB-Stream's gap over cross-entropy
  (benchmarks/demo_settings.py's raw file)."""
  raw = _json("demo_settings.json")
  lines = ["| setting | what it sets | split | sft_ce per seed | sft_cb_stream per seed | "
           "responses per seed, ce / cb | paired gap per seed | mean +- std | holds |",
           "|---|---|---|---:|---:|---:|---:|---:|:---:|"]
  for name, st in raw["settings"].items():
    for split in ("validation", "test"):
      sm = st["summary"][split]
      g = sm["gaps"]["sft_cb_stream - sft_ce"]
      per = {v: ", ".join(f"{100 * x:.1f}" for x in sm["variants"][v]["values"])
             for v in ("sft_ce", "sft_cb_stream")}
      seeds = sorted(st["per_seed"], key=int)
      resp = ", ".join(f"{st['per_seed'][k][split]['sft_ce']['responses']} / "
                       f"{st['per_seed'][k][split]['sft_cb_stream']['responses']}" for k in seeds)
      change = _setting_change(name, st.get("effective"))
      lines.append(f"| {name} | {change} | {split} | {per['sft_ce']} | "
                   f"{per['sft_cb_stream']} | {resp} | "
                   f"{', '.join(f'{100 * x:+.1f}' for x in g['values'])}"
                   f" | {100 * g['mean']:+.1f} +- {100 * g['std']:.1f} | "
                   f"{'yes' if g['holds'] else 'no'} |")
  lines += ["", "The settings where the demo's GRPO ran too (from each seed's sft_cb_stream):", "",
            "| setting | split | sft_cb_stream per seed | grpo per seed | paired gap grpo - "
            "sft_cb_stream per seed | mean +- std | holds |", "|---|---|---:|---:|---:|---:|:---:|"]
  for name, st in raw["settings"].items():
    for split in ("validation", "test"):
      sm = st["summary"][split]
      g = sm["gaps"].get("grpo - sft_cb_stream")
      if g is None:
        continue
      per = {v: ", ".join(f"{100 * x:.1f}" for x in sm["variants"][v]["values"])
             for v in ("sft_cb_stream", "grpo")}
      lines.append(f"| {name} | {split} | {per['sft_cb_stream']} | {per['grpo']} | "
                   f"{', '.join(f'{100 * x:+.1f}' for x in g['values'])} | "
                   f"{100 * g['mean']:+.1f} +- {100 * g['std']:.1f} | "
                   f"{'yes' if g['holds'] else 'no'} |")
  return "\n".join(lines)


TASKS = ("EU", "OU", "AA", "TP", "TG", "GP", "RF")


def demo_seed_tasks() -> str:
  """docs/ablations.md's per-task F1 of every variant and seed of README's 3-seed run
  (benchmarks/results/demo_seeds_0_1_2.json): where the seeds' spread comes from."""
  raw = _json("demo_seeds_0_1_2.json")
  lines = ["| split | variant | seed | " + " | ".join(TASKS) + " | W-Avg | responses |",
           "|---|---|---:|" + "---:|" * (len(TASKS) + 2)]
  for split in ("validation", "test"):
    for variant in raw["per_seed"]["0"][split]:
      for seed in sorted(raw["per_seed"], key=int):
        r = raw["per_seed"][seed][split][variant]
        tasks = " | ".join(f"{100 * r['per_task'][t]:.1f}" for t in TASKS)
        lines.append(f"| {split} | {variant} | {seed} | {tasks} | {100 * r['W-Avg']:.1f} | "
                     f"{r['decisions']['response']} |")
  return "\n".join(lines)


def demo_scale_cost() -> str:
  """docs/ablations.md's cost of a wider demo model (benchmarks/demo_scale_cost.py's raw file)."""
  raw = _json("demo_scale_cost.json")
  lines = ["| model | parameters | base s/step | SFT s/step | GRPO s/step | training stages of the "
           "default demo, projected | against the demo's model |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for name, rec in raw["models"].items():
    sec = rec["seconds_per_step"]
    m, s_ = divmod(round(rec["projected_training_s"]), 60)
    ratio = rec["ratio_to_demo"]["projected_training"]
    lines.append(f"| {name} | {rec['params']:,} | {sec['base']:.3f} | {sec['sft_cb_stream']:.3f} "
                 f"| {sec['grpo']:.2f} | {m} min {s_} s | x{ratio:.2f} |")
  lines.append("")
  lines.append(f"Measured {raw['date']} at {raw['commit'][:7]} on {raw['numerics']['cpu']} "
               f"({raw['numerics']['cores']} cores), load average {raw['load']['before'][0]:.2f} "
               f"before, {raw['load']['after'][0]:.2f} after.")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# CPU figures measured by the CPU method (benchmarks/cpu_rounds.py: interleaved rounds, equal work
# checked, load per round); each raw file ends with its summary line.

DECODE = ("tiny-model decode (8 rows x 32 tokens after a 275-token one-turn prefix, prefill + "
          "decode) against transformers ")
# raw file -> (what the figure measures, what side A and side B are)
CPU_FIGURES = {
    "cpu_decode_vs_transformers_eager_2threads.jsonl": (
        DECODE + "eager `generate`, torch on 2 threads", "ours", "transformers"),
    "cpu_decode_vs_transformers_eager_1thread.jsonl": (
        DECODE + "eager `generate`, torch on 1 thread", "ours", "transformers"),
    "cpu_decode_vs_transformers_static_compiled_1thread.jsonl": (
        DECODE + "`generate` with a static cache and `torch.compile`, torch on 1 thread", "ours",
        "transformers"),
    "cpu_grpo_step_vs_23563ed.jsonl": (
        "the demo's GRPO step (4 samples x G 8, 16 turns; median of 3 timed steps per fresh "
        "process; greedy), this code against commit 23563ed "
        "(before the on-device decode)", "this code", "23563ed"),
    "cpu_attention_xla_block_vs_xla_square.jsonl": (
        "causal attention forward + backward, the demo's rows (B 8, T 768, 4 / 2 heads of 16, "
        "228 padded positions per row; median of 5 calls per turn): block-causal 'xla' against "
        "the full square", "xla_block", "xla_square"),
    "cpu_attention_xla_block_vs_torch_sdpa.jsonl": (
        "the same, block-causal 'xla' against torch sdpa (torch on 2 threads)", "xla_block",
        "torch_sdpa"),
    "cpu_sft_step_jax_vs_torch_1thread.jsonl": (
        "SFT training step, small config (4 layers x 512, 12.3 M params, batch 4 x 768, float32, "
        "CB-Stream, AdamW), this library against transformers + PyTorch on 1 thread", "jax",
        "torch"),
    "cpu_sft_step_jax_vs_torch_2threads.jsonl": (
        "the same, PyTorch on 2 threads", "jax", "torch"),
    "cpu_scan_compile.jsonl": (
        "random init and compile of the loss gradient, 32 decoder layers and 16 vision blocks "
        "of width 64, scanned against unrolled stacks", "scanned", "unrolled"),
    "cpu_qwen2_5_forward_mid_1thread.jsonl": (
        "Qwen2.5-VL forward, mid config (text 512 x 4 layers, vocabulary 8,192, vision 256 x 4 "
        "blocks; batch 1, 424 tokens, 4 videos of 1 x 16 x 16 patches, float32; median of 3 "
        "calls per turn), jitted JAX against transformers eager (sdpa), torch on 1 thread",
        "jax", "torch"),
    "cpu_qwen3_forward_small_1thread.jsonl": (
        "Qwen3-VL forward, preset small (6.7 M params; one row of 8 turns, 584 tokens, 2,048 "
        "patches, float32; median of 3 calls per turn), jitted JAX against transformers eager, "
        "torch on 1 thread", "jax", "torch"),
    "cpu_qwen3_forward_medium_1thread.jsonl": (
        "the same, preset medium (92.8 M params)", "jax", "torch"),
    "cpu_checkpoint_save.jsonl": (
        "time `save()` blocks the loop, 384 MiB train state on 8 CPU devices, async against "
        "sync", "async", "sync"),
}


def _rounds(name: str) -> tuple[list[dict], dict]:
  """(round lines, last line) of a CPU-method raw file; the last line is its summary, or a
  "dropped" line when a round's work differed between the sides."""
  lines = _jsonl(name)
  rounds = [l for l in lines if l.get("kind") == "round"]
  last = [l for l in lines if l.get("kind") in ("summary", "dropped")]
  if len(last) != 1 or len(rounds) != last[0]["rounds"]:
    raise ValueError(f"benchmarks/results/{name}: expected one summary or dropped line after "
                     f"its {len(rounds)} round lines")
  return rounds, last[0]


def _dropped(sm: dict) -> str:
  """The unequal work of a dropped figure: each side's counts."""
  return "; ".join(f"{side}: {_work(w)}" for side, w in sm["work"].items())


def _sec(x: float) -> str:
  return f"{x * 1e3:.1f} ms" if x < 1.0 else f"{x:.2f} s"


def _med_range(sp: dict) -> str:
  """'median (min-max) unit' of seconds (milliseconds when the largest is under 1 s)."""
  scale, fmt, unit = (1e3, ".1f", "ms") if sp["max"] < 1.0 else (1.0, ".2f", "s")
  m, lo, hi = (format(sp[k] * scale, fmt) for k in ("median", "min", "max"))
  return f"{m} ({lo}-{hi}) {unit}"


def _ratio(sp: dict) -> str:
  return f"{sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f}x)"


def _holds(r: dict) -> str:
  return "yes" if r["holds"] else "**no** (the range crosses 1)"


def _work(work: dict) -> str:
  return ", ".join(f"{k} " + (", ".join(f"{x:,}" for x in v) if isinstance(v, list)
                              else f"{v:,}") for k, v in work.items())


def _loads(summary: dict) -> str:
  sp = summary["load_1min"]
  return f"{sp['min']:.1f}-{sp['max']:.1f}"


def cpu_method() -> str:
  """docs/benchmarks.md's table of the CPU figures measured by the CPU method."""
  lines = ["| figure | A: median (range) | B: median (range) | B / A per round: median "
           "(range) | holds | equal work, checked every round | rounds, load average, date, "
           "commit | "
           "raw file and command |", "|---|---|---|---|---|---|---|---|"]
  for name, (what, a, b) in CPU_FIGURES.items():
    rounds, sm = _rounds(name)
    if sm["kind"] == "dropped":
      lines.append(f"| {what} | | | | **dropped**: unequal work in round {len(rounds) - 1} | "
                   f"{_dropped(sm)} | {len(rounds)}, {sm['date'][:10]}, {sm['commit']} | "
                   f"`{name}`: "
                   f"`{sm['command']}` |")
      continue
    for metric, m in [(sm["metric"], sm)] + list(sm.get("also", {}).items()):
      sa, sb = m["sides"][a], m["sides"][b]
      lines.append(
          f"| {what} ({metric}) | {a}: {_med_range(sa)} | {b}: {_med_range(sb)} | "
          f"{_ratio(m['ratio'])} | {_holds(m['ratio'])} | {_work(sm['work'])} | "
          f"{len(rounds)}, {_loads(sm)}, {sm['date'][:10]}, {sm['commit']} | `{name}`: "
          f"`{sm['command']}` |")
  return "\n".join(lines)


def cpu_rollouts() -> str:
  """docs/rollouts.md's CPU figures: decode against transformers, the demo's GRPO step."""
  lines = ["| comparison | ours, tokens/s | transformers, tokens/s | ratio (prefill + decode) | "
           "decode alone | prefill ours / theirs | holds | rounds, load average |",
           "|---|---:|---:|---:|---:|---:|---|---|"]
  for name, (what, a, b) in CPU_FIGURES.items():
    if not name.startswith("cpu_decode"):
      continue
    rounds, sm = _rounds(name)
    tps = {s: [r["sides"][s]["tokens_per_s"] for r in rounds] for s in (a, b)}
    dec = [r["sides"][b]["decode_seconds"] / r["sides"][a]["decode_seconds"] for r in rounds]
    pre = {s: [r["sides"][s]["prefill_seconds"] for r in rounds] for s in (a, b)}
    tp = lambda xs: _span([statistics.median(xs)], ",.0f") + " (" + _span(xs, ",.0f") + ")"  # noqa: E731
    ms = lambda xs: f"{statistics.median(xs) * 1e3:.1f} ms"  # noqa: E731
    lines.append(
        f"| {what[len(DECODE):]} | "
        f"{tp(tps[a])} | {tp(tps[b])} | {_ratio(sm['ratio'])} | "
        f"{statistics.median(dec):.2f}x ({min(dec):.2f}-{max(dec):.2f}x) | "
        f"{ms(pre[a])} / {ms(pre[b])} | {_holds(sm['ratio'])} | {len(rounds)}, {_loads(sm)} |")
  name = "cpu_grpo_step_vs_23563ed.jsonl"
  rounds, sm = _rounds(name)
  raw = f"Raw `benchmarks/results/{name}`, command `{sm['command']}`."
  if sm["kind"] == "dropped":
    steps = {side: _sec(statistics.median([r["sides"][side]["step_s"] for r in rounds]))
             for side in sm["work"]}
    lines += ["", f"The demo's GRPO step, this code against commit 23563ed, greedy (temperature "
              f"{sm['temperature']:g}), {sm['date'][:10]}: **dropped, the work is not equal**. "
              f"From the same seed the two checkouts sample different numbers of tokens per "
              f"timed step ({_dropped(sm)}), so their step times "
              f"({' against '.join(steps.values())} in round {len(rounds) - 1}) do not "
              f"compare the same work and no ratio is "
              f"claimed. {raw}"]
    return "\n".join(lines)
  a, b = CPU_FIGURES[name][1:]
  per = {s: {k: statistics.median(r["sides"][s][k] for r in rounds)
             for k in ("rollout_s", "update_s")} for s in (a, b)}
  lines += [
      "",
      f"The demo's GRPO step, this code against commit 23563ed, {len(rounds)} rounds (each side "
      f"a fresh process per round, order alternating), load average {_loads(sm)}: step "
      f"{_med_range(sm['sides'][a])} against {_med_range(sm['sides'][b])}, "
      f"{_ratio(sm['ratio'])} faster (holds: {_holds(sm['ratio'])}); median rollout "
      f"{_sec(per[a]['rollout_s'])} against {_sec(per[b]['rollout_s'])}, update "
      f"{_sec(per[a]['update_s'])} against {_sec(per[b]['update_s'])}; equal work: "
      f"{_work(sm['work'])} on both sides. {raw}"]
  return "\n".join(lines)


def _group_runs(name: str) -> list[list[dict]]:
  """rollout_group's appended lines split into runs (a run starts at round 0 of its first
  checkout)."""
  runs: list[list[dict]] = []
  for line in _jsonl(name):
    if line["round"] == 0 and (not runs or line["name"] == runs[-1][0]["name"]):
      runs.append([])
    runs[-1].append(line)
  return runs


def rollout_group() -> str:
  """docs/rollouts.md's rollout time at G = 8, before (c51d9b6) and after, per run."""
  name = "rollout_group_g8.jsonl"
  lines = ["| run (UTC), load average | c51d9b6: median (range) of the rounds | this code | "
           "before / after per round | holds | sampled tokens per call, both sides |",
           "|---|---:|---:|---:|---|---|"]
  for run in sorted(_group_runs(name), key=lambda r: r[0]["date"], reverse=True):
    by = {n: [l for l in run if l["name"] == n] for n in ("before", "after")}
    if [l["round"] for l in by["before"]] != [l["round"] for l in by["after"]]:
      raise ValueError(f"benchmarks/results/{name}: unpaired rounds in the run of "
                       f"{run[0]['date']}")
    tokens = {tuple(l["tokens_per_call"]) for l in run}
    if len(tokens) != 1:
      raise ValueError(f"benchmarks/results/{name}: unequal sampled tokens {sorted(tokens)}")
    loads = [x for l in run for x in (l["load_before"][0], l["load_after"][0])]
    when = f"{run[0]['date'][11:16]}-{run[-1]['date'][11:16]}, {min(loads):.1f}-{max(loads):.1f}"
    for key, label in (("median_call_s", "wall"), ("median_call_cpu_s", "CPU time")):
      if any(key not in l for l in run):   # the first run did not record CPU time
        continue
      xs = {n: [l[key] for l in by[n]] for n in by}
      r = cpu_rounds_ratio(xs["before"], xs["after"])
      lines.append(
          f"| {when}, {label} | {_med_range(_spread(xs['before']))} | "
          f"{_med_range(_spread(xs['after']))} | {_ratio(r)} | {_holds(r)} | "
          f"{', '.join(f'{t:,}' for t in next(iter(tokens)))} |")
  return "\n".join(lines)


def _spread(xs) -> dict:
  return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def cpu_rounds_ratio(a, b) -> dict:
  """Per-round a_i / b_i: spread and whether the whole range is on one side of 1."""
  r = _spread([x / y for x, y in zip(a, b)])
  return {**r, "holds": r["min"] > 1.0 or r["max"] < 1.0}


def checkpoint_save() -> str:
  """docs/scale-out.md's checkpoint save table."""
  name = "cpu_checkpoint_save.jsonl"
  rounds, sm = _rounds(name)
  v, w = sm["versions"], sm["work"]
  head = (f"{w['params'] / 1e6:.1f} M float32 parameters with AdamW's two moments = "
          f"{w['state_bytes'] / 2**20:.0f} MiB on {sm['devices']} CPU devices; {len(rounds)} "
          f"rounds, async and sync alternating; {sm['date'][:10]}, {sm['machine']['cpu']}, "
          f"{sm['machine']['cores']} cores shared, load average {_loads(sm)}; jax {v['jax']}, "
          f"orbax {v.get('orbax-checkpoint', '?')}. Raw `benchmarks/results/{name}`:")
  bl, wr = sm, sm["also"]["written_s"]
  lines = [head, "", "| save | `save()` blocks the loop, median (range) | on disk after, median "
           "(range) |", "|---|---:|---:|"]
  for side, label in (("async", "asynchronous"), ("sync", "synchronous")):
    lines.append(f"| {label} | {_med_range(bl['sides'][side])} | "
                 f"{_med_range(wr['sides'][side])} |")
  lines.append(f"| sync / async per round | {_ratio(bl['ratio'])} (holds: "
               f"{_holds(bl['ratio'])}) | {_ratio(wr['ratio'])} (holds: {_holds(wr['ratio'])}) |")
  return "\n".join(lines)


def fp8_loss_curve() -> str:
  """docs/benchmarks.md's FP8 loss curve table (emulated on CPU)."""
  name = "fp8_loss_curve_cpu.jsonl"
  rows = _jsonl(name)
  curves = {r["matmul_dtype"]: r for r in rows if r["part"] == "curve"}
  cmp_ = next(r for r in rows if r["part"] == "compare")
  first = rows[0]
  lines = [f"Run {first['date']} on the shared 2-core CPU (jax {first['jax']}, load average "
           f"{first['load_before'][0]:.1f} -> {cmp_['load_after'][0]:.1f}), raw "
           f"`benchmarks/results/{name}` (both curves, every step):", "",
           f"| | first step | final (mean of the last 10 of {cmp_['steps']}) | seconds (incl. "
           "compile) |", "|---|---:|---:|---:|"]
  for dtype, label in (("default", "bf16 (`matmul_dtype=default`)"), ("fp8", "fp8")):
    c = curves[dtype]
    lines.append(f"| {label} | {c['losses'][0]:.4f} | {c['final_loss']:.4f} | "
                 f"{c['seconds']:.0f} |")
  lines += ["", f"Final losses {100 * cmp_['relative_difference']:.2f} % apart: "
            f"{'within' if cmp_['relative_difference'] <= cmp_['target'] else 'outside'} the "
            f"issue's {100 * cmp_['target']:.0f} %."]
  return "\n".join(lines)


def live_stream() -> str:
  """docs/live.md's one-hour CPU stream table."""
  name = "live_stream_cpu.json"
  d = _json(name)
  dec = d["decisions"]
  after = [x for x in d["samples"] if x["turn"] >= 200]
  rss = [x["rss_mb"] for x in after]
  dev = {round(x["device_mb"], 2) for x in after}
  flat = f"{next(iter(dev)):.2f} MB, constant" if len(dev) == 1 else _span(sorted(dev), ".2f",
                                                                           " MB")
  lines = [f"Run {d['date']} ({d['machine']}), raw `benchmarks/results/{name}`:", "",
           "| | value |", "|---|---:|",
           f"| turns (seconds of video) | {d['turns']:,} ({dec['silence']:,} silent, "
           f"{dec['response']:,} answers, {dec['invalid']:,} invalid) |",
           f"| per-turn latency, median / p95 / mean | {d['median_ms']:.1f} / {d['p95_ms']:.1f} / "
           f"{d['mean_ms']:.1f} ms |",
           f"| real-time factor (compute / stream time) | {d['real_time_factor']:.2f} |",
           f"| compile (warm-up) | {d['compile_s']:.1f} s |",
           f"| KV cache capacity / overflow | {d['kv_capacity']:,} slots per row / "
           f"{'yes' if d['overflow'] else 'never'} |",
           f"| live device buffers, every 100 turns from turn {after[0]['turn']} to "
           f"{after[-1]['turn']:,} | {flat} |",
           f"| process RSS, same samples | {min(rss):.1f} - {max(rss):.1f} MB "
           f"({rss[0]:.1f} at turn {after[0]['turn']}, {rss[-1]:.1f} at {after[-1]['turn']:,}) |"]
  return "\n".join(lines)


# run -> (its change, the paper's W-Avg or remark): labels of docs/ablations.md's 3-seed table
ABLATION_RUNS = {
    "sft_cb_stream": ("(SFT reference)", "16.3"),
    "sft_text1": ("lambda_text 1", "16.3"),
    "sft_text3": ("lambda_text 3", "15.3"),
    "sft_scope_microbatch": ("class counts per micro-batch of one trajectory (8 micro-batches)",
                             "not ablated"),
    "grpo_paper": ("(GRPO reference: tau 8, T 1.0, 0.1/0.45/0.45, GT-first)", "28.1"),
    "grpo_tau3": ("tau 3", "25.8"),
    "grpo_w_0.1_0.9_0": ("weights 0.1/0.9/0", "25.5"),
    "grpo_w_0.1_0.6_0.3": ("weights 0.1/0.6/0.3", "24.8"),
    "grpo_pred_first": ("prediction-first matching in R_turn", "not given"),
    "grpo_t07": ("temperature 0.7", "(paper: 1.0)"),
    "grpo_demo_old": ("tau 4, temperature 0.7 (the demo's old defaults)", ""),
}
GRPO_VS_SFT_ORDER = ("grpo_paper", "grpo_tau3", "grpo_t07", "grpo_demo_old", "grpo_pred_first",
                     "grpo_w_0.1_0.9_0", "grpo_w_0.1_0.6_0.3")


def _pm(d: dict, sign: str = "") -> str:
  """'mean +- std' x 100 of a demo_ablations summary entry."""
  return f"{100 * d['mean']:{sign}.1f} +- {100 * d['std']:.1f}"


def _pts(xs, sign: str = "+") -> str:
  return ", ".join(f"{100 * x:{sign}.1f}".replace("+0.0", "0.0").replace("-0.0", "0.0")
                   for x in xs)


def ablations_3seeds() -> str:
  """docs/ablations.md's 3-seed table (test split) and GRPO - SFT per seed."""
  d = _json("demo_ablations_3seeds.json")
  lines = ["| run | change | W-Avg | paired diff vs reference | wins | paper |",
           "|---|---|---:|---:|---:|---|"]
  for run, (change, paper) in ABLATION_RUNS.items():
    diff = d["differences"].get(run)
    cols = (f"{_pm(diff, '+')} | {diff['wins']}/{len(diff['seeds'])}" if diff else " | ")
    lines.append(f"| {run} | {change} | {_pm(d['runs'][run]['W-Avg'])} | {cols} | {paper} |")
  sft = d["runs"]["sft_cb_stream"]["W-Avg"]
  lines += ["", f"GRPO runs against the SFT model they start from, per seed (seeds "
            f"{', '.join(map(str, sft['seeds']))}; W-Avg points):", "", "| run | GRPO - SFT |",
            "|---|---|"]
  for run in GRPO_VS_SFT_ORDER:
    g = d["runs"][run]["W-Avg"]
    if g["seeds"] != sft["seeds"]:
      raise ValueError(f"benchmarks/results/demo_ablations_3seeds.json: {run} has seeds "
                       f"{g['seeds']}, sft_cb_stream {sft['seeds']}")
    lines.append(f"| {run} | {_pts([a - b for a, b in zip(g['values'], sft['values'])])} |")
  return "\n".join(lines)


def _validation_table(name: str, rows: tuple[tuple[str, str], ...], ref: str,
                      ref_label: str) -> str:
  d = _json(name)
  lines = [f"| run | W-Avg (mean +- std) | per seed | paired diff vs {ref_label} | wins |",
           "|---|---:|---:|---:|---:|"]
  for run, label in rows:
    w = d["runs"][run]["W-Avg"]
    diff = d["differences"].get(run)
    cols = (f"{_pm(diff, '+')} | {diff['wins']}/{len(diff['seeds'])}" if diff and
            diff["reference"] == ref else "reference | ")
    lines.append(f"| {label} | {_pm(w)} | {_pts(w['values'], '')} | {cols} |")
  return "\n".join(lines)


def ablations_beta() -> str:
  """docs/ablations.md's validation table of CB-Stream beta."""
  return _validation_table("demo_ablations_validation_beta.json",
                           (("sft_cb_stream", "sft_cb_stream (beta 0.99)"),
                            ("sft_beta_paper", "sft_beta_paper (beta 0.9999)")),
                           "sft_cb_stream", "0.99")


def ablations_tau() -> str:
  """docs/ablations.md's validation table of GRPO tau."""
  return _validation_table("demo_ablations_validation_tau.json",
                           (("grpo_paper", "grpo_paper (tau 8)"),
                            ("grpo_tau3", "grpo_tau3 (tau 3, the demo's grpo)")),
                           "grpo_paper", "tau 8")


AOT_FILES = ("aot/qwen2_5_vl_3b.jsonl", "aot/qwen3_vl_4b.jsonl")


def aot_table() -> str:
  """docs/scale.md's table of TPU compiles (benchmarks/aot_table.py on the two models' files)."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import aot_table as table  # pylint: disable=g-import-not-at-top
  return table.render([os.path.join(RESULTS, f) for f in AOT_FILES])


# name -> (the docs that hold the block, its renderer)
BLOCKS: dict[str, tuple[tuple[str, ...], Callable[[], str]]] = {
    "gpu_summary": (("docs/benchmarks.md",), gpu_summary),
    "cpu_numerics": (("docs/decisions.md",), cpu_numerics),
    "deviations": (("README.md", "docs/method.md"), deviations),
    "test_split_size": (("docs/ablations.md",), test_split_size),
    "demo_settings": (("docs/ablations.md",), demo_settings),
    "demo_seed_tasks": (("docs/ablations.md",), demo_seed_tasks),
    "demo_scale_cost": (("docs/ablations.md",), demo_scale_cost),
    "aot_table": (("docs/scale.md",), aot_table),
    "cpu_method": (("docs/benchmarks.md",), cpu_method),
    "cpu_rollouts": (("docs/rollouts.md",), cpu_rollouts),
    "rollout_group": (("docs/rollouts.md",), rollout_group),
    "checkpoint_save": (("docs/scale-out.md",), checkpoint_save),
    "fp8_loss_curve": (("docs/benchmarks.md",), fp8_loss_curve),
    "readme_gpu": (("README.md",), readme_gpu),
    "ablations_3seeds": (("docs/ablations.md",), ablations_3seeds),
    "ablations_beta": (("docs/ablations.md",), ablations_beta),
    "ablations_tau": (("docs/ablations.md",), ablations_tau),
    "live_stream": (("docs/live.md",), live_stream),
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
