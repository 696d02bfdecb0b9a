"""Findings over several seeds: paired gaps between variants, their spread, and the claims.

A finding such as "CB-Stream scores above cross-entropy" is checked per seed on paired runs (same
initialisation and data order, only the loss differs), so a gap is a difference of two scores of
the same seed. Over n seeds:

  gap_s  = score[a][s] - score[b][s]                    for each seed s
  mean   = sum(gap_s) / n
  std    = sqrt(sum((gap_s - mean)^2) / (n - 1))        (sample std, ddof 1; 0 for n = 1)
  holds  = every gap_s > 0 and mean >= 2 * std

The tables are markdown, scores x100 with one decimal, as StreamPro-F1 tables elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["demo_text", "findings", "seed_tables", "seeds_text", "summarize"]

# The paper's orderings that the demo checks (a above b), and one reported as it comes.
_CLAIMS = (("sft_cb_stream", "sft_ce"), ("grpo", "sft_cb_stream"))
_REPORTED = (("sft_focal", "sft_ce"),)


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
  """(mean, sample standard deviation with ddof 1; 0.0 for one value)."""
  xs = [float(x) for x in xs]
  if not xs:
    raise ValueError("mean_std of no values")
  m = sum(xs) / len(xs)
  if len(xs) < 2:
    return m, 0.0
  return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _paired_gap(scores: Mapping[str, Mapping[str, float]], a: str, b: str) -> dict:
  """The paired gap a - b over the seeds.

  Args:
    scores: {seed (str): {variant: score}}; every seed must have both a and b.
  Returns:
    {"values": [gap per seed, in seed order], "seeds", "mean", "std", "all_positive",
     "holds": all_positive and mean >= 2 std}.
  """
  seeds = sorted(scores, key=int)
  missing = [s for s in seeds if a not in scores[s] or b not in scores[s]]
  if missing:
    raise KeyError(f"seeds {missing} lack {a!r} or {b!r}")
  values = [float(scores[s][a]) - float(scores[s][b]) for s in seeds]
  m, sd = _mean_std(values)
  positive = all(v > 0 for v in values)
  return {"values": values, "seeds": seeds, "mean": m, "std": sd, "all_positive": positive,
          "holds": positive and m >= 2.0 * sd}


def summarize(per_seed: Mapping[str, Mapping[str, Mapping]], variants: Sequence[str],
              key: str = "W-Avg") -> dict:
  """Mean, std and per-seed values of each variant's score, and every paired gap.

  Args:
    per_seed: {seed (str): {variant: {key: score, ...}}}.
  Returns:
    {"seeds", "variants": {v: {"values", "mean", "std"}}, "gaps": {"a - b": _paired_gap(...)}}.
  """
  seeds = sorted(per_seed, key=int)
  scores = {s: {v: float(per_seed[s][v][key]) for v in variants} for s in seeds}
  out = {"seeds": seeds, "key": key, "variants": {}, "gaps": {}}
  for v in variants:
    vals = [scores[s][v] for s in seeds]
    m, sd = _mean_std(vals)
    out["variants"][v] = {"values": vals, "mean": m, "std": sd}
  for a, b in _CLAIMS + _REPORTED:
    if a in variants and b in variants:
      out["gaps"][f"{a} - {b}"] = _paired_gap(scores, a, b)
  return out


def _x100(v: float, sign: bool = False) -> str:
  return f"{100.0 * v:+.1f}" if sign else f"{100.0 * v:.1f}"


def _seeds_table(summary: Mapping, responses: Mapping[str, Mapping[str, int]] | None = None) -> str:
  """| Variant | W-Avg per seed | mean +- std | [responses per seed] | (x100)."""
  seeds = summary["seeds"]
  head = f"| Variant | W-Avg, seed {', '.join(seeds)} | mean +- std |"
  rule = "|---|---:|---:|"
  if responses is not None:
    head += " responses per seed |"
    rule += "---:|"
  lines = [head, rule]
  for v, r in summary["variants"].items():
    row = (f"| {v} | {', '.join(_x100(x) for x in r['values'])} | "
           f"{_x100(r['mean'])} +- {_x100(r['std'])} |")
    if responses is not None:
      row += " " + ", ".join(str(responses[s][v]) for s in seeds) + " |"
    lines.append(row)
  return "\n".join(lines) + "\n"


def _gaps_table(summary: Mapping) -> str:
  """| Paired gap | per seed | mean +- std | every seed > 0 | mean >= 2 std | (x100)."""
  lines = ["| Paired W-Avg gap (same seed) | per seed | mean +- std | every seed > 0 | "
           "mean >= 2 std |", "|---|---:|---:|:---:|:---:|"]
  for name, g in summary["gaps"].items():
    lines.append(f"| {name} | {', '.join(_x100(x, True) for x in g['values'])} | "
                 f"{_x100(g['mean'], True)} +- {_x100(g['std'])} | "
                 f"{'yes' if g['all_positive'] else 'no'} | "
                 f"{'yes' if g['mean'] >= 2 * g['std'] else 'no'} |")
  return "\n".join(lines) + "\n"


def findings(summary: Mapping) -> dict[str, bool]:
  """{"a - b": holds} for the paper's orderings (_CLAIMS) present in summary."""
  return {f"{a} - {b}": bool(summary["gaps"][f"{a} - {b}"]["holds"]) for a, b in _CLAIMS
          if f"{a} - {b}" in summary["gaps"]}


def _findings_text(summary: Mapping, split: str) -> str:
  """One sentence per paper ordering and per reported gap, from the numbers (never by hand)."""
  n = len(summary["seeds"])
  on = "the seed" if n == 1 else f"every one of the {n} seeds"
  lines = []
  for name, g in summary["gaps"].items():
    a, b = name.split(" - ")
    per = ", ".join(_x100(x, True) for x in g["values"])
    spread = "" if n == 1 else f" (mean {_x100(g['mean'], True)} +- {_x100(g['std'])})"
    if g["all_positive"]:
      verdict = f"{a} scores above {b} on {on}: {per}{spread}"
      if n > 1:
        verdict += (", a mean gap of at least twice its spread" if g["mean"] >= 2 * g["std"]
                    else ", but the mean gap is less than twice its spread")
    else:
      below = sum(v <= 0 for v in g["values"])
      verdict = (f"{a} does not score above {b} on {below} of {n} seed{'s' if n > 1 else ''}: "
                 f"{per}{spread}")
    tag = "" if (a, b) in _CLAIMS else " (reported as it comes)"
    lines.append(f"- {verdict} ({split} split){tag}.")
  return "\n".join(lines) + "\n"


def seed_tables(results: Mapping, seed: str | int | None = None) -> str:
  """One seed's paper-layout StreamPro-F1 tables (x100) on the test and validation splits, from
  the demo's results.json (default: its first seed).

  results: {"seeds": [...], "per_seed": {seed: {split: {variant: {"W-Avg", "Avg", "PU", "TR",
  "PA", "per_task": {task: F1}, "decisions": {"response", ...}}}}}, "summary": {split:
  summarize output}} (launch/demo.py).
  """
  from streampro_jax.bench import report  # pylint: disable=g-import-not-at-top
  seed = str(results["seeds"][0] if seed is None else seed)
  out = []
  for split, what in (("test", "the headline: each model scored once"),
                      ("validation", "the split settings are compared on")):
    rows = results["per_seed"][seed][split]
    table = report.markdown_table(
        {v: {"scores": dict(r["per_task"], **{k: r[k] for k in ("PU", "TR", "PA", "Avg",
                                                               "W-Avg")})}
         for v, r in rows.items()})
    table = table.split("\nStreamPro-F1 x100.")[0].rstrip()
    responses = ", ".join(f"{v} {int(r['decisions']['response'])}" for v, r in rows.items())
    out += [f"StreamPro-F1 x100, SynthStream {split} split ({what}), seed {seed}:", "", table,
            "", f"Responses over {int(next(iter(rows.values()))['decisions']['turns'])} turns: "
            f"{responses}.", ""]
  return "\n".join(out)


def seeds_text(results: Mapping) -> str:
  """W-Avg per seed, the paired gaps and the findings on the test and validation splits."""
  seeds = [str(s) for s in results["seeds"]]
  out = []
  for split in ("test", "validation"):
    summary = results["summary"][split]
    responses = {s: {v: int(r["decisions"]["response"])
                     for v, r in results["per_seed"][s][split].items()} for s in seeds}
    out += [f"W-Avg x100 per seed, {split} split:", "", _seeds_table(summary, responses).rstrip(),
            "", _gaps_table(summary).rstrip(), "", _findings_text(summary, split).rstrip(), ""]
  return "\n".join(out)


def demo_text(results: Mapping) -> str:
  """What launch/demo.py prints at the end and keeps in <workdir>/table.md: the first seed's
  tables, then every seed's W-Avg, the paired gaps and the findings."""
  return seed_tables(results) + "\n" + seeds_text(results)
