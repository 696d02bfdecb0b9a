"""Parity of models/processing_qwen3.py with transformers' Qwen3-VL processor code.

The Qwen3-VL video processor needs torchvision (not importable here beside torch 2.13), so:
- the resize rule, frame sampling, patchify, timestamps and prompt placeholders are compared with
  the transformers functions themselves, called without instantiating the processor classes;
- the pixels are compared with the PIL image-processor path (`Qwen2VLImageProcessorPil`, which
  Qwen3-VL uses for images) configured as Qwen3-VL (patch 16, mean/std 0.5).
"""

import types

import numpy as np
import pytest
import torch
from transformers import Qwen2VLImageProcessorPil
import transformers.models.qwen3_vl.processing_qwen3_vl as hf_proc
# Imported as a submodule (not through the lazy package attribute, which insists on torchvision).
import transformers.models.qwen3_vl.video_processing_qwen3_vl as hf_vproc
from transformers.video_utils import VideoMetadata

from streampro_jax.models import processing_qwen3 as pq


@pytest.mark.parametrize("t,h,w,min_px,max_px", [
    (2, 480, 640, 128 * 32 * 32, 768 * 32 * 32),   # downscale
    (2, 40, 50, 128 * 32 * 32, 768 * 32 * 32),     # upscale
    (8, 720, 1280, 128 * 32 * 32, 768 * 32 * 32),  # frame count matters
    (3, 20, 90, 16 * 32 * 32, 64 * 32 * 32),       # smaller than the factor, odd T
    (2, 64, 96, 4 * 32 * 32, 64 * 32 * 32),        # identity
    (16, 333, 250, 32 * 32, 256 * 32 * 32),
])
def test_smart_resize_video_matches_transformers(t, h, w, min_px, max_px):
  ref = hf_vproc.smart_resize(t, h, w, temporal_factor=2, factor=32, min_pixels=min_px,
                              max_pixels=max_px)
  assert pq._smart_resize_video(t, h, w, 2, 32, min_px, max_px) == tuple(ref)


def test_smart_resize_video_rejects_short_clip():
  with pytest.raises(ValueError, match="t:1"):
    pq._smart_resize_video(1, 64, 64)


@pytest.mark.parametrize("total,video_fps,num_frames", [
    (300, 30.0, None), (7, 30.0, None), (10000, 25.0, None), (97, None, None), (50, 10.0, 6)])
def test_sample_frame_indices_matches_transformers(total, video_fps, num_frames):
  cfg = pq.Qwen3VideoProcessorConfig()
  stub = types.SimpleNamespace(fps=cfg.fps, min_frames=cfg.min_frames, max_frames=cfg.max_frames)
  meta = VideoMetadata(total_num_frames=total, fps=video_fps)
  ref = hf_vproc.Qwen3VLVideoProcessor.sample_frames(stub, meta, num_frames=num_frames,
                                                     fps=None if num_frames else cfg.fps)
  mine = pq._sample_frame_indices(total, video_fps, cfg, num_frames=num_frames)
  np.testing.assert_array_equal(mine, ref)


def test_sample_frame_indices_hand_computed():
  # 10 s at 30 fps, 2 fps -> 20 frames: round(linspace(0, 299, 20)).
  idx = pq._sample_frame_indices(300, 30.0)
  assert len(idx) == 20 and idx[0] == 0 and idx[-1] == 299 and idx[1] == 16  # 299/19 = 15.7


@pytest.mark.parametrize("indices,fps", [
    ([0, 15, 30, 45], 30.0), ([0, 12, 25], 25.0), (list(range(0, 100, 7)), 24.0), ([5], 2.0)])
def test_frame_timestamps_match_transformers(indices, fps):
  ref = hf_proc.Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
  assert pq._frame_timestamps(indices, fps, 2) == pytest.approx(ref, abs=0, rel=0)


def test_frame_timestamps_hand_computed():
  # Frames 0,15 | 30,45 at 30 fps -> (0 + 0.5)/2 = 0.25 and (1 + 1.5)/2 = 1.25.
  assert pq._frame_timestamps([0, 15, 30, 45], 30.0) == [0.25, 1.25]


def test_video_placeholder_matches_transformers_replace_video_token():
  grid = np.array([[3, 4, 6]])
  indices = [0, 10, 20, 30, 40, 50]
  stub = types.SimpleNamespace(
      video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
      vision_start_token=pq._VISION_START, vision_end_token=pq._VISION_END,
      video_token=pq._VIDEO_PAD, _calculate_timestamps=lambda *a: (
          hf_proc.Qwen3VLProcessor._calculate_timestamps(None, *a)))
  meta = VideoMetadata(total_num_frames=60, fps=20.0, frames_indices=indices)
  ref = hf_proc.Qwen3VLProcessor.replace_video_token(
      stub, {"video_grid_thw": grid, "video_metadata": [meta]}, 0)
  mine = pq._video_placeholder(grid[0], pq._frame_timestamps(indices, 20.0), merge_size=2)
  assert mine == ref
  assert mine.startswith("<0.2 seconds><|vision_start|>")
  assert mine.count(pq._VIDEO_PAD) == 3 * 6


def test_mm_token_type_ids():
  ids = np.array([[1, 7, 9, 9, 8, 3], [9, 9, 2, 2, 7, 0]])
  out = pq._mm_token_type_ids(ids, image_token_id=7, video_token_id=9)
  np.testing.assert_array_equal(out, [[0, 1, 2, 2, 0, 0], [2, 2, 0, 0, 1, 0]])


@pytest.mark.parametrize("t,h,w", [(2, 32, 32), (3, 64, 96), (6, 96, 64)])
def test_patchify_matches_transformers_qwen3_video_patchify(t, h, w):
  x = torch.from_numpy(np.random.RandomState(t).randn(1, t, 3, h, w).astype(np.float32))
  ref, gt, gh, gw = hf_vproc.Qwen3VLVideoProcessor.patchify(None, x, 16, 2, 2)
  from streampro_jax.models import processing  # pylint: disable=g-import-not-at-top
  mine, grid = processing.patchify(x[0].numpy(), 16, 2, 2)
  assert grid == (gt, gh, gw)
  np.testing.assert_array_equal(mine, ref[0].numpy())


@pytest.mark.parametrize("h,w,min_px,max_px", [
    (90, 120, 16 * 32 * 32, 32 * 32 * 32),
    (200, 150, 32 * 32, 64 * 32 * 32),
    (64, 64, 4 * 32 * 32, 64 * 32 * 32),
])
def test_process_video_matches_transformers_pil_path(h, w, min_px, max_px):
  """Two distinct frames = one temporal patch; each tp slot equals the image processor's frame.

  For T = tp = 2 the video rule bounds 2 h w by (min, max), i.e. h w by (min/2, max/2), which is
  the image rule with halved bounds (frames >= 32 px, so no pre-scaling).
  """
  frames = np.random.RandomState(h + w).randint(0, 256, (2, h, w, 3), dtype=np.uint8)
  cfg = pq.Qwen3VideoProcessorConfig(min_pixels=min_px, max_pixels=max_px)
  pv, grid = pq._process_video(frames, cfg)
  ref = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                 image_mean=list(pq._IMAGENET_STANDARD_MEAN),
                                 image_std=list(pq._IMAGENET_STANDARD_STD),
                                 size={"shortest_edge": min_px // 2, "longest_edge": max_px // 2})
  out = ref(images=list(frames), return_tensors="np")
  ref_pv, ref_grid = out["pixel_values"], out["image_grid_thw"]
  _, gh, gw = ref_grid[0]
  assert grid.tolist() == [[1, int(gh), int(gw)]]
  per_frame = ref_pv.reshape(2, gh * gw, 3, 2, 16, 16)[:, :, :, 0]
  expected = np.stack([per_frame[0], per_frame[1]], axis=2).reshape(gh * gw, -1)
  assert pv.dtype == np.float32
  np.testing.assert_array_equal(pv, expected)


def test_process_turns_shapes_and_rows():
  cfg = pq.Qwen3VideoProcessorConfig(min_pixels=4 * 32 * 32, max_pixels=16 * 32 * 32)
  frames = np.random.RandomState(0).randint(0, 256, (3, 2, 64, 64, 3), dtype=np.uint8)
  patches, grid = pq.process_turns(frames, cfg)
  assert grid == (1, 4, 4) and patches.shape == (3, 16, cfg.patch_dim)
  one, _ = pq._process_video(frames[1], cfg)
  np.testing.assert_array_equal(patches[1], one)
  assert cfg.tokens_per_turn(64, 64) == 4
  assert pq._turn_timestamp(3) == 3.5 and pq._turn_timestamp(3, [3.25, 3.75]) == 3.5
