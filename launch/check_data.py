r"""Checks annotation JSONL files and their videos before training.

Every bad record is reported as ``file:line: field: reason``; then a summary: records and
questions per task, responses per video, the silence:response ratio in turns (by the turn-timing
rule of docs/method.md section 1), video durations, and missing or unreadable videos (opened with
PyAV through streampro_jax.data.video). Exit status 1 when anything is wrong, else 0.

``--fix`` writes a cleaned copy (the good lines, unchanged) and a rejects file (one JSON object
per bad line: file, line, field, reason, text); the input is never modified.

  .venv/bin/python launch/check_data.py --input=data/train.jsonl [--fix] [--nocheck_videos]
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cli  # launch/_cli.py: one-line usage errors (exit 2)

from streampro_jax.data import chat_format
from streampro_jax.data import schema

_INPUT = flags.DEFINE_multi_string("input", None, "Annotation JSONL file(s) to check.")
_CHECK_VIDEOS = flags.DEFINE_boolean(
    "check_videos", True, "Open every video with PyAV (missing/unreadable/too short).")
_VIDEO_ROOT = flags.DEFINE_string(
    "video_root", None, "Folder for relative video paths (default: each JSONL's folder).")
_DURATION_TOLERANCE = flags.DEFINE_float(
    "duration_tolerance", 1.0, "Seconds a record's duration may exceed its video's.")
_FIX = flags.DEFINE_boolean("fix", False, "Write a cleaned copy and a rejects file.")
_FIXED_OUTPUT = flags.DEFINE_string(
    "fixed_output", None, "Cleaned copy (default: <input stem>.clean.jsonl; one input only).")
_REJECTS_OUTPUT = flags.DEFINE_string(
    "rejects_output", None, "Rejects file (default: <input stem>.rejects.jsonl; one input only).")
_MAX_SHOWN = flags.DEFINE_integer(
    "max_shown", 0, "Print at most this many problems per file (0: all). Counts stay exact.")


@dataclasses.dataclass
class Problem:
  """One bad record."""
  file: str
  line: int
  field: str
  reason: str

  def __str__(self) -> str:
    return f"{self.file}:{self.line}: {self.field}: {self.reason}"


@dataclasses.dataclass
class Report:
  """What check_file found in one file."""
  file: str
  lines: int = 0
  good: int = 0
  problems: list[Problem] = dataclasses.field(default_factory=list)
  warnings: list[Problem] = dataclasses.field(default_factory=list)
  questions_per_task: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  responses_per_video: list[int] = dataclasses.field(default_factory=list)
  response_turns: int = 0
  silence_turns: int = 0
  durations: list[float] = dataclasses.field(default_factory=list)
  videos_checked: int = 0
  missing_videos: set = dataclasses.field(default_factory=set)
  unreadable_videos: set = dataclasses.field(default_factory=set)
  duration_sources: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class VideoChecker:
  """Opens each distinct video once; remembers (duration or None, problem reason or None)."""

  def __init__(self, probe=None):
    if probe is None:
      from streampro_jax.data import video  # pylint: disable=import-outside-toplevel

      def probe(path):
        return video.probe(path).duration
      self._video_error = video.VideoError
    else:
      self._video_error = ValueError
    self._probe = probe
    self._cache: dict[str, tuple[float | None, str | None, str]] = {}

  def check(self, path: str, meta: dict | None) -> tuple[float | None, str | None, str]:
    """-> (duration, reason, kind) with kind "ok", "missing" or "unreadable"."""
    if path in self._cache:
      return self._cache[path]
    if not os.path.exists(path):
      out = (None, f"video not found: {path}", "missing")
    elif os.path.isdir(path):
      kind = (meta or {}).get("video_kind")
      files = [f for f in os.listdir(path) if not f.startswith(".")]
      if kind != "frame_folder":
        out = (None, f"{path} is a folder, not a video file", "unreadable")
      elif not files:
        out = (None, f"frame folder {path} is empty", "unreadable")
      else:
        out = (None, None, "ok")
    else:
      try:
        out = (float(self._probe(path)), None, "ok")
      except (self._video_error, OSError, ValueError) as e:
        out = (None, f"unreadable video: {e}", "unreadable")
    self._cache[path] = out
    return out


def _trajectory_turns(record: schema.Record) -> tuple[int, int, list[str]]:
  """(response turns, silence turns, warnings) over the record's trajectories."""
  resp = sil = 0
  warnings = []
  k_total = chat_format.num_turns(record.duration)
  for q in record.questions:
    plans = chat_format.plan_turns(record, q)
    r = sum(p.decision == chat_format.DECISION_RESPONSE for p in plans)
    resp += r
    sil += len(plans) - r
    if r < len(q.answers):
      warnings.append(f"question {q.id!r}: {len(q.answers)} answers fall on {r} turns "
                      f"(texts joined with {chat_format.ANSWER_JOINER!r})")
    qk = chat_format.ask_turn(q.ask_time, k_total)
    if qk == k_total - 1 and q.ask_time + 1e-6 < k_total - 1:
      warnings.append(f"question {q.id!r}: ask_time {q.ask_time} clipped to the last turn")
  return resp, sil, warnings


def check_file(path: str, *, checker: VideoChecker | None, video_root: str | None = None,
               duration_tolerance: float = 1.0, fixed_out=None, rejects_out=None) -> Report:
  """Checks one JSONL file line by line (bounded memory apart from the id set)."""
  rep = Report(file=path)
  seen: dict[str, int] = {}
  base = video_root or os.path.dirname(os.path.abspath(path))
  with open(path, "rb") as fh:
    for lineno, raw in enumerate(fh, start=1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        bad = Problem(path, lineno, "<line>", f"not UTF-8: {e.reason} at byte {e.start}")
      else:
        bad = None
      if not text.strip():
        continue
      rep.lines += 1
      record = None
      if bad is None:
        try:
          record = schema.parse_line(text, file=path, line=lineno)
        except schema.DataError as e:
          bad = Problem(path, lineno, e.field, e.reason)
      if bad is None and record.id in seen:
        bad = Problem(path, lineno, "id",
                      f"duplicate record id {record.id!r} (first on line {seen[record.id]})")
      if bad is None and checker is not None and not record.is_synthetic:
        vpath = record.video_path(base)
        vdur, reason, kind = checker.check(vpath, record.meta)
        rep.videos_checked += 1
        if kind == "missing":
          rep.missing_videos.add(vpath)
        elif kind == "unreadable":
          rep.unreadable_videos.add(vpath)
        if reason is not None:
          bad = Problem(path, lineno, "video", reason)
        elif vdur is not None and record.duration > vdur + duration_tolerance:
          bad = Problem(path, lineno, "duration",
                        f"{record.duration} s is longer than the video ({vdur:.3f} s) by more "
                        f"than {duration_tolerance} s")
      short = None
      if bad is None and checker is not None and not record.is_synthetic and vdur is not None \
          and record.duration < vdur - 1.0:
        short = (f"{record.duration} s covers only part of the video ({vdur:.3f} s): the turns "
                 "after it are never shown")
      if bad is not None:
        rep.problems.append(bad)
        if rejects_out is not None:
          rejects_out.write(json.dumps(dataclasses.asdict(bad) | {"text": text.rstrip("\n")},
                                       ensure_ascii=False) + "\n")
        continue
      seen[record.id] = lineno
      rep.good += 1
      if fixed_out is not None:
        fixed_out.write(text if text.endswith("\n") else text + "\n")
      for q in record.questions:
        rep.questions_per_task[q.task] += 1
      rep.responses_per_video.append(sum(len(q.answers) for q in record.questions))
      rep.durations.append(record.duration)
      src = (record.meta or {}).get("duration_source")
      if src:
        rep.duration_sources[src] += 1
      r, s, warns = _trajectory_turns(record)
      rep.response_turns += r
      rep.silence_turns += s
      rep.warnings += [Problem(path, lineno, "questions", w) for w in warns]
      if short is not None:
        rep.warnings.append(Problem(path, lineno, "duration", short))
      if src == "annotation_bound":
        rep.warnings.append(Problem(
            path, lineno, "duration", f"{record.duration} s was guessed from the annotations (the "
            "last answer's turn), not read from the video: reimport with --durations or --probe"))
  return rep


def _stats(values: list[float]) -> str:
  if not values:
    return "n/a"
  v = sorted(values)
  n = len(v)
  med = v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
  return (f"min {v[0]:.1f}  median {med:.1f}  mean {sum(v) / n:.2f}  max {v[-1]:.1f}  "
          f"(n={n})")


def summary(rep: Report) -> str:
  """A human-readable summary of one file's report."""
  lines = [f"== {rep.file}: {rep.lines} records, {rep.good} good, {len(rep.problems)} bad, "
           f"{len(rep.warnings)} warnings"]
  lines.append("questions per task: " + (", ".join(
      f"{t} {rep.questions_per_task[t]}" for t in schema.TASKS if rep.questions_per_task[t])
      or "none"))
  lines.append(f"responses per video: {_stats([float(x) for x in rep.responses_per_video])}")
  total = rep.response_turns + rep.silence_turns
  ratio = (f"{rep.silence_turns / rep.response_turns:.2f}:1" if rep.response_turns
           else "inf (no response turns)")
  lines.append(f"turns: {total} ({rep.silence_turns} silence, {rep.response_turns} response); "
               f"silence:response = {ratio}")
  lines.append(f"durations (s): {_stats(rep.durations)}; total {sum(rep.durations) / 3600:.2f} h")
  if rep.duration_sources:
    lines.append(f"duration sources: {dict(rep.duration_sources)}")
  lines.append(f"videos: {rep.videos_checked} record checks, {len(rep.missing_videos)} missing, "
               f"{len(rep.unreadable_videos)} unreadable")
  return "\n".join(lines)


def _default_out(path: str, suffix: str) -> str:
  stem = path[:-len(".jsonl")] if path.endswith(".jsonl") else path
  return f"{stem}.{suffix}.jsonl"


def _same(a: str, b: str) -> bool:
  return os.path.abspath(a) == os.path.abspath(b) or (
      os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  inputs = _INPUT.value or []
  if not inputs:
    raise app.UsageError("--input is required")
  missing = [p for p in inputs if not os.path.isfile(p)]
  if missing:
    raise app.UsageError(f"--input={missing[0]}: no such file")
  if (_FIXED_OUTPUT.value or _REJECTS_OUTPUT.value) and len(inputs) > 1:
    raise app.UsageError("--fixed_output/--rejects_output take one --input")
  checker = VideoChecker() if _CHECK_VIDEOS.value else None
  any_bad = False
  for path in inputs:
    if not os.path.isfile(path):
      print(f"{path}:0: <file>: not found", flush=True)
      any_bad = True
      continue
    fixed_out = rejects_out = None
    if _FIX.value:
      fixed = _FIXED_OUTPUT.value or _default_out(path, "clean")
      rejects = _REJECTS_OUTPUT.value or _default_out(path, "rejects")
      for out in (fixed, rejects):
        if any(_same(out, p) for p in inputs):
          raise app.UsageError(f"output {out} is an input file; refusing to touch the input")
      fixed_out = open(fixed, "w", encoding="utf-8")
      rejects_out = open(rejects, "w", encoding="utf-8")
    try:
      rep = check_file(path, checker=checker, video_root=_VIDEO_ROOT.value,
                       duration_tolerance=_DURATION_TOLERANCE.value, fixed_out=fixed_out,
                       rejects_out=rejects_out)
    finally:
      if fixed_out is not None:
        fixed_out.close()
        rejects_out.close()
    shown = rep.problems if not _MAX_SHOWN.value else rep.problems[:_MAX_SHOWN.value]
    for p in shown:
      print(f"ERROR {p}")
    if len(shown) < len(rep.problems):
      print(f"... and {len(rep.problems) - len(shown)} more errors")
    for w in rep.warnings[:_MAX_SHOWN.value or None]:
      print(f"WARNING {w}")
    print(summary(rep))
    if _FIX.value:
      print(f"wrote {rep.good} good records to {fixed} and {len(rep.problems)} rejects to "
            f"{rejects}")
    if rep.lines == 0:   # what every reader of the file (import_data, the pipeline) refuses
      print(f"ERROR {path}:0: <file>: holds no records (empty, or blank lines only)")
    any_bad |= bool(rep.problems) or rep.lines == 0
  print("RESULT: " + ("problems found" if any_bad else "no problems"), flush=True)
  sys.exit(1 if any_bad else 0)


if __name__ == "__main__":
  _cli.run(main)
