"""Qwen3-VL video processing in NumPy: resize rule, frame sampling, timestamps, placeholders.

The transformers Qwen3-VL video processor (`Qwen3VLVideoProcessor` + `Qwen3VLProcessor`) differs
from the Qwen2-VL one (`streampro_jax.models.processing`) in:

1. patch size 16 (resize factor f = patch * merge = 32) and the "standard" mean = std = 0.5;
2. a resize rule that counts the frames: with t_bar = round(T / tp) * tp,
   if t_bar * h * w > max_pixels then beta = sqrt(T H W / max_pixels) (see `_smart_resize_video`);
   frames smaller than f are first scaled up so that min(H, W) >= f;
3. frame sampling at `fps` frames per second: n = clip(int(total / video_fps * fps), min_frames,
   max_frames, total), indices = round(linspace(0, total - 1, n));
4. timestamps: each temporal patch (tp frames) gets the mean of its first and last frame's time,
   t = (idx_first / video_fps + idx_last / video_fps) / 2, and the prompt holds, per temporal patch,
   "<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * (gh * gw / m^2) + "<|vision_end|>";
   the video grid is split into one (1, gh, gw) block per temporal patch in the model's M-RoPE;
5. the processor returns `_mm_token_type_ids` (0 text, 1 image, 2 video).

Resize, rescale/normalise and patchify are the arithmetic of `processing.py` with these settings
(the patch order is the same). Reference for parity (docs/components.md#qwen3-processor):
transformers' `Qwen3VLVideoProcessor` needs torchvision, which does not import here next to torch
2.13, so the tests compare against the PIL image-processor path (`Qwen2VLImageProcessorPil`, the
image processor Qwen3-VL uses, with patch 16 and mean/std 0.5; a single frame duplicated over the
temporal axis equals a video of two identical frames), and against the transformers code of
`smart_resize`, `sample_frames` and `_calculate_timestamps`/`replace_video_token` called directly.
torchvision resizes tensors with antialiased bicubic filtering, PIL with its own bicubic filter;
the two differ by about one grey level, which is the only documented deviation from the video
processor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from streampro_jax.models import processing

__all__ = ["Qwen3VideoProcessorConfig", "process_turns"]

_IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
_IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)

# Token strings of the Qwen3-VL tokenizer (same as Qwen2.5-VL).
_VISION_START = "<|vision_start|>"
_VISION_END = "<|vision_end|>"
_VIDEO_PAD = "<|video_pad|>"
_IMAGE_PAD = "<|image_pad|>"

_TEXT_TYPE, _IMAGE_TYPE, _VIDEO_TYPE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Qwen3VideoProcessorConfig(processing.ProcessorConfigMixin):
  """Settings of the Qwen3-VL video processor (transformers' names and defaults).

  Attributes:
    min_pixels: size["shortest_edge"], lower bound of t_bar * h * w (128 * 32 * 32).
    max_pixels: size["longest_edge"], upper bound of t_bar * h * w (768 * 32 * 32).
    patch_size: spatial patch size p (16).
    temporal_patch_size: frames per temporal patch tp (2).
    merge_size: spatial merge m (2); resize factor is p * m.
    image_mean: per-channel mean (0.5).
    image_std: per-channel std (0.5).
    fps: frames sampled per second of video (2).
    min_frames: lower bound of sampled frames (4).
    max_frames: upper bound of sampled frames (768).
    do_resize: resize with `_smart_resize_video`.
  """
  min_pixels: int = 128 * 32 * 32
  max_pixels: int = 768 * 32 * 32
  patch_size: int = 16
  temporal_patch_size: int = 2
  merge_size: int = 2
  image_mean: tuple[float, float, float] = _IMAGENET_STANDARD_MEAN
  image_std: tuple[float, float, float] = _IMAGENET_STANDARD_STD
  fps: float = 2.0
  min_frames: int = 4
  max_frames: int = 768
  do_resize: bool = True

  def target_size(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
    """(h, w) that `num_frames` frames of size (height, width) are resized to."""
    if not self.do_resize:
      return height, width
    return _smart_resize_video(num_frames, height, width, temporal_factor=self.temporal_patch_size,
                              factor=self.factor, min_pixels=self.min_pixels,
                              max_pixels=self.max_pixels)

  def turn_grid(self, height: int, width: int) -> tuple[int, int, int]:
    """Grid (1, gh, gw) of one streaming turn (tp frames of size (height, width))."""
    h, w = self.target_size(self.temporal_patch_size, height, width)
    return 1, h // self.patch_size, w // self.patch_size

  def grid(self, height: int, width: int) -> tuple[int, int, int]:
    """Same as `turn_grid` (the name `processing.VideoProcessorConfig` uses)."""
    return self.turn_grid(height, width)

  def tokens_per_turn(self, height: int, width: int) -> int:
    """Visual tokens of one turn: gh * gw / m^2."""
    _, gh, gw = self.turn_grid(height, width)
    return gh * gw // (self.merge_size ** 2)


def _smart_resize_video(num_frames: int, height: int, width: int, temporal_factor: int = 2,
                       factor: int = 32, min_pixels: int = 128 * 32 * 32,
                       max_pixels: int = 768 * 32 * 32) -> tuple[int, int]:
  """Target (h, w) of the Qwen3-VL video resize rule (transformers qwen3_vl `smart_resize`).

  If H < f or W < f: s = max(f / H, f / W), H = int(H s), W = int(W s). Then
  h = round(H / f) f, w = round(W / f) f, t_bar = round(T / tf) tf;
  if t_bar h w > max_pixels: beta = sqrt(T H W / max_pixels), h = max(f, floor(H / beta / f) f),
  w likewise; elif t_bar h w < min_pixels: beta = sqrt(min_pixels / (T H W)),
  h = ceil(H beta / f) f, w likewise.

  Args:
    num_frames: T, frames in the clip (must be >= temporal_factor).
    height: H; width: W (pixels).
    temporal_factor: tf, the temporal patch size.
    factor: f = patch_size * merge_size.
    min_pixels, max_pixels: bounds of t_bar * h * w.

  Returns:
    (h, w), multiples of f.
  """
  if num_frames < temporal_factor:
    raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
  if min(height, width) <= 0:
    raise ValueError(f"frame size must be positive, got {height}x{width}")
  if height < factor or width < factor:
    scale = max(factor / height, factor / width)
    height, width = int(height * scale), int(width * scale)
  processing.check_aspect_ratio(height, width)
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  t_bar = round(num_frames / temporal_factor) * temporal_factor
  if t_bar * h_bar * w_bar > max_pixels:
    beta = math.sqrt((num_frames * height * width) / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif t_bar * h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (num_frames * height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def _sample_frame_indices(total_num_frames: int, video_fps: float | None,
                         config: Qwen3VideoProcessorConfig | None = None, *,
                         num_frames: int | None = None) -> np.ndarray:
  """Frame indices the Qwen3-VL processor samples (transformers `sample_frames`).

  n = num_frames if given, else clip(int(total / video_fps * fps), min_frames, max_frames, total)
  (video_fps defaults to 24 when unknown); indices = round(linspace(0, total - 1, n)).

  Returns:
    i64[n] frame indices.
  """
  config = config or Qwen3VideoProcessorConfig()
  if num_frames is None:
    video_fps = 24.0 if video_fps is None else video_fps
    num_frames = int(total_num_frames / video_fps * config.fps)
    num_frames = min(max(num_frames, config.min_frames), config.max_frames, total_num_frames)
  return np.linspace(0, total_num_frames - 1, num_frames).round().astype(np.int64)


def _frame_timestamps(indices: Sequence[int] | np.ndarray, video_fps: float,
                     temporal_patch_size: int = 2) -> list[float]:
  """Seconds of each temporal patch (transformers `Qwen3VLProcessor._calculate_timestamps`).

  The indices are padded to a multiple of tp with the last index; patch j covering frames
  i_{j tp} .. i_{j tp + tp - 1} gets t_j = (i_{j tp} / fps + i_{j tp + tp - 1} / fps) / 2.
  """
  idx = [int(i) for i in np.asarray(indices).reshape(-1)]
  if not idx:
    raise ValueError("no frame indices")
  if len(idx) % temporal_patch_size:
    idx.extend(idx[-1] for _ in range(temporal_patch_size - len(idx) % temporal_patch_size))
  secs = [i / video_fps for i in idx]
  return [(secs[i] + secs[i + temporal_patch_size - 1]) / 2
          for i in range(0, len(secs), temporal_patch_size)]


def _video_placeholder(grid_thw: Sequence[int], timestamps: Sequence[float],
                      merge_size: int = 2) -> str:
  """Prompt text that replaces one <|video_pad|> of a Qwen3-VL prompt (`replace_video_token`).

  For each temporal patch j: "<{t_j:.1f} seconds><|vision_start|>" + "<|video_pad|>" * n +
  "<|vision_end|>", n = gh * gw / merge_size^2. grid_thw = (gt, gh, gw); len(timestamps) >= gt.
  """
  gt, gh, gw = (int(g) for g in grid_thw)
  if len(timestamps) < gt:
    raise ValueError(f"{len(timestamps)} timestamps for a video of {gt} temporal patches")
  n = gh * gw // (merge_size ** 2)
  return "".join(f"<{timestamps[j]:.1f} seconds>{_VISION_START}{_VIDEO_PAD * n}{_VISION_END}"
                 for j in range(gt))


def _turn_timestamp(turn: int, frame_times: Sequence[float] | None = None) -> float:
  """Qwen3-VL timestamp of streaming turn k (the second [k, k+1)).

  With the sampled frames' times t_0 .. t_{tp-1} (seconds) it is (t_0 + t_{tp-1}) / 2, as the
  processor computes it; without them the frames are taken as evenly spread inside the second
  and the timestamp is the middle k + 0.5 **[choice]**.
  """
  if frame_times is None:
    return turn + 0.5
  return (float(frame_times[0]) + float(frame_times[-1])) / 2


def _mm_token_type_ids(input_ids: np.ndarray, *, image_token_id: int, video_token_id: int
                      ) -> np.ndarray:
  """0 for text, 1 for <|image_pad|>, 2 for <|video_pad|> (the processor's _mm_token_type_ids).

  input_ids: int[..., T] -> i32[..., T].
  """
  ids = np.asarray(input_ids)
  out = np.zeros(ids.shape, np.int32)
  out[ids == image_token_id] = _IMAGE_TYPE
  out[ids == video_token_id] = _VIDEO_TYPE
  return out


def _process_video(frames_thwc: np.ndarray, config: Qwen3VideoProcessorConfig | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """uint8 frames [T, H, W, 3] (already sampled) -> (pixel_values_videos, video_grid_thw).

  Resize all frames to `_smart_resize_video(T, H, W)` (PIL bicubic), x = (u8 / 255 - 0.5) / 0.5,
  pad T to a multiple of tp with the last frame, patchify in the Qwen order.

  Returns:
    pixel_values_videos f32[gt*gh*gw, 3*tp*p*p] and video_grid_thw i64[1, 3] = [[gt, gh, gw]].
  """
  config = config or Qwen3VideoProcessorConfig()
  frames_thwc = processing.check_frames(frames_thwc)
  t, height, width = frames_thwc.shape[:3]
  if t < config.temporal_patch_size:
    # transformers' smart_resize rejects clips shorter than one temporal patch.
    raise ValueError(f"t:{t} must be larger than temporal_factor:{config.temporal_patch_size}")
  h, w = config.target_size(t, height, width)
  frames_thwc = processing.resize_frames(frames_thwc, h, w)
  x = processing.normalize_frames(frames_thwc, config.image_mean, config.image_std)
  patches, grid = processing.patchify(x, config.patch_size, config.merge_size,
                                      config.temporal_patch_size)
  return patches, np.asarray([grid], np.int64)


def process_turns(frames_kthwc: np.ndarray, config: Qwen3VideoProcessorConfig | None = None
                  ) -> tuple[np.ndarray, tuple[int, int, int]]:
  """K streaming turns: uint8 [K, tp, H, W, 3] -> (patches f32[K, gh*gw, D], (1, gh, gw)).

  Each turn is processed as its own video of tp frames (so its resize budget is that of one
  temporal patch, as when the turn is fed alone), giving grid (1, gh, gw) per turn.
  """
  config = config or Qwen3VideoProcessorConfig()
  frames_kthwc = np.asarray(frames_kthwc)
  if frames_kthwc.ndim != 5 or frames_kthwc.shape[1] != config.temporal_patch_size:
    raise ValueError(f"turn frames must be [K, tp={config.temporal_patch_size}, H, W, 3], got "
                     f"shape {frames_kthwc.shape}")
  if not config.do_resize and frames_kthwc.shape[0] > 0:
    # No resize: every turn has the same size, and patchify orders patches temporal patch
    # first, so the K turns can be processed as one video of K temporal patches.
    k, tp = frames_kthwc.shape[:2]
    flat = processing.check_frames(frames_kthwc.reshape(k * tp, *frames_kthwc.shape[2:]))
    x = processing.normalize_frames(flat, config.image_mean, config.image_std)
    patches, (gt, gh, gw) = processing.patchify(x, config.patch_size, config.merge_size,
                                                config.temporal_patch_size)
    return patches.reshape(gt, gh * gw, -1), (1, int(gh), int(gw))
  out, grid = [], None
  for k in range(frames_kthwc.shape[0]):
    patches, g = _process_video(frames_kthwc[k], config)
    out.append(patches)
    grid = tuple(int(v) for v in g[0])
  return np.stack(out), grid
