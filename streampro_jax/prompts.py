"""Every prompt and special token of the project, and the parsers of the judges' replies.

The streaming system prompt (STREAMING_SYSTEM_PROMPT, what the model is told while it watches) and
three judge jobs, as in the paper (docs/method.md sections 1 and 3, "Judges"; the paper's App. E
prompts followed rule by rule in our own words):
  - answer score: 0 to 5 for a predicted answer against the reference; S_acc = score / 5; the
    reply is a JSON object {"explanation": one sentence, "score": integer 0-5} and nothing else;
  - rubric check: pass/fail of each trajectory checkpoint on a whole predicted trajectory
    ("<n>: PASS|FAIL" lines; the paper does not give this prompt [choice]);
  - rubric writing (offline, before RL): 6 to 10 assertive, video-specific pass/fail rubrics over
    granularity, coherence and coverage, self-reviewed; the reply is a JSON array of objects
    {"rubric_id", "dimension", "rubric"} and nothing else.
Temporal Grounding answers are never sent to an LLM: their S_acc is a span IoU (spans.py).

Each job has a `*_messages` builder returning OpenAI-style chat messages and a parser that accepts
exactly the specified reply format and returns None (or None entries) otherwise -- never a silent
0; the judges count those replies as malformed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DECISION_TOKENS", "IM_END", "IM_START", "PAD", "PROMPT_VERSION", "RESPONSE_TOKEN",
    "SILENCE_TOKEN", "STREAMING_SYSTEM_PROMPT", "VIDEO_PAD", "VISION_END", "VISION_START",
    "answer_score_messages", "messages_to_text", "parse_rubric_checks", "parse_rubric_items",
    "parse_score", "rubric_check_messages", "rubric_write_messages"
]

PROMPT_VERSION = "v2"
_MAX_ANSWER_SCORE = 5

# ---- the special tokens (their one definition; tokenizer, chat format, rewards and importers
# import them from here) ------------------------------------------------------------------------

SILENCE_TOKEN = "</Silence>"
"""The decision token of a silent turn (a whole assistant message is exactly this)."""
RESPONSE_TOKEN = "</Response>"
"""The decision token that opens an answer (``</Response>`` + the answer text)."""
DECISION_TOKENS = (SILENCE_TOKEN, RESPONSE_TOKEN)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VIDEO_PAD = "<|video_pad|>"
PAD = "<|endoftext|>"

# ---- the streaming system prompt (docs/method.md section 1; the paper's App. E rules, our wording)

STREAMING_SYSTEM_PROMPT = (
    "You are watching a live video stream together with a user. The frames arrive one second "
    "at a time, each labelled with its time span <Xs-Ys>, and a question from the user comes "
    "with the second at which it is asked. After every second, reply with exactly one of two "
    "messages. Reply </Silence> while the event the question asks about has not fully "
    "completed, or when what you see is irrelevant to the question. Reply </Response> "
    "followed by the answer only once the event has concluded or what you have seen is enough "
    "for a complete and final answer. Never give a partial answer and never guess. Every answer "
    "begins with </Response>."
)
"""The one streaming system prompt (the default of data/chat_format). Its rules, each
from the paper's prompt: frames come one by one labelled <Xs-Ys>; </Silence> while the event is
not complete or the input is irrelevant; </Response> only when the event has concluded or the
information suffices for a complete final answer; no partial answers, no speculation; every
answer starts with </Response>."""

# ---- the answer judge (S_acc; docs/method.md section 3 "Judges") ---------------------------------

_ANSWER_SCORE_SYSTEM = (
    "You grade the answers a video assistant gives to questions about a video. You compare the "
    "assistant's answer with a reference answer and decide whether it gives correct "
    "information that directly answers the question.")

_ANSWER_SCORE_TEMPLATE = """Question: {question}
Reference answer: {reference}
Assistant's answer: {prediction}

How to judge:
- The answer does not have to repeat every detail of the reference. An answer that is
  simplified, rephrased, high-level or concise is acceptable as long as it agrees with the
  reference.
- Leaving out secondary or illustrative details costs nothing.
- Lower the score only for factual errors, for irrelevant content, or for vagueness that
  leaves the question unanswered.

Scale (an integer):
5 - fully accurate and complete.
4 - correct and informative enough: the key information is there; non-essential details may
    be missing.
3 - partly relevant: some important information is missing.
2 - tangential or speculative.
1 - factually wrong.
0 - no attempt, or off-topic.

Reply with a JSON object and nothing else, with exactly two keys: "explanation" (one sentence)
and "score" (an integer from 0 to 5). Example:
{{"explanation": "It names the right object.", "score": 4}}"""

# ---- the rubric check (R_traj: pass/fail of each checkpoint on a trajectory) -------------------

_RUBRIC_CHECK_SYSTEM = (
    "You are a strict grader of the responses a streaming video assistant gave while watching a "
    "video. You check a list of binary checkpoints against the assistant's whole trajectory of "
    "timestamped responses.")

_RUBRIC_CHECK_TEMPLATE = """Question: {question}
Assistant trajectory (time span of the turn, then the response):
{trajectory}

Checkpoints:
{checks}

For each checkpoint decide whether the trajectory satisfies it (PASS) or not (FAIL). A checkpoint
about timing or order fails when responses come in the wrong order or at the wrong time; a
checkpoint about content fails when the point is missing or hallucinated.
Reply with exactly one line per checkpoint, in order, formatted as "<number>: PASS" or
"<number>: FAIL", and nothing else."""

# ---- the rubric writer (offline, before RL; docs/method.md section 3, App. E) --------------------

_RUBRIC_DIMENSIONS = ("granularity", "coherence", "coverage")

_RUBRIC_WRITE_SYSTEM = (
    "You write grading rubrics for a streaming video assistant. While it watches a video it "
    "answers a question at the right moments; your rubric is later used to grade its whole "
    "trajectory of timestamped answers as pass or fail, one rubric at a time.")

_RUBRIC_WRITE_TEMPLATE = """Question: {question}
Reference answers (the second at which each is due, then the answer):
{answers}

{video_line}

Write between {min_checks} and {max_checks} rubrics for this video and this question.
Rules for every rubric:
- It is specific to this video and question: name its actions, objects and order; no generic
  criterion that would fit any video.
- It is an assertive statement a grader can mark pass or fail, worded with "must", "shall not"
  or "is not allowed".
- It checks exactly one dimension:
  granularity: the answers split the activity as the video's natural structure does; atomic
    actions are not split further, distinct actions are not merged into a vague one;
  coherence: the answers follow the temporal and physical order of the events, and no
    necessary intermediate step is skipped;
  coverage: every essential action or phase is present.
- Together the rubrics cover all three dimensions.
Before replying, review each rubric against these rules and rewrite or drop any that breaks one.

Reply with a JSON array and nothing else. Each element is an object with exactly three keys:
"rubric_id" (an integer, 1, 2, 3, ...), "dimension" (one of "granularity", "coherence",
"coverage") and "rubric" (the statement)."""


def answer_score_messages(question: str, reference: str, prediction: str) -> list[dict[str, str]]:
  """Chat messages asking for a 0..5 score of `prediction` against `reference`."""
  return [
      {"role": "system", "content": _ANSWER_SCORE_SYSTEM},
      {"role": "user", "content": _ANSWER_SCORE_TEMPLATE.format(
          question=question or "(not given)", reference=reference, prediction=prediction or "")},
  ]


def rubric_check_messages(trajectory_text: str, checks: Sequence[str],
                          question: str = "") -> list[dict[str, str]]:
  """Chat messages asking for PASS/FAIL of each checkpoint (numbered from 1)."""
  numbered = "\n".join(f"{i + 1}. {c}" for i, c in enumerate(checks))
  return [
      {"role": "system", "content": _RUBRIC_CHECK_SYSTEM},
      {"role": "user", "content": _RUBRIC_CHECK_TEMPLATE.format(
          question=question or "(not given)", trajectory=trajectory_text, checks=numbered)},
  ]


# What the rubric writer is told of the video: without frames, only the answers describe it.
_RUBRIC_WRITE_TEXT_ONLY = ("The video itself is described to you only by these timestamped "
                          "reference answers.")
_RUBRIC_WRITE_WITH_FRAMES = ("The video is shown to you below as {n} frames sampled evenly from "
                            "the clip, each after the second at which it is shown.")


def rubric_write_messages(question: str, answers: Sequence[tuple[float, str]], *,
                          min_checks: int = 6, max_checks: int = 10,
                          frames: Sequence[tuple[float, str]] = ()) -> list[dict[str, Any]]:
  """Chat messages asking for a rubric (JSON list of checkpoint strings).

  Args:
    question: the question.
    answers: [(response time in seconds, answer text)].
    frames: [(time in seconds, image URL)] of frames from the clip, as the paper's writer sees the
      video (the URLs are usually "data:image/jpeg;base64,..."). Empty: the text-only writer (the
      user message is one string). Otherwise the user message is OpenAI-style content parts: the
      text, then for each frame a text part "<t>s:" and an "image_url" part.
  """
  lines = "\n".join(f"{t:g}s: {text}" for t, text in answers)
  video_line = (_RUBRIC_WRITE_WITH_FRAMES.format(n=len(frames)) if frames
                else _RUBRIC_WRITE_TEXT_ONLY)
  text = _RUBRIC_WRITE_TEMPLATE.format(question=question, answers=lines, min_checks=min_checks,
                                      max_checks=max_checks, video_line=video_line)
  if not frames:
    return [{"role": "system", "content": _RUBRIC_WRITE_SYSTEM},
            {"role": "user", "content": text}]
  parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
  for t, url in frames:
    parts.append({"type": "text", "text": f"{t:g}s:"})
    parts.append({"type": "image_url", "image_url": {"url": url}})
  return [{"role": "system", "content": _RUBRIC_WRITE_SYSTEM},
          {"role": "user", "content": parts}]


def messages_to_text(messages: Sequence[dict[str, str]]) -> str:
  """Plain-text rendering of chat messages, for a local model without a chat template."""
  parts = [m["content"] for m in messages]
  return "\n\n".join(parts) + "\n\n"


_FENCE_RE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?\s*```$", re.DOTALL | re.IGNORECASE)


def _json_reply(reply: str) -> Any:
  """The JSON value of a reply that is exactly one JSON value, optionally inside one markdown
  code fence (```json ... ```) [choice]; a sentinel _MALFORMED otherwise."""
  text = reply.strip()
  m = _FENCE_RE.match(text)
  if m:
    text = m.group(1).strip()
  try:
    return json.loads(text)
  except (json.JSONDecodeError, ValueError):
    return _MALFORMED


_MALFORMED = object()


def parse_score(reply: str | None, max_score: int = _MAX_ANSWER_SCORE) -> float | None:
  """The judge's score divided by max_score, or None when the reply is malformed.

  The reply must be exactly a JSON object with exactly the keys "explanation" (a string) and
  "score" (an integer, not a bool, in [0, max_score]), optionally inside one markdown code fence.
  Anything else (extra keys or text, a float or string score, out of range) is malformed: None,
  which the judge counts in stats.malformed and stats.failures.
  """
  if reply is None:
    return None
  value = _json_reply(reply)
  if not isinstance(value, dict) or set(value) != {"explanation", "score"}:
    return None
  score, explanation = value["score"], value["explanation"]
  if not isinstance(explanation, str) or isinstance(score, bool) or not isinstance(score, int):
    return None
  if not 0 <= score <= max_score:
    return None
  return score / max_score


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


def parse_rubric_items(reply: str | None, *, min_checks: int = 6, max_checks: int = 10,
                       require_all_dimensions: bool = True) -> list[dict[str, Any]] | None:
  """The rubric items of a rubric-writer reply, or None when it is malformed.

  The reply must be exactly a JSON array (optionally inside one markdown code fence) of
  min_checks..max_checks objects, each with exactly the keys "rubric_id" (an int or a non-empty
  string, unique), "dimension" (one of _RUBRIC_DIMENSIONS) and "rubric" (a non-empty string);
  with require_all_dimensions every dimension occurs. Returns the objects (rubric stripped).
  """
  if reply is None:
    return None
  value = _json_reply(reply)
  if not isinstance(value, list) or not min_checks <= len(value) <= max_checks:
    return None
  items, ids = [], set()
  for obj in value:
    if not isinstance(obj, dict) or set(obj) != {"rubric_id", "dimension", "rubric"}:
      return None
    rid, dim, text = obj["rubric_id"], obj["dimension"], obj["rubric"]
    rid_ok = isinstance(rid, int) or (isinstance(rid, str) and rid.strip())
    if isinstance(rid, bool) or not rid_ok:
      return None
    if rid in ids or dim not in _RUBRIC_DIMENSIONS:
      return None
    if not isinstance(text, str) or not text.strip():
      return None
    ids.add(rid)
    items.append({"rubric_id": rid, "dimension": dim, "rubric": text.strip()})
  if require_all_dimensions and {it["dimension"] for it in items} != set(_RUBRIC_DIMENSIONS):
    return None
  return items


def _parse_rubric(reply: str | None, *, min_checks: int = 6,
                 max_checks: int = 10) -> list[str] | None:
  """The rubric statements of a rubric-writer reply (parse_rubric_items' "rubric" fields), or
  None when the reply is malformed."""
  items = parse_rubric_items(reply, min_checks=min_checks, max_checks=max_checks)
  return None if items is None else [it["rubric"] for it in items]
