"""Parity of models/processing.py with transformers' Qwen2-VL processors."""

import ast
import os

import numpy as np
import pytest
import torch
from transformers import Qwen2VLImageProcessorPil
import transformers.models.qwen2_vl as hf_qwen2_vl

from streampro_jax.models import processing

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# (H, W, min_pixels, max_pixels): downscale, upscale, odd aspect, identity, large budget.
SIZES = [
    (50, 70, 56 * 56, 28 * 28 * 64),
    (100, 37, 56 * 56, 28 * 28 * 16),
    (224, 336, 56 * 56, 28 * 28 * 1280),
    (480, 640, 3136, 28 * 28 * 40),
    (30, 30, 28 * 28 * 20, 28 * 28 * 80),
    (56, 84, 56 * 56, 28 * 28 * 100),
]


def _reference_video(frames, min_pixels, max_pixels):
  """Video layout built from transformers' PIL image processor, frame by frame.

  The image processor resizes/normalises each frame and duplicates it over the temporal axis:
  its rows are [P, C, tp, p, p] with both tp slots equal. The video layout puts frame 2i in tp
  slot 0 and frame 2i+1 in slot 1 of temporal patch i.
  """
  ref = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
  out = ref(images=list(frames), return_tensors="np")
  pv, grid = out["pixel_values"], out["image_grid_thw"]
  t = len(frames)
  _, gh, gw = grid[0]
  per_frame = pv.reshape(t, gh * gw, 3, 2, 14, 14)
  np.testing.assert_array_equal(per_frame[:, :, :, 0], per_frame[:, :, :, 1])
  per_frame = per_frame[:, :, :, 0]
  video = np.stack([per_frame[0::2], per_frame[1::2]], axis=3)  # [gt, P, C, tp, p, p]
  return video.reshape(t // 2 * gh * gw, -1), (t // 2, int(gh), int(gw))


@pytest.mark.parametrize("h,w,min_pixels,max_pixels", SIZES)
def test_process_video_matches_transformers_pil_path(h, w, min_pixels, max_pixels):
  frames = np.random.RandomState(h * w).randint(0, 256, (4, h, w, 3), dtype=np.uint8)
  cfg = processing.VideoProcessorConfig(min_pixels=min_pixels, max_pixels=max_pixels)
  pv, grid = processing._process_video(frames, cfg)
  ref_pv, ref_grid = _reference_video(frames, min_pixels, max_pixels)
  assert grid.tolist() == [list(ref_grid)]
  assert pv.dtype == np.float32
  np.testing.assert_array_equal(pv, ref_pv)  # exact, not approximate


def _hf_video_patchify():
  """transformers' own Qwen2VLVideoProcessor.patchify, run without importing torchvision.

  The module imports torchvision at the top, which does not import beside torch 2.13 here, so the
  function's source is taken from the installed transformers file and compiled with torch alone.
  """
  path = os.path.join(os.path.dirname(hf_qwen2_vl.__file__), "video_processing_qwen2_vl.py")
  with open(path) as f:
    tree = ast.parse(f.read())
  cls = next(n for n in tree.body
             if isinstance(n, ast.ClassDef) and n.name == "Qwen2VLVideoProcessor")
  fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "patchify")
  ns = {"torch": torch}
  exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), ns)  # noqa: S102
  return ns["patchify"]


@pytest.mark.parametrize("t,h,w", [(2, 28, 28), (3, 56, 84), (6, 84, 56)])
def test_patchify_matches_transformers_video_patchify(t, h, w):
  hf_patchify = _hf_video_patchify()
  x = torch.from_numpy(np.random.RandomState(t).randn(1, t, 3, h, w).astype(np.float32))
  ref, gt, gh, gw = hf_patchify(None, x, 14, 2, 2)
  mine, grid = processing.patchify(x[0].numpy(), 14, 2, 2)
  assert grid == (gt, gh, gw)
  np.testing.assert_array_equal(mine, ref[0].numpy())


def test_smart_resize_pinned_values():
  # round(50/28)*28 = 56, round(70/28)*28 = 56, inside [3136, 50176].
  assert processing.smart_resize(50, 70, 28, 56 * 56, 28 * 28 * 64) == (56, 56)
  # 480x640 over 31360 px: beta = sqrt(307200/31360) = 3.1298; floor(153.4/28)*28 = 140,
  # floor(204.5/28)*28 = 196.
  assert processing.smart_resize(480, 640, 28, 3136, 28 * 28 * 40) == (140, 196)
  # 30x30 under 15680 px: beta = sqrt(15680/900) = 4.174; ceil(125.2/28)*28 = 140.
  assert processing.smart_resize(30, 30, 28, 28 * 28 * 20, 28 * 28 * 80) == (140, 140)
  with pytest.raises(ValueError, match="aspect ratio"):
    processing.smart_resize(10, 2100)


def test_odd_frame_count_repeats_last_frame():
  frames = np.random.RandomState(0).randint(0, 256, (3, 28, 28, 3), dtype=np.uint8)
  pv, grid = processing._process_video(frames, processing.VideoProcessorConfig(min_pixels=784))
  pv4, grid4 = processing._process_video(np.concatenate([frames, frames[-1:]]),
                                        processing.VideoProcessorConfig(min_pixels=784))
  assert grid.tolist() == grid4.tolist() == [[2, 2, 2]]
  np.testing.assert_array_equal(pv, pv4)


def test_process_turn_and_turns_agree_with_whole_video():
  cfg = processing.VideoProcessorConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 6)
  frames = np.random.RandomState(1).randint(0, 256, (3, 2, 60, 90, 3), dtype=np.uint8)
  turns, grid = processing.process_turns(frames, cfg)
  # round(60/28)*28 = 56, round(90/28)*28 = 84; 56*84 = 4704 <= max_pixels.
  assert grid == cfg.grid(60, 90) == (1, 4, 6)
  assert turns.shape == (3, 24, cfg.patch_dim) and cfg.patch_dim == 1176
  whole, whole_grid = processing._process_video(frames.reshape(6, 60, 90, 3), cfg)
  assert whole_grid.tolist() == [[3, 4, 6]]
  np.testing.assert_array_equal(turns.reshape(-1, cfg.patch_dim), whole)
  for k in range(3):
    one, g = processing._process_turn(frames[k], cfg)
    assert g == (1, 4, 6)
    np.testing.assert_array_equal(one, turns[k])
  with pytest.raises(ValueError, match="temporal_patch_size=2 frames, got 3"):
    processing._process_turn(frames[0].repeat(2, axis=0)[:3], cfg)


def test_normalize_pinned_value():
  x = np.full((1, 1, 1, 3), 255, np.uint8)
  got = processing.normalize_frames(x)[0, :, 0, 0]
  want = (1.0 - np.array(processing._OPENAI_CLIP_MEAN)) / np.array(processing._OPENAI_CLIP_STD)
  # float32 (255 / 255 - mean) / std vs float64: the constants' roundings (2), the difference
  # and the quotient (2): 4 roundings, relative (the value, ~1.6-1.9, has no cancellation).
  np.testing.assert_allclose(got, want, rtol=tol.rel_ops_bound(4))


def test_config_from_mapping():
  cfg = processing.VideoProcessorConfig.from_config(
      {"min_pixels": 784, "max_pixels": 3136, "unrelated": 1, "image_mean": [0.5, 0.5, 0.5]})
  assert cfg.min_pixels == 784 and cfg.max_pixels == 3136 and cfg.image_mean == (0.5, 0.5, 0.5)
