"""StreamPro-Bench report: JSON results, a markdown table in the paper's layout, PNG figures.

`write_report(results, out_dir)` takes one or several variants' `streampro_f1.score_benchmark`
outputs and writes into out_dir:
  results.json           all inputs (per variant), as given (NaN-free JSON);
  table.md               | Variant | EU OU AA | TP TG | GP RF | PU TR PA | Avg | W-Avg |, x100 with
                         one decimal (the paper's layout: tasks grouped by dimension, then the
                         dimension scores, Avg and the headline W-Avg), one row per variant;
                         then the paper's detail table: F1, P, R, Time and Acc (mean S_time and
                         S_acc of the matched responses) per task and dimension, per variant;
  f1_by_task.png         per-task F1 bars, variants side by side (+ W-Avg);
  response_offsets.png   per task, the distribution of (response time - ground-truth best time)
                         per variant, the task's matching window shaded (point-answer tasks;
                         for EU/TP the offset is taken from the event's end); a variant keeps
                         one colour in every panel (_variant_colors), also where another has no
                         responses;
  precision_recall.png   per-task mean precision against mean recall, iso-F1 curves.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from streampro_jax.bench import streampro_f1

__all__ = ["markdown_table", "plot_seeds", "write_report"]

_COLUMNS = ("EU", "OU", "AA", "TP", "TG", "GP", "RF", "PU", "TR", "PA", "Avg", "W-Avg")
_OFFSET_RANGE = (-12.0, 12.0)


def _variants(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
  if "scores" in results and isinstance(results["scores"], Mapping):
    return {"model": results}
  out = {}
  for name, res in results.items():
    if not isinstance(res, Mapping) or "scores" not in res:
      raise ValueError(f"variant {name!r}: expected a score_benchmark output with 'scores'")
    out[str(name)] = res
  if not out:
    raise ValueError("no variant to report")
  return out


def _pct(v: Any) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return "-"
  return f"{100.0 * float(v):.1f}"


def markdown_table(results: Mapping[str, Any]) -> str:
  """The paper-layout markdown table (values x100, one decimal; '-' where absent)."""
  variants = _variants(results)
  head = ("| Variant | " + " | ".join(_COLUMNS) + " |\n"
          "|---|" + "|".join("---:" for _ in _COLUMNS) + "|\n")
  rows = []
  for name, res in variants.items():
    sc = res["scores"]
    cells = []
    for c in _COLUMNS:
      cell = _pct(sc.get(c))
      cells.append(f"**{cell}**" if c == "W-Avg" and cell != "-" else cell)
    rows.append(f"| {name} | " + " | ".join(cells) + " |")
  counts = {}
  for res in variants.values():
    for t, v in (res.get("per_task") or {}).items():
      counts[t] = v.get("count")
  note = ("\nStreamPro-F1 x100. Perception Understanding (PU) = EU, OU, AA; Temporal Reasoning (TR)"
          " = TP, TG; Proactive Agency (PA) = GP, RF. PU/TR/PA and W-Avg are QA-weighted, Avg is "
          "the mean of PU, TR, PA.")
  if counts:
    note += " QA counts: " + ", ".join(f"{t} {counts[t]}" for t in streampro_f1.TASKS
                                       if t in counts) + "."
  return head + "\n".join(rows) + "\n" + note + "\n"


_DETAIL_ROWS = ("EU", "OU", "AA", "PU", "TP", "TG", "TR", "GP", "RF", "PA", "All")


def _detail_table(results: Mapping[str, Any]) -> str:
  """The paper's per-task detail table: F1, P, R, Time, Acc (x100, one decimal) per task and
  dimension, one block of rows per variant ('-' where nothing matched or the value is absent).

  Uses each variant's "time_acc" (streampro_f1.time_acc_table); a variant without it (an older
  results file) is computed from its "per_task" and "predictions" when present, else skipped.
  """
  variants = _variants(results)
  head = ("| Variant | Task | F1 | P | R | Time | Acc | matched |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|\n")
  rows = []
  for name, res in variants.items():
    table = res.get("time_acc")
    if table is None and res.get("per_task") and res.get("predictions") is not None:
      table = streampro_f1.time_acc_table(res["per_task"], res["predictions"])
    if not table:
      continue
    for key in _DETAIL_ROWS:
      if key in table:
        r = table[key]
        label = f"**{key}**" if key in ("PU", "TR", "PA", "All") else key
        rows.append(f"| {name} | {label} | " + " | ".join(
            _pct(r.get(m)) for m in ("f1", "precision", "recall", "time", "acc"))
                    + f" | {r.get('matched', 0)} |")
  if not rows:
    return ""
  note = ("\nF1, P, R: means over QA (dimension rows QA-weighted). Time, Acc: mean S_time and "
          "S_acc of the matched responses (those inside an answer's window), x100.\n")
  return head + "\n".join(rows) + "\n" + note


def _variant_colors(names) -> dict[str, Any]:
  """One colour per variant, by its position among all variants (tab10), for every figure."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  cmap = matplotlib.colormaps["tab10"]
  return {n: cmap(i % 10) for i, n in enumerate(names)}


def _json_safe(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_json_safe(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if hasattr(x, "item") and callable(x.item):   # numpy scalars
    return _json_safe(x.item())
  return x


def _plot_f1(variants, path, plt):
  names = list(variants)
  cols = list(streampro_f1.TASKS) + ["W-Avg"]
  fig, ax = plt.subplots(figsize=(10, 4.2), dpi=120)
  width = 0.8 / max(1, len(names))
  for i, name in enumerate(names):
    sc = variants[name]["scores"]
    vals = [100.0 * sc[c] if sc.get(c) is not None else 0.0 for c in cols]
    xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(cols))]
    bars = ax.bar(xs, vals, width=width * 0.95, label=name, color=_variant_colors(names)[name])
    for b, c in zip(bars, cols):
      if sc.get(c) is not None:
        ax.annotate(f"{b.get_height():.1f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 1),
                    textcoords="offset points")
  ax.set_xticks(range(len(cols)))
  ax.set_xticklabels(cols)
  ax.axvline(len(cols) - 1.5, color="0.6", lw=0.8, ls="--")
  ax.set_ylabel("StreamPro-F1 (x100)")
  ax.set_title("StreamPro-Bench F1 per task")
  ax.set_ylim(0, max(10.0, ax.get_ylim()[1] * 1.08))
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8, ncol=min(4, len(names)), loc="upper left")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _plot_offsets(variants, path, plt):
  lo, hi = _OFFSET_RANGE
  bins = [lo - 0.5 + k for k in range(int(hi - lo) + 2)]   # 1 s bins centred on whole seconds
  fig, axes = plt.subplots(2, 4, figsize=(13, 5.6), dpi=120, sharex=True)
  axes = axes.ravel()
  colors = _variant_colors(list(variants))
  for ax, task in zip(axes, streampro_f1.TASKS):
    s = streampro_f1.TASK_SETTINGS[task]
    w_lo = s.window_before
    ax.axvspan(w_lo, s.window_after, color="tab:green", alpha=0.12, lw=0)
    ax.axvline(0.0, color="k", lw=0.8)
    silent = []
    for name, res in variants.items():
      offs = [min(max(p["offset"], lo), hi) for p in res.get("predictions", [])
              if p["task"] == task and p.get("offset") is not None]
      if offs:
        ax.hist(offs, bins=bins, histtype="step", lw=1.4, color=colors[name],
                label=f"{name} (n={len(offs)})")
      else:
        silent.append(name)
    ax.set_title(task, fontsize=10)
    ax.tick_params(labelsize=8)
    if len(silent) == len(variants):  # an empty panel says why it is empty
      ax.text(0.5, 0.5, "no responses\nto this task's questions", transform=ax.transAxes,
              ha="center", va="center", fontsize=9, color="0.35")
    elif silent:  # the variants without a response are named, not left out
      for name in silent:
        ax.plot([], [], color=colors[name], lw=1.4, ls=":", label=f"{name}: no responses")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6.5, loc="upper left")
  last = axes[-1]
  last.axis("off")
  last.text(0.0, 0.5, "response time - ground-truth time (s)\n"
            "EU/TP: from the event's end\nshaded: matching window\n"
            "(EU/TP: its part after the event's end)\n"
            f"clipped to [{lo:g}, {hi:g}] s", fontsize=9, va="center")
  for ax in list(axes[3:7]):
    ax.set_xlabel("offset (s)", fontsize=8)
    ax.xaxis.set_tick_params(labelbottom=True)
  fig.suptitle("Distribution of response-time offsets per task")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _plot_pr(variants, path, plt):
  """Precision against recall, one point per (variant, task): colour = task (key on the right),
  marker = variant (key on the right); points that coincide are listed under the keys instead
  of being drawn over one another unseen (several variants at (0, 0) is common)."""
  markers = "osD^v<>pP*X"
  cmap = plt.get_cmap("tab10")
  fig, ax = plt.subplots(figsize=(9.0, 5.6), dpi=120)
  grid = [k / 100 for k in range(1, 101)]
  for f in (0.2, 0.4, 0.6, 0.8):
    pts = [(r, f * r / (2 * r - f)) for r in grid if 2 * r - f > 0 and f * r / (2 * r - f) <= 1]
    ax.plot([100 * r for r, _ in pts], [100 * p for _, p in pts], color="0.8", lw=0.8)
    ax.annotate(f"F1={f:.1f}", (100 * pts[-1][0], 100 * pts[-1][1]), fontsize=7, color="0.5",
                ha="right", va="bottom")
  at: dict[tuple[float, float], dict[str, list[str]]] = {}  # point -> variant -> its tasks
  for vi, (name, res) in enumerate(variants.items()):
    for ti, task in enumerate(streampro_f1.TASKS):
      pt = (res.get("per_task") or {}).get(task)
      if pt is None:
        continue
      xy = (round(100 * pt["recall"], 1), round(100 * pt["precision"], 1))
      at.setdefault(xy, {}).setdefault(name, []).append(task)
      ax.scatter(*xy, color=cmap(ti), marker=markers[vi % len(markers)], s=46, edgecolor="k",
                 lw=0.5, zorder=3)
  tasks = plt.legend(handles=[plt.Line2D([], [], color=cmap(ti), marker="o", ls="", label=t)
                              for ti, t in enumerate(streampro_f1.TASKS)],
                     title="task", fontsize=8, title_fontsize=8, loc="upper left",
                     bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
  ax.add_artist(tasks)
  ax.legend(handles=[plt.Line2D([], [], color="k", marker=markers[i % len(markers)], ls="",
                                label=n) for i, n in enumerate(variants)],
            title="variant", fontsize=8, title_fontsize=8, loc="upper left",
            bbox_to_anchor=(1.02, 0.52), borderaxespad=0)
  shared = [f"({x:g}, {y:g}):\n" + "\n".join(f"  {n}: {' '.join(ts)}" for n, ts in who.items())
            for (x, y), who in sorted(at.items()) if sum(map(len, who.values())) > 1]
  if shared:
    ax.text(1.02, 0.16, "same point:\n" + "\n".join(shared), transform=ax.transAxes,
            fontsize=6.5, va="top")
  ax.set_xlim(0, 100)
  ax.set_ylim(0, 100)
  ax.set_xlabel("recall (x100, mean over QA)")
  ax.set_ylabel("precision (x100, mean over QA)")
  ax.set_title("Precision against recall per task")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_report(results: Mapping[str, Any], out_dir: str) -> dict[str, str]:
  """Writes results.json, table.md and three PNG figures into out_dir; returns their paths.

  Args:
    results: {variant name: score_benchmark output}, or a single score_benchmark output (then
      named "model"). Only "scores" is required; figures use "per_task" and "predictions" when
      present.
    out_dir: created when missing.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  variants = _variants(results)
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f) for k, f in (
      ("json", "results.json"), ("table", "table.md"), ("f1", "f1_by_task.png"),
      ("offsets", "response_offsets.png"), ("pr", "precision_recall.png"))}
  with open(paths["json"], "w", encoding="utf-8") as f:
    json.dump({"version": streampro_f1.METRIC_VERSION, "variants": _json_safe(variants)}, f,
              indent=1)
  with open(paths["table"], "w", encoding="utf-8") as f:
    f.write(markdown_table(variants))
    detail = _detail_table(variants)
    if detail:
      f.write("\n" + detail)
  _plot_f1(variants, paths["f1"], plt)
  _plot_offsets(variants, paths["offsets"], plt)
  _plot_pr(variants, paths["pr"], plt)
  return paths


def plot_seeds(results: Mapping[str, Any], path: str) -> str:
  """W-Avg of every variant per seed, one line per seed across the variants (the paired view:
  a line that rises from left to right is the paper's order on that seed), validation and test
  split side by side. results: the demo's results.json ({"seeds", "per_seed": {seed: {split:
  {variant: {"W-Avg", ...}}}}}). Returns path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  seeds = [str(s) for s in results["seeds"]]
  splits = ("validation", "test")
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  top = 0.0
  for ax, split in zip(axes, splits):
    variants = list(results["per_seed"][seeds[0]][split])
    xs = range(len(variants))
    for s in seeds:
      ys = [100.0 * float(results["per_seed"][s][split][v]["W-Avg"]) for v in variants]
      top = max(top, *ys)
      ax.plot(xs, ys, marker="o", label=f"seed {s}")
    ax.set_xticks(list(xs), variants, rotation=15)
    ax.set_title(f"{split} split")
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("W-Avg (StreamPro-F1 x100)")
  axes[0].set_ylim(0, max(top * 1.15, 1.0))
  axes[-1].legend(loc="upper left", fontsize=8)
  fig.suptitle("The demo per seed: the same seed's four models joined")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
