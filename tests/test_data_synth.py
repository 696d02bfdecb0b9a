"""Tests of SynthStream (streampro_jax.data.synthetic)."""

import dataclasses
import json
import re

import numpy as np
import pytest

from streampro_jax.data import chat_format as cf
from streampro_jax.data import schema
from streampro_jax.data import synthetic as sy


@pytest.fixture(scope="module")
def records():
  return [sy.make_record("train", i, seed=0) for i in range(70)]


def _gt_responses(record):
  return [(cf.turn_time(p.index), p.text) for p in cf.plan_turns(record)
          if p.decision == cf.DECISION_RESPONSE]


def test_determinism_by_seed():
  a = sy.generate("train", 3, seed=5)
  b = sy.generate("train", 3, seed=5)
  for (ra, fa), (rb, fb) in zip(a, b):
    assert ra == rb and ra.to_jsonl_line() == rb.to_jsonl_line() and np.array_equal(fa, fb)
  c = sy.generate("train", 3, seed=6)
  assert any(ra.to_jsonl_line() != rc.to_jsonl_line() for (ra, _), (rc, _) in zip(a, c))
  # Sample i does not depend on how many are generated; splits differ.
  assert sy.make_record("train", 2, seed=5) == a[2][0]
  assert sy.make_record("test", 2, seed=5).to_jsonl_line() != a[2][0].to_jsonl_line()
  # Frames come back from the record alone (after a JSON round trip).
  again = schema.parse_line(a[1][0].to_jsonl_line())
  assert np.array_equal(sy.render_frames(again), a[1][1])
  assert np.array_equal(sy.render_frames(again.meta["synth"]), a[1][1])


def test_records_valid_and_tasks_covered(records):
  assert [r.questions[0].task for r in records[:7]] == list(schema.BENCH_TASKS)
  for r in records:
    assert schema.parse_record(json.loads(r.to_jsonl_line())) == r
    assert r.video == f"synth://train/{int(r.id.split('-')[-1])}"
    assert 20 <= r.duration <= 30 and len(r.questions) == 1
    q = r.questions[0]
    assert 6 <= len(q.rubric) <= 10
    if q.task in ("EU", "TP"):
      assert all(a.is_interval for a in q.answers)
    else:
      assert not any(a.is_interval for a in q.answers)


def test_frames_shape_and_options():
  rec, frames = sy.generate("validation", 1, seed=1)[0]
  assert frames.dtype == np.uint8 and frames.shape == (2 * int(rec.duration), 56, 56, 3)
  cfg = sy.SynthConfig(resolution=32, min_duration=12, max_duration=12, difficulty=2)
  rec, frames = sy.generate("train", 1, seed=1, config=cfg)[0]
  assert frames.shape == (24, 32, 32, 3) and rec.duration == 12.0
  with pytest.raises(ValueError, match="difficulty"):
    sy.SynthConfig(difficulty=3)
  with pytest.raises(ValueError, match="unknown task"):
    sy.SynthConfig(tasks=("CAP",))


@pytest.mark.parametrize("difficulty", [0, 2])
def test_rubric_passes_on_ground_truth(difficulty):
  cfg = sy.SynthConfig(difficulty=difficulty)
  for i in range(28):
    r = sy.make_record("train", i, seed=3, config=cfg)
    q = r.questions[0]
    gt = _gt_responses(r)
    assert sy._rubric_score(q.rubric, gt) == 1.0, (q.task, q.rubric, gt)
    assert sy._rubric_score(q.rubric, []) < 1.0                  # staying silent fails
    late = [(t + 6.0, x) for t, x in gt]                         # 6 s late fails a timed check
    assert sy._rubric_score(q.rubric, late) < 1.0
    schema.parse_record(r.to_json())


def test_check_rubric_templates():
  resp = [(5.0, "the red circle turns blue"), (9.0, "yes; no")]
  assert sy.check_rubric("Responds at least once between 4s and 5s.", resp)
  assert not sy.check_rubric("Responds at least once between 6s and 8.5s.", resp)
  assert sy.check_rubric("Does not respond before 5s.", resp)
  assert not sy.check_rubric("Does not respond before 6s.", resp)
  assert sy.check_rubric("Responds at most 2 times.", resp)
  assert not sy.check_rubric("Responds at least 3 times.", resp)
  assert sy.check_rubric('Says "no" between 8s and 9s.', resp)
  assert not sy.check_rubric('Says "red" between 8s and 9s.', resp)
  assert sy.check_rubric('Mentions "turns blue" before "yes".', resp)
  assert not sy.check_rubric('Mentions "yes" before "turns blue".', resp)
  assert sy.check_rubric('Never mentions "green".', resp)
  assert not sy.check_rubric('Never mentions "RED".', resp)        # case-insensitive
  assert sy.check_rubric('Never mentions "re".', resp)             # whole words only
  assert sy.check_rubric('Mentions "circle".', resp)
  with pytest.raises(ValueError, match="unknown rubric"):
    sy.check_rubric("Is nice.", resp)


def test_silence_response_ratio():
  recs = [sy.make_record("train", i, seed=0) for i in range(70)]
  stats = sy.silence_response_stats(recs)
  assert 9.0 <= stats["ratio"] <= 18.0, stats            # default target 12
  multi = ("EU", "OU", "AA", "RF")
  for task in multi:
    assert 7.0 <= stats["per_task"][task] <= 18.0, stats
  cfg = sy.SynthConfig(silence_ratio=5.0)
  low = sy.silence_response_stats([sy.make_record("train", i, seed=0, config=cfg)
                                   for i in range(70)])
  assert low["ratio"] < stats["ratio"]
  for task in multi:
    assert 3.0 <= low["per_task"][task] <= 9.0, low


def test_vocabulary_covers_questions_and_answers(records, synthetic_tokenizer):
  vocab = set(sy.synthetic_vocabulary())
  tok = synthetic_tokenizer
  assert len(tok) < 300
  chat = cf.ChatFormat(tok, tokens_per_turn=4)
  for r in records[:14]:
    q = r.questions[0]
    texts = [q.question] + [a.text for a in q.answers] + list(q.rubric)
    for w in re.findall(r"[A-Za-z]{2,}", " ".join(texts)):
      assert w in vocab, w
    text = cf._render_text(r, tokens_per_turn=4)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    traj = chat.render(r)
    assert np.array_equal(traj.input_ids, ids)
    assert [d.text for d in chat.decode_turns(traj.input_ids) if d.decision == "response"] == [
        t for _, t in _gt_responses(r)]


# ------------------------------------------------------------------------------------------------
# The frames show the event at the responding turn.


def _records_of(task, n=6, difficulty=0):
  cfg = sy.SynthConfig(tasks=(task,), difficulty=difficulty)
  return [sy.make_record("train", i, seed=11, config=cfg) for i in range(n)]


def test_ou_answers_read_off_the_pixels():
  for r in _records_of("OU"):
    frames = sy.render_frames(r)
    color = sy.COLORS[r.questions[0].question.rstrip("?").split()[-1]]
    shows = [(f == color).all(-1).sum() > 5 for f in frames]     # query colour visible?
    plans = cf.plan_turns(r)
    q_turn = [p.index for p in plans if p.question][0]
    state = None
    for p in plans[q_turn:]:
      k = p.index
      end_state = "yes" if shows[2 * k + 1] else "no"
      if p.decision == cf.DECISION_RESPONSE:
        assert p.text == end_state
        if k > q_turn:                      # a flip happens inside this second
          assert shows[2 * k] != shows[2 * k + 1]
        state = end_state
      else:
        assert end_state == state and shows[2 * k] == shows[2 * k + 1]


def test_rf_warning_turn_read_off_the_pixels():
  for r in _records_of("RF"):
    frames = sy.render_frames(r)
    spec = r.meta["synth"]
    zone_top = spec["static"][0]["y0"]
    speed = spec["resolution"] / 8.0
    warned = {cf.answer_turn(a.response_time) for a in r.questions[0].answers}
    for obj in spec["objects"]:
      color = np.asarray(sy.COLORS[obj["keys"][0]["color"]])
      gaps = []
      for f in frames:
        rows = np.nonzero((f == color).all(-1).any(-1))[0]
        gaps.append(zone_top - (rows.max() + 1) if len(rows) else None)
      # The warning turn is the one in which the gap to the zone crosses 3 s of motion.
      crossing = [k for k in range(len(frames) // 2)
                  if gaps[2 * k + 1] is not None and gaps[2 * k + 1] <= 3 * speed
                  and (k == 0 or gaps[2 * k - 1] is None or gaps[2 * k - 1] > 3 * speed)]
      assert crossing and crossing[0] in warned, (gaps, warned)


def _state(obj, t):
  return sy._state_at(obj, t)   # pylint: disable=protected-access


def test_motion_answers_due_when_the_frames_show_arrival():
  for r in _records_of("TG") + _records_of("GP"):
    spec = r.meta["synth"]
    q = r.questions[0]
    for a in q.answers:
      if a.time == q.ask_time + 1:
        continue                                   # GP's first instruction, on the question's turn
      k = cf.answer_turn(a.response_time, cf.ask_turn(q.ask_time, int(r.duration)))
      # Some object is at rest at the end of turn k after moving during turn k.
      moved = [o for o in spec["objects"]
               if _state(o, k + 1.0) and _state(o, k + 0.5)
               and (_state(o, k + 1.0)["x"], _state(o, k + 1.0)["y"])
               != (_state(o, k + 0.5)["x"], _state(o, k + 0.5)["y"])
               and (_state(o, k + 1.5)["x"], _state(o, k + 1.5)["y"])
               == (_state(o, k + 1.0)["x"], _state(o, k + 1.0)["y"])]
      assert moved, (q.task, a)
    if q.task == "TG":
      s, e = map(int, re.match(r"(\d+)s-(\d+)s", q.answers[0].text).groups())
      assert q.answers[0].time == e and s < e


def test_answers_owed_at_the_ask_are_due_at_the_question_turn_time():
  # OU's first state and GP's first step are owed as soon as the question is read: on the
  # question's turn k = floor(ask), whose time is Y = k + 1. Their due time is that Y, so a model
  # answering on that turn is exactly on time (dt = 0, inside GP's [-3 s, 0] window).
  for task in ("OU", "GP"):
    for r in _records_of(task, n=6):
      q = r.questions[0]
      k = cf.ask_turn(q.ask_time, int(r.duration))
      first = q.answers[0]
      assert first.time == q.ask_time + 1 == cf.turn_time(k), (task, q.ask_time, first)
      assert cf.answer_turn(first.response_time, k) == k
      assert all(a.response_time > first.response_time for a in q.answers[1:])


def test_instant_events_change_inside_their_turn():
  for task in ("AA", "EU", "TP"):
    for r in _records_of(task, n=4):
      frames = sy.render_frames(r).astype(int)
      for a in r.questions[0].answers:
        k = cf.answer_turn(a.response_time)
        if a.response_time == k + 0.75:           # instantaneous events
          assert np.abs(frames[2 * k + 1] - frames[2 * k]).sum() > 0
          if task == "AA":                         # bouncing objects move anyway; event is big
            continue
          assert np.array_equal(frames[2 * k], frames[2 * k - 1])


# ------------------------------------------------------------------------------------------------
# Narration (the demo's base-model pretraining data).


def test_narration_caption_hand_made_scene():
  def obj(*keys):
    return {"keys": [dict(dict(color="red", shape="square", visible=True, size=5.0), **k)
                     for k in keys]}
  spec = {"resolution": 32, "objects": [
      obj(dict(t=0.0, x=25.0, y=28.0, color="blue", shape="circle")),
      obj(dict(t=0.0, x=5.0, y=5.0), dict(t=4.0, x=25.0, y=5.0)),        # moves right
      obj(dict(t=3.0, x=16.0, y=16.0, color="green", shape="diamond")),  # appears at 3 s
      obj(dict(t=0.0, x=9.0, y=20.0, color="pink", visible=False)),      # hidden
  ]}
  assert sy._narration_caption(spec, 1.0) == ("the red square top left, "
                                             "the blue circle bottom right")
  # At 3 s the square is at x = 20 (right half); the diamond's centre 16 is the bottom half.
  assert sy._narration_caption(spec, 3.0) == ("the green diamond bottom right, "
                                             "the red square top right, "
                                             "the blue circle bottom right")
  assert sy._narration_caption({"resolution": 32, "objects": []}, 1.0) == "no shapes"


def test_narration_record_captions_every_turn_with_the_colours_on_screen():
  for r in _records_of("AA", n=2) + _records_of("RF", n=2) + _records_of("GP", n=2):
    n = sy._narration_record(r)
    assert (n.id, n.video, n.duration, n.meta) == (r.id, r.video, r.duration, r.meta)
    (q,) = n.questions
    assert (q.task, q.ask_time, q.question) == ("CAP", 0.0, sy._NARRATION_QUESTION)
    k_total = cf.num_turns(r.duration)
    assert [a.time for a in q.answers] == [float(k + 1) for k in range(k_total)]
    # Independent check against the renderer: the object colours drawn in each turn's last
    # frame are the colours the caption names.
    frames = sy.render_frames(r)
    fps = r.meta["synth"]["fps"]
    for k, a in enumerate(q.answers):
      frame = frames[(k + 1) * fps - 1].reshape(-1, 3)
      drawn = {c for c, rgb in sy.COLORS.items() if (frame == rgb).all(-1).any()}
      named = {c for c in sy.COLORS if f"the {c} " in a.text}
      assert drawn == named, (r.id, k, a.text, drawn)
    assert [cf.answer_turn(a.response_time) for a in q.answers] == list(range(k_total))


def test_narration_refer_names_one_object_and_captions_only_it():
  def obj(color, shape, *keys):
    return {"keys": [dict(dict(color=color, shape=shape, visible=True, size=5.0), **k)
                     for k in keys]}
  spec = {"resolution": 32, "objects": [
      obj("pink", "circle", dict(t=0.0, x=9.0, y=20.0, visible=False)),   # never visible
      obj("red", "square", dict(t=0.0, x=5.0, y=5.0), dict(t=2.5, x=5.0, y=5.0, visible=False)),
      obj("blue", "circle", dict(t=0.0, x=25.0, y=28.0))]}
  rec = schema.Record(id="v", video="synth://v", duration=3.0, questions=(), meta={"synth": spec})
  # refer = 0 -> the first object ever visible (the red square), 1 -> the blue circle, 2 -> wraps.
  q0 = sy._narration_record(rec, refer=0).questions[0]
  assert q0.question == "Describe the red square."
  assert [a.text for a in q0.answers] == ["the red square top left", "the red square top left",
                                          "no shapes"]       # hidden from 2.5 s
  q1 = sy._narration_record(rec, refer=1).questions[0]
  assert q1.question == "Describe the blue circle."
  assert {a.text for a in q1.answers} == {"the blue circle bottom right"}
  assert sy._narration_record(rec, refer=2).questions[0].question == q0.question
  assert sy._narration_record(rec).questions[0].question == sy._NARRATION_QUESTION


def test_narration_source_wraps_any_source_and_rejects_other_records():
  from streampro_jax.data import pipeline
  pairs = sy.generate("train", 3, seed=0, config=sy.SynthConfig(resolution=24), with_frames=True)
  src = sy.NarrationSource(pipeline.RecordSource([r for r, _ in pairs], [f for _, f in pairs]))
  assert len(src) == 3 and src.question_counts() == [1, 1, 1]
  rec, frames = src[1]
  assert rec.questions[0].task == "CAP" and np.array_equal(frames, pairs[1][1])
  # Even examples narrate every object, odd ones the object their question names.
  questions = [src[i][0].questions[0].question for i in range(3)]
  assert questions[0] == questions[2] == sy._NARRATION_QUESTION
  assert questions[1] == sy._narration_record(pairs[1][0], refer=0).questions[0].question
  assert questions[1].startswith("Describe the ") and questions[1] != sy._NARRATION_QUESTION
  other = dataclasses.replace(pairs[0][0], meta={})
  with pytest.raises(ValueError, match="no meta\\['synth'\\] scene spec"):
    sy._narration_record(other)


def test_answered_narration_answers_on_due_turns_and_captions_the_others():
  for task in ("OU", "TG", "GP", "EU"):
    for r in _records_of(task, n=2):
      (orig,) = r.questions
      (q,) = sy._answered_narration_record(r).questions
      assert (q.id, q.task, q.question, q.ask_time) == (orig.id, task, orig.question, 0.0)
      plans = cf.plan_turns(dataclasses.replace(r, questions=(q,)))
      assert [p.decision for p in plans] == [cf.DECISION_RESPONSE] * cf.num_turns(r.duration)
      # Where the original trajectory (asked at its own time) responds, the same answers; on
      # every other turn the full narration's caption of that turn.
      gt = {p.index: p.text for p in cf.plan_turns(r) if p.decision == cf.DECISION_RESPONSE}
      captions = sy._narration_record(r).questions[0].answers
      for p in plans:
        assert p.text == gt.get(p.index, captions[p.index].text), (r.id, p.index)


def test_narration_source_with_answers_cycles_four_kinds():
  from streampro_jax.data import pipeline
  pairs = sy.generate("train", 8, seed=0, config=sy.SynthConfig(resolution=24), with_frames=False)
  src = sy.NarrationSource(pipeline.RecordSource([r for r, _ in pairs], sy.render_frames),
                           answers=True)
  got = [src[i][0].questions[0] for i in range(8)]
  for i, q in enumerate(got):
    r = pairs[i][0]
    if i % 4 == 0:
      assert q == sy._narration_record(r).questions[0]
    elif i % 4 == 1:
      assert q == sy._narration_record(r, refer=i // 4).questions[0]
    else:
      assert q == sy._answered_narration_record(r).questions[0]
  assert sy.NarrationSource(src.source)[2][0].questions[0].task == "CAP"   # off by default
  with pytest.raises(ValueError, match="no meta\\['synth'\\] scene spec or no question"):
    sy._answered_narration_record(dataclasses.replace(pairs[0][0], meta={}))
