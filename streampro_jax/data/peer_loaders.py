"""Peer-benchmark annotation files -> schema.Record (original fields kept in ``meta``).

Supported formats (as published by each benchmark):

* StreamingBench question files (``questions_*.json``): a JSON list of entries
  ``{"time": "[0:00:00 - 0:01:00]", "questions": [{"task_type", "question", "time_stamp" (HH:MM:SS),
  "options", "answer", ...}], "video_categories", "video_path"}``; the same video appears in
  several entries. Proactive Output questions carry ``ground_truth_time_stamp`` and
  ``ground_truth_output`` instead of options/answer.
* OVO-Bench (``ovo_bench_new.json``): a JSON list of items ``{"id", "task", "video", ...}``.
  Backward (EPM, ASI, HLD) and real-time (STU, OJR, ATR, ACR, OCR, FPD) items are multiple choice
  with ``realtime`` (seconds), ``question``, ``options`` and ``gt`` (0-based option index). Forward
  items hold probes in ``test_info``: REC ``{"realtime", "count"}`` with ``activity``; SSR
  ``{"realtime", "step", "type"}``; CRR ``{"realtime", "type"}`` with ``question`` (type 1 = Yes,
  0 = No).
* ProactiveVideoQA (``<subset>/anno.json``, subsets EGO, TV, VAD, WEB): a JSON list of items
  ``{"video", "question_id", "conversation": [{"role": "user", "time", "content"}, ...],
  "answer": [{"role": "assistant", "content", "related_timespan": [s, e],
  "reply_timespan": [s, e], ...}], "duration"}``.

Mapping [choice]: one Record per video (questions of the same video are grouped, in file order).
Times are seconds. Multiple-choice questions get the options appended to the question text
("A. ..." lines) and a point answer at the ask time whose text is the answer letter. Schema task
codes are assigned by the tables below (the peer's own task name is kept in
``meta["items"][question_id]`` with the whole original item, and in ``meta["task_types"]``), so
that the scorers in bench/ can use the original task. Durations come from, in order: the
``durations`` argument (keyed by the video string of the file or its basename), the annotation's
own ``duration`` (ProactiveVideoQA), probing the video file if it exists (data/video.py), or the
latest annotated time + ``tail`` seconds; ``meta["duration_source"]`` says which.

Bad items follow the schema's policy: ``on_error="fail"`` raises the first ``DataError``
(file, 1-based position in the JSON list as "line", field, reason); ``"skip"`` drops the item and
records the error in the returned ``LoadReport``.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Mapping
from typing import Any

from streampro_jax.data import schema
from streampro_jax.data.schema import DataError, LoadReport, Record

__all__ = ["load_ovo_bench", "load_proactivevideoqa", "load_streamingbench"]

# StreamingBench task_type -> schema task [choice].
_STREAMINGBENCH_TASKS = {
    "Object Perception": "OU", "Attribute Perception": "OU", "Counting": "OU",
    "Text-Rich Understanding": "OU", "Spatial Understanding": "OU",
    "Event Understanding": "EU", "Action Perception": "EU", "Causal Reasoning": "EU",
    "Clips Summarization": "CAP", "Prospective Reasoning": "RF",
    "Emotion Recognition": "EU", "Scene Understanding": "EU", "Source Discrimination": "OU",
    "Multimodal Alignment": "EU", "Misleading Context Understanding": "EU",
    "Anomaly Context Understanding": "AA", "Sequential Question Answering": "EU",
    "Proactive Output": "TG",
}
# OVO-Bench task -> (category, schema task) [choice].
_OVO_TASKS = {
    "EPM": ("backward", "EU"), "ASI": ("backward", "TP"), "HLD": ("backward", "EU"),
    "STU": ("realtime", "OU"), "OJR": ("realtime", "OU"), "ATR": ("realtime", "OU"),
    "ACR": ("realtime", "EU"), "OCR": ("realtime", "OU"), "FPD": ("realtime", "RF"),
    "REC": ("forward", "EU"), "SSR": ("forward", "GP"), "CRR": ("forward", "EU"),
}
# ProactiveVideoQA subset -> schema task [choice].
_PROACTIVEVIDEOQA_TASKS = {"VAD": "AA", "EGO": "EU", "TV": "EU", "WEB": "EU"}


def _hms_to_seconds(text: str) -> float:
  """"HH:MM:SS" (or "MM:SS", "SS", fractional seconds allowed) -> seconds."""
  parts = str(text).strip().split(":")
  if not 1 <= len(parts) <= 3 or any(not p for p in parts):
    raise ValueError(f"time {text!r} is not HH:MM:SS")
  total = 0.0
  for p in parts:
    total = total * 60 + float(p)
  return total


def _format_options(options: list[str]) -> str:
  """Options as lines "A. ..." (an option already starting with "A." or "A " is kept as is)."""
  lines = []
  for i, opt in enumerate(options):
    letter = chr(65 + i)
    s = str(opt).strip()
    if len(s) >= 2 and s[0] == letter and s[1] in ".: )":
      lines.append(s)
    else:
      lines.append(f"{letter}. {s}")
  return "\n".join(lines)


def _read_json_list(path: str) -> list:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(path, 0, "<json>", f"invalid JSON: {e}") from None
  if not isinstance(data, list):
    raise DataError(path, 0, "<json>", f"expected a JSON list, got {type(data).__name__}")
  return data


class _Builder:
  """Groups questions by video and turns them into validated Records."""

  def __init__(self, path: str, benchmark: str, *, video_dir: str | None,
               durations: Mapping[str, float] | None, tail: float, on_error: str,
               probe_videos: bool):
    if on_error not in ("fail", "skip"):
      raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    self.path = str(path)
    self.benchmark = benchmark
    self.video_dir = video_dir
    self.durations = dict(durations or {})
    self.tail = tail
    self.on_error = on_error
    self.probe_videos = probe_videos
    self.report = LoadReport(file=self.path)
    self.videos: dict[str, dict] = collections.OrderedDict()

  def fail(self, err: DataError) -> None:
    if self.on_error == "fail":
      raise err
    self.report.errors.append(err)

  def add(self, video: str, line: int, question: dict, item: Any, *,
          duration: float | None = None, record_meta: dict | None = None) -> None:
    v = self.videos.setdefault(video, {"questions": [], "lines": [], "items": {},
                                       "duration": None, "meta": {}})
    v["questions"].append(question)
    v["lines"].append(line)
    v["items"][question["id"]] = item
    if duration is not None:
      v["duration"] = duration
    if record_meta:
      v["meta"].update(record_meta)

  def _video_path(self, video: str) -> str:
    if self.video_dir is not None and not os.path.isabs(video):
      return os.path.normpath(os.path.join(self.video_dir, video))
    return video

  def _duration(self, video: str, v: dict) -> tuple[float, str]:
    for key in (video, os.path.basename(video)):
      if key in self.durations:
        return float(self.durations[key]), "durations"
    if v["duration"] is not None:
      return float(v["duration"]), "annotation"
    path = self._video_path(video)
    if not os.path.isabs(path):
      path = os.path.join(os.path.dirname(os.path.abspath(self.path)), path)
    if self.probe_videos and os.path.isfile(path):
      from streampro_jax.data import video as video_lib  # PyAV only when needed.
      try:
        return video_lib.probe(path).duration, "probe"
      except video_lib.VideoError:
        pass
    latest = 0.0
    for q in v["questions"]:
      latest = max(latest, q["ask_time"])
      for a in q["answers"]:
        latest = max(latest, a.get("time", a.get("end", 0.0)))
    return latest + self.tail, "latest annotated time + tail"

  def records(self) -> tuple[list[Record], LoadReport]:
    out = []
    self.report.num_lines = sum(len(v["questions"]) for v in self.videos.values())
    for video, v in self.videos.items():
      duration, source = self._duration(video, v)
      meta = {"benchmark": self.benchmark, "duration_source": source,
              "task_types": {q["id"]: v["items"][q["id"]].get("_task_type")
                             for q in v["questions"]},
              "items": {qid: {k: val for k, val in item.items() if k != "_task_type"}
                        for qid, item in v["items"].items()}}
      meta.update(v["meta"])
      obj = {"id": f"{self.benchmark}:{video}", "video": self._video_path(video),
             "duration": duration, "questions": v["questions"], "meta": meta}
      try:
        record = schema.parse_record(obj, file=self.path, line=v["lines"][0])
      except DataError as e:
        self.fail(e)
        continue
      out.append(record)
      self.report.num_records += 1
    return out, self.report


def _field(builder: _Builder, line: int, item: Any, key: str, prefix: str = "") -> Any:
  if not isinstance(item, dict):
    raise DataError(builder.path, line, prefix.rstrip(".") or "<item>",
                    f"expected an object, got {type(item).__name__}")
  if key not in item:
    raise DataError(builder.path, line, prefix + key, "missing required field")
  return item[key]


def _seconds(builder: _Builder, line: int, value: Any, field: str) -> float:
  try:
    if isinstance(value, str):
      return _hms_to_seconds(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ValueError(f"expected seconds or HH:MM:SS, got {value!r}")
    return float(value)
  except ValueError as e:
    raise DataError(builder.path, line, field, str(e)) from None


def load_streamingbench(path: str, *, video_dir: str | None = None,
                        durations: Mapping[str, float] | None = None, tail: float = 1.0,
                        on_error: str = "fail",
                        probe_videos: bool = True) -> tuple[list[Record], LoadReport]:
  """Reads a StreamingBench question file into Records (one per ``video_path``).

  Question ids are "e{entry}q{question}" (0-based positions in the file). A multiple-choice
  question becomes a point answer at ``time_stamp`` whose text is the answer letter; a Proactive
  Output question asks at ``time_stamp`` and is answered ``ground_truth_output`` at
  ``ground_truth_time_stamp``.
  """
  b = _Builder(path, "streamingbench", video_dir=video_dir, durations=durations, tail=tail,
               on_error=on_error, probe_videos=probe_videos)
  for ei, entry in enumerate(_read_json_list(path)):
    line = ei + 1
    try:
      video = _field(b, line, entry, "video_path")
      questions = _field(b, line, entry, "questions")
      if not isinstance(questions, list):
        raise DataError(b.path, line, "questions", "expected a list")
    except DataError as e:
      b.fail(e)
      continue
    for qi, q in enumerate(questions):
      prefix = f"questions[{qi}]."
      try:
        task_type = _field(b, line, q, "task_type", prefix)
        text = _field(b, line, q, "question", prefix)
        ask = _seconds(b, line, _field(b, line, q, "time_stamp", prefix), prefix + "time_stamp")
        if task_type == "Proactive Output":
          t = _seconds(b, line, _field(b, line, q, "ground_truth_time_stamp", prefix),
                       prefix + "ground_truth_time_stamp")
          answer = {"time": t, "text": str(_field(b, line, q, "ground_truth_output", prefix))}
        else:
          options = _field(b, line, q, "options", prefix)
          text = f"{text}\n{_format_options(options)}"
          answer = {"time": ask, "text": str(_field(b, line, q, "answer", prefix))}
        task = _STREAMINGBENCH_TASKS.get(task_type, "EU")
      except DataError as e:
        b.fail(e)
        continue
      qid = f"e{ei}q{qi}"
      item = dict(q, _task_type=task_type, entry_time=entry.get("time"),
                  video_categories=entry.get("video_categories"))
      b.add(video, line, {"id": qid, "task": task, "ask_time": ask, "question": text,
                          "answers": [answer]}, item)
  return b.records()


def load_ovo_bench(path: str, *, video_dir: str | None = None,
                   durations: Mapping[str, float] | None = None, tail: float = 1.0,
                   on_error: str = "fail",
                   probe_videos: bool = True) -> tuple[list[Record], LoadReport]:
  """Reads an OVO-Bench annotation list into Records (one per ``video``).

  Backward / real-time items: asked at ``realtime``, answered at ``realtime`` with the letter
  chr(65 + gt). Forward items are asked at 0 s and answered at every probe time: REC with the
  count ("How many times did they {activity}?"), SSR one question per distinct step ("Is the
  person currently performing this step: {step}?"), CRR with "Yes"/"No". Question ids are the
  item id (SSR: "{id}/{step index}").
  """
  b = _Builder(path, "ovo_bench", video_dir=video_dir, durations=durations, tail=tail,
               on_error=on_error, probe_videos=probe_videos)
  for ii, item in enumerate(_read_json_list(path)):
    line = ii + 1
    try:
      task_name = _field(b, line, item, "task")
      if task_name not in _OVO_TASKS:
        raise DataError(b.path, line, "task", f"unknown OVO-Bench task {task_name!r} "
                        f"(known: {', '.join(_OVO_TASKS)})")
      category, task = _OVO_TASKS[task_name]
      video = _field(b, line, item, "video")
      iid = str(_field(b, line, item, "id"))
      meta_item = dict(item, _task_type=task_name, category=category)
      if category in ("backward", "realtime"):
        t = _seconds(b, line, _field(b, line, item, "realtime"), "realtime")
        options = _field(b, line, item, "options")
        gt = _field(b, line, item, "gt")
        if isinstance(gt, bool) or not isinstance(gt, int) or not 0 <= gt < len(options):
          raise DataError(b.path, line, "gt", f"option index {gt!r} is not in "
                          f"[0, {len(options)})")
        text = f"{_field(b, line, item, 'question')}\n{_format_options(options)}"
        questions = [{"id": iid, "task": task, "ask_time": t, "question": text,
                      "answers": [{"time": t, "text": chr(65 + gt)}]}]
      else:
        probes = _field(b, line, item, "test_info")
        if not isinstance(probes, list) or not probes:
          raise DataError(b.path, line, "test_info", "expected a non-empty list of probes")
        times = [_seconds(b, line, _field(b, line, p, "realtime", f"test_info[{j}]."),
                          f"test_info[{j}].realtime") for j, p in enumerate(probes)]
        if task_name == "REC":
          text = f"How many times did they {_field(b, line, item, 'activity')}?"
          answers = [{"time": t, "text": str(_field(b, line, p, "count", f"test_info[{j}]."))}
                     for j, (t, p) in enumerate(zip(times, probes))]
          questions = [{"id": iid, "task": task, "ask_time": 0.0, "question": text,
                        "answers": sorted(answers, key=lambda a: a["time"])}]
        elif task_name == "SSR":
          by_step: dict[str, list] = collections.OrderedDict()
          for j, (t, p) in enumerate(zip(times, probes)):
            step = _field(b, line, p, "step", f"test_info[{j}].")
            yes = _field(b, line, p, "type", f"test_info[{j}].")
            by_step.setdefault(step, []).append({"time": t, "text": "Yes" if yes else "No"})
          questions = [{"id": f"{iid}/{k}", "task": task, "ask_time": 0.0,
                        "question": f"Is the person currently performing this step: {step}?",
                        "answers": sorted(ans, key=lambda a: a["time"])}
                       for k, (step, ans) in enumerate(by_step.items())]
        else:  # CRR
          text = _field(b, line, item, "question")
          answers = [{"time": t, "text": "Yes" if _field(b, line, p, "type",
                                                         f"test_info[{j}].") else "No"}
                     for j, (t, p) in enumerate(zip(times, probes))]
          questions = [{"id": iid, "task": task, "ask_time": 0.0, "question": text,
                        "answers": sorted(answers, key=lambda a: a["time"])}]
    except DataError as e:
      b.fail(e)
      continue
    for q in questions:
      b.add(video, line, q, meta_item)
  return b.records()


def load_proactivevideoqa(path: str, *, subset: str | None = None,
                          video_dir: str | None = None,
                          durations: Mapping[str, float] | None = None, tail: float = 1.0,
                          on_error: str = "fail",
                          probe_videos: bool = True) -> tuple[list[Record], LoadReport]:
  """Reads a ProactiveVideoQA ``anno.json`` into Records (one per ``video``).

  The question is the first user message (asked at its ``time``); later user messages
  (subtitles in TV) stay in meta. Each assistant turn becomes an interval answer over its
  ``reply_timespan`` (``related_timespan`` stays in meta). ``subset`` (EGO, TV, VAD, WEB) picks
  the schema task; by default it is the name of the file's folder. Reply spans past the video's
  duration are clipped to it (counted in ``meta["items"][question_id]["clipped_spans"]``).
  """
  if subset is None:
    subset = os.path.basename(os.path.dirname(os.path.abspath(path))).upper()
  task = _PROACTIVEVIDEOQA_TASKS.get(subset, "EU")
  b = _Builder(path, "proactivevideoqa", video_dir=video_dir, durations=durations, tail=tail,
               on_error=on_error, probe_videos=probe_videos)
  for ii, item in enumerate(_read_json_list(path)):
    line = ii + 1
    try:
      video = _field(b, line, item, "video")
      qid = str(_field(b, line, item, "question_id"))
      conv = _field(b, line, item, "conversation")
      users = [m for m in conv if isinstance(m, dict) and m.get("role") == "user"]
      if not users:
        raise DataError(b.path, line, "conversation", "no user message (the question)")
      first = users[0]
      ask = _seconds(b, line, _field(b, line, first, "time", "conversation[0]."),
                     "conversation[0].time")
      text = _field(b, line, first, "content", "conversation[0].")
      duration = item.get("duration")
      if duration is not None:
        duration = _seconds(b, line, duration, "duration")
      answers, clipped = [], 0
      for j, a in enumerate(_field(b, line, item, "answer")):
        span = _field(b, line, a, "reply_timespan", f"answer[{j}].")
        if not isinstance(span, list) or len(span) != 2:
          raise DataError(b.path, line, f"answer[{j}].reply_timespan",
                          f"expected [start, end], got {span!r}")
        s = _seconds(b, line, span[0], f"answer[{j}].reply_timespan[0]")
        e = _seconds(b, line, span[1], f"answer[{j}].reply_timespan[1]")
        if duration is not None and e > duration:
          e, clipped = duration, clipped + 1
          s = min(s, e)
        answers.append({"start": s, "end": e,
                        "text": str(_field(b, line, a, "content", f"answer[{j}]."))})
    except DataError as e:
      b.fail(e)
      continue
    meta_item = dict(item, _task_type=subset, clipped_spans=clipped)
    b.add(video, line, {"id": qid, "task": task, "ask_time": ask, "question": text,
                        "answers": answers}, meta_item, duration=duration,
          record_meta={"subset": subset})
  return b.records()
