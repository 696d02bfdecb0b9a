"""Tests of streampro_jax.data.schema (annotation records)."""

import copy
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streampro_jax.data import schema
from streampro_jax.data.schema import DataError


def _valid():
  return {
      "id": "v0", "video": "clips/v0.mp4", "duration": 12.5,
      "questions": [
          {"id": "q0", "task": "TG", "ask_time": 2.0, "question": "When does it end?",
           "answers": [{"time": 7.0, "text": "3s-7s"}], "rubric": ["Responds once."]},
          {"id": "q1", "task": "EU", "ask_time": 0, "question": "Describe the steps.",
           "answers": [{"start": 1.0, "end": 4.5, "text": "a"},
                       {"start": 5, "end": 12.5, "text": "b"}]},
      ],
      "meta": {"source": "test", "n": [1, 2]},
  }


def test_parse_valid_record_fields():
  r = schema.parse_record(_valid())
  assert r.id == "v0" and r.duration == 12.5 and len(r.questions) == 2
  q0, q1 = r.questions
  assert q0.task == "TG" and q0.rubric == ("Responds once.",)
  assert q0.answers[0].response_time == 7.0 and not q0.answers[0].is_interval
  assert q1.rubric is None and q1.ask_time == 0.0 and isinstance(q1.ask_time, float)
  assert q1.answers[0].is_interval and q1.answers[0].response_time == 4.5   # end [choice]
  assert q1.answers[1].start == 5.0
  assert r.meta == {"source": "test", "n": [1, 2]}
  assert r.question("q1") is q1
  with pytest.raises(KeyError):
    r.question("nope")


def test_to_json_round_trip():
  r = schema.parse_record(_valid())
  out = r.to_json()
  assert out == _valid()        # ints compare equal to floats
  assert schema.from_json(json.loads(json.dumps(out))) == r
  assert "rubric" not in out["questions"][1]


def _mutate(path, value):
  obj = _valid()
  cur = obj
  for key in path[:-1]:
    cur = cur[key]
  if value is _DELETE:
    del cur[path[-1]]
  else:
    cur[path[-1]] = value
  return obj


_DELETE = object()

_BAD = [
    (("duration",), -1.0, "duration", "must be > 0"),
    (("duration",), 0, "duration", "must be > 0"),
    (("duration",), True, "duration", "expected a number"),
    (("duration",), "12", "duration", "expected a number"),
    (("duration",), float("nan"), "duration", "finite"),
    (("id",), _DELETE, "id", "missing required field"),
    (("id",), 3, "id", "expected a string"),
    (("video",), "", "video", "non-empty"),
    (("questions",), [], "questions", "at least one"),
    (("questions",), {}, "questions", "expected a list"),
    (("meta",), [], "meta", "expected an object"),
    (("extra",), 1, "extra", "unknown field"),
    (("questions", 0, "task"), "XX", "questions[0].task", "unknown task 'XX'"),
    (("questions", 0, "ask_time"), -0.5, "questions[0].ask_time", "negative time -0.5"),
    (("questions", 0, "ask_time"), 13.0, "questions[0].ask_time", "past the video duration 12.5"),
    (("questions", 0, "question"), None, "questions[0].question", "expected a string, got null"),
    (("questions", 0, "answers"), [], "questions[0].answers", "at least one"),
    (("questions", 0, "answers", 0, "time"), 1.5, "questions[0].answers[0].time",
     "answer time 1.5 is before the question's ask_time 2.0"),
    (("questions", 0, "answers", 0, "time"), 20, "questions[0].answers[0].time",
     "time 20.0 is past the video duration 12.5"),
    (("questions", 0, "answers", 0, "time"), _DELETE, "questions[0].answers[0].time",
     "missing required field"),
    (("questions", 0, "answers", 0, "text"), _DELETE, "questions[0].answers[0].text",
     "missing required field"),
    (("questions", 0, "answers", 0, "start"), 1.0, "questions[0].answers[0]", "both"),
    (("questions", 0, "answers", 0), "7.0", "questions[0].answers[0]", "expected an object"),
    (("questions", 0, "rubric"), "x", "questions[0].rubric", "expected a list"),
    (("questions", 0, "rubric"), ["ok", 3], "questions[0].rubric[1]", "expected a string"),
    (("questions", 1, "answers", 0, "end"), 0.5, "questions[1].answers[0].end",
     "interval end 0.5 is before its start 1.0"),
    (("questions", 1, "answers", 0, "end"), _DELETE, "questions[1].answers[0].end",
     "missing required field"),
    (("questions", 1, "answers", 0, "start"), -1, "questions[1].answers[0].start",
     "negative time"),
    (("questions", 1, "id"), "q0", "questions[1].id", "duplicate question id 'q0'"),
]


@pytest.mark.parametrize("path,value,field,reason", _BAD)
def test_errors_name_field_and_reason(path, value, field, reason):
  with pytest.raises(DataError) as info:
    schema.parse_record(_mutate(path, value), file="a.jsonl", line=7)
  e = info.value
  assert isinstance(e, ValueError)
  assert (e.file, e.line, e.field) == ("a.jsonl", 7, field)
  assert reason in e.reason
  assert str(e) == f"a.jsonl:7: {field}: {e.reason}"


def test_answer_at_ask_time_and_at_duration_are_valid():
  obj = _mutate(("questions", 0, "answers", 0, "time"), 2.0)
  assert schema.parse_record(obj).questions[0].answers[0].time == 2.0
  obj = _mutate(("questions", 0, "answers", 0, "time"), 12.5)
  assert schema.parse_record(obj).questions[0].answers[0].time == 12.5


def test_check_video_exists(tmp_path):
  (tmp_path / "clips").mkdir()
  path = tmp_path / "ann.jsonl"
  good, missing, synth = _valid(), _valid(), _valid()
  missing["id"], missing["video"] = "v1", "clips/none.mp4"
  synth["id"], synth["video"] = "v2", "synth://train/3"
  (tmp_path / "clips" / "v0.mp4").write_bytes(b"x")
  path.write_text("\n".join(json.dumps(o) for o in (good, missing, synth)) + "\n")
  records, report = schema.load_jsonl(str(path))            # not checked by default
  assert len(records) == 3 and report.num_skipped == 0
  assert records[0].video_path() == str(tmp_path / "clips" / "v0.mp4")
  assert records[2].video_path() == "synth://train/3"
  records, report = schema.load_jsonl(str(path), on_error="skip", check_video_exists=True)
  assert [r.id for r in records] == ["v0", "v2"]
  (err,) = report.errors
  assert (err.line, err.field) == (2, "video") and "not found" in err.reason
  with pytest.raises(DataError, match=r":2: video: video file not found"):
    schema.load_jsonl(str(path), check_video_exists=True)


def test_load_skip_and_fail_policies(tmp_path):
  path = tmp_path / "mixed.jsonl"
  lines = [json.dumps(_valid()),
           "",                                                   # blank: ignored
           "{not json",
           json.dumps(_mutate(("questions", 0, "task"), "ZZ")),
           json.dumps(dict(_valid(), id="v9")),
           json.dumps(_valid())]                                 # duplicate id v0
  path.write_text("\n".join(lines) + "\n")
  records, report = schema.load_jsonl(str(path), on_error="skip")
  assert [r.id for r in records] == ["v0", "v9"]
  assert (report.num_lines, report.num_records, report.num_skipped) == (5, 2, 3)
  assert [(e.line, e.field) for e in report.errors] == [(3, "<json>"), (4, "questions[0].task"),
                                                        (6, "id")]
  assert "duplicate record id 'v0' (first on line 1)" in report.errors[2].reason
  summary = report.summary()
  assert "2 records loaded, 3 skipped of 5 lines" in summary
  assert f"{path}:4: questions[0].task: unknown task 'ZZ'" in summary
  assert records[1].source_line == 5 and records[1].source_file == str(path)
  with pytest.raises(DataError) as info:
    schema.load_jsonl(str(path))
  assert info.value.line == 3
  with pytest.raises(ValueError, match="on_error"):
    schema.load_jsonl(str(path), on_error="ignore")


def test_iter_jsonl_is_lazy(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_text(json.dumps(_valid()) + "\nbroken\n")
  it = schema.iter_jsonl(str(path))
  assert next(it).id == "v0"          # the bad line 2 is not read yet
  with pytest.raises(DataError):
    next(it)


def test_write_jsonl_round_trip(tmp_path):
  recs = [schema.parse_record(_valid()), schema.parse_record(dict(_valid(), id="w"))]
  path = os.path.join(tmp_path, "out.jsonl")
  schema._write_jsonl(recs, path)
  back, report = schema.load_jsonl(path)
  assert back == recs and report.num_records == 2


# ------------------------------------------------------------------------------------------------
# Property-based: arbitrary input parses or raises DataError, never anything else.

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
_json = st.recursive(_json_leaf, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)), max_leaves=20)

_KEYS = ["id", "video", "duration", "questions", "meta", "task", "ask_time", "question", "answers",
         "rubric", "time", "start", "end", "text"]


@st.composite
def _mutated_record(draw):
  """A valid record with a few random fields replaced, deleted or added at random depths."""
  obj = copy.deepcopy(_valid())
  containers = [obj] + obj["questions"] + [a for q in obj["questions"] for a in q["answers"]]
  for _ in range(draw(st.integers(1, 3))):
    target = draw(st.sampled_from(containers))
    key = draw(st.sampled_from(_KEYS))
    action = draw(st.sampled_from(["set", "delete", "time"]))
    if action == "delete":
      target.pop(key, None)
    elif action == "time":
      target[key] = draw(st.floats(-5, 20) | st.integers(-5, 20))
    else:
      target[key] = draw(_json)
  return obj


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_property_arbitrary_json_parses_or_dataerror(obj):
  try:
    r = schema.parse_record(obj)
  except DataError as e:
    assert str(e).startswith("<memory>:0: ")
    return
  assert schema.parse_record(r.to_json()) == r


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_record())
def test_property_mutated_records_parse_or_dataerror(obj):
  try:
    r = schema.parse_record(obj)
  except DataError:
    return
  # Anything accepted satisfies the invariants and round-trips.
  for q in r.questions:
    assert 0 <= q.ask_time <= r.duration + schema._TIME_TOLERANCE
    assert q.task in schema.TASKS
    for a in q.answers:
      assert q.ask_time <= a.response_time <= r.duration + schema._TIME_TOLERANCE
      if a.is_interval:
        assert 0 <= a.start <= a.end
  assert schema.parse_record(json.loads(r.to_jsonl_line())) == r


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_property_arbitrary_lines_parse_or_dataerror(text):
  try:
    schema.parse_line(text, file="f.jsonl", line=3)
  except DataError as e:
    assert (e.file, e.line) == ("f.jsonl", 3)
