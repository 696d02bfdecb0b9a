"""Peer annotation loaders on small files written here in each benchmark's published format."""

import json

import pytest

from streampro_jax.data import peer_loaders, schema

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Values here are host-side float64 arithmetic (Python floats) of a few dozen operations on
# values of order one, compared with hand-computed references: tol.approx64, rel and abs
# gamma_64 in float64 (7e-15) (tests/helpers/tolerances.py).

STREAMINGBENCH = [
    {"time": "[0:00:00 - 0:01:00]",
     "questions": [{"task_type": "Object Perception", "question": "What is on the table now?",
                    "time_stamp": "00:00:50", "answer": "B",
                    "options": ["A. A cup.", "B. Four rows of cards.", "C. Nothing.", "D. A pen."],
                    "required_ability": "working memory"}],
     "video_categories": "online_tutorials", "video_path": "./videos/sample_2.mp4"},
    {"time": "[0:01:00 - 0:02:00]",
     "questions": [{"task_type": "Counting", "question": "How many cards?",
                    "time_stamp": "00:01:52", "answer": "C",
                    "options": ["A. 1", "B. 2", "C. 3", "D. 4"]}],
     "video_categories": "online_tutorials", "video_path": "./videos/sample_2.mp4"},
    {"time": "[0:00:00 - 0:00:30]",
     "questions": [{"task_type": "Proactive Output",
                    "question": "When the scoreboard shows 3 points for USA, output \"3\".",
                    "time_stamp": "00:00:20", "ground_truth_time_stamp": "00:00:29",
                    "ground_truth_output": "3", "required_ability": "working memory"}],
     "video_categories": "basketball", "video_path": "./videos/sample_17_proactive.mp4"},
]

OVO = [
    {"id": 0, "task": "EPM", "video": "Ego4D/clips/ec4a.mp4", "realtime": 215,
     "question": "Who did I talk to when chopping egg plants?", "answer": "a person in blue",
     "options": ["a person in brown", "a person in green", "a person in blue"], "gt": 2},
    {"id": 7, "task": "OCR", "video": "Ego4D/clips/ec4a.mp4", "realtime": 30.5,
     "question": "What does the sign say?", "options": ["STOP", "GO"], "gt": 0},
    {"id": 1200, "task": "REC", "video": "perception_test/v1.mp4", "activity": "jump",
     "start_times": [1.0, 5.0], "end_times": [3.0, 7.0],
     "test_info": [{"realtime": 7.0, "count": 2}, {"realtime": 3.0, "count": 1}]},
    {"id": 1516, "task": "SSR", "video": "COIN/xZe.mp4", "tutorial": "PutOnHairExtensions",
     "all_steps": ["pull up the hair", "put on the extensions"], "start_time": [25, 31],
     "end_time": [30, 49],
     "test_info": [{"realtime": 27, "step": "pull up the hair", "type": 1},
                   {"realtime": 30, "step": "pull up the hair", "type": 1},
                   {"realtime": 26, "step": "put on the extensions", "type": 0}]},
    {"id": 1800, "task": "CRR", "video": "COIN/xZe.mp4", "question": "What colour is the comb?",
     "answer": "black", "test_info": [{"realtime": 10, "type": 0}, {"realtime": 40, "type": 1}]},
]

PROACTIVE = [
    {"video": "Explosion016_x264.mp4", "question_id": "Explosion016_x264.mp4",
     "conversation": [{"role": "user", "time": 0,
                       "content": "What suspicious or harmful activities are happening?"}],
     "answer": [{"role": "assistant", "content": "An explosion occurred in the building.",
                 "related_timespan": [6.0, 15.0], "reply_timespan": [6.0, 16.0],
                 "num_captions": 1}],
     "duration": 32.1},
    {"video": "Shooting034_x264.mp4", "question_id": "Shooting034_x264.mp4",
     "conversation": [{"role": "user", "time": 0, "content": "What is happening?"},
                      {"role": "user", "content": "Subtitle: hello", "time": 3.5}],
     "answer": [{"role": "assistant", "content": "A man raised his pistol.",
                 "related_timespan": [32.0, 35.0], "reply_timespan": [32.0, 47.5]}],
     "duration": 46.96666666666667},
]


def _write(path, obj):
  path.write_text(json.dumps(obj, indent=2))
  return str(path)


def test_hms():
  assert peer_loaders._hms_to_seconds("00:01:52") == 112
  assert peer_loaders._hms_to_seconds("1:00:00") == 3600
  assert peer_loaders._hms_to_seconds("07:30") == 450
  with pytest.raises(ValueError):
    peer_loaders._hms_to_seconds("1::2")


def test_streamingbench(tmp_path):
  path = _write(tmp_path / "questions_real.json", STREAMINGBENCH)
  records, report = peer_loaders.load_streamingbench(path, durations={"sample_2.mp4": 130.0})
  assert report.num_records == 2 and report.num_skipped == 0
  r0, r1 = records
  assert r0.video == "./videos/sample_2.mp4" and r0.duration == 130.0
  assert r0.meta["duration_source"] == "durations"
  assert [q.id for q in r0.questions] == ["e0q0", "e1q0"]
  q = r0.questions[1]
  assert q.ask_time == 112.0 and q.task == "OU"
  assert q.question == "How many cards?\nA. 1\nB. 2\nC. 3\nD. 4"
  assert q.answers[0].time == 112.0 and q.answers[0].text == "C"
  assert r0.meta["task_types"]["e1q0"] == "Counting"
  assert r0.meta["items"]["e0q0"]["required_ability"] == "working memory"
  assert r0.meta["items"]["e0q0"]["options"][1] == "B. Four rows of cards."
  # Proactive output: asked at 20 s, answered "3" at 29 s; no duration known -> 29 + 1.
  p = r1.questions[0]
  assert (p.ask_time, p.answers[0].time, p.answers[0].text) == (20.0, 29.0, "3")
  assert r1.duration == 30.0 and r1.meta["duration_source"] == "latest annotated time + tail"
  assert r1.video_path().endswith("videos/sample_17_proactive.mp4")
  # Records round-trip through the schema.
  for r in records:
    assert schema.from_json(json.loads(r.to_jsonl_line())) == r


def test_ovo_bench(tmp_path):
  path = _write(tmp_path / "ovo_bench_new.json", OVO)
  records, report = peer_loaders.load_ovo_bench(path, video_dir="/data/ovo")
  assert report.num_records == 3
  ego, rec, coin = records
  assert ego.video == "/data/ovo/Ego4D/clips/ec4a.mp4"
  epm, ocr = ego.questions
  assert epm.id == "0" and epm.ask_time == 215 and epm.answers[0].text == "C"
  assert epm.question.endswith("A. a person in brown\nB. a person in green\nC. a person in blue")
  assert ocr.answers[0].time == 30.5 and ocr.answers[0].text == "A" and ocr.task == "OU"
  assert ego.meta["items"]["0"]["category"] == "backward"
  assert ego.meta["task_types"] == {"0": "EPM", "7": "OCR"}
  (q,) = rec.questions
  assert q.question == "How many times did they jump?"
  assert [(a.time, a.text) for a in q.answers] == [(3.0, "1"), (7.0, "2")]
  ssr0, ssr1, crr = coin.questions
  assert ssr0.id == "1516/0" and ssr0.task == "GP"
  assert [(a.time, a.text) for a in ssr0.answers] == [(27.0, "Yes"), (30.0, "Yes")]
  assert [(a.time, a.text) for a in ssr1.answers] == [(26.0, "No")]
  assert [(a.time, a.text) for a in crr.answers] == [(10.0, "No"), (40.0, "Yes")]
  assert coin.duration == 41.0
  assert coin.meta["items"]["1800"]["answer"] == "black"


def test_ovo_bad_items_fail_or_skip(tmp_path):
  bad = OVO + [{"id": 9, "task": "EPM", "video": "x.mp4", "realtime": 3, "question": "q?",
                "options": ["a", "b"], "gt": 5},
               {"id": 10, "task": "XYZ", "video": "x.mp4"}]
  path = _write(tmp_path / "ovo.json", bad)
  with pytest.raises(schema.DataError, match=r"ovo.json:6: gt: option index 5 is not in \[0, 2\)"):
    peer_loaders.load_ovo_bench(path)
  records, report = peer_loaders.load_ovo_bench(path, on_error="skip")
  assert len(records) == 3 and report.num_skipped == 2
  assert report.errors[1].line == 7 and report.errors[1].field == "task"


def test_proactivevideoqa(tmp_path):
  (tmp_path / "VAD").mkdir()
  path = _write(tmp_path / "VAD" / "anno.json", PROACTIVE)
  records, report = peer_loaders.load_proactivevideoqa(path)
  assert report.num_records == 2
  r0, r1 = records
  assert r0.duration == 32.1 and r0.meta["subset"] == "VAD"
  (q,) = r0.questions
  assert q.task == "AA" and q.ask_time == 0
  (a,) = q.answers
  assert (a.start, a.end, a.response_time) == (6.0, 16.0, 16.0)
  assert r0.meta["items"]["Explosion016_x264.mp4"]["answer"][0]["related_timespan"] == [6.0, 15.0]
  # The reply span 47.5 past the 46.97 s video is clipped and counted.
  (a1,) = r1.questions[0].answers
  assert a1.end == tol.approx64(46.96666666666667)
  assert r1.meta["items"]["Shooting034_x264.mp4"]["clipped_spans"] == 1
  assert r1.meta["items"]["Shooting034_x264.mp4"]["conversation"][1]["content"] == "Subtitle: hello"
  records_tv, _ = peer_loaders.load_proactivevideoqa(path, subset="TV")
  assert records_tv[0].questions[0].task == "EU"


def test_proactivevideoqa_missing_field(tmp_path):
  bad = [dict(PROACTIVE[0]), dict(PROACTIVE[1])]
  del bad[1]["conversation"]
  path = _write(tmp_path / "anno.json", bad)
  with pytest.raises(schema.DataError, match="anno.json:2: conversation: missing required field"):
    peer_loaders.load_proactivevideoqa(path, subset="WEB")
  records, report = peer_loaders.load_proactivevideoqa(path, subset="WEB", on_error="skip")
  assert len(records) == 1 and report.num_skipped == 1


def test_probe_duration_from_video_file(tmp_path):
  import numpy as np

  from streampro_jax.data import video
  (tmp_path / "videos").mkdir()
  video._encode_video(str(tmp_path / "videos" / "sample_2.mp4"),
                     np.zeros((int(2.5 * 8), 32, 32, 3), np.uint8), fps=8)
  entry = {"time": "[0:00:00 - 0:01:00]", "video_path": "./videos/sample_2.mp4",
           "questions": [{"task_type": "Counting", "question": "How many?",
                          "time_stamp": "00:00:01", "answer": "A", "options": ["A. 1", "B. 2"]}]}
  path = _write(tmp_path / "q.json", [entry])
  (r,), _ = peer_loaders.load_streamingbench(path)
  assert r.duration == tol.approx64(2.5) and r.meta["duration_source"] == "probe"
