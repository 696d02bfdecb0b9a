"""Grain pipeline: batch layout, seeded shuffle, host sharding, whole-turn truncation, resume,
and the TFDS builders (SynthStream, JSONL + videos) read back through it."""

import dataclasses
import json
import os

import grain
import jax
import numpy as np
import pytest
from etils import epath

from streampro_jax.data import chat_format, pipeline, pipeline_config, schema, synthetic
from streampro_jax.data import tokenizer as tokenizer_lib
from streampro_jax.data import video
from streampro_jax.data.batch import Batch
from streampro_jax.data.tfds_builders import jsonl_videos, synth_stream
from streampro_jax.models import processing, qwen2_5_vl

H = W = 16  # tiny vision tower: patch 4, merge 2 -> grid (1, 4, 4), 16 patches, 4 tokens a turn.


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tokenizer_lib.build_synthetic_tokenizer(
      synthetic.synthetic_vocabulary() + ["what", "happens", "ball", "moves"],
      str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def model_config(tok):
  ids = {name: tok.convert_tokens_to_ids(t) for name, t in [
      ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
      ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
  return qwen2_5_vl.tiny_config(text={"vocab_size": len(tok) + 2}, **ids)


def _records(n, durations=None):
  out = []
  for i in range(n):
    d = 3.0 + (i % 4) if durations is None else durations[i]
    questions = [{"id": "q0", "task": "EU", "ask_time": 0.5, "question": "what happens",
                  "answers": [{"time": min(2.5, d), "text": "the ball moves"}]}]
    if i % 2:
      questions.append({"id": "q1", "task": "TG", "ask_time": 1.2, "question": "what moves",
                        "answers": [{"start": 1.5, "end": d, "text": "ball"}]})
    out.append(schema.from_json({"id": f"r{i}", "video": "synth://t", "duration": d,
                                 "questions": questions}))
  return out


def _frames(records, h=H, w=W):
  rng = np.random.RandomState(0)
  return [rng.randint(0, 256, (2 * chat_format.num_turns(r.duration), h, w, 3), dtype=np.uint8)
          for r in records]


def _cfg(**kw):
  base = dict(seq_len=2048, batch_size=2, max_turns=8, frame_height=H, frame_width=W,
              num_threads=2, prefetch_buffer_size=4, seed=1)
  base.update(kw)
  return pipeline_config.PipelineConfig(**base)


def _build(records, frames, tok, model_config, **kw):
  src = pipeline.RecordSource(records, frames)
  pi, pc = kw.pop("process_index", 0), kw.pop("process_count", 1)
  return pipeline.build_pipeline(src, _cfg(**kw), tokenizer=tok, model_config=model_config,
                                 process_index=pi, process_count=pc)


def _row_ids(batches):
  """Identify rows by their (unpadded) input ids and their pixels (frames differ per record)."""
  out = []
  for b in batches:
    for ids, m, pix in zip(b.input_ids, b.attention_mask, b.pixel_values_videos):
      out.append((tuple(ids[m.astype(bool)].tolist()), hash(pix.tobytes())))
  return out


def test_batch_layout_matches_references(tok, model_config):
  records = _records(4)
  frames = _frames(records)
  pipe = _build(records, frames, tok, model_config, shuffle=False, batch_size=4,
                num_epochs=1)
  assert pipe.num_trajectories == 6  # 4 records, 2 of them with 2 questions
  np.testing.assert_array_equal(pipe.video_grid_thw, [1, 4, 4])
  it = pipe.iterator()
  b = next(it)
  # The pipeline's batch: the model inputs and decision_class, at the shapes and dtypes its
  # abstract_batch declares (the GRPO-only fields are None).
  assert isinstance(b, Batch)
  want = pipe.abstract_batch()
  assert jax.tree.structure(b) == jax.tree.structure(want)
  for (path, x), w in zip(jax.tree_util.tree_leaves_with_path(b), jax.tree.leaves(want)):
    assert (x.shape, x.dtype) == (w.shape, w.dtype), path
  assert b.decision_class is not None and b.old_logps is None
  assert b.pixel_values_videos.shape == (4, 8 * 16, 96)
  assert b.input_ids.dtype == np.int32 and b.loss_mask.dtype == np.float32
  assert b.position_ids.shape == (3, 4, 2048) and b.position_ids.dtype == np.int32
  chat = chat_format.ChatFormat(tok, tokens_per_turn=4)
  proc = processing.VideoProcessorConfig(patch_size=4, merge_size=2, do_resize=False)
  # Unshuffled: rows are (r0, q0), (r1, q0), (r1, q1), (r2, q0).
  for row, (ri, qi) in enumerate([(0, 0), (1, 0), (1, 1), (2, 0)]):
    traj = chat.render(records[ri], qi)
    n, k = len(traj), traj.num_turns
    np.testing.assert_array_equal(b.input_ids[row, :n], traj.input_ids)
    np.testing.assert_array_equal(b.labels[row, :n], traj.labels)
    np.testing.assert_array_equal(b.loss_mask[row, :n], traj.loss_mask)
    np.testing.assert_array_equal(b.decision_class[row, :n], traj.decision_class)
    assert b.attention_mask[row].sum() == n and b.loss_mask[row, n:].sum() == 0
    assert (b.input_ids[row, n:] == chat.pad_id).all()
    assert (b.input_ids[row] == chat.video_pad_id).sum() == 4 * k
    pos, _ = qwen2_5_vl.get_rope_index(traj.input_ids[None],
                                       video_grid_thw=np.tile([1, 4, 4], (k, 1)),
                                       config=model_config)
    np.testing.assert_array_equal(b.position_ids[:, row, :n], pos[:, 0])
    assert (b.position_ids[:, row, n:] == 0).all()
    patches, grid = processing.process_turns(frames[ri].reshape(k, 2, H, W, 3), proc)
    assert grid == (1, 4, 4)
    np.testing.assert_array_equal(b.pixel_values_videos[row, :k * 16], patches.reshape(-1, 96))
    assert (b.pixel_values_videos[row, k * 16:] == 0).all()
  # Silence and response decision targets are present.
  assert (b.decision_class == 1).sum() > 0 and (b.decision_class == 2).sum() > 0


def test_frames_are_resized_to_the_configured_size(tok, model_config):
  records = _records(2)
  big = _frames(records, 24, 40)
  pipe = _build(records, big, tok, model_config, shuffle=False, num_epochs=1)
  b = next(pipe.iterator())
  proc = processing.VideoProcessorConfig(patch_size=4, merge_size=2, do_resize=False)
  k = chat_format.num_turns(records[0].duration)
  small = processing.resize_frames(big[0][:2 * k], H, W)
  patches, _ = processing.process_turns(small.reshape(k, 2, H, W, 3), proc)
  np.testing.assert_array_equal(b.pixel_values_videos[0, :k * 16], patches.reshape(-1, 96))


def test_seeded_shuffle_epochs_and_host_shards(tok, model_config):
  records = _records(6)
  frames = _frames(records)
  n = 9  # 6 records, 3 with two questions.

  def epoch_rows(seed, pi=0, pc=1, epochs=1):
    pipe = _build(records, frames, tok, model_config, seed=seed, batch_size=1,
                  num_epochs=epochs, process_index=pi, process_count=pc)
    return _row_ids(list(pipe.iterator()))

  a, a2, other = epoch_rows(1), epoch_rows(1), epoch_rows(2)
  assert len(a) == n and len(set(a)) == n
  assert a == a2 and a != other and set(a) == set(other)
  two = epoch_rows(1, epochs=2)
  assert set(two[:n]) == set(two[n:]) == set(a) and two[:n] != two[n:]
  h0, h1 = epoch_rows(1, 0, 2, epochs=2), epoch_rows(1, 1, 2, epochs=2)
  assert len(h0) == len(h1) == n
  assert sorted(h0 + h1) == sorted(two)


def test_resume_from_saved_state_gives_identical_batches(tok, model_config, tmp_path):
  records = _records(5)
  frames = _frames(records)
  pipe = _build(records, frames, tok, model_config, batch_size=2, seq_len=400)
  it = pipe.iterator()
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # JSON-able
  handler = grain.checkpoint.CheckpointHandler()
  ckpt = epath.Path(tmp_path / "data_ckpt")
  ckpt.mkdir()
  handler.save(ckpt, item=it)
  after = [next(it) for _ in range(4)]
  for restore in ("state", "orbax_handler"):
    fresh = _build(records, frames, tok, model_config, batch_size=2, seq_len=400).iterator()
    if restore == "state":
      fresh.set_state(state)
    else:
      handler.restore(ckpt, item=fresh)
    assert fresh.stats.batches == 3
    again = [next(fresh) for _ in range(4)]
    for x, y in zip(after, again):
      assert jax.tree.structure(x) == jax.tree.structure(y)
      jax.tree.map(np.testing.assert_array_equal, x, y)
    assert fresh.stats == it.stats


def test_truncation_by_whole_turns_is_counted(tok, model_config):
  records = _records(1, durations=[6.0])
  frames = _frames(records)
  chat = chat_format.ChatFormat(tok, tokens_per_turn=4)
  full = chat.render(records[0], 0)
  ends = full.assistant_spans[:, 1]
  seq_len = int(ends[3]) + 5  # 4 whole turns fit, the 5th does not.
  pipe = _build(records, frames, tok, model_config, shuffle=False, batch_size=1,
                seq_len=seq_len, num_epochs=1)
  it = pipe.iterator()
  b = next(it)
  cut = chat.render(records[0], 0, max_turns=4)
  n = len(cut)
  assert n == ends[3] <= seq_len
  np.testing.assert_array_equal(b.input_ids[0, :n], cut.input_ids)
  np.testing.assert_array_equal(b.labels[0, :n], cut.labels)  # last label is the pad id
  assert b.attention_mask[0].sum() == n
  assert (b.input_ids[0] == chat.video_pad_id).sum() == 4 * 4
  assert it.stats.truncated_rows == 1 and it.stats.turns_cut == 2 and it.stats.dropped == 0
  # max_turns cut: 6 turns -> 3.
  it = _build(records, frames, tok, model_config, shuffle=False, batch_size=1, max_turns=3,
              num_epochs=1).iterator()
  b = next(it)
  assert (b.input_ids[0] == chat.video_pad_id).sum() == 3 * 4
  assert b.pixel_values_videos.shape == (1, 3 * 16, 96)
  assert it.stats.truncated_rows == 1 and it.stats.turns_cut == 3


def test_question_after_the_cut_is_dropped_and_counted(tok, model_config):
  late = schema.from_json({"id": "late", "video": "synth://t", "duration": 8.0, "questions": [
      {"id": "q", "task": "EU", "ask_time": 6.0, "question": "what happens",
       "answers": [{"time": 7.0, "text": "ball"}]}]})
  records = [late] + _records(2)
  pipe = _build(records, _frames(records), tok, model_config, shuffle=False, batch_size=2,
                max_turns=5, num_epochs=1)
  it = pipe.iterator()
  b = next(it)
  assert b.input_ids.shape[0] == 2
  assert it.stats.dropped == 1 and it.stats.rows == 2


def test_repeating_source_where_nothing_fits_raises_instead_of_looping(tok, model_config):
  """Every trajectory asks its question after the max_turns cut: with num_epochs=None the
  source repeats forever, so the iterator must stop with an error after one epoch of drops."""
  late = [schema.from_json({"id": f"late{i}", "video": "synth://t", "duration": 8.0,
                            "questions": [{"id": "q", "task": "EU", "ask_time": 6.0,
                                           "question": "what happens",
                                           "answers": [{"time": 7.0, "text": "ball"}]}]})
          for i in range(3)]
  pipe = _build(late, _frames(late), tok, model_config, shuffle=False, batch_size=2,
                max_turns=5, num_epochs=None)
  it = pipe.iterator()
  with pytest.raises(ValueError, match="all 3 trajectories of an epoch were dropped; .*after "
                                       "the cut at 5 turns"):
    next(it)
  assert it.stats.dropped == 3


def test_config_errors_state_the_numbers(tok, model_config):
  records = _records(2)
  with pytest.raises(ValueError, match="frame size 20x16 is not a multiple of .* = 8"):
    _build(records, _frames(records), tok, model_config, frame_height=20)
  with pytest.raises(ValueError, match="global batch size 3 is not divisible by 2 hosts"):
    pipeline.make_train_iterator({"batch_size": 3}, tokenizer=tok, model_config=model_config,
                                 source=pipeline.RecordSource(records, _frames(records)),
                                 process_index=0, process_count=2)
  pad_id = model_config.video_token_id
  bad = dataclasses.replace(model_config, video_token_id=pad_id + 100)
  with pytest.raises(ValueError, match=f"video_token_id = {pad_id + 100} but the tokenizer's id "
                     f"is {pad_id}"):
    _build(records, _frames(records), tok, bad)


def test_synthstream_tfds_roundtrip_through_pipeline(tok, model_config, tmp_path):
  cfg = synth_stream.SynthStreamConfig(
      name="tiny", num_videos={"train": 3},
      synth={"resolution": 32, "min_duration": 12, "max_duration": 13})
  builder = synth_stream.SynthStream(config=cfg, data_dir=str(tmp_path),
                                     file_format="array_record")
  reports = jsonl_videos.build(builder)
  assert reports["train"]["num_records"] == 3 and reports["train"]["num_skipped"] == 0
  source = pipeline.tfds_source(builder.data_dir, "train")
  assert len(source) == 3 and source.question_counts() == [1, 1, 1]
  by_id = {}
  for i in range(3):
    record, frames = source[i]
    by_id[record.id] = (record, frames)
  for i in range(3):
    want = synthetic.make_record("train", i, config=cfg.synth_config())
    record, frames = by_id[want.id]
    assert record == want
    np.testing.assert_array_equal(frames, synthetic.render_frames(want))
  data_cfg = {"source": "tfds", "tfds_dir": builder.data_dir, "split": "train", "batch_size": 2,
              "seq_len": 3000, "max_turns": 13, "frame_height": H, "frame_width": W,
              "num_threads": 1}
  it, pipe = pipeline.make_train_iterator(data_cfg, tokenizer=tok, model_config=model_config,
                                          process_index=0, process_count=1)
  b = next(it)
  assert b.input_ids.shape == (2, 3000) and pipe.num_trajectories == 3
  assert (b.decision_class == 2).sum() >= 2


def test_jsonl_videos_builder_with_bad_records(tmp_path):
  rec = {"id": "r0", "video": "v0.mp4", "duration": 2.0, "questions": [
      {"id": "q", "task": "EU", "ask_time": 0.5, "question": "what happens",
       "answers": [{"time": 1.5, "text": "ball"}]}]}
  fr = np.zeros((16, 32, 48, 3), np.uint8)
  fr[8:] = 200  # second 1 is bright
  video._encode_video(str(tmp_path / "v0.mp4"), fr, fps=8)
  lines = [rec, dict(rec, id="bad", duration=-1.0), dict(rec, id="missing", video="nope.mp4")]
  (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")

  def builder(name, on_error):
    cfg = jsonl_videos.JsonlVideosConfig(name=name, splits={"train": str(tmp_path / "train.jsonl")},
                                         height=16, width=24, on_error=on_error)
    return jsonl_videos.JsonlVideos(config=cfg, data_dir=str(tmp_path / "tfds"),
                                    file_format="array_record")

  with pytest.raises(schema.DataError, match="train.jsonl:2: duration: must be > 0"):
    jsonl_videos.build(builder("strict", "fail"))
  b = builder("lenient", "skip")
  reports = jsonl_videos.build(b)
  rep = reports["train"]
  assert rep["num_records"] == 1 and rep["num_skipped"] == 2
  assert any("nope.mp4: file not found" in e for e in rep["errors"])
  with open(os.path.join(b.data_dir, "train.build_report.json")) as f:
    assert json.load(f)["num_skipped"] == 2
  record, frames = pipeline.tfds_source(b.data_dir, "train")[0]
  assert record.id == "r0" and frames.shape == (4, 16, 24, 3)
  # Flat colours through the encoder and back (RGB -> YUV -> RGB, 8-bit levels): a few levels.
  np.testing.assert_allclose(frames[:2].mean(), 0, atol=3)
  np.testing.assert_allclose(frames[2:].mean(), 200, atol=3)
