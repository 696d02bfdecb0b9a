"""Both backbones through every consumer: registry, grain pipeline, teacher-forced forward,
streaming sampler, evaluation harness and launcher, on a tiny random Qwen3-VL."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from streampro_jax import models, sampling
from streampro_jax.bench import harness
from streampro_jax.data import chat_format, pipeline, pipeline_config, synthetic
from streampro_jax.judges import MatchJudge
from streampro_jax.models import processing, processing_qwen3, qwen2_5_vl, qwen3_vl

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

FRAME = 16          # 16 x 16 frames, patch 4 -> grid (1, 4, 4), 4 visual tokens per turn
GRID = (1, 4, 4)
SYNTH = synthetic.SynthConfig(resolution=32, min_duration=12, max_duration=13)


@pytest.fixture(scope="module")
def setup(synthetic_tokenizer, synthetic_tokenizer_dir, tiny_backbone):
  tok, tok_dir = synthetic_tokenizer, synthetic_tokenizer_dir
  cfg, params = tiny_backbone("qwen3_vl")
  records = [synthetic.make_record("test", i, config=SYNTH) for i in range(2)]
  return dict(tok=tok, tok_dir=tok_dir, cfg=cfg, params=params, records=records)


# ------------------------------------------------------------------------------------------------
# Registry.


def test_backbone_registry():
  q25, q3 = qwen2_5_vl.tiny_config(), qwen3_vl.tiny_config()
  assert models.backbone_module(q25) is qwen2_5_vl
  assert models.backbone_module(q3) is qwen3_vl
  assert models.backbone_module("qwen3_vl") is qwen3_vl
  assert models.backbone_module("Qwen3-VL") is qwen3_vl
  section = ml_collections.ConfigDict(dict(family="qwen3_vl", dtype="float32"))
  assert models.backbone_module(section) is qwen3_vl
  assert models.backbone_module({"dtype": "float32"}) is qwen2_5_vl   # trainers' default family
  with pytest.raises(ValueError, match="qwen4"):
    models.backbone_module("qwen4")
  for mod, cfg in ((qwen2_5_vl, q25), (qwen3_vl, q3)):
    for name in ("MODEL_TYPE", "tiny_config", "init_params",
                 "get_rope_index", "chunk_position_ids", "load_hf_checkpoint",
                 "save_hf_checkpoint", "video_processor_config"):
      assert hasattr(mod, name), (mod.__name__, name)
    assert models.config_class(cfg) is type(cfg) is getattr(mod, type(cfg).__name__)
    assert type(models.build(cfg)) is models.model_class(cfg)
    assert models.model_class(cfg).__name__ + "Config" == type(cfg).__name__
    assert mod.MODEL_TYPE == cfg.model_type == models.model_type_of(cfg)
  # Processor settings: the config's patch sizes, the backbone's normalisation, no resize.
  p25, p3 = models.video_processor_config(q25), models.video_processor_config(q3)
  assert isinstance(p25, processing.VideoProcessorConfig)
  assert isinstance(p3, processing_qwen3.Qwen3VideoProcessorConfig)
  assert p25.image_mean == processing._OPENAI_CLIP_MEAN and p3.image_mean == (0.5, 0.5, 0.5)
  assert (p3.patch_size, p3.merge_size, p3.do_resize, p3.grid(16, 24)) == (4, 2, False, (1, 4, 6))
  assert qwen3_vl.qwen3_vl_4b_config().vision.patch_size == 16
  assert models.video_processor_config(qwen3_vl.qwen3_vl_4b_config()).patch_dim == 3 * 2 * 16 * 16


def test_qwen3_process_turns_no_resize_matches_per_turn():
  """The one-shot path for pre-sized frames equals processing each turn as its own video, and
  the values are (u8 / 255 - 0.5) / 0.5 in the Qwen patch order (hand-built reference)."""
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (3, 2, 8, 16, 3), dtype=np.uint8)
  proc = processing_qwen3.Qwen3VideoProcessorConfig(patch_size=4, do_resize=False)
  got, grid = models.process_turns(frames, proc)
  assert grid == (1, 2, 4) and got.shape == (3, 8, 3 * 2 * 16)
  for k in range(3):
    ref, g = processing_qwen3._process_video(frames[k], proc)
    np.testing.assert_array_equal(got[k], ref)
    assert tuple(g[0]) == grid
  # Patch 0 of turn 1 is rows 0..3, cols 0..3, flattened as [C, tp, p, p].
  expect = (frames[1, :, :4, :4, :].astype(np.float64) / 255 - 0.5) / 0.5   # [tp, p, p, C]
  # float32 (u8 * 1/255 - 0.5) / 0.5 vs float64: the constant, the product, the difference and
  # the quotient, each rounded once on a scale <= 1: 4 roundings.
  np.testing.assert_allclose(got[1, 0], expect.transpose(3, 0, 1, 2).reshape(-1),
                             atol=tol.rel_ops_bound(4), rtol=0)
  # Merge order: patch 1 is the block's top-right (rows 0..3, cols 4..7).
  expect = (frames[1, :, :4, 4:8, :].astype(np.float64) / 255 - 0.5) / 0.5
  np.testing.assert_allclose(got[1, 1], expect.transpose(3, 0, 1, 2).reshape(-1),
                             atol=tol.rel_ops_bound(4), rtol=0)


# ------------------------------------------------------------------------------------------------
# Grain pipeline + teacher-forced forward.


def test_pipeline_batch_and_forward_qwen3(setup):
  cfg, tok, records = setup["cfg"], setup["tok"], setup["records"]
  pcfg = pipeline_config.PipelineConfig(seq_len=640, batch_size=2, max_turns=13, frame_height=FRAME,
                                 frame_width=FRAME, shuffle=False, num_threads=1,
                                 prefetch_buffer_size=2)
  pipe = pipeline.build_pipeline(pipeline.RecordSource(records, synthetic.render_frames), pcfg,
                                 tokenizer=tok, model_config=cfg, process_index=0,
                                 process_count=1)
  assert isinstance(pipe.encoder.proc, processing_qwen3.Qwen3VideoProcessorConfig)
  np.testing.assert_array_equal(pipe.video_grid_thw, GRID)
  batch = next(pipe.iterator())
  want = pipe.abstract_batch()
  assert jax.tree.structure(batch) == jax.tree.structure(want)
  for (path, x), w in zip(jax.tree_util.tree_leaves_with_path(batch), jax.tree.leaves(want)):
    assert (x.shape, x.dtype) == (w.shape, w.dtype), path
  assert batch.pixel_values_videos.shape == (2, 13 * 16, 96)
  assert batch.loss_mask.sum() > 0

  # Row 0 is (record 0, question 0) (no shuffle): its positions are Qwen3-VL's rule and its
  # pixels are the frames resized to 16 x 16, normalised with mean = std = 0.5.
  rec = records[0]
  k = chat_format.num_turns(rec.duration)
  n = int(batch.attention_mask[0].sum())
  ids = batch.input_ids[:1, :n]
  assert int((ids == cfg.video_token_id).sum()) == 4 * k
  pos, _ = qwen3_vl.get_rope_index(ids, video_grid_thw=np.tile(GRID, (k, 1)), config=cfg)
  np.testing.assert_array_equal(batch.position_ids[:, 0, :n], pos[:, 0])
  # (For one-temporal-patch turns the Qwen2.5-VL rule gives the same numbers; what tells the
  # backbones apart in the batch is the pixel normalisation below.)
  frames = processing.resize_frames(synthetic.render_frames(rec)[:2], FRAME, FRAME)
  expect = (frames[:, :4, :4, :].astype(np.float64) / 255 - 0.5) / 0.5
  # float32 x * (1 / 255) - 0.5 (the constant, the product, the difference: 3 roundings on the
  # scale 1), then / 0.5 (doubles them, one rounding of the result, |result| <= 1), against
  # float64: within 2 gamma(4).
  np.testing.assert_allclose(batch.pixel_values_videos[0, 0],
                             expect.transpose(3, 0, 1, 2).reshape(-1), rtol=0,
                             atol=2 * tol.rel_ops_bound(4))

  # Teacher-forced forward on the batch (batched layout, pipeline positions), as the trainers
  # run it; the real tokens of row 0 equal the model's own HF-layout forward of that row
  # (flat pixels of its k turns, positions computed by the model).
  module = models.build(cfg)
  grid_k = np.tile(np.asarray(GRID), (pcfg.max_turns, 1))
  logits = jax.jit(lambda p, b: module.apply(
      {"params": p}, b.input_ids, pixel_values_videos=b.pixel_values_videos,
      video_grid_thw=grid_k, attention_mask=b.attention_mask,
      position_ids=b.position_ids))(setup["params"], batch)
  assert logits.shape == (2, pcfg.seq_len, cfg.text.vocab_size)
  assert np.isfinite(np.asarray(logits)).all()
  ref = module.apply({"params": setup["params"]}, ids,
                     pixel_values_videos=batch.pixel_values_videos[0, :k * 16],
                     video_grid_thw=np.tile(GRID, (k, 1)))
  scale = float(np.abs(ref).max())
  # Batched vs flat layout: two summation orders over the logits' chain (tol.model_path).
  tol.assert_within(tol.max_abs_diff(np.asarray(logits)[0, :n], np.asarray(ref)[0]),
                    tol.model_rel(cfg, pcfg.seq_len) * scale, "backbones: batched vs flat")


# ------------------------------------------------------------------------------------------------
# Streaming sampler.


@pytest.mark.slow
def test_rollout_qwen3_logps_equal_teacher_forcing(setup):
  cfg, tok = setup["cfg"], setup["tok"]
  proc = models.video_processor_config(cfg)
  prompts = []
  for i, k in enumerate((5, 4)):
    rec = setup["records"][i]
    prompts.append(sampling.prompt_from_record(rec, rec.questions[0], synthetic.render_frames(rec),
                                              proc, max_turns=k, frame_size=(FRAME, FRAME)))
  sampler = sampling.StreamingSampler(
      cfg, chat_format.ChatFormat(tok, tokens_per_turn=4),
      sampling.SamplerConfig(temperature=1.0, max_text_tokens=4, user_chunk_len=96,
                            capacity=1024), video_grid=GRID)
  out = sampler.sample(setup["params"], prompts, group_size=2, seed=1)
  assert not out.overflow.any()
  np.testing.assert_array_equal(out.num_turns, [5, 5, 4, 4])
  # Two user buckets: C_user = 96 on the question turn, the small one on the other turns.
  assert sampler.compile_counts() == {"prefix": 1, "user": 2, "decode": 1}
  ref = sampling.teacher_forced_logps(setup["params"], cfg, out)
  sampled, forced = out.loss_mask > 0, out.forced_mask > 0
  assert sampled.sum() >= 2 * 4 * 4
  # Two summation orders (KV cache vs one full forward) of the same log-probs.
  lp = tol.logp_bound(cfg, max(out.input_ids.shape[1], sampler.cfg.capacity),
                      tol.logit_scale(setup["params"], cfg, out))
  tol.assert_within(tol.max_abs_diff(out.old_logps[sampled], ref[sampled]), lp,
                    "qwen3 rollout: sampled log-probs vs teacher forcing")
  tol.assert_within(tol.max_abs_diff(out.old_logps[forced], ref[forced]), lp,
                    "qwen3 rollout: forced log-probs vs teacher forcing")
  for r in range(out.input_ids.shape[0]):
    k = int(out.num_turns[r])
    pos, _ = qwen3_vl.get_rope_index(out.input_ids[r:r + 1], video_grid_thw=out.video_grid_thw[:k],
                                     attention_mask=out.attention_mask[r:r + 1], config=cfg)
    np.testing.assert_array_equal(pos[:, 0], out.position_ids[:, r])


# ------------------------------------------------------------------------------------------------
# Evaluation harness and launcher.


@pytest.mark.slow
def test_harness_evaluates_tiny_qwen3(setup, tmp_path):
  hcfg = harness.HarnessConfig(batch_size=2, frame_height=FRAME, frame_width=FRAME,
                               max_text_tokens=3, progress=False)
  out = harness.evaluate(setup["params"], setup["cfg"], setup["tok"], setup["records"],
                         MatchJudge(), str(tmp_path), hcfg)
  items = harness.benchmark_items(setup["records"])
  results = harness._read_results(os.path.join(str(tmp_path), harness.RESULTS_FILE))
  assert sorted(results) == sorted(it.id for it in items)
  for it in items:
    res = results[it.id]
    assert res["num_turns"] == it.num_turns == len(res["turns"])
    assert not res["overflow"]
  assert out["stats"]["turns"] == sum(it.num_turns for it in items)
  scores = json.load(open(os.path.join(str(tmp_path), "scores.json")))
  assert "decisions" in scores


def test_evaluate_launcher_loads_qwen3(setup, tmp_path):
  """bench/checkpoints.load_model (what launch/evaluate.py loads): a HF Qwen3-VL folder and a
  random model of a qwen3_vl config."""
  from streampro_jax.bench import checkpoints  # pylint: disable=g-import-not-at-top
  ckpt = str(tmp_path / "hf")
  qwen3_vl.save_hf_checkpoint(setup["cfg"], setup["params"], ckpt)
  params, mcfg, tok, train_cfg = checkpoints.load_model(ckpt, config_path=None,
                                                        tokenizer_dir=setup["tok_dir"],
                                                        workdir=str(tmp_path / "w"))
  assert isinstance(mcfg, qwen3_vl.Qwen3_VLConfig) and train_cfg is None
  assert len(tok) == len(setup["tok"])
  np.testing.assert_array_equal(params["visual"]["pos_embed"]["embedding"],
                                setup["params"]["visual"]["pos_embed"]["embedding"])

  config_py = tmp_path / "qwen3_tiny.py"
  config_py.write_text(
      "import ml_collections\n\n\n"
      "def get_config():\n"
      "  c = ml_collections.ConfigDict()\n"
      "  c.seed = 0\n"
      "  c.tokenizer = 'synthetic'\n"
      "  c.model = ml_collections.ConfigDict(dict(family='qwen3_vl', dtype='float32',\n"
      "      attention_impl='xla', tiny_text=dict(num_hidden_layers=2)))\n"
      "  return c\n")
  params, mcfg, tok, train_cfg = checkpoints.load_model(
      "random", config_path=str(config_py), tokenizer_dir=None, workdir=str(tmp_path / "r"))
  assert isinstance(mcfg, qwen3_vl.Qwen3_VLConfig) and mcfg.text.num_hidden_layers == 2
  assert mcfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
  assert "deepstack_merger_list_0" in params["visual"] and train_cfg.model.family == "qwen3_vl"
