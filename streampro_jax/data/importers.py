"""Importers of public streaming-video training data into this project's annotation JSONL.

Formats (docs/components.md#importer-formats lists the real sample records each one was checked
against):

- ``streamo_raw``: Streamo's raw annotation JSON (a list of
  ``{video_name, video_path, task_type, source, question: [{content, time}],
  response: [{content, st_time, end_time, time}]}``), as in maifoundations/Streamo
  ``dataset/example/raw_data.json``.
- ``streamo_stream``: Streamo's multi-turn training format (``messages`` with one user turn
  ``"<Xs-Ys>\\n<stream>"`` per second and assistant turns ``</Silence>``, ``</Standby>``,
  ``</Response> text``), as in ``dataset/example/stream_format.json``.
- ``timechat_online``: TimeChat-Online-139K (ms-swift ``messages`` + ``videos`` holding a list of
  1 fps frame files of a clip; one question, one answer, no timestamps).
- ``videochat_flash``: VideoChat-Flash / LLaVA-NeXT (``video``, ``conversations`` of
  ``{from: human|gpt, value}``, optional ``start``/``end`` clip bounds in seconds).
- ``simple``: a user's own CSV or JSONL with one answer per row: ``video, time, question,
  answer`` and optional ``duration, ask_time, start, task, id``.

Every format is read as a stream (a big JSON array through an incremental ``raw_decode`` parser,
JSONL and CSV line by line), converted record by record and written as JSONL, so memory stays
bounded by the largest single record. Bad input records follow a ``fail``/``skip`` policy: with
``skip`` each one is counted and listed (file, record index/line, field, reason) in
``ImportStats``; nothing is dropped silently.

Timing (docs/architecture.md, docs/method.md section 1): turn k covers ``<ks-(k+1)s>``; a question
asked at time a goes on turn ``floor(a)``; an answer with response time t goes on turn
``max(ceil(t) - 1, 0, ask_turn)``; K = ceil(duration) turns. Streamo has a third decision,
``</Standby>``, which docs/method.md does not have: it becomes silence (counted in ``meta``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from streampro_jax import prompts
from streampro_jax.data import chat_format
from streampro_jax.data import schema
from streampro_jax.data.schema import DataError

__all__ = ["FORMATS", "Options", "export_array_record", "import_to_jsonl", "read_durations_table",
           "ImportStats"]

FORMATS = ("streamo_raw", "streamo_stream", "timechat_online", "videochat_flash", "simple")
_STANDBY = "</Standby>"
_STANDBY_NOTE = ("Streamo </Standby> turns mapped to </Silence> (docs/method.md has no standby "
                 "token)")
# Streamo's converter puts this question on <0s-1s> when an entry has none.
_STREAMO_DEFAULT_QUESTION = "Find all significant events in the video and describe them."

# Streamo task_type (lower-cased, punctuation removed) -> task of docs/method.md. Keyword rules
# follow.
_DEFAULT_STREAMO_TASK_MAP = {
    "qa": "EU",
    "timesensitiveqa": "EU",
    "narration": "CAP",
    "realtimenarration": "CAP",
    "eventcaption": "CAP",
    "actioncaption": "CAP",
    "densecaption": "CAP",
    "caption": "CAP",
    "eventgrounding": "TG",
    "grounding": "TG",
    "temporalgrounding": "TG",
}

_TAG_RE = re.compile(r"<\s*(\d+(?:\.\d+)?)\s*s\s*-\s*(\d+(?:\.\d+)?)\s*s\s*>")
_MEDIA_RE = re.compile(r"<(?:image|video|stream)>")
_DIGITS_RE = re.compile(r"(\d+)")


# --------------------------------------------------------------------------------------------
# Streaming readers.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Progress:
  """Byte position of a reader, for progress bars."""
  pos: int = 0


def _decode(raw: bytes) -> tuple[str, str | None]:
  """(text, None) of a UTF-8 line, or (text with U+FFFD, reason) when it is not UTF-8."""
  try:
    return raw.decode("utf-8"), None
  except UnicodeDecodeError as e:
    return raw.decode("utf-8", errors="replace"), f"not UTF-8: {e.reason} at byte {e.start}"


def _iter_json_values(path: str, *, chunk_chars: int = 1 << 18,
                     max_record_chars: int = 64 << 20,
                     progress: _Progress | None = None
                     ) -> Iterator[tuple[int, int, Any | DataError]]:
  """Yields ``(index, line, value_or_error)`` for each element of a top-level JSON array.

  The file is read as bytes, line by line, about ``chunk_chars`` at a time, and decoded element
  by element with ``json.JSONDecoder.raw_decode``, so memory is O(chunk + largest element), not
  O(file). ``line`` is the 1-based line where the element starts. An element on a line that is
  not UTF-8 yields a DataError naming that line in place of its value (the caller applies the
  policy). A malformed array cannot be resynchronised, so a syntax error raises DataError
  whatever the policy.
  """
  dec = json.JSONDecoder()
  bad_lines: dict[int, str] = {}   # line number -> why it is not UTF-8
  with open(path, "rb") as fh:
    buf = ""
    pos = 0
    line = 1  # line number at buf[pos]
    read_lines = 0
    eof = False

    def fill() -> bool:
      nonlocal buf, pos, eof, read_lines
      if eof:
        return False
      parts, size = [], 0
      while size < chunk_chars:
        raw = fh.readline()
        if not raw:
          break
        read_lines += 1
        text, reason = _decode(raw)
        if reason is not None:
          bad_lines[read_lines] = reason
        parts.append(text)
        size += len(text)
      if progress is not None:
        progress.pos = fh.tell()
      if not parts:
        eof = True
        return False
      buf = buf[pos:] + "".join(parts)
      pos = 0
      return True

    def skip_ws():
      nonlocal pos, line
      while True:
        n = len(buf)
        while pos < n and buf[pos] in " \t\r\n":
          if buf[pos] == "\n":
            line += 1
          pos += 1
        if pos < n or not fill():
          return

    skip_ws()
    if pos >= len(buf):
      return
    if buf[pos] != "[":
      raise DataError(path, line, "<file>", "expected a JSON array ('[')" + (
          f" ({bad_lines[line]})" if line in bad_lines else ""))
    pos += 1
    index = 0
    while True:
      skip_ws()
      if pos >= len(buf):
        raise DataError(path, line, "<file>", "unexpected end of file inside the JSON array")
      if buf[pos] == "]":
        return
      if index > 0:
        if buf[pos] != ",":
          raise DataError(path, line, f"[{index}]",
                          f"expected ',' or ']' between array elements, got {buf[pos]!r}")
        pos += 1
        skip_ws()
      start_line = line
      while True:
        try:
          value, end = dec.raw_decode(buf, pos)
          if end >= len(buf) and not eof:
            # A number may continue in the next chunk.
            if isinstance(value, (int, float)) and fill():
              continue
          break
        except json.JSONDecodeError as e:
          if len(buf) - pos > max_record_chars:
            raise DataError(path, start_line, f"[{index}]",
                            f"element longer than {max_record_chars} characters or "
                            f"malformed: {e.msg}") from None
          if not fill():
            at = start_line + buf.count("\n", pos, e.pos)
            raise DataError(path, at, f"[{index}]", f"malformed JSON: {e.msg}" + (
                f" ({bad_lines[at]})" if at in bad_lines else "")) from None
      end_line = start_line + buf.count("\n", pos, end)
      line = end_line
      pos = end
      bad = [n for n in range(start_line, end_line + 1) if n in bad_lines]
      if bad:
        value = DataError(path, bad[0], f"[{index}]", bad_lines[bad[0]])
      yield index, start_line, value
      index += 1


def _iter_jsonl(path: str, *, progress: _Progress | None = None
               ) -> Iterator[tuple[int, int, Any | DataError]]:
  """Yields ``(index, line, value_or_error)`` for each non-blank line of a JSONL file.

  A line that is not valid JSON yields a DataError in place of the value (the caller applies
  the policy), since JSONL can resume at the next line.
  """
  with open(path, "rb") as fh:
    index = 0
    for lineno, raw in enumerate(fh, start=1):
      if progress is not None:
        progress.pos += len(raw)
      text, reason = _decode(raw)
      text = text.strip()
      if not text:
        continue
      if reason is not None:
        value = DataError(path, lineno, "<line>", reason)
      else:
        try:
          value = json.loads(text)
        except json.JSONDecodeError as e:
          value = DataError(path, lineno, "<line>",
                            f"malformed JSON: {e.msg} (column {e.colno})")
      yield index, lineno, value
      index += 1


def _sniff_json_layout(path: str) -> str:
  """'array' when the first non-blank character is '[', 'object' for a single pretty-printed
  object, else 'jsonl'."""
  with open(path, "rb") as fh:
    head = fh.read(1 << 16).decode("utf-8", errors="replace")
  s = head.lstrip()
  if s.startswith("["):
    return "array"
  first = s.split("\n", 1)[0]
  try:
    json.loads(first)
    return "jsonl"
  except json.JSONDecodeError:
    return "object" if s.startswith("{") else "jsonl"


def _iter_source(path: str, *, progress: _Progress | None = None
                ) -> Iterator[tuple[int, int, Any | DataError]]:
  """Yields ``(index, line, value_or_error)`` from a JSON array, a JSON object or JSONL."""
  layout = _sniff_json_layout(path)
  if layout == "array":
    yield from _iter_json_values(path, progress=progress)
  elif layout == "object":
    with open(path, "rb") as fh:
      raw = fh.read()
    try:
      value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      value = DataError(path, raw.count(b"\n", 0, e.start) + 1, "<record>",
                        f"not UTF-8: {e.reason} at byte {e.start}")
    except json.JSONDecodeError as e:
      raise DataError(path, e.lineno, "<file>", f"malformed JSON: {e.msg}") from None
    yield 0, 1, value
  else:
    yield from _iter_jsonl(path, progress=progress)


def _iter_csv(path: str, *, progress: _Progress | None = None
             ) -> Iterator[tuple[int, int, dict | DataError]]:
  """Yields ``(index, line, row_or_error)`` of a CSV file with a header row, read as bytes line
  by line; a row on a line that is not UTF-8 (or with too many fields) yields a DataError."""
  bad_lines: dict[int, str] = {}

  def decoded(fh):
    for lineno, raw in enumerate(fh, start=1):
      if progress is not None:
        progress.pos += len(raw)
      text, reason = _decode(raw)
      if reason is not None:
        bad_lines[lineno] = reason
      yield text

  with open(path, "rb") as fh:
    reader = csv.DictReader(decoded(fh))
    try:
      names = reader.fieldnames
    except csv.Error as e:
      raise DataError(path, 1, "<header>", f"unreadable CSV header: {e}") from None
    if names is None:
      return
    if 1 in bad_lines:
      raise DataError(path, 1, "<header>", bad_lines[1])
    names = [n.strip() for n in names]
    reader.fieldnames = names
    index, last = 0, reader.line_num
    while True:
      try:
        row = next(reader)
      except StopIteration:
        return
      except csv.Error as e:
        yield index, reader.line_num, DataError(path, reader.line_num, "<row>", f"bad CSV: {e}")
        index, last = index + 1, reader.line_num
        continue
      bad = [n for n in range(last + 1, reader.line_num + 1) if n in bad_lines]
      first_line, last = last + 1, reader.line_num
      if bad:
        yield index, bad[0], DataError(path, bad[0], "<row>", bad_lines[bad[0]])
      elif None in row:
        yield index, first_line, DataError(
            path, first_line, "<row>", f"{len(names) + len(row[None])} fields for "
            f"{len(names)} columns")
      else:
        yield index, first_line, {k: (v.strip() if isinstance(v, str) else v)
                                  for k, v in row.items()}
      index += 1


# --------------------------------------------------------------------------------------------
# Shared conversion helpers.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Ctx:
  """Where a raw record came from, for error messages."""
  file: str
  line: int
  index: int

  def error(self, field: str, reason: str) -> DataError:
    return DataError(self.file, self.line, f"[{self.index}].{field}", reason)


@dataclasses.dataclass(frozen=True)
class Options:
  """Conversion options shared by the importers.

  Attributes:
    durations: video path or name -> duration in seconds (overrides everything else).
    probe: callable(video_path) -> duration seconds or None (e.g. PyAV); used when a record
      gives no duration and ``durations`` has none.
    video_prefix: joined in front of relative video paths (like Streamo's --video-prefix).
    streamo_interval_end_offset: a Streamo interval response (st_time, end_time) becomes
      ``{start: st_time, end: end_time + offset}``. 1.0 reproduces Streamo's converter, which
      answers on the turn after end_time; 0.0 answers on the turn that ends at end_time.
    streamo_task_map: Streamo task_type -> task of docs/method.md (keys normalised: lower case,
      letters and digits only); merged over _DEFAULT_STREAMO_TASK_MAP.
    default_task: task for formats without a task label (TimeChat-Online, VideoChat-Flash,
      simple rows without ``task``), and for unknown Streamo task types when not None.
    group_by_video: merge consecutive raw entries with the same video into one record.
    offline_ask: "end" (question on the last turn, answered there) or "start" (question on turn
      0, answered on the last turn) for offline QA formats.
    video_root: folder of relative video paths (None: the annotation file's folder), for the
      probe, the existence check and the paths written (rebased onto the output's folder).
    check_videos: a record whose video (file or frame folder) does not exist is a DataError on
      its ``video`` field (failed or counted as skipped, per policy); False: not checked, and
      the summary says so.
  """
  durations: Mapping[str, float] | None = None
  probe: Callable[[str], float | None] | None = None
  video_prefix: str | None = None
  streamo_interval_end_offset: float = 1.0
  streamo_task_map: Mapping[str, str] | None = None
  default_task: str | None = "EU"
  group_by_video: bool = True
  offline_ask: str = "end"
  video_root: str | None = None
  check_videos: bool = True


def _resolve_video(video: str, opts: Options) -> str:
  """The path of a record's video: absolute paths and URLs unchanged, relative ones under
  ``opts.video_root`` (the annotation file's folder in _iter_import)."""
  if os.path.isabs(video) or "://" in video or not opts.video_root:
    return video
  return os.path.normpath(os.path.join(opts.video_root, video))


def _norm_key(s: str) -> str:
  return re.sub(r"[^a-z0-9]", "", s.lower())


def _join_video(path: str, opts: Options) -> str:
  if opts.video_prefix and not os.path.isabs(path) and "://" not in path:
    return os.path.join(opts.video_prefix, path)
  return path


def _lookup_duration(video: str, name: str | None, opts: Options) -> tuple[float | None, str]:
  if opts.durations:
    for key in (video, name, os.path.basename(video)):
      if key and key in opts.durations:
        return float(opts.durations[key]), "durations_table"
  if opts.probe is not None:
    d = opts.probe(_resolve_video(video, opts))
    if d is not None and d > 0:
      return float(d), "video_probe"
  return None, ""


def _parse_streamo_time(value: Any) -> int | None:
  """Streamo's time parser: None/"" -> None; numbers truncate to whole seconds; strings accept
  "5", "5.5" (truncated), "MM:SS" and "HH:MM:SS". Raises ValueError otherwise."""
  if value is None or value == "":
    return None
  if isinstance(value, bool):
    raise ValueError(f"{value!r} is not a time")
  if isinstance(value, (int, float)):
    if not math.isfinite(value):
      raise ValueError(f"{value!r} is not a finite time")
    return int(value)
  s = str(value).strip()
  if not s:
    return None
  try:
    return int(s)
  except ValueError:
    pass
  try:
    f = float(s)
    if math.isfinite(f):
      return int(f)
  except ValueError:
    pass
  parts = s.split(":")
  try:
    if len(parts) == 2:
      return int(float(parts[0]) * 60 + float(parts[1]))
    if len(parts) == 3:
      return int(float(parts[0]) * 3600 + float(parts[1]) * 60 + float(parts[2]))
  except ValueError:
    pass
  raise ValueError(f"{value!r} is not a time (seconds, MM:SS or HH:MM:SS)")


def _assign_answers(questions: list[dict], answers: list[tuple[int, dict]]) -> int:
  """Attach (turn, answer) pairs to the latest question asked on or before that turn.

  A question is asked on turn ``q["_turn"]``. Answers before the first question go to the
  first question, whose ask time then moves to 0 (Streamo shows its first question on
  <0s-1s>). Returns how many ask times were moved.
  """
  moved = 0
  questions.sort(key=lambda q: q["_turn"])
  for turn, ans in sorted(answers, key=lambda p: p[0]):
    target = None
    for q in questions:
      if q["_turn"] <= turn:
        target = q
    if target is None:
      target = questions[0]
      if target["ask_time"] != 0.0:
        target["ask_time"] = 0.0
        target["_turn"] = 0
        moved += 1
    target["answers"].append(ans)
  return moved


def _finish_questions(rec_id: str, questions: list[dict], ctx: _Ctx | None = None,
                      meta: dict | None = None) -> list[dict]:
  """Final question dicts. Questions without any answer are dropped (the schema requires one)
  and counted in ``meta["dropped_unanswered_questions"]``; none left -> DataError."""
  out = []
  kept = [q for q in questions if q["answers"]]
  if ctx is not None and not kept:
    raise ctx.error("response", f"none of the {len(questions)} question(s) gets a response")
  if meta is not None and len(kept) < len(questions):
    meta["dropped_unanswered_questions"] = len(questions) - len(kept)
  for j, q in enumerate(kept):
    answers = sorted(q["answers"], key=lambda a: a["time"] if "time" in a else a["end"])
    out.append({"id": f"{rec_id}/q{j}", "task": q["task"], "ask_time": float(q["ask_time"]),
                "question": q["question"], "answers": answers})
  return out


# --------------------------------------------------------------------------------------------
# Streamo raw annotation format.
# --------------------------------------------------------------------------------------------


def _streamo_task(task_type: Any, ctx: _Ctx, opts: Options) -> str:
  if not isinstance(task_type, str) or not task_type.strip():
    raise ctx.error("task_type", f"missing or not a string (got {task_type!r})")
  if task_type in schema.TASKS:
    return task_type
  table = dict(_DEFAULT_STREAMO_TASK_MAP)
  if opts.streamo_task_map:
    table.update({_norm_key(k): v for k, v in opts.streamo_task_map.items()})
  key = _norm_key(task_type)
  if key in table:
    return table[key]
  if "ground" in key:
    return "TG"
  if "caption" in key or "narrat" in key:
    return "CAP"
  if opts.default_task is not None:
    return opts.default_task
  raise ctx.error("task_type", f"{task_type!r} has no task mapping; pass a task map")


def _convert_streamo_raw(obj: Any, ctx: _Ctx, opts: Options | None = None) -> dict:
  """One Streamo raw entry -> one record.

  Mapping (reproduces the turns of Streamo's scripts/convert_streaming_video.py at 1 fps):
    - question ``time`` q (Streamo shows it on <(q-1)s-qs>) -> ask_time = max(q - 1, 0);
    - response with ``st_time``/``end_time`` (standby on <(st-1)s-sts> .. <(end-1)s-ends>,
      response on <ends-(end+1)s>) -> {start: st, end: end + offset} (offset 1 by default);
    - response with only ``time`` t (response on <(t-1)s-ts>) -> {time: t};
    - times truncate to whole seconds as Streamo's parser does;
    - an entry without questions gets Streamo's default question at time 0;
    - duration: table/probe, else the smallest whole number of turns holding every question
      and response (meta.duration_source = "annotation_bound").
  """
  opts = opts if opts is not None else Options()
  if not isinstance(obj, dict):
    raise ctx.error("<record>", f"expected an object, got {type(obj).__name__}")
  video_path = obj.get("video_path") or (obj.get("videos") or [None])[0]
  if not isinstance(video_path, str) or not video_path.strip():
    raise ctx.error("video_path", f"missing or not a non-empty string (got {video_path!r})")
  task = _streamo_task(obj.get("task_type"), ctx, opts)
  raw_q = obj.get("question", [])
  raw_r = obj.get("response", [])
  if not isinstance(raw_q, list):
    raise ctx.error("question", f"expected a list, got {type(raw_q).__name__}")
  if not isinstance(raw_r, list):
    raise ctx.error("response", f"expected a list, got {type(raw_r).__name__}")

  questions: list[dict] = []
  for i, q in enumerate(raw_q):
    if not isinstance(q, dict):
      raise ctx.error(f"question[{i}]", "expected an object")
    content = q.get("content")
    if not isinstance(content, str) or not content.strip():
      raise ctx.error(f"question[{i}].content", "missing or empty text")
    try:
      t = _parse_streamo_time(q.get("time"))
    except ValueError as e:
      raise ctx.error(f"question[{i}].time", str(e)) from None
    if t is not None and t < 0:
      raise ctx.error(f"question[{i}].time", f"negative time {t}")
    turn = max(t - 1, 0) if t is not None else 0
    questions.append({"task": task, "question": content.strip(), "ask_time": float(turn),
                      "_turn": turn, "answers": []})
  default_question = not questions
  if default_question:
    questions.append({"task": task, "question": _STREAMO_DEFAULT_QUESTION, "ask_time": 0.0,
                      "_turn": 0, "answers": []})

  offset = float(opts.streamo_interval_end_offset)
  answers: list[tuple[int, dict]] = []
  standby_turns = 0
  last_turn = max(q["_turn"] for q in questions)
  for i, r in enumerate(raw_r):
    if not isinstance(r, dict):
      raise ctx.error(f"response[{i}]", "expected an object")
    content = r.get("content")
    if not isinstance(content, str) or not content.strip():
      raise ctx.error(f"response[{i}].content", "missing or empty text")
    try:
      st = _parse_streamo_time(r.get("st_time"))
      en = _parse_streamo_time(r.get("end_time"))
      tt = _parse_streamo_time(r.get("time"))
    except ValueError as e:
      raise ctx.error(f"response[{i}]", str(e)) from None
    for name, v in (("st_time", st), ("end_time", en), ("time", tt)):
      if v is not None and v < 0:
        raise ctx.error(f"response[{i}].{name}", f"negative time {v}")
    if st is not None and en is not None:
      if st > en:
        raise ctx.error(f"response[{i}]", f"st_time {st} > end_time {en}")
      ans = {"start": float(st), "end": float(en) + offset, "text": content.strip()}
      turn = chat_format.answer_turn(ans["end"], 0)
      standby_turns += max(en - 1, 0) - max(st - 1, 0) + 1
    elif tt is not None:
      ans = {"time": float(tt), "text": content.strip()}
      turn = chat_format.answer_turn(ans["time"], 0)
    else:
      raise ctx.error(f"response[{i}]", "needs st_time and end_time, or time")
    answers.append((turn, ans))
    last_turn = max(last_turn, turn)
  moved = _assign_answers(questions, answers)

  video = _join_video(video_path.strip(), opts)
  duration, source = _lookup_duration(video, obj.get("video_name"), opts)
  if duration is None:
    duration, source = float(last_turn + 1), "annotation_bound"
  name = obj.get("video_name") or os.path.basename(video_path)
  rec_id = f"{name}#{ctx.index}"
  meta = {"source_format": "streamo_raw", "source_task": obj.get("task_type"),
          "source": obj.get("source"), "duration_source": source,
          "standby_turns": standby_turns, "standby": _STANDBY_NOTE,
          "interval_end_offset": offset, "raw_index": ctx.index}
  if moved:
    meta["ask_time_moved_to_0"] = moved
  if default_question:
    meta["default_question"] = True
  return {"id": rec_id, "video": video, "duration": duration,
          "questions": _finish_questions(rec_id, questions, ctx, meta), "meta": meta}


def _merge_records(a: dict, b: dict) -> dict:
  """Merge record b (same video) into record a: questions appended, duration = max."""
  out = dict(a)
  n = len(a["questions"])
  qs = list(a["questions"])
  for j, q in enumerate(b["questions"]):
    q = dict(q)
    q["id"] = f"{a['id']}/q{n + j}"
    qs.append(q)
  out["questions"] = qs
  out["duration"] = max(a["duration"], b["duration"])
  meta = dict(a.get("meta", {}))
  bm = b.get("meta", {})
  for key in ("standby_turns", "dropped_unanswered_questions", "ask_time_moved_to_0"):
    if key in meta or key in bm:
      meta[key] = meta.get(key, 0) + bm.get(key, 0)
  meta["merged_raw_indices"] = meta.get("merged_raw_indices", [meta.get("raw_index")]) + [
      bm.get("raw_index")]
  if bm.get("duration_source") != meta.get("duration_source"):
    meta["duration_source"] = "mixed"
  out["meta"] = meta
  return out


# --------------------------------------------------------------------------------------------
# Streamo stream (multi-turn) format.
# --------------------------------------------------------------------------------------------


def _convert_streamo_stream(obj: Any, ctx: _Ctx, opts: Options | None = None) -> dict:
  """One Streamo multi-turn sample -> one record.

  Turn k is the k-th user message (its ``<Xs-Ys>`` tag, when present, must say X = k). The
  decisions map as: ``</Silence>`` -> silence, ``</Standby>`` -> silence (counted),
  ``</Response> text`` on turn k -> an answer. A response right after a run of standby turns
  a..k-1 becomes the interval ``{start: a + 1, end: k + 1}`` (the inverse of the raw mapping),
  otherwise ``{time: k + 1}``. Streamo's converter copies the first question onto <0s-1s> when
  it is asked later: a question text repeated verbatim counts as asked at its later turn
  unless a response came in between. Duration = number of turns.
  """
  opts = opts if opts is not None else Options()
  if not isinstance(obj, dict):
    raise ctx.error("<record>", f"expected an object, got {type(obj).__name__}")
  msgs = obj.get("messages")
  if not isinstance(msgs, list) or not msgs:
    raise ctx.error("messages", "missing or empty list")
  videos = obj.get("videos")
  video_path = videos[0] if isinstance(videos, list) and videos else obj.get("video_path")
  if not isinstance(video_path, str) or not video_path.strip():
    raise ctx.error("videos", f"missing a video path (got {videos!r})")
  task = _streamo_task(obj.get("task_type", "QA"), ctx, opts)

  turns: list[tuple[str, str]] = []  # (question text or "", assistant content)
  pending_user: str | None = None
  for i, m in enumerate(msgs):
    if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
      raise ctx.error(f"messages[{i}].role", f"expected system/user/assistant, got {m!r:.80}")
    content = m.get("content")
    if not isinstance(content, str):
      raise ctx.error(f"messages[{i}].content", "not a string")
    role = m["role"]
    if role == "system":
      continue
    if role == "user":
      if pending_user is not None:
        raise ctx.error(f"messages[{i}]", "two user messages in a row")
      k = len(turns)
      tag = _TAG_RE.search(content)
      if tag is not None:
        x, y = float(tag.group(1)), float(tag.group(2))
        if x != k or y != k + 1:
          raise ctx.error(f"messages[{i}].content",
                          f"time tag <{tag.group(1)}s-{tag.group(2)}s> on turn {k} "
                          f"(expected <{k}s-{k + 1}s>)")
        content = content[:tag.start()] + content[tag.end():]
      pending_user = _MEDIA_RE.sub("", content).strip()
    else:
      if pending_user is None:
        raise ctx.error(f"messages[{i}]", "assistant message without a user turn before it")
      turns.append((pending_user, content.strip()))
      pending_user = None
  if not turns:
    raise ctx.error("messages", "no user/assistant turns")

  occurrences: list[tuple[int, str]] = [(k, q) for k, (q, _) in enumerate(turns) if q]
  kinds: list[str] = []
  for k, (_, a) in enumerate(turns):
    if a == prompts.SILENCE_TOKEN:
      kinds.append("silence")
    elif a == _STANDBY:
      kinds.append("standby")
    elif a.startswith(prompts.RESPONSE_TOKEN):
      if not a[len(prompts.RESPONSE_TOKEN):].strip():
        raise ctx.error(f"turn[{k}]", "</Response> without answer text")
      kinds.append("response")
    else:
      raise ctx.error(f"turn[{k}]", f"assistant message {a[:40]!r} is none of "
                      f"{prompts.SILENCE_TOKEN}, {_STANDBY}, {prompts.RESPONSE_TOKEN}")
  questions: list[dict] = []
  for k, text in occurrences:
    if questions and questions[-1]["question"] == text:
      prev = questions[-1]["_turn"]
      if "response" not in kinds[prev:k]:
        questions[-1]["_turn"] = k
        questions[-1]["ask_time"] = float(k)
      continue
    questions.append({"task": task, "question": text, "ask_time": float(k), "_turn": k,
                      "answers": []})
  default_question = not questions
  if default_question:
    questions.append({"task": task, "question": _STREAMO_DEFAULT_QUESTION, "ask_time": 0.0,
                      "_turn": 0, "answers": []})
  answers: list[tuple[int, dict]] = []
  for k, kind in enumerate(kinds):
    if kind != "response":
      continue
    text = turns[k][1][len(prompts.RESPONSE_TOKEN):].strip()
    a = k
    while a > 0 and kinds[a - 1] == "standby":
      a -= 1
    if a < k:
      ans = {"start": float(a + 1), "end": float(k + 1), "text": text}
    else:
      ans = {"time": float(k + 1), "text": text}
    answers.append((k, ans))
  moved = _assign_answers(questions, answers)
  video = _join_video(video_path.strip(), opts)
  name = obj.get("video_name") or os.path.basename(video_path)
  rec_id = f"{name}#{ctx.index}"
  meta = {"source_format": "streamo_stream", "source_task": obj.get("task_type"),
          "source": obj.get("source"), "duration_source": "turn_count",
          "standby_turns": kinds.count("standby"), "standby": _STANDBY_NOTE,
          "raw_index": ctx.index}
  if moved:
    meta["ask_time_moved_to_0"] = moved
  if default_question:
    meta["default_question"] = True
  return {"id": rec_id, "video": video, "duration": float(len(turns)),
          "questions": _finish_questions(rec_id, questions, ctx, meta), "meta": meta}


# --------------------------------------------------------------------------------------------
# Offline QA formats (TimeChat-Online-139K, VideoChat-Flash / LLaVA-NeXT).
# --------------------------------------------------------------------------------------------


def _offline_questions(pairs: list[tuple[str, str]], duration: float, task: str,
                       opts: Options) -> list[dict]:
  """Offline QA pairs on a streaming timeline: asked on the last turn (``offline_ask="end"``)
  or on turn 0 (``"start"``), answered on the last turn (response time = duration)."""
  if opts.offline_ask not in ("end", "start"):
    raise ValueError(f"offline_ask must be 'end' or 'start', got {opts.offline_ask!r}")
  k_turns = chat_format.num_turns(duration)
  ask = float(k_turns - 1) if opts.offline_ask == "end" else 0.0
  return [{"task": task, "question": q, "ask_time": ask, "_turn": int(ask),
           "answers": [{"time": float(duration), "text": a}]} for q, a in pairs]


def _frame_second(path: str) -> int | None:
  m = _DIGITS_RE.findall(os.path.basename(path))
  return int(m[-1]) if m else None


def _convert_timechat_online(obj: Any, ctx: _Ctx, opts: Options | None = None) -> dict:
  """One TimeChat-Online-139K sample -> one record.

  The sample holds ms-swift ``messages`` (user ``"<video>\\nquestion"``, assistant answer; no
  timestamps) and ``videos`` = [[frame files of a clip at 1 fps, named by second]] (or
  [video path]). The clip spans seconds first..last of its frame names, so duration =
  last - first + 1 and ``video`` is the frame folder; meta.clip = [first, last + 1] and
  meta.frame_seconds lists the (key) frames present. QA pairs go on the timeline as offline
  QA (see ``Options.offline_ask``).
  """
  opts = opts if opts is not None else Options()
  if not isinstance(obj, dict):
    raise ctx.error("<record>", f"expected an object, got {type(obj).__name__}")
  msgs = obj.get("messages")
  if not isinstance(msgs, list) or not msgs:
    raise ctx.error("messages", "missing or empty list")
  pairs: list[tuple[str, str]] = []
  pending: str | None = None
  for i, m in enumerate(msgs):
    if not isinstance(m, dict) or not isinstance(m.get("content"), str):
      raise ctx.error(f"messages[{i}]", "expected {role, content: str}")
    if m.get("role") == "system":
      continue
    if m.get("role") == "user":
      pending = _MEDIA_RE.sub("", m["content"]).strip()
      if not pending:
        raise ctx.error(f"messages[{i}].content", "empty question")
    elif m.get("role") == "assistant":
      if pending is None:
        raise ctx.error(f"messages[{i}]", "assistant message without a question")
      if not m["content"].strip():
        raise ctx.error(f"messages[{i}].content", "empty answer")
      pairs.append((pending, m["content"].strip()))
      pending = None
    else:
      raise ctx.error(f"messages[{i}].role", f"unknown role {m.get('role')!r}")
  if not pairs:
    raise ctx.error("messages", "no question/answer pair")
  videos = obj.get("videos")
  if not isinstance(videos, list) or not videos:
    raise ctx.error("videos", "missing or empty list")
  v0 = videos[0]
  meta: dict[str, Any] = {"source_format": "timechat_online", "raw_index": ctx.index,
                          "source_task": "unlabelled", "offline_ask": opts.offline_ask}
  if isinstance(v0, list):
    if not v0 or not all(isinstance(p, str) and p for p in v0):
      raise ctx.error("videos[0]", "expected a non-empty list of frame paths")
    folders = {os.path.dirname(p) for p in v0}
    if len(folders) != 1:
      raise ctx.error("videos[0]", f"frames come from {len(folders)} folders")
    secs = []
    for j, p in enumerate(v0):
      s = _frame_second(p)
      if s is None:
        raise ctx.error(f"videos[0][{j}]", f"frame name {os.path.basename(p)!r} has no number")
      secs.append(s)
    if secs != sorted(secs):
      raise ctx.error("videos[0]", "frame seconds are not increasing")
    video = _join_video(folders.pop(), opts)
    duration = float(secs[-1] - secs[0] + 1)
    meta.update(clip=[float(secs[0]), float(secs[-1] + 1)], frame_seconds=secs,
                duration_source="frame_names", video_kind="frame_folder")
  elif isinstance(v0, str) and v0:
    video = _join_video(v0, opts)
    duration, source = _lookup_duration(video, None, opts)
    if duration is None:
      raise ctx.error("videos[0]", "duration unknown: give a durations table or a video probe")
    meta["duration_source"] = source
  else:
    raise ctx.error("videos[0]", f"expected a frame list or a path, got {v0!r:.60}")
  for key in ("start_time", "end_time"):
    if key in obj:
      meta[key] = obj[key]
  task = opts.default_task or "EU"
  name = os.path.basename(video.rstrip("/"))
  rec_id = f"{name}#{ctx.index}"
  questions = _offline_questions(pairs, duration, task, opts)
  return {"id": rec_id, "video": video, "duration": duration,
          "questions": _finish_questions(rec_id, questions), "meta": meta}


def _convert_videochat_flash(obj: Any, ctx: _Ctx, opts: Options | None = None) -> dict:
  """One VideoChat-Flash / LLaVA-NeXT video sample -> one record.

  Keys: ``video`` (path), ``conversations`` = [{from: human, value: "<image>\\nq"},
  {from: gpt, value: a}, ...], optional ``id`` and clip bounds ``start``/``end`` (seconds).
  Duration = end - start for a clip, else the durations table / video probe. QA pairs go on
  the timeline as offline QA (see ``Options.offline_ask``).
  """
  opts = opts if opts is not None else Options()
  if not isinstance(obj, dict):
    raise ctx.error("<record>", f"expected an object, got {type(obj).__name__}")
  video = obj.get("video")
  if not isinstance(video, str) or not video.strip():
    raise ctx.error("video", f"missing or not a non-empty string (got {video!r})")
  conv = obj.get("conversations")
  if not isinstance(conv, list) or not conv:
    raise ctx.error("conversations", "missing or empty list")
  pairs: list[tuple[str, str]] = []
  pending: str | None = None
  for i, m in enumerate(conv):
    if not isinstance(m, dict) or not isinstance(m.get("value"), str):
      raise ctx.error(f"conversations[{i}]", "expected {from, value: str}")
    who = m.get("from")
    if who in ("human", "user"):
      pending = _MEDIA_RE.sub("", m["value"]).strip()
      if not pending:
        raise ctx.error(f"conversations[{i}].value", "empty question")
    elif who in ("gpt", "assistant"):
      if pending is None:
        raise ctx.error(f"conversations[{i}]", "answer without a question")
      if not m["value"].strip():
        raise ctx.error(f"conversations[{i}].value", "empty answer")
      pairs.append((pending, m["value"].strip()))
      pending = None
    elif who != "system":
      raise ctx.error(f"conversations[{i}].from", f"unknown speaker {who!r}")
  if not pairs:
    raise ctx.error("conversations", "no question/answer pair")
  path = _join_video(video.strip(), opts)
  meta: dict[str, Any] = {"source_format": "videochat_flash", "raw_index": ctx.index,
                          "offline_ask": opts.offline_ask}
  if "start" in obj and "end" in obj:
    try:
      s, e = float(obj["start"]), float(obj["end"])
    except (TypeError, ValueError):
      raise ctx.error("start", f"clip bounds not numbers: {obj['start']!r}, {obj['end']!r}"
                      ) from None
    if not (math.isfinite(s) and math.isfinite(e)) or e <= s or s < 0:
      raise ctx.error("end", f"clip [{s}, {e}] is empty or negative")
    duration, source = e - s, "clip_bounds"
    meta["clip"] = [s, e]
  else:
    duration, source = _lookup_duration(path, obj.get("id"), opts)
    if duration is None:
      raise ctx.error("video", "duration unknown: give a durations table or a video probe")
  meta["duration_source"] = source
  rec_id = f"{obj.get('id') or os.path.basename(video)}#{ctx.index}"
  questions = _offline_questions(pairs, duration, opts.default_task or "EU", opts)
  return {"id": rec_id, "video": path, "duration": float(duration),
          "questions": _finish_questions(rec_id, questions), "meta": meta}


# --------------------------------------------------------------------------------------------
# The plain "video, time, question, answer" format (CSV or JSONL), one answer per row.
# --------------------------------------------------------------------------------------------


def _num(row: Mapping[str, Any], key: str, ctx: _Ctx, default: float | None = None
         ) -> float | None:
  v = row.get(key)
  if v is None or v == "":
    return default
  try:
    f = float(v)
  except (TypeError, ValueError):
    raise ctx.error(key, f"{v!r} is not a number") from None
  if not math.isfinite(f) or f < 0:
    raise ctx.error(key, f"{v!r} must be a finite number >= 0")
  return f


def _convert_simple_row(row: Any, ctx: _Ctx, opts: Options | None = None) -> dict:
  """One row ``{video, time, question, answer[, duration, ask_time, start, task, id]}`` ->
  a one-question, one-answer record (consecutive rows are merged by ``_iter_import``).

  ``time`` is the response time; with ``start`` the answer is the interval [start, time].
  ``ask_time`` defaults to 0. Without ``duration`` the table/probe is used, else the
  annotation bound ceil(max(time, ask_time)) (meta.duration_source says which).
  """
  opts = opts if opts is not None else Options()
  if not isinstance(row, dict):
    raise ctx.error("<row>", f"expected an object, got {type(row).__name__}")
  for key in ("video", "question", "answer"):
    v = row.get(key)
    if not isinstance(v, str) or not v.strip():
      raise ctx.error(key, f"missing or empty (got {v!r})")
  t = _num(row, "time", ctx)
  if t is None:
    raise ctx.error("time", "missing")
  start = _num(row, "start", ctx)
  if start is not None and start > t:
    raise ctx.error("start", f"start {start} > time {t}")
  ask = _num(row, "ask_time", ctx, 0.0)
  task = row.get("task") or opts.default_task
  if task not in schema.TASKS:
    raise ctx.error("task", f"{task!r} is not one of {'|'.join(schema.TASKS)}")
  video = _join_video(row["video"].strip(), opts)
  duration = _num(row, "duration", ctx)
  source = "row"
  if duration is None:
    duration, source = _lookup_duration(video, None, opts)
  if duration is None:
    duration, source = float(chat_format.num_turns(max(t, ask + 1e-3))), "annotation_bound"
  if duration <= 0:
    raise ctx.error("duration", f"{duration} must be > 0")
  ans = ({"start": start, "end": t, "text": row["answer"].strip()} if start is not None
         else {"time": t, "text": row["answer"].strip()})
  rec_id = str(row.get("id") or f"{os.path.basename(video)}#{ctx.index}")
  q = {"task": task, "question": row["question"].strip(), "ask_time": ask, "_turn": 0,
       "answers": [ans]}
  return {"id": rec_id, "video": video, "duration": float(duration),
          "questions": _finish_questions(rec_id, [q]),
          "meta": {"source_format": "simple", "duration_source": source,
                   "raw_index": ctx.index}}


def _merge_simple(a: dict, b: dict) -> dict:
  """Merges consecutive simple rows: same question and ask time -> one more answer."""
  qa, qb = a["questions"][-1], b["questions"][0]
  out = dict(a)
  if (qa["question"], qa["ask_time"], qa["task"]) == (qb["question"], qb["ask_time"],
                                                      qb["task"]):
    qs = list(a["questions"])
    qs[-1] = dict(qa, answers=qa["answers"] + qb["answers"])
    out["questions"] = qs
  else:
    qs = list(a["questions"]) + [dict(qb, id=f"{a['id']}/q{len(a['questions'])}")]
    out["questions"] = qs
  if a["meta"]["duration_source"] == "annotation_bound" and b["meta"][
      "duration_source"] == "annotation_bound":
    out["duration"] = max(a["duration"], b["duration"])
  elif b["meta"]["duration_source"] != "annotation_bound":
    out["duration"] = b["duration"]
    out["meta"] = dict(a["meta"], duration_source=b["meta"]["duration_source"])
  return out


# --------------------------------------------------------------------------------------------
# The import driver.
# --------------------------------------------------------------------------------------------

_CONVERTERS: dict[str, Callable[[Any, _Ctx, Options], dict]] = {
    "streamo_raw": _convert_streamo_raw,
    "streamo_stream": _convert_streamo_stream,
    "timechat_online": _convert_timechat_online,
    "videochat_flash": _convert_videochat_flash,
    "simple": _convert_simple_row,
}


@dataclasses.dataclass
class ImportStats:
  """Counts of one import. ``errors`` keeps the first ``max_errors_kept`` messages."""
  read: int = 0
  converted: int = 0    # source records converted (read = converted + skipped; merged later)
  written: int = 0
  skipped: int = 0
  questions: int = 0
  answers: int = 0
  standby_turns: int = 0
  dropped_questions: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)
  reasons: dict[str, int] = dataclasses.field(default_factory=dict)
  duration_sources: dict[str, int] = dataclasses.field(default_factory=dict)
  videos_checked: int | None = 0   # None: not checked (Options.check_videos False)
  missing_videos: int = 0
  max_errors_kept: int = 1000

  def add_error(self, err: DataError):
    self.skipped += 1
    key = f"{err.field.split('.', 1)[-1] if '.' in err.field else err.field}: " + \
        str(err.reason).split(":")[0][:60]
    self.reasons[key] = self.reasons.get(key, 0) + 1
    if len(self.errors) < self.max_errors_kept:
      self.errors.append(str(err))

  def summary(self) -> str:
    lines = [f"read {self.read} source records, wrote {self.written} records "
             f"({self.questions} questions, {self.answers} answers), skipped {self.skipped}",
             f"standby turns mapped to silence: {self.standby_turns}; questions without "
             f"any response dropped: {self.dropped_questions}",
             f"duration sources: {self.duration_sources}",
             ("videos: NOT checked (check_videos off)" if self.videos_checked is None else
              f"videos: {self.videos_checked} checked, {self.missing_videos} missing")]
    for k, v in sorted(self.reasons.items(), key=lambda kv: -kv[1]):
      lines.append(f"  skipped {v:>8d} x {k}")
    return "\n".join(lines)


def _video_key(rec: dict) -> str:
  return rec["video"]


def _iter_import(fmt: str, path: str, *, opts: Options | None = None, policy: str = "fail",
                stats: ImportStats | None = None, progress: _Progress | None = None
                ) -> Iterator[dict]:
  """Yields converted, validated records of one source file in source order.

  Args:
    fmt: one of FORMATS.
    path: source file (JSON array, JSON object, JSONL, or CSV for ``simple``).
    opts: conversion options.
    policy: "fail" raises the first DataError; "skip" counts and lists it in ``stats``.
    stats: filled in as records go by.
    progress: receives the byte position read so far.
  """
  opts = opts if opts is not None else Options()
  if fmt not in _CONVERTERS:
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
  if policy not in ("fail", "skip"):
    raise ValueError(f"policy must be 'fail' or 'skip', got {policy!r}")
  stats = stats if stats is not None else ImportStats()
  if opts.video_root is None:
    opts = dataclasses.replace(opts, video_root=os.path.dirname(os.path.abspath(path)))
  if not opts.check_videos:
    stats.videos_checked = None
  convert = _CONVERTERS[fmt]
  if fmt == "simple" and path.lower().endswith(".csv"):
    source = _iter_csv(path, progress=progress)
  else:
    source = _iter_source(path, progress=progress)
  merge = {"streamo_raw": _merge_records, "simple": _merge_simple}.get(fmt)
  do_group = merge is not None and (opts.group_by_video or fmt == "simple")
  held: dict | None = None

  def emit(rec: dict) -> dict:
    stats.written += 1
    stats.questions += len(rec["questions"])
    stats.answers += sum(len(q["answers"]) for q in rec["questions"])
    stats.standby_turns += rec.get("meta", {}).get("standby_turns", 0)
    stats.dropped_questions += rec.get("meta", {}).get("dropped_unanswered_questions", 0)
    src = rec.get("meta", {}).get("duration_source", "")
    stats.duration_sources[src] = stats.duration_sources.get(src, 0) + 1
    return rec

  for index, line, value in source:
    stats.read += 1
    try:
      if isinstance(value, DataError):
        raise value
      rec = convert(value, _Ctx(path, line, index), opts)
      try:
        schema.parse_record(rec, file=path, line=line)
      except DataError as err:
        raise DataError(path, line, f"[{index}] -> {err.field}", err.reason) from None
      if opts.check_videos and "://" not in rec["video"]:
        full = _resolve_video(rec["video"], opts)
        stats.videos_checked += 1
        if not os.path.exists(full):
          stats.missing_videos += 1
          raise DataError(path, line, f"[{index}].video", f"video not found: {full}")
      stats.converted += 1
    except DataError as err:
      if policy == "fail":
        raise
      stats.add_error(err)
      continue
    if not do_group:
      yield emit(rec)
      continue
    if held is not None and _video_key(held) == _video_key(rec):
      held = merge(held, rec)
      continue
    if held is not None:
      yield emit(held)
    held = rec
  if held is not None:
    yield emit(held)


def _same_file(a: str, b: str) -> bool:
  try:
    return os.path.samefile(a, b)
  except OSError:
    return os.path.abspath(a) == os.path.abspath(b)


def import_to_jsonl(fmt: str, src: str, dst: str, *, opts: Options | None = None,
                    policy: str = "fail", show_progress: bool = True) -> ImportStats:
  """Converts ``src`` (format ``fmt``) into the annotation JSONL ``dst``.

  Writes to ``dst + '.tmp'`` and renames when done, so a failed import leaves no half file.
  Refuses to overwrite the source. Shows a tqdm bar over the bytes read. Relative video paths
  (relative to ``opts.video_root``, default the source's folder) are written relative to the
  output's folder, where readers (Record.video_path, check_data) resolve them.
  """
  opts = opts if opts is not None else Options()
  if opts.video_root is None:
    opts = dataclasses.replace(opts, video_root=os.path.dirname(os.path.abspath(src)))
  out_dir = os.path.dirname(os.path.abspath(dst))
  if os.path.exists(dst) and _same_file(src, dst):
    raise ValueError(f"output {dst} is the input file; refusing to overwrite it")
  stats = ImportStats()
  prog = _Progress()
  bar = None
  if show_progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=os.path.getsize(src), unit="B", unit_scale=True,
               desc=f"import {os.path.basename(src)}")
  tmp = dst + ".tmp"
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  try:
    with open(tmp, "w", encoding="utf-8") as out:
      last = 0
      for rec in _iter_import(fmt, src, opts=opts, policy=policy, stats=stats, progress=prog):
        video = rec["video"]
        if not (os.path.isabs(video) or "://" in video):
          rec = dict(rec, video=os.path.relpath(_resolve_video(video, opts), out_dir))
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if bar is not None and prog.pos != last:
          bar.update(prog.pos - last)
          last = prog.pos
    os.replace(tmp, dst)
  finally:
    if bar is not None:
      bar.close()
    if os.path.exists(tmp):
      os.remove(tmp)
  return stats


def read_durations_table(path: str) -> dict[str, float]:
  """A CSV ``video,duration`` or JSON object ``{video: duration}`` of video durations."""
  if path.lower().endswith(".json"):
    with open(path, encoding="utf-8") as fh:
      table = json.load(fh)
    return {str(k): float(v) for k, v in table.items()}
  out = {}
  with open(path, encoding="utf-8", newline="") as fh:
    for row in csv.DictReader(fh):
      out[row["video"].strip()] = float(row["duration"])
  return out


def _write_records_jsonl(records: Iterable[Mapping[str, Any]], dst: str) -> int:
  """Writes records one JSON object per line; returns the count."""
  n = 0
  with open(dst, "w", encoding="utf-8") as out:
    for rec in records:
      out.write(json.dumps(rec, ensure_ascii=False) + "\n")
      n += 1
  return n


def _records_from_text(text: str, fmt: str, *, opts: Options | None = None,
                      name: str = "<text>") -> list[dict]:
  """Converts a small source given as text (tests, notebooks). Policy "fail". Videos are not
  checked unless ``opts`` asks (the text names no folder)."""
  opts = opts if opts is not None else Options(check_videos=False)
  import tempfile  # pylint: disable=import-outside-toplevel
  suffix = ".csv" if fmt == "simple" and "," in text.split("\n", 1)[0] and not \
      text.lstrip().startswith(("{", "[")) else ".json"
  with tempfile.TemporaryDirectory() as d:
    p = os.path.join(d, os.path.basename(name) + suffix)
    with open(p, "w", encoding="utf-8") as fh:
      fh.write(text)
    return list(_iter_import(fmt, p, opts=opts))


def export_array_record(jsonl_path: str, data_dir: str, *, name: str, split: str = "train",
                        frames_per_turn: int = 2, height: int | None = None,
                        width: int | None = None, max_pixels: int | None = None,
                        on_error: str = "fail", **prepare_kwargs) -> dict:
  """Sharded array_record output of an annotation JSONL (e.g. written by ``import_to_jsonl``)
  through the generic TFDS builder ``tfds_builders.JsonlVideos``, which decodes the videos
  (TFDS shows its own progress bars). Returns the builder's split -> build report dict.
  """
  from streampro_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
  cfg = tfds_builders.JsonlVideosConfig(
      name=name, splits={split: os.path.abspath(jsonl_path)}, frames_per_turn=frames_per_turn,
      height=height, width=width, max_pixels=max_pixels, on_error=on_error)
  builder = tfds_builders.JsonlVideos(config=cfg, data_dir=data_dir, file_format="array_record")
  return tfds_builders.build(builder, **prepare_kwargs)
