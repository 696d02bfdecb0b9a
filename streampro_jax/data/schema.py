"""Annotation records: one JSONL line per video.

The contract is docs/architecture.md#shared-interfaces.

A line looks like::

  {"id": "v0", "video": "clips/v0.mp4", "duration": 24.0,
   "questions": [{"id": "q0", "task": "TG", "ask_time": 3.0, "question": "When ...?",
                  "answers": [{"time": 12.0, "text": "9s-12s"}],
                  "rubric": ["Responds at least once between 9s and 15s."]}],
   "meta": {...}}

Answers are either point answers ``{"time": t, "text": ...}`` or interval answers
``{"start": s, "end": e, "text": ...}``. ``Answer.response_time`` is ``time`` for a point answer
and ``end`` for an interval answer [choice], which is the time the turn-timing rule uses.

Validation is strict. Every problem raises :class:`DataError` (a ``ValueError``) whose attributes
``file``, ``line``, ``field`` and ``reason`` name the place; its message is
``"file:line: field: reason"``. Checked: missing fields, unknown fields, wrong JSON types (a bool
is not a number, an int is accepted where a float is expected), non-finite numbers, a duration
<= 0, negative times, times past the duration, ``start > end``, an answer whose response time is
before the question's ask time, unknown task, empty question/answer texts, an empty ``questions``
or ``answers`` list, duplicate question ids inside a record, duplicate record ids inside a file,
and (only with ``check_video_exists=True``) a video file that does not exist ("synth://" videos are
never checked).

Loading:
  * :func:`load_jsonl` reads a whole file -> ``(records, report)``;
  * :func:`iter_jsonl` streams a large file, filling a :class:`LoadReport` as it goes;
  * ``on_error="fail"`` (default) raises at the first bad record; ``on_error="skip"`` skips it and
    appends its :class:`DataError` to ``report.errors``.

``Record.to_json()`` gives back a dict that parses to an equal record (round trip).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any
from collections.abc import Iterator, Sequence

__all__ = [
    "Answer", "BENCH_TASKS", "DataError", "LoadReport", "Question", "Record", "SYNTH_PREFIX",
    "TASKS", "from_json", "iter_jsonl", "load_jsonl", "parse_line", "parse_record"
]

TASKS = ("EU", "OU", "AA", "TP", "TG", "GP", "RF", "CAP")
"""All task codes a record may carry: the seven StreamPro-Bench tasks plus captioning."""

BENCH_TASKS = ("EU", "OU", "AA", "TP", "TG", "GP", "RF")
"""The seven StreamPro-Bench tasks."""

_TASK_DIMENSION = {
    "EU": "PU", "OU": "PU", "AA": "PU",
    "TP": "TR", "TG": "TR",
    "GP": "PA", "RF": "PA",
}
"""StreamPro-Bench dimension of each task (PU perception, TR temporal reasoning, PA agency)."""

_INTERVAL_TASKS = ("EU", "TP")
"""Tasks whose benchmark answers are intervals (docs/method.md section 4); not enforced by the
parser."""

SYNTH_PREFIX = "synth://"

# Times may exceed the duration by this much (float rounding of durations read from containers).
_TIME_TOLERANCE = 1e-6

_RECORD_FIELDS = ("id", "video", "duration", "questions", "meta")
_QUESTION_FIELDS = ("id", "task", "ask_time", "question", "answers", "rubric")


class DataError(ValueError):
  """A bad annotation: ``file:line: field: reason``.

  Attributes:
    file: the JSONL path (or "<memory>").
    line: 1-based line number (0 when not from a file).
    field: a dotted path such as ``questions[0].answers[1].time`` ("<json>" for a syntax error,
      "<record>" for the whole record).
    reason: what is wrong, with the numbers involved.
  """

  def __init__(self, file: str, line: int, field: str, reason: str):
    self.file = str(file)
    self.line = int(line)
    self.field = str(field)
    self.reason = str(reason)
    super().__init__(f"{self.file}:{self.line}: {self.field}: {self.reason}")

  def __reduce__(self):
    return (DataError, (self.file, self.line, self.field, self.reason))


@dataclasses.dataclass(frozen=True)
class Answer:
  """One ground-truth answer: a point (``time``) or an interval (``start``, ``end``)."""
  text: str
  time: float | None = None
  start: float | None = None
  end: float | None = None

  @property
  def is_interval(self) -> bool:
    return self.time is None

  @property
  def response_time(self) -> float:
    """The time the answer is due: ``time`` for points, ``end`` for intervals [choice]."""
    return float(self.end) if self.time is None else float(self.time)

  def to_json(self) -> dict:
    if self.time is None:
      return {"start": self.start, "end": self.end, "text": self.text}
    return {"time": self.time, "text": self.text}


@dataclasses.dataclass(frozen=True)
class Question:
  """One question about a video, asked at ``ask_time`` seconds."""
  id: str
  task: str
  ask_time: float
  question: str
  answers: tuple[Answer, ...]
  rubric: tuple[str, ...] | None = None

  def sorted_answers(self) -> list[Answer]:
    """Answers by response time (stable: equal times keep their given order)."""
    return sorted(self.answers, key=lambda a: a.response_time)

  def to_json(self) -> dict:
    out = {"id": self.id, "task": self.task, "ask_time": self.ask_time,
           "question": self.question, "answers": [a.to_json() for a in self.answers]}
    if self.rubric is not None:
      out["rubric"] = list(self.rubric)
    return out


@dataclasses.dataclass(frozen=True)
class Record:
  """One video with its questions.

  ``source_file`` / ``source_line`` say where the record was read (not serialised, not compared).
  """
  id: str
  video: str
  duration: float
  questions: tuple[Question, ...]
  meta: dict | None = None
  source_file: str | None = dataclasses.field(default=None, compare=False, repr=False)
  source_line: int = dataclasses.field(default=0, compare=False, repr=False)

  @property
  def is_synthetic(self) -> bool:
    return self.video.startswith(SYNTH_PREFIX)

  def video_path(self, base_dir: str | None = None) -> str:
    """Absolute path of the video (relative paths are taken from the JSONL file's folder).

    ``base_dir`` overrides the folder; "synth://" videos are returned unchanged.
    """
    if self.is_synthetic or os.path.isabs(self.video):
      return self.video
    if base_dir is None:
      base_dir = os.path.dirname(os.path.abspath(self.source_file)) if self.source_file else "."
    return os.path.normpath(os.path.join(base_dir, self.video))

  def question(self, question_id: str) -> Question:
    for q in self.questions:
      if q.id == question_id:
        return q
    raise KeyError(f"record {self.id!r} has no question {question_id!r}; "
                   f"ids: {[q.id for q in self.questions]}")

  def to_json(self) -> dict:
    out = {"id": self.id, "video": self.video, "duration": self.duration,
           "questions": [q.to_json() for q in self.questions]}
    if self.meta is not None:
      out["meta"] = self.meta
    return out

  def to_jsonl_line(self) -> str:
    return json.dumps(self.to_json(), ensure_ascii=False, allow_nan=False)


# ------------------------------------------------------------------------------------------------
# Parsing.


class _Ctx:
  """Where we are: file and line, for error messages."""

  def __init__(self, file: str, line: int):
    self.file, self.line = file, line

  def error(self, field: str, reason: str) -> DataError:
    return DataError(self.file, self.line, field, reason)


def _type_name(value: Any) -> str:
  return "null" if value is None else type(value).__name__


def _get(ctx: _Ctx, obj: dict, key: str, prefix: str) -> Any:
  if key not in obj:
    raise ctx.error(prefix + key, "missing required field")
  return obj[key]


def _str(ctx: _Ctx, value: Any, field: str, *, nonempty: bool = True) -> str:
  if not isinstance(value, str):
    raise ctx.error(field, f"expected a string, got {_type_name(value)} {value!r:.60}")
  if nonempty and not value.strip():
    raise ctx.error(field, "must be a non-empty string")
  return value


def _num(ctx: _Ctx, value: Any, field: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ctx.error(field, f"expected a number, got {_type_name(value)} {value!r:.60}")
  try:
    out = float(value)
  except OverflowError:
    raise ctx.error(field, f"number too large for a float: {value!r:.60}") from None
  if not math.isfinite(out):
    raise ctx.error(field, f"must be finite, got {out}")
  return out


def _time(ctx: _Ctx, value: Any, field: str, duration: float) -> float:
  t = _num(ctx, value, field)
  if t < 0:
    raise ctx.error(field, f"negative time {t}")
  if t > duration + _TIME_TOLERANCE:
    raise ctx.error(field, f"time {t} is past the video duration {duration}")
  return t


def _check_keys(ctx: _Ctx, obj: dict, allowed: Sequence[str], prefix: str) -> None:
  for key in obj:
    if key not in allowed:
      raise ctx.error(prefix + str(key), f"unknown field (allowed: {', '.join(allowed)})")


def _parse_answer(ctx: _Ctx, obj: Any, prefix: str, duration: float, ask_time: float) -> Answer:
  if not isinstance(obj, dict):
    raise ctx.error(prefix.rstrip("."), f"expected an object, got {_type_name(obj)}")
  text = _str(ctx, _get(ctx, obj, "text", prefix), prefix + "text")
  has_time = "time" in obj
  has_span = "start" in obj or "end" in obj
  if has_time and has_span:
    raise ctx.error(prefix.rstrip("."), "has both 'time' and 'start'/'end'; give one form")
  if has_time:
    _check_keys(ctx, obj, ("time", "text"), prefix)
    t = _time(ctx, obj["time"], prefix + "time", duration)
    answer = Answer(text=text, time=t)
  elif has_span:
    _check_keys(ctx, obj, ("start", "end", "text"), prefix)
    s = _time(ctx, _get(ctx, obj, "start", prefix), prefix + "start", duration)
    e = _time(ctx, _get(ctx, obj, "end", prefix), prefix + "end", duration)
    if s > e:
      raise ctx.error(prefix + "end", f"interval end {e} is before its start {s}")
    answer = Answer(text=text, start=s, end=e)
  else:
    raise ctx.error(prefix + "time", "missing required field ('time', or 'start' and 'end')")
  if answer.response_time < ask_time:
    field = prefix + ("end" if answer.is_interval else "time")
    raise ctx.error(field, f"answer time {answer.response_time} is before the question's "
                    f"ask_time {ask_time}")
  return answer


def _parse_question(ctx: _Ctx, obj: Any, prefix: str, duration: float) -> Question:
  if not isinstance(obj, dict):
    raise ctx.error(prefix.rstrip("."), f"expected an object, got {_type_name(obj)}")
  _check_keys(ctx, obj, _QUESTION_FIELDS, prefix)
  qid = _str(ctx, _get(ctx, obj, "id", prefix), prefix + "id")
  task = _str(ctx, _get(ctx, obj, "task", prefix), prefix + "task")
  if task not in TASKS:
    raise ctx.error(prefix + "task", f"unknown task {task!r} (known: {', '.join(TASKS)})")
  ask_time = _time(ctx, _get(ctx, obj, "ask_time", prefix), prefix + "ask_time", duration)
  text = _str(ctx, _get(ctx, obj, "question", prefix), prefix + "question")
  answers_obj = _get(ctx, obj, "answers", prefix)
  if not isinstance(answers_obj, list):
    raise ctx.error(prefix + "answers", f"expected a list, got {_type_name(answers_obj)}")
  if not answers_obj:
    raise ctx.error(prefix + "answers", "must hold at least one answer")
  answers = tuple(_parse_answer(ctx, a, f"{prefix}answers[{i}].", duration, ask_time)
                  for i, a in enumerate(answers_obj))
  rubric = None
  if "rubric" in obj:
    rub = obj["rubric"]
    if not isinstance(rub, list):
      raise ctx.error(prefix + "rubric", f"expected a list of strings, got {_type_name(rub)}")
    rubric = tuple(_str(ctx, r, f"{prefix}rubric[{i}]") for i, r in enumerate(rub))
  return Question(id=qid, task=task, ask_time=ask_time, question=text, answers=answers,
                  rubric=rubric)


def parse_record(obj: Any, *, file: str = "<memory>", line: int = 0,
                 check_video_exists: bool = False, base_dir: str | None = None) -> Record:
  """Validates one decoded JSON object and returns a :class:`Record`.

  Args:
    obj: the decoded JSON value of one line.
    file, line: where it came from (for error messages and ``Record.source_file``).
    check_video_exists: also require the video file to exist (relative paths are resolved
      against ``base_dir``, default the folder of ``file``). "synth://" videos are not checked.
    base_dir: folder for relative video paths.

  Raises:
    DataError: the first problem found.
  """
  ctx = _Ctx(file, line)
  if not isinstance(obj, dict):
    raise ctx.error("<record>", f"expected a JSON object, got {_type_name(obj)}")
  _check_keys(ctx, obj, _RECORD_FIELDS, "")
  rid = _str(ctx, _get(ctx, obj, "id", ""), "id")
  video = _str(ctx, _get(ctx, obj, "video", ""), "video")
  duration = _num(ctx, _get(ctx, obj, "duration", ""), "duration")
  if duration <= 0:
    raise ctx.error("duration", f"must be > 0, got {duration}")
  questions_obj = _get(ctx, obj, "questions", "")
  if not isinstance(questions_obj, list):
    raise ctx.error("questions", f"expected a list, got {_type_name(questions_obj)}")
  if not questions_obj:
    raise ctx.error("questions", "must hold at least one question")
  questions = tuple(_parse_question(ctx, q, f"questions[{i}].", duration)
                    for i, q in enumerate(questions_obj))
  seen: dict[str, int] = {}
  for i, q in enumerate(questions):
    if q.id in seen:
      raise ctx.error(f"questions[{i}].id", f"duplicate question id {q.id!r} "
                      f"(also questions[{seen[q.id]}])")
    seen[q.id] = i
  meta = None
  if "meta" in obj:
    meta = obj["meta"]
    if not isinstance(meta, dict):
      raise ctx.error("meta", f"expected an object, got {_type_name(meta)}")
  record = Record(id=rid, video=video, duration=duration, questions=questions, meta=meta,
                  source_file=None if file == "<memory>" else file, source_line=line)
  if check_video_exists and not record.is_synthetic:
    if base_dir is None and file != "<memory>":
      base_dir = os.path.dirname(os.path.abspath(file))
    path = record.video_path(base_dir)
    if not os.path.isfile(path):
      raise ctx.error("video", f"video file not found: {path}")
  return record


def parse_line(text: str, *, file: str = "<memory>", line: int = 0,
               check_video_exists: bool = False, base_dir: str | None = None) -> Record:
  """Parses one JSONL line (JSON syntax errors become ``DataError`` with field "<json>")."""
  try:
    obj = json.loads(text)
  except (json.JSONDecodeError, RecursionError) as e:
    raise DataError(file, line, "<json>", f"invalid JSON: {e}") from None
  return parse_record(obj, file=file, line=line, check_video_exists=check_video_exists,
                      base_dir=base_dir)


def from_json(obj: Any) -> Record:
  """Inverse of ``Record.to_json()``."""
  return parse_record(obj)


# ------------------------------------------------------------------------------------------------
# Files.


@dataclasses.dataclass
class LoadReport:
  """What a load did: counts and every skipped record's error."""
  file: str
  num_lines: int = 0          # non-blank lines read
  num_records: int = 0        # records accepted
  errors: list[DataError] = dataclasses.field(default_factory=list)

  @property
  def num_skipped(self) -> int:
    return len(self.errors)

  def summary(self) -> str:
    lines = [f"{self.file}: {self.num_records} records loaded, {self.num_skipped} skipped "
             f"of {self.num_lines} lines"]
    lines += [f"  skipped {e}" for e in self.errors]
    return "\n".join(lines)


_ON_ERROR = ("fail", "skip")


def iter_jsonl(path: str, *, on_error: str = "fail", check_video_exists: bool = False,
               report: LoadReport | None = None,
               base_dir: str | None = None) -> Iterator[Record]:
  """Streams records from a JSONL file, one line at a time.

  Blank lines are ignored. Duplicate record ids (against earlier accepted records) are errors.

  Args:
    path: the JSONL file.
    on_error: "fail" raises the first :class:`DataError`; "skip" skips the record and appends the
      error to ``report.errors``.
    check_video_exists: see :func:`parse_record`.
    report: a :class:`LoadReport` to fill (pass one to read the counts after iterating).
    base_dir: folder for relative video paths (default: the JSONL's folder).
  """
  if on_error not in _ON_ERROR:
    raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
  if report is None:
    report = LoadReport(file=str(path))
  seen_ids: dict[str, int] = {}
  with open(path, encoding="utf-8") as f:
    for line_no, text in enumerate(f, start=1):
      if not text.strip():
        continue
      report.num_lines += 1
      try:
        record = parse_line(text, file=str(path), line=line_no,
                            check_video_exists=check_video_exists, base_dir=base_dir)
        if record.id in seen_ids:
          first = seen_ids[record.id]
          raise DataError(str(path), line_no, "id",
                          f"duplicate record id {record.id!r} (first on line {first})")
      except DataError as e:
        if on_error == "fail":
          raise
        report.errors.append(e)
        continue
      seen_ids[record.id] = line_no
      report.num_records += 1
      yield record


def load_jsonl(path: str, *, on_error: str = "fail", check_video_exists: bool = False,
               base_dir: str | None = None) -> tuple[list[Record], LoadReport]:
  """Reads a whole JSONL file -> ``(records, report)``; see :func:`iter_jsonl`."""
  report = LoadReport(file=str(path))
  records = list(iter_jsonl(path, on_error=on_error, check_video_exists=check_video_exists,
                            report=report, base_dir=base_dir))
  return records, report


def _write_jsonl(records: Sequence[Record], path: str) -> None:
  """Writes records, one JSON object per line (UTF-8)."""
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(r.to_jsonl_line() + "\n")
