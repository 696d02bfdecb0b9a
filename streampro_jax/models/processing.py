"""Qwen2-VL / Qwen2.5-VL video processor in NumPy.

Turns uint8 frames [T, H, W, 3] into the `pixel_values_videos` [N, D] and `video_grid_thw` [1, 3]
that the transformers Qwen2-VL video processor produces, so both libraries can be fed the same
frames:

1. resize every frame to (h, w) = `smart_resize(H, W)`: multiples of factor = patch * merge (28)
   with min_pixels <= h * w <= max_pixels, bicubic through PIL (as transformers' PIL backend does);
2. rescale by 1/255 (in float64, then cast to float32) and normalise with the CLIP mean/std in
   float32: x = (u8 / 255 - mean_c) / std_c;
3. pad the frame count to a multiple of temporal_patch_size by repeating the last frame;
4. patchify: [T, C, H, W] -> [gt, tp, C, gh/m, m, p, gw/m, m, p] -> permuted to
   [gt, gh/m, gw/m, m, m, C, tp, p, p] -> [gt * gh * gw, C * tp * p * p].

Reference used for parity (docs/components.md#video-processor): transformers'
`Qwen2VLImageProcessorPil` (no torchvision needed) has the same resize (PIL bicubic), rescale,
normalisation and spatial patch order; it duplicates a single frame over the temporal axis,
while the video processor interleaves `temporal_patch_size` distinct frames at the same position
(the `tp` axis above). The video layout is therefore the image layout with the tp slot taken from
frame t of the temporal patch.

StreamPro feeds each turn (1 second) as one video of grid (1, gh, gw): `_process_turn` takes exactly
temporal_patch_size frames and returns patches [P, D] with P = gh * gw.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
from PIL import Image

from streampro_jax import _config

__all__ = [
    "ProcessorConfigMixin", "VideoProcessorConfig", "check_aspect_ratio", "check_frames",
    "normalize_frames", "patchify", "process_turns", "resize_frames", "smart_resize"
]

_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ProcessorConfigMixin:
  """`factor`, `patch_dim` and `from_config` of a frozen video-processor config dataclass with
  patch_size, temporal_patch_size, merge_size, image_mean and image_std fields (shared by
  `VideoProcessorConfig` and processing_qwen3.Qwen3VideoProcessorConfig)."""

  @property
  def factor(self) -> int:
    return self.patch_size * self.merge_size

  @property
  def patch_dim(self) -> int:
    """D = 3 * temporal_patch_size * patch_size**2."""
    return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

  @classmethod
  def from_config(cls, cfg: Any):
    """Builds from a mapping / ConfigDict, taking only the keys this class knows (a key left out
    keeps the field's default)."""
    kwargs = _config.field_values(cls, cfg)
    for k in ("image_mean", "image_std"):
      if k in kwargs:
        kwargs[k] = tuple(float(x) for x in kwargs[k])
    return cls(**kwargs)


def check_aspect_ratio(height: int, width: int) -> None:
  """Raises ValueError when max(H, W) / min(H, W) > 200 (as transformers' smart_resize does)."""
  if max(height, width) / min(height, width) > 200:
    raise ValueError(f"absolute aspect ratio must be smaller than 200, got "
                     f"{max(height, width) / min(height, width)} for {height}x{width}")


@dataclasses.dataclass(frozen=True)
class VideoProcessorConfig(ProcessorConfigMixin):
  """Settings of the Qwen2-VL video processor (transformers' names and defaults).

  Attributes:
    min_pixels: lower bound of h * w after resizing (transformers' size["shortest_edge"]).
    max_pixels: upper bound of h * w after resizing (transformers' size["longest_edge"]).
    patch_size: spatial patch size p of the vision encoder (14).
    temporal_patch_size: frames per temporal patch tp (2).
    merge_size: spatial merge m of the patch merger (2); resize factor is p * m.
    image_mean: per-channel mean (CLIP).
    image_std: per-channel std (CLIP).
    do_resize: resize with smart_resize (else frames must already be multiples of p * m).
  """
  min_pixels: int = 128 * 28 * 28
  max_pixels: int = 768 * 28 * 28
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  image_mean: tuple[float, float, float] = _OPENAI_CLIP_MEAN
  image_std: tuple[float, float, float] = _OPENAI_CLIP_STD
  do_resize: bool = True

  def target_size(self, height: int, width: int) -> tuple[int, int]:
    """(h, w) a frame of size (height, width) is resized to."""
    if not self.do_resize:
      return height, width
    return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels,
                        max_pixels=self.max_pixels)

  def grid(self, height: int, width: int) -> tuple[int, int, int]:
    """_Grid (1, gh, gw) of one turn (one temporal patch) for frames of size (height, width)."""
    h, w = self.target_size(height, width)
    return 1, h // self.patch_size, w // self.patch_size


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
  """Target (h, w) of Qwen2-VL's resize rule (transformers `smart_resize`).

  h = round(H / f) * f, w = round(W / f) * f; if h * w > max_pixels: beta = sqrt(H W / max_pixels),
  h = max(f, floor(H / beta / f) * f), w likewise; if h * w < min_pixels:
  beta = sqrt(min_pixels / (H W)), h = ceil(H beta / f) * f, w likewise.

  Args:
    height: H, frame height in pixels.
    width: W, frame width in pixels.
    factor: f = patch_size * merge_size.
    min_pixels: lower bound of h * w.
    max_pixels: upper bound of h * w.

  Returns:
    (h, w), both multiples of factor.

  Raises:
    ValueError: when the aspect ratio exceeds 200 (as transformers does).
  """
  if min(height, width) <= 0:
    raise ValueError(f"frame size must be positive, got {height}x{width}")
  check_aspect_ratio(height, width)
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def resize_frames(frames_thwc: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bicubic resize of uint8 frames [T, H, W, 3] to [T, height, width, 3] with PIL.

  PIL's resize to the same size is the identity, as in the reference.
  """
  frames_thwc = check_frames(frames_thwc)
  t, h, w, _ = frames_thwc.shape
  if (h, w) == (height, width):
    return frames_thwc
  out = np.empty((t, height, width, 3), np.uint8)
  for i in range(t):
    img = Image.fromarray(frames_thwc[i])
    out[i] = np.asarray(img.resize((width, height), resample=Image.Resampling.BICUBIC))
  return out


def normalize_frames(frames_thwc: np.ndarray, mean=_OPENAI_CLIP_MEAN,
                     std=_OPENAI_CLIP_STD) -> np.ndarray:
  """uint8 [T, H, W, 3] -> float32 [T, 3, H, W]: x = float32(u8 * (1/255) in float64); (x - m) / s.

  Same arithmetic (and float32 rounding) as transformers' rescale + normalize, evaluated once per
  (channel, byte value) into a [3, 256] table and gathered (bit-identical, several times faster).
  """
  table = _normalize_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
  out = np.empty((frames_thwc.shape[0], 3) + frames_thwc.shape[1:3], np.float32)
  for c in range(3):
    np.take(table[c], frames_thwc[..., c], out=out[:, c])
  return out


@functools.lru_cache(maxsize=8)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  """f32[3, 256]: the normalised value of every byte value in every channel."""
  x = (np.arange(256, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
  return ((x[None, :] - np.asarray(mean, np.float32)[:, None])
          / np.asarray(std, np.float32)[:, None]).astype(np.float32)


def patchify(video_tchw: np.ndarray, patch_size: int = 14, merge_size: int = 2,
             temporal_patch_size: int = 2) -> tuple[np.ndarray, tuple[int, int, int]]:
  """Flattens a normalised video [T, C, H, W] into patches in the HF Qwen2-VL order.

  The frame count is padded to a multiple of tp by repeating the last frame. With
  gt = T / tp, gh = H / p, gw = W / p, m = merge_size:
  [gt, tp, C, gh/m, m, p, gw/m, m, p] -> transpose to [gt, gh/m, gw/m, m, m, C, tp, p, p]
  -> reshape [gt * gh * gw, C * tp * p * p].

  Returns:
    (patches [gt*gh*gw, C*tp*p*p] in the input dtype, (gt, gh, gw)).
  """
  t, c, h, w = video_tchw.shape
  p, m, tp = patch_size, merge_size, temporal_patch_size
  if h % (p * m) or w % (p * m):
    raise ValueError(f"frame size {h}x{w} is not a multiple of patch*merge = {p * m}")
  if pad := -t % tp:
    video_tchw = np.concatenate([video_tchw, np.repeat(video_tchw[-1:], pad, axis=0)], axis=0)
    t += pad
  gt, gh, gw = t // tp, h // p, w // p
  x = video_tchw.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  return x.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def _process_video(frames_thwc: np.ndarray,
                  config: VideoProcessorConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The whole processor for one video: uint8 [T, H, W, 3] -> (pixel_values_videos, video_grid_thw).

  Args:
    frames_thwc: uint8 frames [T, H, W, 3] (RGB).
    config: processor settings (defaults: transformers' Qwen2VLVideoProcessor defaults).

  Returns:
    pixel_values_videos f32[gt*gh*gw, 3*tp*p*p] and video_grid_thw i64[1, 3] = [[gt, gh, gw]].
  """
  config = config or VideoProcessorConfig()
  frames_thwc = check_frames(frames_thwc)
  h, w = config.target_size(frames_thwc.shape[1], frames_thwc.shape[2])
  frames_thwc = resize_frames(frames_thwc, h, w)
  x = normalize_frames(frames_thwc, config.image_mean, config.image_std)
  patches, grid = patchify(x, config.patch_size, config.merge_size, config.temporal_patch_size)
  return patches, np.asarray([grid], np.int64)


_Grid = tuple[int, int, int]


def _process_turn(frames_thwc: np.ndarray,
                 config: VideoProcessorConfig | None = None) -> tuple[np.ndarray, _Grid]:
  """One turn (one second): tp frames [tp, H, W, 3] -> (patches f32[gh*gw, D], (1, gh, gw)).

  Raises:
    ValueError: when the number of frames is not temporal_patch_size.
  """
  config = config or VideoProcessorConfig()
  frames_thwc = check_frames(frames_thwc)
  if frames_thwc.shape[0] != config.temporal_patch_size:
    raise ValueError(f"a turn takes temporal_patch_size={config.temporal_patch_size} frames, "
                     f"got {frames_thwc.shape[0]}")
  patches, grid = _process_video(frames_thwc, config)
  return patches, tuple(int(g) for g in grid[0])


def process_turns(frames_kthwc: np.ndarray,
                  config: VideoProcessorConfig | None = None) -> tuple[np.ndarray, _Grid]:
  """K turns at once: uint8 [K, tp, H, W, 3] -> (patches f32[K, gh*gw, D], (1, gh, gw)).

  Row k equals _process_turn(frames_kthwc[k]).
  """
  config = config or VideoProcessorConfig()
  k, tp = frames_kthwc.shape[:2]
  if tp != config.temporal_patch_size:
    raise ValueError(f"a turn takes temporal_patch_size={config.temporal_patch_size} frames, "
                     f"got frames of shape {frames_kthwc.shape}")
  flat = frames_kthwc.reshape(k * tp, *frames_kthwc.shape[2:])
  patches, grid = _process_video(flat, config)
  gt, gh, gw = (int(g) for g in grid[0])
  # Patches are ordered temporal patch first, so turn k is the k-th block of gh*gw rows.
  return patches.reshape(gt, gh * gw, -1), (1, gh, gw)


def check_frames(frames_thwc: np.ndarray) -> np.ndarray:
  """frames as a uint8 array [T, H, W, 3] with T >= 1 (ValueError otherwise)."""
  frames_thwc = np.asarray(frames_thwc)
  if frames_thwc.ndim != 4 or frames_thwc.shape[-1] != 3:
    raise ValueError(f"frames must be [T, H, W, 3], got shape {frames_thwc.shape}")
  if frames_thwc.dtype != np.uint8:
    raise ValueError(f"frames must be uint8, got {frames_thwc.dtype}")
  if frames_thwc.shape[0] == 0:
    raise ValueError("no frames (T = 0)")
  return frames_thwc

