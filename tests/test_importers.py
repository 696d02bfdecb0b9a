"""Tests of streampro_jax.data.importers on records transcribed from the public repositories.

Each sample below is a hand transcription (structure and values as published; long runs of
identical silence turns written as a loop) of a real record; the comment above it names the
repository and path it mirrors. Expected turns are worked out by hand in the comments.
"""

import json
import os
import tracemalloc

import pytest

from streampro_jax.data import chat_format
from streampro_jax.data import importers as im
from streampro_jax.data import schema

# --- maifoundations/Streamo: dataset/example/raw_data.json (both entries, verbatim). ---------
STREAMO_RAW = [
    {
        "video_name": "ytb_ls8tmkfD7S0.mp4",
        "video_path": "LLaVA_Video/1_2_m_youtube_v0_1/liwei_youtube_videos/videos/"
                      "youtube_video_2024/ytb_ls8tmkfD7S0.mp4",
        "task_type": "QA",
        "source": "LLaVA_Video",
        "question": [{"content": "What event is the person with long blonde hair being "
                                 "interviewed at in front of a poster for 'The Beguiled'?",
                      "time": "5"}],
        "response": [{"content": "The person is being interviewed at a red carpet event in "
                                 "front of a poster for 'The Beguiled.'",
                      "st_time": 5.0, "end_time": 6.0, "time": ""}],
    },
    {
        "video_name": "ytb_ls8tmkfD7S0.mp4",
        "video_path": "LLaVA_Video/1_2_m_youtube_v0_1/liwei_youtube_videos/videos/"
                      "youtube_video_2024/ytb_ls8tmkfD7S0.mp4",
        "task_type": "QA",
        "source": "LLaVA_Video",
        "question": [{"content": "What is the interviewer holding during the first red carpet "
                                 "event?", "time": "3"}],
        "response": [{"content": "A microphone with the 'ET' logo.",
                      "st_time": 5.0, "end_time": 6.0, "time": ""}],
    },
]
Q1 = STREAMO_RAW[0]["question"][0]["content"]
A1 = STREAMO_RAW[0]["response"][0]["content"]
Q2 = STREAMO_RAW[1]["question"][0]["content"]
A2 = STREAMO_RAW[1]["response"][0]["content"]

# The samples name videos that are not on this machine: conversion tests leave them unchecked
# (test_missing_videos_* check them).
NOVID = im.Options(check_videos=False)


# --- maifoundations/Streamo: dataset/example/stream_format.json (the first sample: the raw entry
# above after scripts/convert_streaming_video.py; 76 turns; turns 7..75 are all
# "<ks-(k+1)s>\n<stream>" / "</Silence>" in the file, written here as a loop). -----------------
def streamo_stream_sample():
  msgs = [{"role": "system", "content": "\nYou are a helpful assistant specializing in "
           "streaming video analysis. \n..."}]  # system prompt abbreviated
  turns = [
      (Q1 + "\n<0s-1s>\n<stream>", "</Silence>"),
      ("<1s-2s>\n<stream>", "</Silence>"),
      ("<2s-3s>\n<stream>", "</Silence>"),
      ("<3s-4s>\n<stream>", "</Silence>"),
      (Q1 + "\n<4s-5s>\n<stream>", "</Standby>"),
      ("<5s-6s>\n<stream>", "</Standby>"),
      ("<6s-7s>\n<stream>", "</Response> " + A1),
  ] + [(f"<{k}s-{k + 1}s>\n<stream>", "</Silence>") for k in range(7, 76)]
  for u, a in turns:
    msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
  return {"messages": msgs, "videos": [STREAMO_RAW[0]["video_path"]],
          "video_name": "ytb_ls8tmkfD7S0.mp4", "task_type": "QA", "source": "LLaVA_Video"}


# --- maifoundations/Streamo: examples/streaming_video_example.json (verbatim apart from the
# system prompt; no <Xs-Ys> tags, the question glued to <stream>). ----------------------------
STREAMO_EXAMPLE = {
    "messages": [{"role": "system", "content": "You are a helpful assistant specializing in "
                  "streaming video analysis. ..."}]
    + [{"role": "user", "content": "Find all significant events in the video and describe "
        "them.<stream>"}, {"role": "assistant", "content": "</Standby>"}]
    + [m for _ in range(5) for m in ({"role": "user", "content": "<stream>"},
                                      {"role": "assistant", "content": "</Standby>"})]
    + [{"role": "user", "content": "<stream>"},
       {"role": "assistant", "content": "</Response> A man with a beard, wearing a white "
        "t-shirt and black shorts, stands in a room holding a white cup and a fork. He greets "
        "the camera, introducing himself as Mr. Jenkins"},
       {"role": "user", "content": "<stream>"}, {"role": "assistant", "content": "</Standby>"},
       {"role": "user", "content": "<stream>"}, {"role": "assistant", "content": "</Standby>"},
       {"role": "user", "content": "<stream>"},
       {"role": "assistant", "content": "</Response> He then walks over to a staircase"}],
    "videos": ["/path/to/video.mp4"],
}

# --- TimeChat-Online-139K (yaolily/TimeChat-Online-139K time_chat_online_139k_train_flt.jsonl),
# the sample record quoted in yaolinli/TimeChat-Online issue #16. The issue shows the frame list
# up to 000291 and says the clip spans frames 279-346; the rest of the list is elided there, so
# it is ended here with 000346. -----------------------------------------------------------------
_TCO_DIR = "timechatonline/timeit-v2/frames/videoic/30100445"
TIMECHAT_SAMPLE = {
    "messages": [
        {"role": "user", "content": "<video>\nWhat significant change occurs in the young "
         "man's demeanor from earlier frames to this frame?"},
        {"role": "assistant", "content": "He goes from contemplative to energetic."}],
    "videos": [[f"{_TCO_DIR}/{n:06d}.jpg" for n in
                (279, 280, 281, 283, 284, 285, 287, 288, 290, 291, 346)]],
}

# --- VideoChat-Flash / LLaVA-NeXT: the keys its loader reads (OpenGVLab/VideoChat-Flash
# llava-train_videochat/llava/train/train.py: "video", "conversations" with from/value, optional
# "start"/"end" clip bounds). No annotation file is in that repository (they live on the Hub), so
# this record has that structure with made-up values. -------------------------------------------
VIDEOCHAT_SAMPLE = {
    "id": "v_abc123",
    "video": "videos/v_abc123.mp4",
    "start": 10.0,
    "end": 40.0,
    "conversations": [
        {"from": "human", "value": "<image>\nWhat does the person do after opening the box?"},
        {"from": "gpt", "value": "She takes out a red scarf."},
        {"from": "human", "value": "What color is the box?"},
        {"from": "gpt", "value": "Brown."},
    ],
}


def _write(tmp_path, name, obj):
  p = tmp_path / name
  p.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2), encoding="utf-8")
  return str(p)


def _responses(record, question):
  """[(turn, text)] of the response turns, and the ask turn, via the project's chat format."""
  plans = chat_format.plan_turns(record, question)
  asked = [p.index for p in plans if p.question is not None]
  return [(p.index, p.text) for p in plans if p.decision == chat_format.DECISION_RESPONSE], asked


def test_streamo_raw_real_sample(tmp_path):
  path = _write(tmp_path, "raw_data.json", STREAMO_RAW)
  recs = list(im._iter_import("streamo_raw", path, opts=NOVID))
  # Both entries are on the same video -> one record with two questions.
  assert len(recs) == 1
  rec = schema.parse_record(recs[0])
  assert rec.video == STREAMO_RAW[0]["video_path"]
  # No video: duration is the smallest number of turns holding everything: response turn 6 -> 7.
  assert rec.duration == 7.0 and rec.meta["duration_source"] == "annotation_bound"
  q1, q2 = rec.questions
  # question time "5" -> Streamo shows it on <4s-5s> -> ask_time 4; st 5 / end 6 -> standby on
  # <4s-5s>, <5s-6s>, response on <6s-7s> -> interval [5, 7] (turn ceil(7) - 1 = 6).
  assert (q1.task, q1.ask_time, q1.question) == ("EU", 4.0, Q1)
  assert q1.answers == (schema.Answer(text=A1, start=5.0, end=7.0),)
  assert (q2.ask_time, q2.answers[0].start, q2.answers[0].end) == (2.0, 5.0, 7.0)
  assert _responses(rec, q1) == ([(6, A1)], [4])
  assert _responses(rec, q2) == ([(6, A2)], [2])
  # Standby turns (2 per entry) are mapped to silence and counted.
  assert rec.meta["standby_turns"] == 4 and "standby" in rec.meta
  assert rec.meta["source_task"] == "QA" and rec.meta["merged_raw_indices"] == [0, 1]


def test_streamo_raw_renders_like_streamo_stream(tmp_path):
  """The raw entry and Streamo's own conversion of it give the same trajectory."""
  raw = _write(tmp_path, "raw.json", STREAMO_RAW[:1])
  stream = _write(tmp_path, "stream.json", [streamo_stream_sample()])
  opts = im.Options(check_videos=False, durations={"ytb_ls8tmkfD7S0.mp4": 76.0})
  (r_raw,) = im._iter_import("streamo_raw", raw, opts=opts)
  (r_stream,) = im._iter_import("streamo_stream", stream, opts=NOVID)
  assert r_stream["duration"] == 76.0 and r_raw["duration"] == 76.0
  assert r_raw["questions"] == r_stream["questions"]
  rec = schema.parse_record(r_stream)
  text = chat_format._render_text(rec, 0, tokens_per_turn=1)
  user = text.split("<|im_start|>user\n")[1:]
  assert len(user) == 76
  # Turn 4 carries the question, turn 6 the response; every other turn is silence.
  assert user[4].startswith(Q1 + "\n<4s-5s>\n")
  assert all(not u.startswith(Q1) for k, u in enumerate(user) if k != 4)
  for k, u in enumerate(user):
    body = u.split("<|im_start|>assistant\n")[1]
    expected = f"</Response>{A1}<|im_end|>\n" if k == 6 else "</Silence><|im_end|>\n"
    assert body == expected, k
  assert r_stream["meta"]["standby_turns"] == 2


def test_streamo_stream_example_without_tags(tmp_path):
  path = _write(tmp_path, "ex.json", STREAMO_EXAMPLE)  # a single JSON object
  (r,) = im._iter_import("streamo_stream", path, opts=NOVID)
  rec = schema.parse_record(r)
  # 10 turns: standby 0-5, response 6, standby 7-8, response 9.
  assert rec.duration == 10.0
  (q,) = rec.questions
  assert q.question == "Find all significant events in the video and describe them."
  assert q.ask_time == 0.0
  # Standby run a..k-1 before a response on turn k -> interval [a + 1, k + 1].
  assert [(a.start, a.end) for a in q.answers] == [(1.0, 7.0), (8.0, 10.0)]
  got, asked = _responses(rec, q)
  assert asked == [0]
  assert [k for k, _ in got] == [6, 9]
  assert got[1][1] == "He then walks over to a staircase"
  assert r["meta"]["standby_turns"] == 8


def test_streamo_stream_rejects_wrong_tag(tmp_path):
  bad = streamo_stream_sample()
  bad["messages"][3]["content"] = "<5s-6s>\n<stream>"  # second user turn says 5s
  path = _write(tmp_path, "bad.json", [bad])
  with pytest.raises(schema.DataError) as e:
    list(im._iter_import("streamo_stream", path, opts=NOVID))
  assert e.value.field == "[0].messages[3].content" and "turn 1" in e.value.reason
  assert e.value.line == 2


def test_timechat_online_sample(tmp_path):
  path = _write(tmp_path, "tco.jsonl", json.dumps(TIMECHAT_SAMPLE) + "\n")
  (r,) = im._iter_import("timechat_online", path, opts=NOVID)
  rec = schema.parse_record(r)
  # Frames 279..346 at 1 fps -> a 68 s clip; the folder is the video.
  assert rec.video == _TCO_DIR and rec.duration == 68.0
  assert r["meta"]["clip"] == [279.0, 347.0] and r["meta"]["video_kind"] == "frame_folder"
  (q,) = rec.questions
  assert q.question.startswith("What significant change") and "<video>" not in q.question
  # Offline QA: asked on the last turn (67), answered there.
  assert _responses(rec, q) == ([(67, "He goes from contemplative to energetic.")], [67])
  start_opts = im.Options(check_videos=False, offline_ask="start")
  (r2,) = im._iter_import("timechat_online", path, opts=start_opts)
  assert _responses(schema.parse_record(r2), 0)[1] == [0]


def test_videochat_flash_structure(tmp_path):
  path = _write(tmp_path, "vcf.json", [VIDEOCHAT_SAMPLE])
  (r,) = im._iter_import("videochat_flash", path,
                        opts=im.Options(check_videos=False, video_prefix="/data"))
  rec = schema.parse_record(r)
  assert rec.video == "/data/videos/v_abc123.mp4" and rec.duration == 30.0
  assert r["meta"]["clip"] == [10.0, 40.0]
  assert [q.question for q in rec.questions] == [
      "What does the person do after opening the box?", "What color is the box?"]
  for q, text in zip(rec.questions, ["She takes out a red scarf.", "Brown."]):
    assert _responses(rec, q) == ([(29, text)], [29])
  # Without clip bounds the duration must come from a table (or a probe).
  no_clip = {k: v for k, v in VIDEOCHAT_SAMPLE.items() if k not in ("start", "end")}
  path2 = _write(tmp_path, "vcf2.json", [no_clip])
  with pytest.raises(schema.DataError, match="duration unknown"):
    list(im._iter_import("videochat_flash", path2, opts=NOVID))
  (r3,) = im._iter_import("videochat_flash", path2,
                         opts=im.Options(check_videos=False,
                                         durations={"videos/v_abc123.mp4": 12.5}))
  assert r3["duration"] == 12.5 and r3["questions"][0]["answers"][0]["time"] == 12.5


def test_simple_csv_and_jsonl(tmp_path):
  csv_text = ("video,time,question,answer,duration,ask_time,task,start\n"
              "a.mp4,3.5,What falls?,A cup.,10,1,AA,\n"
              "a.mp4,8,What falls?,A plate.,10,1,AA,\n"
              "a.mp4,9,When does he sit?,6s-9s,10,2,TG,6\n"
              "b.mp4,2,Who enters?,A dog.,,,,\n")
  path = _write(tmp_path, "own.csv", csv_text)
  recs = list(im._iter_import("simple", path, opts=NOVID))
  assert [r["video"] for r in recs] == ["a.mp4", "b.mp4"]
  a = schema.parse_record(recs[0])
  assert a.duration == 10.0 and len(a.questions) == 2
  q0, q1 = a.questions
  assert [x.time for x in q0.answers] == [3.5, 8.0] and q0.task == "AA"
  # 3.5 -> turn ceil(3.5) - 1 = 3; 8 -> turn 7; question at 1 -> turn 1.
  assert _responses(a, q0) == ([(3, "A cup."), (7, "A plate.")], [1])
  assert (q1.answers[0].start, q1.answers[0].end, q1.task) == (6.0, 9.0, "TG")
  b = recs[1]
  assert b["duration"] == 2.0 and b["meta"]["duration_source"] == "annotation_bound"
  assert b["questions"][0]["task"] == "EU"
  jl = "\n".join(json.dumps(x) for x in [
      {"video": "c.mp4", "time": 4, "question": "Q?", "answer": "A.", "duration": 6}]) + "\n"
  (c,) = im._iter_import("simple", _write(tmp_path, "own.jsonl", jl), opts=NOVID)
  assert _responses(schema.parse_record(c), 0) == ([(3, "A.")], [0])


def test_errors_name_file_line_field_and_skip_counts(tmp_path):
  entries = [dict(STREAMO_RAW[0]), dict(STREAMO_RAW[1]), dict(STREAMO_RAW[0])]
  entries[1] = dict(entries[1], video_path="other.mp4",
                    response=[{"content": "x", "st_time": 9, "end_time": 2}])
  entries[2] = dict(entries[2], video_path="third.mp4",
                    question=[{"content": "Q", "time": "soon"}])
  path = _write(tmp_path, "mixed.json", entries)
  with pytest.raises(schema.DataError) as e:
    list(im._iter_import("streamo_raw", path, opts=NOVID))
  # The line where the second element's "{" stands (json.dumps(indent=2) layout).
  starts = [i + 1 for i, ln in enumerate(open(path).read().split("\n")) if ln == "  {"]
  assert str(e.value).startswith(
      f"{path}:{starts[1]}: [1].response[0]: st_time 9 > end_time 2")
  stats = im.ImportStats()
  recs = list(im._iter_import("streamo_raw", path, policy="skip", stats=stats, opts=NOVID))
  assert len(recs) == 1 and stats.read == 3 and stats.skipped == 2 and stats.written == 1
  assert any("[2].question[0].time" in m and "'soon' is not a time" in m for m in stats.errors)
  assert "skipped 2" in stats.summary()


def test_jsonl_bad_line_is_skipped_with_its_line_number(tmp_path):
  good = json.dumps(TIMECHAT_SAMPLE)
  path = _write(tmp_path, "t.jsonl", good + "\n{not json\n\n" + good + "\n")
  stats = im.ImportStats()
  recs = list(im._iter_import("timechat_online", path, policy="skip", stats=stats, opts=NOVID))
  assert len(recs) == 2 and stats.skipped == 1
  assert stats.errors[0].startswith(f"{path}:2: <line>: malformed JSON")
  assert recs[0]["id"] != recs[1]["id"]


def test_malformed_array_fails_even_with_skip(tmp_path):
  text = json.dumps(STREAMO_RAW)[:-30]  # truncated array
  path = _write(tmp_path, "trunc.json", text)
  with pytest.raises(schema.DataError, match="malformed JSON|end of file"):
    list(im._iter_import("streamo_raw", path, policy="skip", opts=NOVID))


def test_incremental_parser_across_chunk_boundaries(tmp_path):
  values = [{"i": i, "s": "x" * (i % 7), "n": 1234567 + i} for i in range(300)] + [3.25, 17]
  text = json.dumps(values, indent=1)
  path = _write(tmp_path, "v.json", text)
  got = list(im._iter_json_values(path, chunk_chars=13))
  assert [v for _, _, v in got] == values
  lines = text.split("\n")
  for _, line, v in got[:5]:
    assert lines[line - 1].strip() in ("{", json.dumps(v))


def test_import_to_jsonl_writes_and_protects_input(tmp_path):
  src = _write(tmp_path, "raw.json", STREAMO_RAW)
  dst = str(tmp_path / "out" / "train.jsonl")
  stats = im.import_to_jsonl("streamo_raw", src, dst, show_progress=False, opts=NOVID)
  assert stats.written == 1 and stats.standby_turns == 4
  recs, report = schema.load_jsonl(dst)
  assert len(recs) == 1 and report.num_skipped == 0
  with pytest.raises(ValueError, match="refusing to overwrite"):
    im.import_to_jsonl("streamo_raw", src, src, show_progress=False, opts=NOVID)


def _synthetic_streamo(path, n):
  """n Streamo raw entries (distinct videos, two responses each) written as a JSON array."""
  with open(path, "w", encoding="utf-8") as f:
    f.write("[\n")
    for i in range(n):
      e = {"video_name": f"v{i}.mp4", "video_path": f"videos/v{i}.mp4",
           "task_type": ("QA", "Narration", "Event_Grounding")[i % 3], "source": "synthetic",
           "question": [{"content": f"What happens in clip {i}?", "time": str(i % 20)}],
           "response": [{"content": f"Something happens ({i}).", "st_time": i % 20 + 2,
                         "end_time": i % 20 + 5, "time": ""},
                        {"content": "Then it ends.", "st_time": "", "end_time": "",
                         "time": i % 20 + 9}]}
      f.write(("," if i else "") + json.dumps(e, indent=2) + "\n")
    f.write("]\n")


@pytest.mark.slow
def test_large_file_converts_in_bounded_memory(tmp_path):
  src = str(tmp_path / "big.json")
  _synthetic_streamo(src, 20_000)
  size = os.path.getsize(src)
  dst = str(tmp_path / "big.jsonl")
  tracemalloc.start()
  try:
    stats = im.import_to_jsonl("streamo_raw", src, dst, show_progress=False, opts=NOVID)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert stats.written == 20_000 and stats.skipped == 0
  # The whole file is ~9 MB; the importer holds one 256 Ki-character chunk plus one record
  # (measured: ~1.4 MB peak at 5,000 and at 20,000 records).
  assert size > 8e6
  assert peak < size / 4, (peak, size)
  with open(dst, encoding="utf-8") as f:
    last = json.loads(f.readlines()[-1])
  # Entry 19999: 19999 % 3 == 1 -> "Narration" -> CAP; its question time "19" -> ask_time 18.
  assert last["questions"][0]["task"] == "CAP" and last["questions"][0]["ask_time"] == 18.0


def test_streamo_question_without_response_is_dropped_and_counted(tmp_path):
  entry = dict(STREAMO_RAW[0], question=STREAMO_RAW[0]["question"] + [
      {"content": "Unanswered?", "time": "30"}])
  stats = im.ImportStats()
  (r,) = im._iter_import("streamo_raw", _write(tmp_path, "d.json", [entry]), stats=stats,
                         opts=NOVID)
  assert len(r["questions"]) == 1 and r["meta"]["dropped_unanswered_questions"] == 1
  assert stats.dropped_questions == 1
  none = dict(STREAMO_RAW[0], response=[])
  with pytest.raises(schema.DataError, match="none of the 1 question"):
    list(im._iter_import("streamo_raw", _write(tmp_path, "n.json", [none])))


@pytest.mark.slow
def test_csv_to_array_record_through_tfds_builder(tmp_path):
  import numpy as np  # pylint: disable=import-outside-toplevel

  from streampro_jax.data import video  # pylint: disable=import-outside-toplevel
  frames = np.zeros((24, 32, 32, 3), np.uint8)
  video._encode_video(str(tmp_path / "clip.mp4"), frames, fps=8.0)
  src = _write(tmp_path, "own.csv", "video,time,question,answer,duration\n"
               "clip.mp4,2,What is shown?,A black screen.,3\n")
  dst = str(tmp_path / "own.jsonl")
  im.import_to_jsonl("simple", src, dst, show_progress=False, opts=NOVID)
  reports = im.export_array_record(dst, str(tmp_path / "tfds"), name="own", height=28,
                                   width=28)
  assert reports["train"]["num_records"] == 1 and reports["train"]["num_skipped"] == 0
  files = [f for _, _, fs in os.walk(tmp_path / "tfds") for f in fs]
  assert any("array_record" in f for f in files), files


# ------------------------------------------------------------------------------------------------
# Issue 16 item 6: bytes line by line, missing videos, paths relative to the annotation file.


def _simple_row(video, t=3.0):
  return {"video": video, "time": t, "question": "What?", "answer": "a thing", "duration": 8}


def test_a_non_utf8_byte_is_one_named_skip_in_every_layout(tmp_path):
  """One bad byte aborted the whole file with no line number, even with --on_error=skip."""
  (tmp_path / "v.mp4").write_bytes(b"x")
  rows = [json.dumps(_simple_row("v.mp4", t)).encode() for t in (1.0, 2.0, 3.0)]
  bad = rows[1].replace(b"a thing", b"a th\xffing")
  layouts = {
      "rows.jsonl": b"\n".join([rows[0], bad, rows[2]]) + b"\n",
      "rows.json": b"[\n" + b",\n".join([rows[0], bad, rows[2]]) + b"\n]\n",
      "rows.csv": (b"video,time,question,answer,duration\nv.mp4,1,What?,a thing,8\n"
                   b"v.mp4,2,What?,a th\xffing,8\nv.mp4,3,What?,a thing,8\n"),
  }
  for name, data in layouts.items():
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(schema.DataError) as e:
      list(im._iter_import("simple", str(path)))
    # JSON array / CSV: line 1 is "[" / the header.
    assert e.value.line == (2 if name == "rows.jsonl" else 3), name
    assert "not UTF-8" in e.value.reason, name
    stats = im.ImportStats()
    recs = list(im._iter_import("simple", str(path), policy="skip", stats=stats))
    assert stats.read == 3 and stats.skipped == 1, name
    assert f"{path}:{e.value.line}:" in stats.errors[0], name
    assert [a["time"] for r in recs for q in r["questions"] for a in q["answers"]] == [1.0, 3.0]


def test_missing_videos_are_errors_or_counted_skips(tmp_path):
  """Records whose video is missing were written without a word, even with --probe."""
  (tmp_path / "here.mp4").write_bytes(b"x")
  src = _write(tmp_path, "rows.jsonl", [_simple_row("here.mp4"), _simple_row("gone.mp4")])
  with pytest.raises(schema.DataError, match=r"\[1\]\.video: video not found: .*gone\.mp4"):
    list(im._iter_import("simple", src))
  stats = im.ImportStats()
  probed = []
  opts = im.Options(probe=lambda p: probed.append(p) or None)
  recs = list(im._iter_import("simple", src, policy="skip", stats=stats, opts=opts))
  assert [r["video"] for r in recs] == ["here.mp4"]
  assert stats.skipped == 1 and stats.missing_videos == 1 and stats.videos_checked == 2
  assert "videos: 2 checked, 1 missing" in stats.summary()
  unchecked = im.ImportStats()
  list(im._iter_import("simple", src, opts=im.Options(check_videos=False), stats=unchecked))
  assert "videos: NOT checked" in unchecked.summary()


def test_relative_paths_resolve_against_the_annotation_file(tmp_path):
  """They resolved against the output file's folder (for --probe) and were written unchanged."""
  data, out_dir = tmp_path / "data", tmp_path / "elsewhere" / "out"
  (data / "clips").mkdir(parents=True)
  (data / "clips" / "v.mp4").write_bytes(b"x")
  src = _write(data, "rows.jsonl", [{**_simple_row("clips/v.mp4"), "duration": ""}])
  probed = []
  opts = im.Options(probe=lambda p: probed.append(p) or 6.0)
  im.import_to_jsonl("simple", src, str(out_dir / "x.jsonl"), opts=opts, show_progress=False)
  assert probed == [str(data / "clips" / "v.mp4")]
  rec = json.loads((out_dir / "x.jsonl").read_text())
  assert os.path.normpath(out_dir / rec["video"]) == str(data / "clips" / "v.mp4")
  assert rec["duration"] == 6.0
