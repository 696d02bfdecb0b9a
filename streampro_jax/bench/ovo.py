"""OVO-Bench scoring, as the official `utils/OVOBenchScore.py` (OVOBenchOfflineScore) does it.

Official code: github.com/JoeLeelyf/OVO-Bench (read at commit c34093f9, 2025-07-24).

Input: the official results JSON, {"backward": [...], "realtime": [...], "forward": [...]} (the
official score.py concatenates these lists over all result files of a model: `_merge_results`).
  * backward / realtime item: {"id", "task", "response", "ground_truth": letter "A".."D", ...};
    score = 1 when ground_truth is a substring of response (case-sensitive), 0 when the response
    is None.
  * forward item: {"id", "task": "REC" | "SSR" | "CRR", "test_info": [probe, ...]}; each probe is
    scored:
      REC: all digit runs of the response joined together == str(probe["count"]);
      SSR, CRR: response == "N" with type 0, or == "Y" with type 1, scores 1; otherwise the
        substring test of "No" (type 0) / "Yes" (type 1) in the response (case-sensitive);
      a None (or, here, missing) response scores 0.
Each task's accuracy = mean over its items (backward/realtime) or over all its probes (forward);
a category's score = plain mean of the accuracies of the tasks present in it; Total = mean of the
three categories. Fractions here (the official script prints x100 with 2 decimals).

Differences from the official script (where it would crash): a probe without a "response" key is
scored 0 (official: KeyError); an empty category gives None and then Total is None (official:
NameError); a forward task other than REC/SSR/CRR raises ValueError (official: ZeroDivisionError).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["score"]

_OVO_VERSION = "ovo-bench-offline/c34093f9"
_BACKWARD_TASKS = ("EPM", "ASI", "HLD")
_REALTIME_TASKS = ("OCR", "ACR", "ATR", "STU", "FPD", "OJR")
_FORWARD_TASKS = ("REC", "SSR", "CRR")
_CATEGORIES = ("backward", "realtime", "forward")


def _score_choice(response: str | None, ground_truth: str) -> int:
  """Backward / real-time item: 1 when the answer letter occurs in the response."""
  if response is None:
    return 0
  return int(ground_truth in response)


def _score_rec(response: str | None, count: Any) -> int:
  """REC probe: "".join(re.findall(r"\\d+", response)) == str(count)."""
  if response is None:
    return 0
  return int("".join(re.findall(r"\d+", response)) == str(count))


def _score_yes_no(response: str | None, probe_type: int) -> int:
  """SSR / CRR probe: exact "N"/"Y" for type 0/1, else substring "No"/"Yes" (case-sensitive)."""
  if (response == "N" and probe_type == 0) or (response == "Y" and probe_type == 1):
    return 1
  if response is None:
    return 0
  return int(("No" if probe_type == 0 else "Yes") in response)


def _merge_results(files: Iterable[Mapping[str, Any]]) -> dict[str, list]:
  """Concatenates several results JSONs category by category, as the official score.py."""
  out: dict[str, list] = {c: [] for c in _CATEGORIES}
  for f in files:
    for c in _CATEGORIES:
      out[c] += list(f.get(c, []))
  return out


def score(results: Mapping[str, Any]) -> dict[str, Any]:
  """Scores an OVO-Bench results JSON.

  Returns:
    {"total", "backward", "realtime", "forward": fractions (None for an empty category; total
     None unless all three are present), "tasks": {task: accuracy}, "counts": {task: number of
     items (backward/realtime) or probes (forward)}, "version"}.
  """
  # Scores are pooled per (category, task), as the official script scores each category apart.
  per_task: dict[tuple[str, str], list[int]] = {}

  def add(cat: str, task: str, value: int) -> None:
    per_task.setdefault((cat, task), []).append(value)

  for cat in ("backward", "realtime"):
    for item in results.get(cat, []) or []:
      add(cat, item["task"], _score_choice(item.get("response"), item["ground_truth"]))
  for item in results.get("forward", []) or []:
    task = item["task"]
    if task not in _FORWARD_TASKS:
      raise ValueError(f"forward item {item.get('id')} has task {task!r}; expected one of "
                       f"{_FORWARD_TASKS}")
    for probe in item["test_info"]:
      response = probe.get("response")
      if task == "REC":
        add("forward", task, _score_rec(response, probe["count"]))
      else:
        add("forward", task, _score_yes_no(response, probe["type"]))

  acc = {k: sum(v) / len(v) for k, v in per_task.items()}
  out: dict[str, Any] = {}
  for cat in _CATEGORIES:
    accs = [a for (c, _), a in acc.items() if c == cat]
    out[cat] = sum(accs) / len(accs) if accs else None
  cats = [out[c] for c in _CATEGORIES]
  out["total"] = None if any(c is None for c in cats) else sum(cats) / 3.0
  # A task name found in two categories (not in the official data) is reported as "cat/task".
  names = [t for _, t in acc]
  key = {(c, t): (t if names.count(t) == 1 else f"{c}/{t}") for c, t in acc}
  out["tasks"] = {key[k]: a for k, a in acc.items()}
  out["counts"] = {key[k]: len(v) for k, v in per_task.items()}
  out["version"] = _OVO_VERSION
  return out
