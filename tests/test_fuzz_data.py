"""Fuzz: any bytes through every importer and launch/check_data.py give the project's own error
(schema.DataError naming file, line and field) or a counted skip: never another exception, never
a record dropped without a count (issue 16, "Build": a hypothesis fuzz test)."""

import importlib.util
import json
import os
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streampro_jax.data import importers as im
from streampro_jax.data import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEEDS = {
    "streamo_raw": json.dumps([{"video_path": "v.mp4", "task_type": "QA", "question": [
        {"content": "What?", "time": "2"}], "response": [{"content": "a", "st_time": 3,
                                                         "end_time": 5}]}], indent=1),
    "streamo_stream": json.dumps([{"videos": ["v.mp4"], "messages": [
        {"role": "user", "content": "<0s-1s>\n<stream>What?"},
        {"role": "assistant", "content": "</Silence>"},
        {"role": "user", "content": "<1s-2s>\n<stream>"},
        {"role": "assistant", "content": "</Response> a cup"}]}]),
    "timechat_online": json.dumps({"videos": [["f0.jpg", "f1.jpg"]], "messages": [
        {"role": "user", "content": "<video>What?"}, {"role": "assistant", "content": "a"}]}),
    "videochat_flash": json.dumps([{"video": "v.mp4", "start": 0, "end": 6, "conversations": [
        {"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "a"}]}]),
    "simple": "video,time,question,answer,duration\nv.mp4,3,What?,a,8\nv.mp4,5,What?,b,8\n",
    "simple.jsonl": json.dumps({"video": "v.mp4", "time": 3, "question": "q", "answer": "a"}),
}
CHECK_SEED = json.dumps({"id": "r", "video": "synth://x", "duration": 4, "questions": [
    {"id": "q", "task": "EU", "ask_time": 0, "question": "What?",
     "answers": [{"time": 2, "text": "a"}]}]}) + "\n"


def _mutated(seed: str):
  """A seed with a few bytes replaced, inserted or deleted (or plain random bytes)."""
  base = seed.encode()
  edit = st.tuples(st.integers(0, max(len(base) - 1, 0)), st.sampled_from(["set", "ins", "del"]),
                   st.binary(min_size=1, max_size=3))

  def apply(edits):
    b = bytearray(base)
    for i, kind, val in edits:
      i = min(i, len(b))
      if kind == "set":
        b[i:i + len(val)] = val
      elif kind == "ins":
        b[i:i] = val
      else:
        del b[i:i + len(val)]
    return bytes(b)

  return st.one_of(st.lists(edit, min_size=1, max_size=4).map(apply), st.binary(max_size=200))


FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _import_once(fmt, suffix, data, check_videos):
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "in" + suffix)
    with open(path, "wb") as f:
      f.write(data)
    opts = im.Options(check_videos=check_videos)
    try:
      list(im._iter_import(fmt, path, opts=opts))
    except schema.DataError as e:
      assert e.file == path and e.line >= 0 and e.field, e
    stats = im.ImportStats()
    try:
      recs = list(im._iter_import(fmt, path, opts=opts, policy="skip", stats=stats))
    except schema.DataError as e:   # a broken JSON array cannot be resynchronised
      assert e.file == path and e.field, e
      return
    assert stats.read == stats.converted + stats.skipped, stats
    assert len(stats.errors) == stats.skipped
    assert stats.written == len(recs) <= stats.converted
    for msg in stats.errors:
      assert msg.startswith(f"{path}:"), msg


@pytest.mark.parametrize("fmt,suffix", [
    ("streamo_raw", ".json"), ("streamo_stream", ".json"), ("timechat_online", ".json"),
    ("videochat_flash", ".json"), ("simple", ".csv"), ("simple", ".jsonl")])
def test_importers_on_any_bytes(fmt, suffix):
  seed = SEEDS["simple.jsonl" if (fmt, suffix) == ("simple", ".jsonl") else fmt]

  @FUZZ
  @given(data=_mutated(seed), check_videos=st.booleans())
  def run(data, check_videos):
    _import_once(fmt, suffix, data, check_videos)

  run()


def _check_data():
  spec = importlib.util.spec_from_file_location("check_data_fuzz",
                                                os.path.join(ROOT, "launch", "check_data.py"))
  mod = importlib.util.module_from_spec(spec)
  sys.modules.setdefault("check_data_fuzz", mod)
  spec.loader.exec_module(mod)
  return mod


def test_check_data_on_any_bytes():
  cd = sys.modules.get("check_data_fuzz") or _check_data()

  @FUZZ
  @given(data=_mutated(CHECK_SEED * 2))
  def run(data):
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "a.jsonl")
      with open(path, "wb") as f:
        f.write(data)
      rep = cd.check_file(path, checker=None)
      assert rep.lines == rep.good + len(rep.problems)
      for p in rep.problems:
        assert p.file == path and p.line >= 1 and p.field and p.reason

  run()
