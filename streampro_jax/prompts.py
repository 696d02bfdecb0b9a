"""Judge prompts and the parsers of their replies (one place for every prompt a judge sends).

Three jobs, as in the paper (SPEC section 3, "Judges"):
  - answer score: 0 to 5 for a predicted answer against the reference; S_acc = score / 5;
  - rubric check: pass/fail of each trajectory checkpoint on a whole predicted trajectory;
  - rubric writing: 6 to 10 binary checkpoints from a question and its timestamped answers.

Each job has a `*_messages` builder returning OpenAI-style chat messages and a parser returning
None (or None entries) when the reply is malformed -- never a silent 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

PROMPT_VERSION = "v1"
MAX_ANSWER_SCORE = 5

ANSWER_SCORE_SYSTEM = (
    "You are a strict grader of answers produced by a streaming video assistant. You compare a "
    "predicted answer with a reference answer to the same question about a video and rate how "
    "correct and complete the prediction is.")

ANSWER_SCORE_TEMPLATE = """Question: {question}
Reference answer: {reference}
Predicted answer: {prediction}

Rate the predicted answer against the reference answer on an integer scale from 0 to 5:
5 = fully correct and complete; 4 = correct with minor omissions; 3 = partly correct;
2 = mostly incorrect but related; 1 = barely related; 0 = wrong, irrelevant or empty.
Judge only the meaning, not the wording. Reply with exactly one line: Score: <0-5>"""

RUBRIC_CHECK_SYSTEM = (
    "You are a strict grader of the responses a streaming video assistant gave while watching a "
    "video. You check a list of binary checkpoints against the assistant's whole trajectory of "
    "timestamped responses.")

RUBRIC_CHECK_TEMPLATE = """Question: {question}
Assistant trajectory (time span of the turn, then the response):
{trajectory}

Checkpoints:
{checks}

For each checkpoint decide whether the trajectory satisfies it (PASS) or not (FAIL). A checkpoint
about timing or order fails when responses come in the wrong order or at the wrong time; a
checkpoint about content fails when the point is missing or hallucinated.
Reply with exactly one line per checkpoint, in order, formatted as "<number>: PASS" or
"<number>: FAIL", and nothing else."""

RUBRIC_WRITE_SYSTEM = (
    "You write grading rubrics for a streaming video assistant that must answer questions at the "
    "right moments while watching a video.")

RUBRIC_WRITE_TEMPLATE = """Question: {question}
Reference answers (response time in seconds, then the answer):
{answers}

Write between {min_checks} and {max_checks} binary checkpoints that a grader can mark pass or fail
on the assistant's whole trajectory of timestamped responses. Cover:
- granularity: responses are neither too fragmented nor too coarse;
- sequencing: responses follow the chronological order of the events;
- coverage: every essential point of the reference answers is present, nothing is hallucinated.
Each checkpoint is one self-contained sentence. Reply with a JSON list of strings only."""


def answer_score_messages(question: str, reference: str, prediction: str) -> list[dict[str, str]]:
  """Chat messages asking for a 0..5 score of `prediction` against `reference`."""
  return [
      {"role": "system", "content": ANSWER_SCORE_SYSTEM},
      {"role": "user", "content": ANSWER_SCORE_TEMPLATE.format(
          question=question or "(not given)", reference=reference, prediction=prediction or "")},
  ]


def rubric_check_messages(trajectory_text: str, checks: Sequence[str],
                          question: str = "") -> list[dict[str, str]]:
  """Chat messages asking for PASS/FAIL of each checkpoint (numbered from 1)."""
  numbered = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(checks))
  return [
      {"role": "system", "content": RUBRIC_CHECK_SYSTEM},
      {"role": "user", "content": RUBRIC_CHECK_TEMPLATE.format(
          question=question or "(not given)", trajectory=trajectory_text, checks=numbered)},
  ]


def rubric_write_messages(question: str, answers: Sequence[tuple[float, str]], *,
                          min_checks: int = 6, max_checks: int = 10) -> list[dict[str, str]]:
  """Chat messages asking for a rubric (JSON list of checkpoint strings).

  Args:
    question: the question.
    answers: [(response time in seconds, answer text)].
  """
  lines = "\n".join(f"{t:g}s: {text}" for t, text in answers)
  return [
      {"role": "system", "content": RUBRIC_WRITE_SYSTEM},
      {"role": "user", "content": RUBRIC_WRITE_TEMPLATE.format(
          question=question, answers=lines, min_checks=min_checks, max_checks=max_checks)},
  ]


def messages_to_text(messages: Sequence[dict[str, str]]) -> str:
  """Plain-text rendering of chat messages, for a local model without a chat template."""
  parts = [m["content"] for m in messages]
  return "\n\n".join(parts) + "\n\n"


_NUM = r"(\d+(?:\.\d+)?)"
_OUT_OF = r"(?:\s*/\s*\d+(?:\.0+)?)?"
_SCORE_RE = re.compile(r"\bscore\s*(?:is|=|:)?\s*" + _NUM + _OUT_OF + r"(?![\d.]*\d)",
                       re.IGNORECASE)
_LONE_RE = re.compile(r"^" + _NUM + _OUT_OF + r"\.?$")


def parse_score(reply: str | None, max_score: int = MAX_ANSWER_SCORE) -> float | None:
  """The 0..max_score score of a judge reply divided by max_score, or None when malformed.

  Markdown asterisks are dropped first. Accepted: "Score: 4", "score = 4/5", "Score is 3.5", or a
  reply that is just a number ("4", "4/5"). With several "score" mentions the last counts. A
  number outside [0, max_score], or no recognisable score, gives None.
  """
  if reply is None:
    return None
  text = reply.replace("*", "").strip()
  matches = _SCORE_RE.findall(text)
  if matches:
    value = float(matches[-1])
  else:
    lone = _LONE_RE.match(text)
    if not lone:
      return None
    value = float(lone.group(1))
  if not 0.0 <= value <= max_score:
    return None
  return value / max_score


_CHECK_LINE_RE = re.compile(r"^\W*(\d+)\s*[:.)\-]\s*\**\s*(pass|fail|yes|no|true|false)\b",
                            re.IGNORECASE | re.MULTILINE)
_TRUE_WORDS = {"pass", "yes", "true"}


def parse_rubric_checks(reply: str | None, num_checks: int) -> list[bool | None]:
  """Per-checkpoint PASS/FAIL from a judge reply; None for checkpoints it does not mark.

  Accepted: lines "<n>: PASS|FAIL" (also yes/no, true/false, with ".", ")" or "-"), or a JSON list
  of num_checks booleans / "pass"/"fail" strings. A checkpoint marked twice with different marks
  is None.
  """
  out: list[bool | None] = [None] * num_checks
  if reply is None:
    return out
  text = reply.strip()
  json_list = _try_json_list(text)
  if json_list is not None and len(json_list) == num_checks:
    for i, v in enumerate(json_list):
      if isinstance(v, bool):
        out[i] = v
      elif isinstance(v, str) and v.strip().lower() in _TRUE_WORDS | {"fail", "no", "false"}:
        out[i] = v.strip().lower() in _TRUE_WORDS
    return out
  seen: dict[int, set[bool]] = {}
  for num, word in _CHECK_LINE_RE.findall(text):
    idx = int(num) - 1
    if 0 <= idx < num_checks:
      seen.setdefault(idx, set()).add(word.lower() in _TRUE_WORDS)
  for idx, marks in seen.items():
    if len(marks) == 1:
      out[idx] = next(iter(marks))
  return out


def _try_json_list(text: str) -> list[Any] | None:
  start, end = text.find("["), text.rfind("]")
  if start < 0 or end <= start:
    return None
  try:
    value = json.loads(text[start:end + 1])
  except (json.JSONDecodeError, ValueError):
    return None
  return value if isinstance(value, list) else None


def parse_rubric(reply: str | None, *, min_checks: int = 1,
                 max_checks: int = 20) -> list[str] | None:
  """Checkpoint strings from a rubric-writing reply (a JSON list, or a numbered / bulleted list).

  None when fewer than min_checks usable checkpoints are found; the list is cut at max_checks.
  """
  if reply is None:
    return None
  items = _try_json_list(reply)
  checks: list[str]
  if items is not None and all(isinstance(x, str) for x in items):
    checks = [x.strip() for x in items if x.strip()]
  else:
    checks = []
    for line in reply.splitlines():
      m = re.match(r"^\s*(?:\d+[.)]|[-*])\s+(.*\S)\s*$", line)
      if m:
        checks.append(m.group(1))
  if len(checks) < min_checks:
    return None
  return checks[:max_checks]
