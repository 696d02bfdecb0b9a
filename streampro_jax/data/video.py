"""Video decoding with PyAV: 1 turn per second, `frames_per_turn` frames per turn.

Turn k covers [k, k+1) seconds. Its frames are sampled at evenly spaced times inside that second,
t_kj = k + (j + 0.5) / n for j = 0..n-1 (n = frames_per_turn = the model's temporal_patch_size;
for n = 2: k + 0.25 and k + 0.75). The frame shown at time t is the last decoded frame whose
presentation time is <= t (the first frame for t before it, the last frame for t after the end).
Times are measured from the stream's first frame.

Frames are resized by a `ResizePolicy` (bicubic through PIL, the same resize as the processor in
models/processing.py), so frames stored at build time need no further resize in the pipeline.

Every failure raises `VideoError`, which names the file: missing, unreadable/corrupt, without a
video stream (unsupported), or zero-length (no decodable frame).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import av
import numpy as np

from streampro_jax import _config
from streampro_jax.models import processing

__all__ = ["ResizePolicy", "VideoError", "decode_frames_at", "decode_turns", "open_video", "probe",
           "DecodedVideo", "VideoInfo"]


class VideoError(ValueError):
  """A video file that cannot be used; `path` names it and `reason` says why."""

  def __init__(self, path: str, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{path}: {reason}")


@dataclasses.dataclass(frozen=True)
class ResizePolicy:
  """How decoded frames are resized.

  Exactly one mode applies: `height` and `width` both set -> that fixed size; else
  `max_pixels` set -> processing.smart_resize(H, W, factor, min_pixels, max_pixels) (multiples of
  factor = 28, as the Qwen2-VL processor); else the native size.
  """
  max_pixels: int | None = None
  min_pixels: int = 56 * 56
  height: int | None = None
  width: int | None = None
  factor: int = 28

  def target(self, height: int, width: int) -> tuple[int, int]:
    if (self.height is None) != (self.width is None):
      raise ValueError(f"ResizePolicy needs both height and width, got {self.height}x{self.width}")
    if self.height is not None:
      return int(self.height), int(self.width)
    if self.max_pixels is not None:
      return processing.smart_resize(height, width, factor=self.factor,
                                     min_pixels=self.min_pixels, max_pixels=self.max_pixels)
    return height, width

  @classmethod
  def from_config(cls, cfg: Any | None) -> ResizePolicy:
    """From a mapping / ConfigDict with any of the attribute names (None -> native size); a key
    left out keeps the field's default."""
    return cls(**_config.field_values(cls, cfg))


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What `probe` finds: duration in seconds, average fps, frame size (H, W), codec name."""
  path: str
  duration: float
  fps: float
  height: int
  width: int
  codec: str


@dataclasses.dataclass
class DecodedVideo:
  """Frames of K turns: uint8 [K, n, H, W, 3], the times they were sampled at f64[K, n], and the
  video's own duration in seconds."""
  frames: np.ndarray
  times: np.ndarray
  duration: float


def _num_turns_for(duration: float) -> int:
  """K = ceil(duration), at least 1 (turn k covers [k, k+1) s)."""
  if not duration > 0:
    raise ValueError(f"duration must be > 0 s, got {duration}")
  return max(1, math.ceil(duration - 1e-6))


def _turn_sample_times(num_turns: int, frames_per_turn: int) -> np.ndarray:
  """t[k, j] = k + (j + 0.5) / n: f64[K, n] sample times (seconds) of each turn's frames."""
  k = np.arange(num_turns, dtype=np.float64)[:, None]
  j = np.arange(frames_per_turn, dtype=np.float64)[None, :]
  return k + (j + 0.5) / frames_per_turn


# Demuxers that turn any text file into a "video" (ffmpeg's tty/ANSI-art reader).
_NOT_VIDEO_FORMATS = frozenset({"tty"})


def open_video(path: str):
  """av.open of a video file; VideoError (naming the file) when it is missing, a folder, not a
  video or unreadable."""
  if not os.path.exists(path):
    raise VideoError(path, "file not found")
  if os.path.isdir(path):
    raise VideoError(path, "is a directory, not a video file")
  if os.path.getsize(path) == 0:
    raise VideoError(path, "zero-length file (0 bytes)")
  try:
    container = av.open(path)
  except av.FFmpegError as e:
    raise VideoError(path, f"cannot open as a video (corrupt or unsupported format): {e}") from e
  if not container.streams.video:
    container.close()
    raise VideoError(path, "unsupported: the file has no video stream")
  if container.format.name in _NOT_VIDEO_FORMATS:
    name = container.format.name
    container.close()
    raise VideoError(path, f"unsupported: ffmpeg reads it as {name!r} (text), not a video")
  return container


def probe(path: str) -> VideoInfo:
  """Reads the container header: duration (s), fps, height, width, codec. Raises VideoError."""
  path = os.fspath(path)
  container = open_video(path)
  try:
    stream = container.streams.video[0]
    duration = None
    if stream.duration is not None and stream.time_base is not None:
      duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
      duration = container.duration / av.time_base
    fps = float(stream.average_rate) if stream.average_rate else 0.0
    if duration is None or duration <= 0:
      raise VideoError(path, f"zero-length or unknown duration ({duration})")
    return VideoInfo(path=path, duration=duration, fps=fps, height=stream.height,
                     width=stream.width, codec=stream.codec_context.name)
  finally:
    container.close()


def decode_frames_at(path: str, times: Sequence[float],
                     resize: ResizePolicy | None = None) -> tuple[np.ndarray, float]:
  """Frames shown at the given times (seconds from the first frame).

  Args:
    path: video file.
    times: non-decreasing sample times [N].
    resize: resize policy (None: native size).

  Returns:
    (uint8 [N, h, w, 3] RGB frames, duration of the video in seconds = last frame time + 1/fps).

  Raises:
    VideoError: missing, corrupt, unsupported or zero-length file.
  """
  path = os.fspath(path)
  resize = resize or ResizePolicy()
  times = np.asarray(times, np.float64)
  if times.ndim != 1 or np.any(np.diff(times) < 0):
    raise ValueError(f"times must be a non-decreasing 1-D sequence, got shape {times.shape}")
  container = open_video(path)
  out: list[np.ndarray | None] = [None] * len(times)
  try:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    start_pts = None
    prev_frame = None
    prev_rgb = None
    last_time = 0.0
    idx = 0
    n_frames = 0

    def rgb_of(frame):
      arr = frame.to_ndarray(format="rgb24")
      h, w = resize.target(arr.shape[0], arr.shape[1])
      return processing.resize_frames(arr[None], h, w)[0]

    try:
      for frame in container.decode(stream):
        if frame.pts is None:
          t = n_frames / rate if rate else float(n_frames)
        else:
          if start_pts is None:
            start_pts = frame.pts
          t = float((frame.pts - start_pts) * frame.time_base)
        n_frames += 1
        last_time = t
        while idx < len(times) and times[idx] < t:
          if prev_frame is None:  # Before the first frame: use the first frame.
            prev_frame, prev_rgb = frame, rgb_of(frame)
          elif prev_rgb is None:
            prev_rgb = rgb_of(prev_frame)
          out[idx] = prev_rgb
          idx += 1
        prev_frame, prev_rgb = frame, None
        if idx == len(times):
          # Keep a running duration estimate from the header when we stop early.
          break
    except av.FFmpegError as e:
      raise VideoError(path, f"corrupt video: decoding failed after {n_frames} frames: {e}") from e
    if n_frames == 0:
      raise VideoError(path, "zero-length video: no frame could be decoded")
    if idx < len(times):
      prev_rgb = rgb_of(prev_frame) if prev_rgb is None else prev_rgb
      for i in range(idx, len(times)):
        out[i] = prev_rgb
    frame_dt = 1.0 / rate if rate else 0.0
    duration = last_time + frame_dt
    if stream.duration is not None and stream.time_base is not None:
      duration = max(duration, float(stream.duration * stream.time_base))
  finally:
    container.close()
  if not out:
    return np.zeros((0, 0, 0, 3), np.uint8), duration
  return np.stack(out), duration


def decode_turns(path: str, *, frames_per_turn: int = 2, num_turns: int | None = None,
                 resize: ResizePolicy | None = None) -> DecodedVideo:
  """Decodes a video into turns of one second: uint8 frames [K, n, h, w, 3].

  Args:
    path: video file.
    frames_per_turn: n, frames sampled inside each second (the model's temporal_patch_size).
    num_turns: K; None takes ceil(duration) from the container header. A K that the video cannot
      nearly fill (K > ceil(video duration) + 1) raises VideoError; the last second of a video
      slightly shorter than K seconds repeats its last frame.
    resize: resize policy (None: native size).

  Returns:
    DecodedVideo(frames [K, n, h, w, 3], times f64[K, n], duration of the video in seconds).
  """
  path = os.fspath(path)
  if frames_per_turn < 1:
    raise ValueError(f"frames_per_turn must be >= 1, got {frames_per_turn}")
  if num_turns is None:
    num_turns = _num_turns_for(probe(path).duration)
  times = _turn_sample_times(num_turns, frames_per_turn)
  frames, duration = decode_frames_at(path, times.reshape(-1), resize)
  if num_turns > math.ceil(duration - 1e-6) + 1:
    raise VideoError(path, f"video is {duration:.3f} s long but {num_turns} turns were requested")
  return DecodedVideo(frames=frames.reshape(num_turns, frames_per_turn, *frames.shape[1:]),
                      times=times, duration=duration)


def _encode_video(path: str, frames_thwc: np.ndarray, fps: float = 8.0, codec: str = "libx264",
                 crf: int = 0) -> None:
  """Writes uint8 RGB frames [T, H, W, 3] to a video file (tests, demos, synthetic exports).

  libx264 uses yuv444p with the given crf (0 = lossless) so pixel values survive the round trip
  (up to the RGB <-> YUV conversion); other codecs use yuv420p. H and W must be even for yuv420p.
  """
  frames_thwc = np.asarray(frames_thwc)
  if frames_thwc.ndim != 4 or frames_thwc.shape[-1] != 3 or frames_thwc.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames_thwc.dtype} "
                     f"{frames_thwc.shape}")
  from fractions import Fraction
  with av.open(os.fspath(path), mode="w") as container:
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
    stream.width = frames_thwc.shape[2]
    stream.height = frames_thwc.shape[1]
    if codec == "libx264":
      stream.pix_fmt = "yuv444p"
      stream.options = {"crf": str(crf), "preset": "ultrafast"}
    else:
      stream.pix_fmt = "yuv420p"
      if codec == "mpeg4":
        stream.options = {"qscale": "1"}
    for arr in frames_thwc:
      frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
