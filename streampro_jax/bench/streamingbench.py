"""StreamingBench scoring, as the official `src/data/count.py` does it.

Official code: github.com/THUNLP-MT/StreamingBench (read at commit 89299232, 2025-05-16):
`src/data/count.py` (scores), `src/benchmark/StreamingBench.py` (RTVU prompting),
`src/benchmark/StreamingBenchProactive.py` (proactive polling).

Annotation JSON: a list of videos {"time", "questions": [...], "video_categories", "video_path"};
a question holds "task_type", "question", "time_stamp" (HH:MM:SS), and for multiple choice
"options" and "answer" (a letter), for Proactive Output "ground_truth_time_stamp" and
"ground_truth_output".

Real-Time Visual Understanding (RTVU, `score_rtvu`): a question is correct when the response's
first character equals the answer letter (no stripping: " A" is wrong). A question without a
response (None, missing, or "") is left out of every count (the official script skips questions
the model has no entry for; an empty string would crash it); `n_missing` reports how many.
Accuracy per task_type and "total" (micro: all scored questions pooled) are fractions.

Proactive Output (`score_proactive`): a history is the list of the model's replies
{"time", "content"} (the official "dialog_history" may be passed as is: user turns are dropped).
Only the LAST reply counts: time-correct when -2 <= last_time - ground_truth_time <= 2 (seconds,
inclusive); answer-correct when also time-correct and ground_truth_output is a substring of the
last reply's content. A missing history (None) is skipped; an empty one counts as wrong (the
official script would crash on it).

The polling protocol that produces a history (for the harness): poll at question time + 1,
+ 2, ... up to ground-truth time + 4 (`_poll_times`) with the yes/no query (`_proactive_query`);
the first response containing "yes" (`_is_yes`, lower-cased, stripped) stops polling, and the plain
question is then asked at that same time; its answer is the last reply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["load_questions", "score_proactive", "score_rtvu"]

_STREAMINGBENCH_VERSION = "streamingbench-count/89299232"
# The 10 RTVU task types as named in the released questions_real.json (2,500 questions); the paper
# calls them OP, CR, CS, ATP, EU, TR, PR, SU, ACP, CT.
_RTVU_TASKS = ("Object Recognition", "Causal Reasoning", "Clips Summarize", "Attribute Recognition",
              "Event Understanding", "Text-Rich Understanding", "Prospective Reasoning",
              "Spatial Understanding", "Action Recognition", "Counting")
_RTVU_CONTEXT_SECONDS = 60     # main setting (README): the 60 s of video before the question time
_PROACTIVE_TIME_TOLERANCE = 2  # seconds, inclusive, either side
_PROACTIVE_POLL_AFTER_GT = 4   # polling stops at ground-truth time + 4 s
_PROACTIVE_QUERY = ('{question} Is it the right time to output "{output}"? '
                   "You can only answer yes or no.")


def _hms_to_seconds(stamp: str) -> int:
  """ "HH:MM:SS" (or "MM:SS", "SS") -> seconds, as sum(int(x) * 60**i) over reversed fields."""
  return sum(int(x) * 60 ** i for i, x in enumerate(reversed(str(stamp).split(":"))))


def load_questions(path: str) -> list[dict[str, Any]]:
  """Flattens an official annotation JSON into one record per question.

  Each record is the question's own dict (task_type, question, time_stamp, options, answer, ...)
  plus "video_index", "question_index", "video_path", "video_time" (the video entry's "time"),
  "video_categories", "time_seconds" (time_stamp in seconds) and, for Proactive Output,
  "ground_truth_time_seconds".
  """
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a JSON list of videos, got {type(data).__name__}")
  out = []
  for vi, video in enumerate(data):
    for qi, q in enumerate(video.get("questions", [])):
      rec = dict(q)
      if "task_type" not in rec or "time_stamp" not in rec:
        raise ValueError(f"{path}: video {vi} question {qi} lacks task_type or time_stamp")
      rec.update(video_index=vi, question_index=qi, video_path=video.get("video_path"),
                 video_time=video.get("time"), video_categories=video.get("video_categories"),
                 time_seconds=_hms_to_seconds(rec["time_stamp"]))
      if "ground_truth_time_stamp" in rec:
        rec["ground_truth_time_seconds"] = _hms_to_seconds(rec["ground_truth_time_stamp"])
      out.append(rec)
  return out


def _lookup(container: Sequence[Any] | Mapping[Any, Any], i: int, q: Mapping[str, Any]) -> Any:
  if not isinstance(container, Mapping):
    return container[i]
  for key in (i, q.get("id"), (q.get("video_index"), q.get("question_index"))):
    if key is not None and key in container:
      return container[key]
  return None


def _check_len(questions: Sequence[Any], container: Any, what: str) -> None:
  if not isinstance(container, Mapping) and len(container) != len(questions):
    raise ValueError(f"{len(questions)} questions but {len(container)} {what}")


def score_rtvu(questions: Sequence[Mapping[str, Any]],
               responses: Sequence[str | None] | Mapping[Any, str | None]) -> dict[str, Any]:
  """RTVU accuracy (official count.py rule: response[0] == answer).

  Args:
    questions: records from load_questions.
    responses: a list aligned with questions, or a mapping from the question's position (or its
      "id", or (video_index, question_index)) to the model's response text.

  Returns:
    {"total": micro accuracy, "tasks": {task_type: accuracy}, "counts": {task_type:
     {"total", "correct"}}, "n_scored", "n_missing", "version"}; accuracies 0 with nothing scored.
  """
  _check_len(questions, responses, "responses")
  counts: dict[str, dict[str, int]] = {}
  n_missing = 0
  for i, q in enumerate(questions):
    r = _lookup(responses, i, q)
    if not r:
      n_missing += 1
      continue
    c = counts.setdefault(q["task_type"], {"total": 0, "correct": 0})
    c["total"] += 1
    c["correct"] += int(r[0] == q["answer"])
  n = sum(c["total"] for c in counts.values())
  correct = sum(c["correct"] for c in counts.values())
  return {"total": correct / n if n else 0.0,
          "tasks": {t: c["correct"] / c["total"] for t, c in counts.items()},
          "counts": counts, "n_scored": n, "n_missing": n_missing,
          "version": _STREAMINGBENCH_VERSION}


def _replies(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
  return [h for h in history if h.get("role", "assistant") == "assistant"]


def score_proactive(questions: Sequence[Mapping[str, Any]],
                    histories: Sequence[Any] | Mapping[Any, Any]) -> dict[str, Any]:
  """Proactive Output time and answer accuracy (official count.py rule on the last reply).

  Args:
    questions: records from load_questions (with ground_truth_time_stamp, ground_truth_output).
    histories: per question (list aligned with questions, or mapping as in score_rtvu) the list of
      replies {"time": seconds, "content": str}, or an official {"dialog_history": [...]} dict.

  Returns:
    {"time_accuracy", "answer_accuracy": fractions over all scored questions, "tasks":
     {task_type: {"time_accuracy", "answer_accuracy", "total", "time_correct",
     "answer_correct"}}, "n_scored", "n_missing", "version"}.
  """
  _check_len(questions, histories, "histories")
  per: dict[str, dict[str, int]] = {}
  n_missing = 0
  for i, q in enumerate(questions):
    h = _lookup(histories, i, q)
    if h is None:
      n_missing += 1
      continue
    if isinstance(h, Mapping):
      h = h.get("dialog_history", [])
    gt_time = _hms_to_seconds(q["ground_truth_time_stamp"])
    c = per.setdefault(q["task_type"], {"total": 0, "time_correct": 0, "answer_correct": 0})
    c["total"] += 1
    replies = _replies(h)
    if not replies:
      continue
    last = replies[-1]
    if -_PROACTIVE_TIME_TOLERANCE <= float(last["time"]) - gt_time <= _PROACTIVE_TIME_TOLERANCE:
      c["time_correct"] += 1
      if str(q["ground_truth_output"]) in str(last.get("content", "")):
        c["answer_correct"] += 1
  tasks = {}
  for t, c in per.items():
    tasks[t] = dict(c, time_accuracy=c["time_correct"] / c["total"] if c["total"] else 0.0,
                    answer_accuracy=c["answer_correct"] / c["total"] if c["total"] else 0.0)
  n = sum(c["total"] for c in per.values())
  return {"time_accuracy": sum(c["time_correct"] for c in per.values()) / n if n else 0.0,
          "answer_accuracy": sum(c["answer_correct"] for c in per.values()) / n if n else 0.0,
          "tasks": tasks, "n_scored": n, "n_missing": n_missing,
          "version": _STREAMINGBENCH_VERSION}


def _poll_times(question: Mapping[str, Any]) -> list[int]:
  """Proactive polling times: question time + 1, ..., ground-truth time + 4 (inclusive)."""
  start = _hms_to_seconds(question["time_stamp"])
  stop = _hms_to_seconds(question["ground_truth_time_stamp"]) + _PROACTIVE_POLL_AFTER_GT
  return list(range(start + 1, stop + 1))


def _proactive_query(question: Mapping[str, Any]) -> str:
  """The per-second yes/no query of the official proactive protocol."""
  return _PROACTIVE_QUERY.format(question=question["question"],
                                output=question["ground_truth_output"])


def _is_yes(response: str) -> bool:
  """Official stop rule: 'yes' in response.strip().lower()."""
  return "yes" in str(response).strip().lower()
