"""StreamPro-F1: the StreamPro-Bench metric (docs/method.md section 4).

One QA of StreamPro-Bench has a question, one or more timestamped ground-truth answers, and the
model's timestamped responses (predictions). The metric is computed in four steps:

1. Each answer has a *best response time* t_best and a closed *window* of admissible response
   times around it, both fixed per task by `TASK_SETTINGS` (versioned by `METRIC_VERSION`).
2. Matching is prediction-first and greedy: the predictions, in time order, are each tested against
   the answers' windows, answers in time order, and a prediction joins the first answer whose
   window holds it, even when its score there is 0. An answer may collect several predictions;
   only its best score counts. A prediction outside every window joins nothing but still counts
   in N_pred.
3. The score of a (prediction, answer) pair is S = S_time * S_acc with
     S_time = max(0, 1 - dt / tau)     dt = |t_p - t_best| (point answers), or the distance from
                                       t_p to [start, end] (interval answers: 0 inside),
                                       tau = tau_before when t_p < t_best else tau_after;
     S_acc  = judge(prediction_text, answer_text, question) in [0, 1]
              (the paper's 0..5 judge divided by 5, see `_five_point_judge`), or for Temporal
              Grounding (TG) the IoU of the "Xs-Ys" span parsed from the prediction text with the
              ground-truth span (unparseable prediction: IoU 0).
4. P = sum_answers(best S) / N_pred, R = sum_answers(best S) / N_gt, F1 = 2PR / (P + R), 0 when
   P + R = 0. Edge cases [choice]: N_pred = 0 and N_gt = 0 gives P = R = F1 = 1 (nothing to say,
   nothing said; as R_turn in docs/method.md section 3); N_pred = 0 < N_gt gives P = R = F1 = 0;
   N_gt = 0 < N_pred gives P = R = F1 = 0.

Benchmark aggregation ([choice] of docs/method.md section 4): task F1 = mean of per-QA F1 over the
task's QA; dimension F1 = QA-weighted mean of its tasks' F1; W-Avg = QA-weighted mean over all QA;
Avg = plain mean of the three dimension F1s. All values here are fractions in [0, 1] (the report
prints x100).

Answer encoding (dicts as in the annotation schema, or any object with the same attributes):
  * point answers {"time": t, "text": ...}: t is the best response time. For RF this is the best
    time itself (3 s before the hazard), not the hazard time; an RF answer may instead carry
    {"hazard_time": h}, and then t_best = h - 3.
  * interval answers {"start": s, "end": e, "text": ...} for EU and TP.
  * TG answers: {"time": t, "text": "12s-18s"} (t = the event's end, the span parsed from the
    text) or {"start": s, "end": e, "text": ...} (span [s, e], t_best = e).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from streampro_jax import spans

__all__ = [
    "METRIC_VERSION", "TASKS", "TASK_SETTINGS", "aggregate", "score_benchmark", "score_qa",
    "time_acc_table"
]

METRIC_VERSION = "streampro-f1/v1"

_Judge = Callable[[str, str, str], float]


@dataclasses.dataclass(frozen=True)
class _TaskSetting:
  """Window and tolerance of one StreamPro-Bench task (docs/method.md section 4 table).

  The window of an answer is [ref_lo + window_before, ref_hi + window_after] where
  (ref_lo, ref_hi) = (start, end) for interval answers and (t_best, t_best) for point answers;
  window_before is <= 0. S_time uses tau_before for predictions earlier than the best time
  (or than `start`) and tau_after otherwise.
  """
  task: str
  dimension: str            # "PU" | "TR" | "PA"
  answer_kind: str          # "interval" | "point"
  window_before: float      # seconds added to the reference's lower end (<= 0)
  window_after: float       # seconds added to the reference's upper end (>= 0)
  tau_before: float
  tau_after: float
  accuracy: str             # "judge" | "iou"
  best_time: str            # human-readable description of t_best


TASK_SETTINGS: dict[str, _TaskSetting] = {
    "EU": _TaskSetting("EU", "PU", "interval", 0.0, 3.0, 4.0, 4.0, "judge", "within the event"),
    "OU": _TaskSetting("OU", "PU", "point", -3.0, 3.0, 4.0, 4.0, "judge", "the state transition"),
    "AA": _TaskSetting("AA", "PU", "point", 0.0, 5.0, 6.0, 6.0, "judge", "the onset"),
    "TP": _TaskSetting("TP", "TR", "interval", 0.0, 3.0, 4.0, 4.0, "judge", "within the event"),
    "TG": _TaskSetting("TG", "TR", "point", -3.0, 3.0, 4.0, 4.0, "iou", "the event's end"),
    "GP": _TaskSetting("GP", "PA", "point", -3.0, 0.0, 4.0, 4.0, "judge",
                      "completion of the previous step"),
    "RF": _TaskSetting("RF", "PA", "point", -1.0, 3.0, 2.0, 4.0, "judge",
                      "3 s before the hazard"),
}

TASKS = ("EU", "OU", "AA", "TP", "TG", "GP", "RF")
_DIMENSIONS = {"PU": ("EU", "OU", "AA"), "TR": ("TP", "TG"), "PA": ("GP", "RF")}
# QA counts of StreamPro-Bench (paper, docs/method.md section 4).
_PAPER_QA_COUNTS = {"EU": 166, "OU": 144, "AA": 240, "TP": 296, "TG": 331, "GP": 33, "RF": 75}
_RF_HAZARD_LEAD = 3.0   # RF: the best response time is this many seconds before the hazard.


# ---------------------------------------------------------------------------------------------
# Answers, predictions and spans.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Ref:
  """A ground-truth answer reduced to what the metric needs."""
  index: int
  lo: float        # start of the reference (== best for point answers)
  hi: float        # end of the reference (== best for point answers)
  best: float      # t_best: the reference time for offsets (end for intervals)
  text: str
  span: tuple[float, float] | None   # TG ground-truth span
  win_lo: float
  win_hi: float


def _get(obj: Any, key: str, default: Any = None) -> Any:
  if isinstance(obj, Mapping):
    return obj.get(key, default)
  return getattr(obj, key, default)


def _refs(task: str, answers: Sequence[Any]) -> list[_Ref]:
  setting = TASK_SETTINGS[task]
  refs = []
  for i, a in enumerate(answers):
    text = _get(a, "text", "") or ""
    start, end, time = _get(a, "start"), _get(a, "end"), _get(a, "time")
    span = None
    if start is not None and end is not None:
      lo, hi = float(start), float(end)
      if hi < lo:
        raise ValueError(f"{task} answer {i}: end {hi} is before start {lo}")
      if setting.answer_kind == "point":
        if task != "TG":
          raise ValueError(f"{task} answer {i} is an interval [{lo}, {hi}]; {task} answers are "
                           "points {'time': t}")
        span, lo = (lo, hi), hi     # TG: span [s, e], best time e
      best = hi
    else:
      if time is None and task == "RF" and _get(a, "hazard_time") is not None:
        time = float(_get(a, "hazard_time")) - _RF_HAZARD_LEAD
      if time is None:
        raise ValueError(f"{task} answer {i} has neither 'time' nor 'start'/'end': {a!r}")
      # (A point answer of an interval task (EU/TP) is taken as a zero-length event.)
      lo = hi = best = float(time)
      if task == "TG":
        span = spans.parse_span(text)
        if span is None:
          raise ValueError(f"TG answer {i}: no 'Xs-Ys' span in its text {text!r}")
    refs.append(_Ref(i, lo, hi, best, text, span, lo + setting.window_before,
                     hi + setting.window_after))
  # Answers in time order (equal times: given order).
  return sorted(refs, key=lambda r: (r.lo, r.index))


def _predictions(predictions: Iterable[Any]) -> list[tuple[int, float, str]]:
  out = []
  for i, p in enumerate(predictions):
    if isinstance(p, Mapping):
      t, text = p["time"], p.get("text", "")
    else:
      t, text = p
    out.append((i, float(t), "" if text is None else str(text)))
  return sorted(out, key=lambda x: (x[1], x[0]))


def _time_score(task: str, t_pred: float, lo: float, hi: float) -> float:
  """S_time = max(0, 1 - dt / tau) for a prediction at t_pred and reference [lo, hi].

  dt = lo - t_pred (tau_before) when t_pred < lo, t_pred - hi (tau_after) when t_pred > hi, and 0
  inside [lo, hi]; a point reference has lo = hi = t_best.
  """
  s = TASK_SETTINGS[task]
  if t_pred < lo:
    return max(0.0, 1.0 - (lo - t_pred) / s.tau_before)
  if t_pred > hi:
    return max(0.0, 1.0 - (t_pred - hi) / s.tau_after)
  return 1.0


# ---------------------------------------------------------------------------------------------
# One QA.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _QAMatch:
  """The full matching of one QA (what `score_qa` summarises)."""
  task: str
  precision: float
  recall: float
  f1: float
  n_pred: int
  n_gt: int
  # One entry per prediction, in time order: dict(time, answer (index into the given answers or
  # None), s_time, s_acc, s, offset (t_p - t_best of the joined answer, or of the nearest answer
  # when none was joined; None without answers)).
  predictions: list[dict[str, Any]]
  best_s: list[float]        # per answer (given order): its best S (0 when nothing joined)


def _check_acc(value: Any, who: str) -> float:
  if value is None:
    raise ValueError(f"{who} returned None; a judge must score in [0, 1] or raise on failure")
  v = float(value)
  if not math.isfinite(v) or v < 0.0 or v > 1.0:
    raise ValueError(f"{who} returned {v}, outside [0, 1] (divide a 0..5 judge by 5)")
  return v


def _match_qa(task: str, predictions: Sequence[Any], answers: Sequence[Any],
             judge: _Judge | None, question: str = "") -> _QAMatch:
  """Prediction-first greedy matching of one QA; see the module docstring for the formulas.

  Args:
    task: one of TASKS.
    predictions: [(t_seconds, text)] (or dicts {"time", "text"}), any order.
    answers: ground-truth answers (module docstring: encoding).
    judge: judge(prediction_text, answer_text, question) -> float in [0, 1]; not called for TG,
      nor for predictions whose S_time is 0 (their S is 0 whatever the judge says).
    question: passed to the judge.
  """
  if task not in TASK_SETTINGS:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
  setting = TASK_SETTINGS[task]
  refs = _refs(task, answers)
  preds = _predictions(predictions)
  best = [0.0] * len(answers)
  records = []
  for _, t, text in preds:
    joined = None
    for r in refs:
      if r.win_lo <= t <= r.win_hi:
        joined = r
        break
    rec: dict[str, Any] = {"time": t, "answer": None, "s_time": 0.0, "s_acc": 0.0, "s": 0.0}
    if joined is not None:
      s_time = _time_score(task, t, joined.lo, joined.hi)
      if setting.accuracy == "iou":
        s_acc = spans.span_iou(spans.parse_span(text), joined.span)
      elif s_time > 0.0:
        if judge is None:
          raise ValueError(f"task {task} needs a judge (got None)")
        s_acc = _check_acc(judge(text, joined.text, question), "judge")
      else:
        s_acc = 0.0
      s = s_time * s_acc
      best[joined.index] = max(best[joined.index], s)
      rec.update(answer=joined.index, s_time=s_time, s_acc=s_acc, s=s,
                 offset=t - joined.best)
    elif refs:
      nearest = min(refs, key=lambda r: (abs(t - r.best), r.lo))
      rec["offset"] = t - nearest.best
    else:
      rec["offset"] = None
    records.append(rec)
  n_pred, n_gt = len(preds), len(refs)
  total = sum(best)
  if n_pred == 0 and n_gt == 0:
    p = r = f1 = 1.0
  elif n_pred == 0 or n_gt == 0:
    p = r = f1 = 0.0
  else:
    p, r = total / n_pred, total / n_gt
    f1 = 0.0 if p + r == 0.0 else 2.0 * p * r / (p + r)
  return _QAMatch(task, p, r, f1, n_pred, n_gt, records, best)


def _single_judge(judge: Any, task: str) -> _Judge | None:
  """A per-pair callable from a callable judge or a batched `judges.Judge` (score_answers)."""
  if judge is None or not hasattr(judge, "score_answers"):
    return judge
  from streampro_jax import judges as judges_lib   # only needed for batched judge objects

  def call(prediction: str, answer: str, question: str) -> float:
    return judge.score_answers([judges_lib.AnswerItem(question, prediction, answer, task)])[0]
  return call


def score_qa(task: str, predictions: Sequence[Any], answers: Sequence[Any], judge: _Judge | None,
             question: str = "") -> dict[str, float]:
  """StreamPro-F1 of one QA -> dict(precision, recall, f1) (fractions in [0, 1]).

  P = sum(best S per answer) / N_pred, R = the same sum / N_gt, F1 = 2PR / (P + R) (0 when
  P + R = 0), with S = S_time * S_acc and prediction-first greedy matching (module docstring).
  predictions: [(t_seconds, text)]; answers: [{"time", "text"}] or, for EU/TP,
  [{"start", "end", "text"}]; judge(prediction_text, answer_text, question) -> [0, 1] (unused for
  TG, which scores the IoU of the "Xs-Ys" span parsed from the prediction).
  """
  m = _match_qa(task, predictions, answers, _single_judge(judge, task), question)
  return {"precision": m.precision, "recall": m.recall, "f1": m.f1}


def _five_point_judge(judge5: Callable[[str, str, str], float]) -> _Judge:
  """Wraps a 0..5 judge (the paper's scale) into the [0, 1] judge score_qa expects: score / 5."""
  def judge(prediction: str, answer: str, question: str) -> float:
    v = float(judge5(prediction, answer, question))
    if not 0.0 <= v <= 5.0:
      raise ValueError(f"0..5 judge returned {v}")
    return v / 5.0
  return judge


# ---------------------------------------------------------------------------------------------
# Aggregation.
# ---------------------------------------------------------------------------------------------


def aggregate(task_f1: Mapping[str, float], task_counts: Mapping[str, int]) -> dict[str, Any]:
  """Dimension scores of StreamPro-Bench from per-task F1 and per-task QA counts.

  PU = sum_{EU,OU,AA} n_k F1_k / sum n_k, TR over {TP, TG}, PA over {GP, RF};
  W-Avg = sum_all n_k F1_k / sum_all n_k; Avg = (PU + TR + PA) / 3. Each task's F1 is echoed
  under its name. Works on any linear scale (fractions or percentages). A task absent from
  task_f1 or with count 0 is left out; a dimension with no QA is None and Avg is then the mean of
  the dimensions present (None when none is).
  """
  unknown = set(task_f1) - set(TASKS)
  if unknown:
    raise ValueError(f"unknown tasks {sorted(unknown)}; expected {TASKS}")
  out: dict[str, Any] = {}
  present = {}
  for k in TASKS:
    if k in task_f1:
      out[k] = float(task_f1[k])
      n = int(task_counts.get(k, 0))
      if n < 0:
        raise ValueError(f"task {k} has a negative QA count {n}")
      if n > 0:
        present[k] = (float(task_f1[k]), n)
  dims = []
  for d, tasks in _DIMENSIONS.items():
    items = [present[k] for k in tasks if k in present]
    n = sum(c for _, c in items)
    out[d] = sum(f * c for f, c in items) / n if n else None
    if out[d] is not None:
      dims.append(out[d])
  out["Avg"] = sum(dims) / len(dims) if dims else None
  n_all = sum(c for _, c in present.values())
  out["W-Avg"] = sum(f * c for f, c in present.values()) / n_all if n_all else None
  return out


def score_benchmark(items: Iterable[Mapping[str, Any]], judge: Any, *,
                    on_judge_failure: str = "count") -> dict[str, Any]:
  """Scores many QA and aggregates them.

  Args:
    items: dicts with "task", "predictions" ([(t, text)]), "answers", and optionally "question"
      and "id".
    judge: a callable as in score_qa, or a batched judge object with
      score_answers([judges.AnswerItem]) -> [score in [0, 1] or None] (streampro_jax.judges):
      then every (prediction, answer) pair that needs a score is collected first (matching does
      not depend on the scores) and judged in one batch, duplicates once.
    on_judge_failure: what a None judge score becomes: "count" scores that pair 0 and counts it
      in "judge_failures" (and the QA's "judge_failures"); "raise" raises ValueError.

  Returns a dict:
    "version": METRIC_VERSION,
    "scores": aggregate(per-task mean F1, counts) (EU..RF, PU, TR, PA, Avg, W-Avg; fractions),
    "per_task": {task: {"f1", "precision", "recall" (means over the task's QA), "count"}},
    "per_qa": [{"id", "task", "precision", "recall", "f1", "n_pred", "n_gt", "judge_failures"}],
    "predictions": [{"id", "task", "time", "offset", "matched", "s_time", "s_acc", "s"}], one per
      prediction; offset = t_p - t_best of the answer it joined (nearest answer when unmatched;
      for EU/TP t_best is the event's end), for the response-time figures,
    "judge_failures": total number of None judge scores,
    "time_acc": time_acc_table(...) (F1, P, R, Time, Acc per task, dimension and "All");
    per_task entries also hold "time", "acc" and "matched".
  """
  if on_judge_failure not in ("count", "raise"):
    raise ValueError(f"on_judge_failure must be 'count' or 'raise', got {on_judge_failure!r}")
  items = list(items)
  table: dict[tuple[str, str, str, str], float | None] = {}
  batched = judge is not None and hasattr(judge, "score_answers")
  if batched:
    from streampro_jax import judges as judges_lib

    for item in items:      # pass 1: which pairs need a score
      task = item["task"]

      def record(p: str, a: str, q: str, task: str = task) -> float:
        table.setdefault((task, p, a, q), None)
        return 0.0
      _match_qa(task, item.get("predictions", []), item["answers"], record,
               item.get("question", ""))
    keys = list(table)
    scores = judge.score_answers([judges_lib.AnswerItem(q, p, a, t) for t, p, a, q in keys]
                                 ) if keys else []
    if len(scores) != len(keys):
      raise ValueError(f"judge returned {len(scores)} scores for {len(keys)} items")
    table.update(zip(keys, scores))

  per_qa, pred_rows = [], []
  sums: dict[str, list[float]] = {}
  n_failures = 0
  for n, item in enumerate(items):
    task = item["task"]
    qid = item.get("id", str(n))
    failures = 0

    def scored(p: str, a: str, q: str, task: str = task, qid: str = qid) -> float:
      nonlocal failures
      v = table[(task, p, a, q)] if batched else judge(p, a, q)
      if v is None:
        if on_judge_failure == "raise":
          raise ValueError(f"judge failed on QA {qid!r} ({task}): prediction {p!r}")
        failures += 1
        return 0.0
      return v

    m = _match_qa(task, item.get("predictions", []), item["answers"],
                 None if judge is None else scored, item.get("question", ""))
    n_failures += failures
    per_qa.append({"id": qid, "task": task, "precision": m.precision, "recall": m.recall,
                   "f1": m.f1, "n_pred": m.n_pred, "n_gt": m.n_gt, "judge_failures": failures})
    acc = sums.setdefault(task, [0.0, 0.0, 0.0, 0])
    acc[0] += m.f1
    acc[1] += m.precision
    acc[2] += m.recall
    acc[3] += 1
    for rec in m.predictions:
      pred_rows.append({"id": qid, "task": task, "time": rec["time"], "offset": rec["offset"],
                        "matched": rec["answer"] is not None, "s_time": rec["s_time"],
                        "s_acc": rec["s_acc"], "s": rec["s"]})
  per_task = {}
  for task in TASKS:
    if task in sums:
      f, p, r, c = sums[task]
      per_task[task] = {"f1": f / c, "precision": p / c, "recall": r / c, "count": int(c)}
      per_task[task].update(_time_acc([row for row in pred_rows if row["task"] == task]))
  scores = aggregate({k: v["f1"] for k, v in per_task.items()},
                     {k: v["count"] for k, v in per_task.items()})
  return {"version": METRIC_VERSION, "scores": scores, "per_task": per_task, "per_qa": per_qa,
          "predictions": pred_rows, "judge_failures": n_failures,
          "time_acc": time_acc_table(per_task, pred_rows)}


def _time_acc(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """{"time", "acc", "matched"}: mean S_time and S_acc over the matched predictions (None when
  none matched) and their number."""
  matched = [r for r in rows if r["matched"]]
  if not matched:
    return {"time": None, "acc": None, "matched": 0}
  return {"time": sum(r["s_time"] for r in matched) / len(matched),
          "acc": sum(r["s_acc"] for r in matched) / len(matched), "matched": len(matched)}


def time_acc_table(per_task: Mapping[str, Mapping[str, Any]],
                   predictions: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """The paper's Time and Acc columns beside F1, P and R, per task, dimension and overall.

  Time = mean S_time and Acc = mean S_acc over the matched predictions (those that joined an
  answer's window, each counted once, including an answer's non-best ones [choice]), pooled over
  the task / dimension / benchmark ("All"); None when nothing matched. F1, P and R of a dimension
  (and "All") are the QA-weighted means of its tasks' values, as the dimension F1 of `aggregate`.

  Returns {key: {"f1", "precision", "recall", "time", "acc", "matched", "count"}} for each task
  present, each dimension with a task present, and "All".
  """
  out: dict[str, dict[str, Any]] = {}
  groups = [(t, (t,)) for t in TASKS] + list(_DIMENSIONS.items()) + [("All", TASKS)]
  for key, tasks in groups:
    present = [t for t in tasks if t in per_task and per_task[t]["count"] > 0]
    if not present:
      continue
    n = sum(per_task[t]["count"] for t in present)
    row = {m: sum(per_task[t][m] * per_task[t]["count"] for t in present) / n
           for m in ("f1", "precision", "recall")}
    row.update(_time_acc([p for p in predictions if p["task"] in present]))
    row["count"] = n
    out[key] = row
  return out
