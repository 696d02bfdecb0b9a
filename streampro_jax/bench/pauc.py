"""PAUC of ProactiveVideoQA (Wang et al., arXiv 2507.09313), as its evaluation code computes it.

Source of the rules: ProactiveVideoQA's `pauc/judge_llm_scores_openai.py` (repository
yellow-binary-tree/ProactiveVideoQA). That repository could not be read here; the rules below follow
two independent public ports of that file which agree line for line (VLMEvalKit's
ProactiveVideoQA dataset and a stand-alone port); see docs/components.md#peer-scorers.

Per ground-truth turn with reply span [s, e] (the turn's "reply_timespan"):
  * every model reply at time t with s <= t <= e is judged; grades are 0..2 (the judge answers
    1..3 and 1 is subtracted). The reply at t is judged on the concatenation of all distinct
    in-span replies up to t (`judge_inputs`).
  * the points (x_i, g_i) = ((t_i - s) * (1 - omega), g_i), sorted by t_i, and a last point
    (e - s, g_last) (its x not scaled) make a left-continuous step curve that is `start` (0.5) on
    [0, x_1), g_1 on [x_1, x_2), ..., g_last on [x_last, e - s];
  * turn score = area under that curve / ((e - s) * max_grade);  0 when e - s = 0;
  * a turn with no judged reply scores start / max_grade (0.25 by default).
omega = 0 weighs time fully (an early good reply is worth more); omega = 1 ignores time (the turn
score is the last reply's grade / max_grade). The benchmark score is the mean over all turns of
all examples, reported for omega in {0, 0.5, 1} (official output: x100, 2 decimals; here
fractions). Before the mean, a turn with more than one judged reply drops every reply later than
the end of its "related_timespan" whose grade is below the grade of the last reply inside it
(`_drop_late_regressions`, as the official post-processing does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["judge_inputs", "score", "turn_score"]

_PAUC_VERSION = "proactivevideoqa-pauc/v1"
_DEFAULT_OMEGAS = (0.0, 0.5, 1.0)
_MAX_GRADE = 2
_START_SCORE = 0.5


def turn_score(times: Sequence[float], grades: Sequence[float], span: Sequence[float], *,
               omega: float = 0.5, max_grade: float = _MAX_GRADE,
               start: float = _START_SCORE) -> float:
  """PAUC of one ground-truth turn.

  Args:
    times: f[N] absolute reply times (seconds); replies outside the closed span are ignored.
    grades: f[N] judge grades in [0, max_grade], one per reply.
    span: (s, e) the turn's reply span.
    omega: time-discount weight in [0, 1]; x = (t - s) * (1 - omega).
    max_grade: the grade scale's maximum (2 for the 0..2 grades).
    start: curve value before the first reply.

  Returns:
    area under the step curve (start until x_1, then each reply's grade until the next reply's x,
    the last grade until e - s) / ((e - s) * max_grade); start / max_grade with no reply in span;
    0 when e - s <= 0 and some reply is in span.
  """
  if len(times) != len(grades):
    raise ValueError(f"{len(times)} reply times but {len(grades)} grades")
  if not 0.0 <= omega <= 1.0:
    raise ValueError(f"omega {omega} outside [0, 1]")
  s, e = float(span[0]), float(span[1])
  pts = [(float(t) - s, float(g)) for t, g in zip(times, grades) if s <= float(t) <= e]
  if not pts:
    return start / max_grade
  pts.sort(key=lambda p: p[0])
  max_x = e - s
  curve = [(x * (1.0 - omega), g) for x, g in pts] + [(max_x, pts[-1][1])]
  area, prev_x, prev_y = 0.0, 0.0, start
  for x, y in curve:
    area += (x - prev_x) * prev_y
    prev_x, prev_y = x, y
  max_area = max_x * max_grade
  return area / max_area if max_area > 0 else 0.0


def _drop_late_regressions(judge_scores: Mapping[float, float],
                          related_end: float) -> dict[float, float]:
  """Official post-processing of one turn's {reply_time: grade}.

  With at most one reply nothing changes. Otherwise, going through the replies in time order and
  keeping `last` = the grade of the latest reply at t <= related_end (0 before any), a reply at
  t > related_end whose grade is below `last` is dropped.
  """
  scores = {float(t): g for t, g in judge_scores.items()}
  if len(scores) <= 1:
    return scores
  last, drop = 0.0, []
  for t, g in sorted(scores.items()):
    if t <= related_end:
      last = g
    elif g < last:
      drop.append(t)
  for t in drop:
    del scores[t]
  return scores


def score(examples: Iterable[Mapping[str, Any]], *, omegas: Sequence[float] = _DEFAULT_OMEGAS,
          max_grade: float = _MAX_GRADE, start: float = _START_SCORE,
          postprocess: bool = True) -> dict[str, Any]:
  """Benchmark PAUC: mean turn_score over every turn of every example, per omega.

  Args:
    examples: dicts with "answer": a list of turns, each {"reply_timespan": [s, e],
      "related_timespan": [a, b] (optional; defaults to the reply span), "judge_scores":
      {reply_time: grade 0..2} (missing or empty: no judged reply)} -- the official scored format.
    omegas: the omegas to report.
    postprocess: apply _drop_late_regressions first (the official pipeline does).

  Returns:
    {"omega=<w>": mean turn score (fraction) for each w, "num_videos", "num_turns",
     "version"}; with no turn every mean is 0 (as the official code).
  """
  turns = []
  n_examples = 0
  for ex in examples:
    n_examples += 1
    for turn in ex["answer"]:
      s, e = turn["reply_timespan"]
      js = turn.get("judge_scores") or {}
      if postprocess:
        related_end = (turn.get("related_timespan") or turn["reply_timespan"])[1]
        js = _drop_late_regressions(js, float(related_end))
      turns.append(([float(t) for t in js], list(js.values()), (s, e)))
  out: dict[str, Any] = {}
  for w in omegas:
    vals = [turn_score(t, g, sp, omega=w, max_grade=max_grade, start=start)
            for t, g, sp in turns]
    out[f"omega={_fmt(w)}"] = sum(vals) / len(vals) if vals else 0.0
  out["num_videos"] = n_examples
  out["num_turns"] = len(turns)
  out["version"] = _PAUC_VERSION
  return out


def _fmt(w: float) -> str:
  return str(int(w)) if float(w).is_integer() else str(w)


def judge_inputs(replies: Sequence[tuple[float, str]],
                 span: Sequence[float]) -> list[tuple[float, str]]:
  """What the judge grades for one turn: [(reply_time, predicted_text)].

  Replies with s <= t <= e are taken in the given order; a reply whose text equals an earlier
  in-span reply is skipped (no judged point at its time); each judged text is the space-joined
  concatenation of the distinct in-span replies so far.
  """
  s, e = float(span[0]), float(span[1])
  added: list[str] = []
  out = []
  for t, text in replies:
    if not s <= float(t) <= e or text in added:
      continue
    added.append(text)
    out.append((float(t), " ".join(added)))
  return out


_GRADE_RE = re.compile(r"[123]")


def _grade_from_judge_output(text: str) -> int | None:
  """Judge reply "1".."3" -> grade 0..2 (a leading 1, 2 or 3 after stripping); None otherwise."""
  m = _GRADE_RE.match(str(text).strip())
  return int(m.group()) - 1 if m else None
