"""launch/check_data.py on a file with planted faults (each reported) and on a clean file."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from streampro_jax.data import video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "check_data.py")


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        env=env, timeout=120, check=False)


def _record(rid, video_name, duration=3.0, task="EU", ask=0.0, answers=None):
  return {"id": rid, "video": video_name, "duration": duration,
          "questions": [{"id": f"{rid}/q0", "task": task, "ask_time": ask,
                         "question": "What happens?",
                         "answers": answers or [{"time": 2.0, "text": "A ball rolls."}]}]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("check")
  frames = np.zeros((24, 32, 32, 3), np.uint8)  # 3 s at 8 fps
  frames[:, :, :16] = 200
  video._encode_video(str(d / "good.mp4"), frames, fps=8.0)
  (d / "broken.mp4").write_text("this is not a video\n" * 10)
  return d


def _write_jsonl(path, lines):
  path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n"
                          for ln in lines), encoding="utf-8")


def test_clean_file_reports_nothing(data_dir):
  path = data_dir / "clean.jsonl"
  _write_jsonl(path, [
      _record("a", "good.mp4"),
      _record("b", "good.mp4", ask=1.0, answers=[{"start": 1.0, "end": 3.0, "text": "X."},
                                                 {"time": 1.5, "text": "Y."}]),
  ])
  res = _run(f"--input={path}")
  assert res.returncode == 0, res.stdout + res.stderr
  assert "ERROR" not in res.stdout and "RESULT: no problems" in res.stdout
  # Two trajectories of 3 turns: a answers on turn ceil(2) - 1 = 1; b (asked on turn 1) answers
  # on turns 2 (end 3) and 1 (1.5) -> 3 response and 3 silence turns.
  assert "turns: 6 (3 silence, 3 response); silence:response = 1.00:1" in res.stdout
  assert "questions per task: EU 2" in res.stdout
  assert "2 record checks, 0 missing, 0 unreadable" in res.stdout


def test_planted_faults_are_each_reported_and_fix_writes_copies(data_dir):
  path = data_dir / "faulty.jsonl"
  lines = [
      _record("ok1", "good.mp4"),                                   # 1 good
      "{\"id\": \"broken json\"",                                   # 2 malformed JSON
      _record("t", "good.mp4", task="XX"),                          # 3 unknown task
      _record("late", "good.mp4", answers=[{"time": 3.5, "text": "Z."}]),  # 4 past duration
      _record("ok1", "good.mp4"),                                   # 5 duplicate id
      _record("m", "missing.mp4"),                                  # 6 missing video
      _record("u", "broken.mp4"),                                   # 7 unreadable video
      _record("long", "good.mp4", duration=9.0),                    # 8 longer than video
      _record("early", "good.mp4", ask=2.5, answers=[{"time": 1.0, "text": "W."}]),  # 9
      "",                                                           # blank: ignored
      _record("ok2", "good.mp4", duration=3.5),                     # 11 good (within 1 s)
  ]
  _write_jsonl(path, lines)
  before = hashlib.sha256(path.read_bytes()).hexdigest()
  res = _run(f"--input={path}", "--fix")
  out = res.stdout
  assert res.returncode == 1, out + res.stderr
  expected = [
      (2, "<json>", "invalid JSON"),
      (3, "questions[0].task", "unknown task 'XX'"),
      (4, "questions[0].answers[0].time", "past the video duration"),
      (5, "id", "duplicate record id 'ok1' (first on line 1)"),
      (6, "video", "video not found"),
      (7, "video", "unreadable video"),
      (8, "duration", "longer than the video"),
      (9, "questions[0].answers[0].time", "before the question's ask_time"),
  ]
  for line, field, reason in expected:
    hits = [ln for ln in out.splitlines() if ln.startswith(f"ERROR {path}:{line}: {field}: ")]
    assert len(hits) == 1 and reason in hits[0], (line, field, out)
  assert out.count("ERROR ") == len(expected)
  assert "10 records, 2 good, 8 bad" in out
  assert "1 missing, 1 unreadable" in out
  assert "RESULT: problems found" in out
  # --fix: input untouched, cleaned copy holds the good lines verbatim, rejects the bad ones.
  assert hashlib.sha256(path.read_bytes()).hexdigest() == before
  clean = (data_dir / "faulty.clean.jsonl").read_text().splitlines()
  assert [json.loads(c)["id"] for c in clean] == ["ok1", "ok2"]
  rejects = [json.loads(r) for r in (data_dir / "faulty.rejects.jsonl").read_text().splitlines()]
  assert [(r["line"], r["field"]) for r in rejects] == [(ln, f) for ln, f, _ in expected]
  assert rejects[1]["text"] == json.dumps(lines[2])
  # The cleaned copy passes.
  res2 = _run(f"--input={data_dir / 'faulty.clean.jsonl'}")
  assert res2.returncode == 0 and "RESULT: no problems" in res2.stdout


def test_without_video_checks_and_refuses_to_overwrite_input(data_dir):
  path = data_dir / "novideo.jsonl"
  _write_jsonl(path, [_record("m", "missing.mp4")])
  res = _run(f"--input={path}", "--nocheck_videos")
  assert res.returncode == 0 and "RESULT: no problems" in res.stdout
  res = _run(f"--input={path}", "--fix", f"--fixed_output={path}")
  assert res.returncode != 0 and "refusing to touch the input" in (res.stdout + res.stderr)


def test_an_empty_file_is_a_problem(data_dir):
  """Issue 28: an empty file (import_data refuses it) said "no problems" with exit 0."""
  path = data_dir / "empty.jsonl"
  path.write_text("\n\n")
  res = _run(f"--input={path}", "--nocheck_videos")
  assert res.returncode == 1 and "holds no records" in res.stdout
  assert "RESULT: problems found" in res.stdout
