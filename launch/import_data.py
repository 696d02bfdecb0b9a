r"""Imports public streaming-video training data into StreamPro annotation JSONL.

A command line over ``streampro_jax.data.importers`` (docs/components.md#mapping-decisions has the
mapping rules of each format):

  .venv/bin/python launch/import_data.py --format=streamo_raw --input=raw_data.json \
      --output=data/streamo.jsonl --on_error=skip --durations=durations.csv
  # also write sharded array_record through the TFDS builder (decodes the videos):
  .venv/bin/python launch/import_data.py --format=simple --input=rows.csv \
      --output=data/simple.jsonl --array_record_dir=data/tfds --name=simple --frame_size=224

The input is read as bytes, line by line: a line that is not UTF-8 or not valid JSON is one bad
record, named by file and line (failed, or skipped and counted with --on_error=skip). A record
whose video does not exist is a bad record too (--nocheck_videos to import without the videos).
Relative video paths are taken from the input file's folder (--video_root) and written relative
to the output file's folder.

Prints the import summary (records read / written, questions, answers, skipped records with
their reasons, duration sources, videos checked / missing). Exit status 1 when the import fails
(first bad record under --on_error=fail, an unreadable input, no record written, or a failed
array_record build); the output JSONL is then not written (the importer writes
``<output>.tmp`` and renames at the end).
Check the result with ``launch/check_data.py --input=<output>``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cli  # launch/_cli.py: one-line usage errors (exit 2)

from streampro_jax.data import importers
from streampro_jax.data import schema

_FORMAT = flags.DEFINE_enum("format", None, importers.FORMATS, "Source format.")
_INPUT = flags.DEFINE_string("input", None, "Source file (JSON array / object, JSONL, or CSV "
                             "for --format=simple).")
_OUTPUT = flags.DEFINE_string("output", None, "Annotation JSONL to write.")
_ON_ERROR = flags.DEFINE_enum("on_error", "fail", ("fail", "skip"),
                              "fail: stop at the first bad record; skip: count and report it.")
_DURATIONS = flags.DEFINE_string("durations", None, "Table of video durations: CSV "
                                 "'video,duration' or JSON object {video: seconds}.")
_PROBE = flags.DEFINE_boolean("probe", True, "Read missing durations from the video files "
                              "that exist (PyAV); relative paths are taken from --video_root. "
                              "A record whose duration is neither given nor probed ends at its "
                              "last answer's turn (duration_source 'annotation_bound', warned).")
_VIDEO_ROOT = flags.DEFINE_string("video_root", None, "Folder of relative video paths (default: "
                                  "the --input annotation file's folder); they are written "
                                  "relative to the output file's folder.")
_CHECK_VIDEOS = flags.DEFINE_boolean(
    "check_videos", True, "A record whose video does not exist is an error (--on_error=skip: "
    "a counted, listed skip). --nocheck_videos imports without the videos at hand (the summary "
    "says they were not checked).")
_VIDEO_PREFIX = flags.DEFINE_string("video_prefix", None, "Joined in front of relative video "
                                    "paths in the output records.")
_DEFAULT_TASK = flags.DEFINE_enum("default_task", "EU", schema.TASKS,
                                  "Task of records whose source has no task label.")
_INTERVAL_END_OFFSET = flags.DEFINE_float(
    "streamo_interval_end_offset", 1.0, "Streamo interval responses end at end_time + this "
    "(1 = Streamo's own converter).")
_OFFLINE_ASK = flags.DEFINE_enum("offline_ask", "end", ("end", "start"),
                                 "Offline QA (TimeChat-Online, VideoChat-Flash): ask on the "
                                 "last turn or on turn 0.")
_GROUP_BY_VIDEO = flags.DEFINE_boolean("group_by_video", True, "Merge consecutive Streamo raw "
                                       "entries of the same video into one record.")
_PROGRESS = flags.DEFINE_boolean("progress_bar", True, "Show a progress bar over the input.")
_ARRAY_RECORD_DIR = flags.DEFINE_string(
    "array_record_dir", None, "Also build sharded array_record files (TFDS JsonlVideos "
    "builder, videos decoded) under this data_dir.")
_NAME = flags.DEFINE_string("name", None, "TFDS builder config name (default: the output "
                            "file's stem).")
_SPLIT = flags.DEFINE_string("split", "train", "TFDS split name.")
_FRAMES_PER_TURN = flags.DEFINE_integer("frames_per_turn", 2, "Frames decoded per 1 s turn.")
_FRAME_SIZE = flags.DEFINE_integer("frame_size", 0, "Resize frames to this height = width "
                                   "(0: keep, or --max_pixels).")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", 0, "Resize frames to at most this many "
                                   "pixels (0: no limit).")
flags.mark_flags_as_required(["format", "input", "output"])


def make_options() -> importers.Options:
  """importers.Options from the flags."""
  durations = (importers.read_durations_table(_DURATIONS.value) if _DURATIONS.value else None)
  probe = None
  if _PROBE.value:
    from streampro_jax.data import video  # pylint: disable=g-import-not-at-top

    def probe(path: str) -> float | None:   # path: resolved by the importer (video_root)
      if not os.path.isfile(path):  # a missing video is check_videos' error, not the probe's
        return None
      try:
        return video.probe(path).duration
      except Exception as err:  # pylint: disable=broad-except
        logging.warning("probe %s: %s", path, err)
        return None

  return importers.Options(
      durations=durations, probe=probe, video_prefix=_VIDEO_PREFIX.value,
      streamo_interval_end_offset=_INTERVAL_END_OFFSET.value, default_task=_DEFAULT_TASK.value,
      group_by_video=_GROUP_BY_VIDEO.value, offline_ask=_OFFLINE_ASK.value,
      video_root=_VIDEO_ROOT.value, check_videos=_CHECK_VIDEOS.value)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  src, dst = _INPUT.value, _OUTPUT.value
  if not src or not os.path.isfile(src):
    raise app.UsageError(f"--input={src}: no such file")
  try:
    opts = make_options()
    stats = importers.import_to_jsonl(_FORMAT.value, src, dst, opts=opts,
                                      policy=_ON_ERROR.value, show_progress=_PROGRESS.value)
  except (ValueError, OSError) as err:  # schema.DataError is a ValueError
    print(f"error: import of {src} ({_FORMAT.value}) failed: {err}", file=sys.stderr)
    return 1
  print(f"{_FORMAT.value} {src} -> {dst}")
  print(stats.summary())
  guessed = stats.duration_sources.get("annotation_bound", 0)
  if guessed:
    print(f"WARNING: {guessed} records give no duration and none was found (no --durations "
          "entry, video not probed): each ends at its last answer's turn, so a longer video is "
          "cut there (meta.duration_source = 'annotation_bound'). Give --durations, or the "
          "videos under --video_root with --probe.", file=sys.stderr)
  for msg in stats.errors[:20]:
    print(f"  SKIPPED {msg}")
  if len(stats.errors) > 20:
    print(f"  ... {stats.skipped - 20} more skipped records")
  if stats.written == 0:
    print(f"error: no record written ({stats.read} read, {stats.skipped} skipped)",
          file=sys.stderr)
    return 1
  if _ARRAY_RECORD_DIR.value:
    name = _NAME.value or os.path.splitext(os.path.basename(dst))[0]
    size = _FRAME_SIZE.value or None
    try:
      report = importers.export_array_record(
          dst, _ARRAY_RECORD_DIR.value, name=name, split=_SPLIT.value,
          frames_per_turn=_FRAMES_PER_TURN.value, height=size, width=size,
          max_pixels=_MAX_PIXELS.value or None, on_error=_ON_ERROR.value)
    except Exception as err:  # pylint: disable=broad-except
      print(f"error: array_record build of {dst} failed: {err}", file=sys.stderr)
      return 1
    print(f"array_record ({name}, split {_SPLIT.value}) under {_ARRAY_RECORD_DIR.value}: "
          f"{json.dumps(report, default=str)}")
  return 0


if __name__ == "__main__":
  _cli.run(main)
