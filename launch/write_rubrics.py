r"""Writes the trajectory rubrics of an RL annotation file before GRPO (docs/method.md section 3,
App. E).

For every question of every record, the rubric writer (an LLM judge: prompts.RUBRIC_WRITE_*, any
backend of judges.build_judge) gets the question and its timestamped reference answers and
returns 6 to 10 pass/fail rubrics over granularity, coherence and coverage. They are stored with
the record:

  questions[i].rubric            the rubric statements (what the GRPO trainer checks), and
  meta.rubric_items[question id] the full items {"rubric_id", "dimension", "rubric"},
  meta.rubric_writer             {"prompt_version": prompts.PROMPT_VERSION,
                                  "video_frames": frames shown to the writer (0: text only)}.

As in the paper, the writer sees the video: --frames_per_clip frames (default 8) sampled evenly
from each clip (pipeline.clip_frames) go with the question and answers, as JPEG images in
OpenAI-style "image_url" content parts, so the endpoint must serve a model that takes images.
--frames_per_clip=0 is the text-only writer (the answers alone describe the video).

The output is a valid annotation JSONL (schema.py), the input order kept; train GRPO on it
(data.source = "jsonl") or point ``config.reward.rubrics_file`` at it.

Resumable: the output is rewritten atomically after each batch; a rerun keeps every rubric already
in the output and asks only for the questions still without one (the failures of the last run).
Questions that already carry a rubric in the input are kept unless --overwrite. Batched: up to
--batch_size questions per judge call (concurrent requests for the HTTP judge; the judge's cache
de-duplicates). Failures (timeouts, HTTP errors, malformed replies) are counted, listed in
--failures (JSONL: record_id, question_id, line) and leave that question without a rubric. Exit
status 0 when every question has a rubric, 1 when some failed (rerun to retry them).

  .venv/bin/python launch/write_rubrics.py --input=data/rl.jsonl --output=data/rl.rubrics.jsonl \
      --judge='{"kind": "openai", "base_url": "http://localhost:8000/v1", "model": "judge",
                "api_key_env": null}'
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cli  # launch/_cli.py: one-line usage errors (exit 2)

from streampro_jax import judges as judges_lib
from streampro_jax import prompts
from streampro_jax.data import pipeline, schema

logger = logging.getLogger("write_rubrics")

def _atomic_write(path: str, lines: Sequence[str]) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(line + "\n")
  os.replace(tmp, path)


def jpeg_data_url(frame_hwc: np.ndarray, quality: int = 90) -> str:
  """A uint8 [H, W, 3] RGB frame as a "data:image/jpeg;base64,..." URL (OpenAI image_url)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(frame_hwc, np.uint8), "RGB").save(buf, format="JPEG", quality=quality)
  return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def clip_frame_urls(record: schema.Record, num_frames: int, *, base_dir: str | None = None,
                    max_pixels: int = 448 * 448) -> list[tuple[float, str]]:
  """[(time s, JPEG data URL)] of `num_frames` frames sampled evenly from the record's clip."""
  times, frames = pipeline.clip_frames(record, num_frames, base_dir=base_dir,
                                       max_pixels=max_pixels)
  return [(round(float(t), 2), jpeg_data_url(f)) for t, f in zip(times, frames)]


def _has_rubric(q: dict) -> bool:
  return bool(q.get("rubric"))


def write_rubrics(input_path: str, output_path: str, judge, *, batch_size: int = 64,
                  min_checks: int = 6, max_checks: int = 10, overwrite: bool = False,
                  failures_path: str | None = None, frames_per_clip: int = 8,
                  max_pixels: int = 448 * 448,
                  stop_after_failed_batches: int = 2) -> dict[str, Any]:
  """Writes output_path (see the module docstring) and returns a summary dict.

  frames_per_clip: frames of each clip shown to the writer (0: the text-only writer); a clip that
  cannot be read is a failure of its questions (listed with the reason), not of the run.
  stop_after_failed_batches: stop when this many batches in a row wrote nothing (the judge is
  down); 0: never stop early.

  Returns:
    {"records", "questions", "kept" (rubrics already present), "written" (this run), "failed",
     "failures": [{"record_id", "question_id", "line", "reason"}], "stopped" (None, or why the run
     stopped early), "judge": judge.stats.as_dict()}.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if frames_per_clip < 0:
    raise ValueError(f"frames_per_clip must be >= 0, got {frames_per_clip}")
  records, _ = schema.load_jsonl(input_path)
  rows = [r.to_json() for r in records]
  lines = {r.id: r.source_line for r in records}
  if os.path.exists(output_path):  # resume: take every rubric already written
    done, _ = schema.load_jsonl(output_path)
    by_id = {r.id: r.to_json() for r in done}
    for row in rows:
      prev = by_id.get(row["id"])
      if prev is None:
        continue
      prev_q = {q["id"]: q for q in prev["questions"]}
      for q in row["questions"]:
        pq = prev_q.get(q["id"])
        if pq is not None and _has_rubric(pq):
          q["rubric"] = pq["rubric"]
          items = ((prev.get("meta") or {}).get("rubric_items") or {}).get(q["id"])
          if items is not None:
            row.setdefault("meta", {}).setdefault("rubric_items", {})[q["id"]] = items
            row["meta"]["rubric_writer"] = prev["meta"].get("rubric_writer")
          q["_kept"] = True
  todo, kept, n_questions = [], 0, 0
  for i, row in enumerate(rows):
    for j, q in enumerate(row["questions"]):
      n_questions += 1
      if q.pop("_kept", False) or (_has_rubric(q) and not overwrite):
        kept += 1
      else:
        todo.append((i, j))
  failures_path = failures_path or output_path + ".failures.jsonl"
  failures: list[dict[str, Any]] = []
  written = 0
  frame_cache: dict[int, list[tuple[float, str]] | str] = {}  # record index -> frames or error
  failed_in_row, written_before, stopped = 0, 0, None

  def flush():
    for row in rows:  # every output line must parse as a record
      schema.parse_record(row, file=output_path)
    _atomic_write(output_path, [json.dumps(row, ensure_ascii=False) for row in rows])
    _atomic_write(failures_path, [json.dumps(f) for f in failures])

  for start in range(0, len(todo), batch_size):
    batch = todo[start:start + batch_size]
    qs, answers, frames, asked = [], [], [], []
    for i, j in batch:
      rec = records[i]
      q = rec.questions[j]
      if frames_per_clip:
        if i not in frame_cache:  # a record's questions are consecutive: keep one clip's frames
          frame_cache.clear()
          try:
            frame_cache[i] = clip_frame_urls(rec, frames_per_clip, max_pixels=max_pixels)
          except (OSError, ValueError) as e:  # video.VideoError is a ValueError
            frame_cache[i] = str(e)
        if isinstance(frame_cache[i], str):
          failures.append({"record_id": rec.id, "question_id": q.id,
                           "line": lines.get(rec.id, 0), "reason": frame_cache[i]})
          continue
        frames.append(frame_cache[i])
      asked.append((i, j))
      qs.append(q.question)
      answers.append([(a.response_time, a.text) for a in q.sorted_answers()])
    results = judge.write_rubrics(qs, answers, min_checks=min_checks, max_checks=max_checks,
                                  frames=frames if frames_per_clip else None) if asked else []
    for (i, j), items in zip(asked, results, strict=True):
      row, q = rows[i], rows[i]["questions"][j]
      if items is None:  # (with --overwrite, a rubric the input carried is kept)
        failures.append({"record_id": row["id"], "question_id": q["id"],
                         "line": lines.get(row["id"], 0), "reason": "the writer failed"})
        continue
      q["rubric"] = [it["rubric"] for it in items]
      meta = row.setdefault("meta", {})
      meta.setdefault("rubric_items", {})[q["id"]] = items
      meta["rubric_writer"] = {"prompt_version": prompts.PROMPT_VERSION,
                               "video_frames": frames_per_clip}
      written += 1
    flush()
    logger.info("rubrics: %d / %d questions asked, %d written, %d failed",
                min(start + batch_size, len(todo)), len(todo), written, len(failures))
    # A judge that is down fails every request after all its retries: stop after
    # `stop_after_failed_batches` batches in a row with nothing written instead of retrying
    # every remaining question; the rerun asks for them.
    failed_in_row = failed_in_row + 1 if asked and written == written_before else 0
    written_before = written
    if stop_after_failed_batches and failed_in_row >= stop_after_failed_batches:
      stopped = (f"the writer failed every question of the last {failed_in_row} batches; "
                 f"stopped with {len(todo) - start - len(batch)} questions not asked")
      logger.error("rubrics: %s", stopped)
      break
  if not todo:
    flush()
  return {"records": len(rows), "questions": n_questions, "kept": kept, "written": written,
          "failed": len(failures), "failures": failures, "stopped": stopped,
          "judge": judge.stats.as_dict() if hasattr(judge, "stats") else {}}


def main(argv):
  del argv
  for name, flag in (("input", _INPUT), ("output", _OUTPUT), ("judge", _JUDGE)):
    if not flag.value:
      raise app.UsageError(f"--{name} is required")
  if not os.path.isfile(_INPUT.value):
    raise app.UsageError(f"--input={_INPUT.value}: no such file")
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    judge_cfg = json.loads(_JUDGE.value)
  except json.JSONDecodeError as e:
    raise app.UsageError(f"--judge is not a JSON object: {e}") from None
  judge = judges_lib.build_judge(judge_cfg)
  if not hasattr(judge, "write_rubrics"):
    raise app.UsageError(f"judge kind {judge_cfg.get('kind')!r} cannot write rubrics; use "
                         "'openai' or 'local'")
  try:
    summary = write_rubrics(_INPUT.value, _OUTPUT.value, judge, batch_size=_BATCH_SIZE.value,
                            min_checks=_MIN_CHECKS.value, max_checks=_MAX_CHECKS.value,
                            overwrite=_OVERWRITE.value, failures_path=_FAILURES.value,
                            frames_per_clip=_FRAMES.value, max_pixels=_MAX_PIXELS.value)
  finally:
    if hasattr(judge, "close"):
      judge.close()
  print(f"{summary['records']} records, {summary['questions']} questions: "
        f"{summary['kept']} rubrics kept, {summary['written']} written, "
        f"{summary['failed']} failed")
  print(f"judge: {summary['judge']}")
  for f in summary["failures"]:
    print(f"  failed: {_INPUT.value}:{f['line']}: record {f['record_id']!r} question "
          f"{f['question_id']!r}: {f['reason']}")
  if summary["stopped"]:
    print(f"STOPPED: {summary['stopped']}; rerun when the judge answers again.")
    sys.exit(1)
  if summary["failed"]:
    print(f"{summary['failed']} questions have no rubric (listed in "
          f"{_FAILURES.value or _OUTPUT.value + '.failures.jsonl'}); rerun to retry them.")
    sys.exit(1)


def _define_flags() -> None:
  """The command-line flags, defined only when this file runs as a program, so that importing
  `write_rubrics` (tests, other tools) never clashes with another launcher's --judge / --input."""
  global _INPUT, _OUTPUT, _JUDGE, _BATCH_SIZE, _MIN_CHECKS, _MAX_CHECKS, _OVERWRITE, _FAILURES  # pylint: disable=global-statement
  global _FRAMES, _MAX_PIXELS  # pylint: disable=global-statement
  _INPUT = flags.DEFINE_string("input", None, "RL annotation JSONL (schema.py).")
  _OUTPUT = flags.DEFINE_string("output", None, "Output JSONL: the records with their rubrics.")
  _JUDGE = flags.DEFINE_string(
      "judge", None, "Rubric writer: a JSON object for judges.build_judge, e.g. "
      '{"kind": "openai", "base_url": ..., "model": ...} or {"kind": "local", "path": ...}.')
  _BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Questions per judge call.")
  _MIN_CHECKS = flags.DEFINE_integer("min_checks", 6, "Fewest rubrics a reply may hold.")
  _MAX_CHECKS = flags.DEFINE_integer("max_checks", 10, "Most rubrics a reply may hold.")
  _OVERWRITE = flags.DEFINE_boolean("overwrite", False,
                                    "Rewrite rubrics the input already carries.")
  _FRAMES = flags.DEFINE_integer(
      "frames_per_clip", 8, "Frames of each clip shown to the writer as images, as in the paper "
      "(0: the text-only writer; the endpoint must take images otherwise).", lower_bound=0)
  _MAX_PIXELS = flags.DEFINE_integer("max_pixels", 448 * 448,
                                     "Most pixels of a frame sent to the writer.", lower_bound=1)
  _FAILURES = flags.DEFINE_string("failures", None,
                                  "Failure list (default: <output>.failures.jsonl).")


if __name__ == "__main__":
  _define_flags()
  _cli.run(main)
