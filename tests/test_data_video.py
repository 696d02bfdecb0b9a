"""Decoding real video files made here with PyAV (libx264 and mpeg4)."""

import os

import numpy as np
import pytest

from streampro_jax.data import video

FPS = 8


def _frames(num_frames, h=48, w=64):
  """Frame i is flat grey level 9*i (mod 256) in R, 100 in G, and a blue corner square."""
  fr = np.zeros((num_frames, h, w, 3), np.uint8)
  for i in range(num_frames):
    fr[i, :, :, 0] = (9 * i) % 256
    fr[i, :, :, 1] = 100
    fr[i, :8, :8, 2] = 200
  return fr


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  d = tmp_path_factory.mktemp("clips")
  out = {}
  for codec in ("libx264", "mpeg4"):
    path = str(d / f"clip_{codec}.mp4")
    video._encode_video(path, _frames(int(3.5 * FPS)), fps=FPS, codec=codec)
    out[codec] = path
  return out


def test_turn_sample_times():
  np.testing.assert_allclose(video._turn_sample_times(3, 2),
                             [[0.25, 0.75], [1.25, 1.75], [2.25, 2.75]])
  np.testing.assert_allclose(video._turn_sample_times(1, 4), [[0.125, 0.375, 0.625, 0.875]])
  assert video._num_turns_for(3.5) == 4
  assert video._num_turns_for(3.0) == 3
  assert video._num_turns_for(0.2) == 1


@pytest.mark.parametrize("codec,tol", [("libx264", 3), ("mpeg4", 8)])
def test_decode_turns_frame_count_and_values(clips, codec, tol):
  info = video.probe(clips[codec])
  assert info.duration == pytest.approx(3.5)
  assert (info.height, info.width) == (48, 64)
  dec = video.decode_turns(clips[codec], frames_per_turn=2)
  # 3.5 s -> K = 4 turns of 2 frames.
  assert dec.frames.shape == (4, 2, 48, 64, 3)
  assert dec.frames.dtype == np.uint8
  assert dec.duration == pytest.approx(3.5)
  # Sample time t shows frame floor(t * 8): 0.25 -> 2, 0.75 -> 6, 1.25 -> 10, ...; 3.75 is past
  # the last frame (27, at 3.375 s) and shows it.
  want_idx = np.array([[2, 6], [10, 14], [18, 22], [26, 27]])
  want_red = (9 * want_idx) % 256
  got_red = dec.frames[:, :, 20:30, 20:40, 0].astype(np.int32).mean(axis=(2, 3))
  np.testing.assert_allclose(got_red, want_red, atol=tol)
  np.testing.assert_allclose(dec.frames[:, :, 20:30, 20:40, 1].mean(), 100, atol=tol)
  np.testing.assert_allclose(dec.frames[:, :, 2:6, 2:6, 2].mean(), 200, atol=2 * tol)


def test_decode_with_resize_policy(clips):
  policy = video.ResizePolicy(max_pixels=28 * 28 * 4)
  dec = video.decode_turns(clips["libx264"], num_turns=2, resize=policy)
  # 48x64 -> round to 56x56 (3136 <= 3136).
  assert dec.frames.shape == (2, 2, 56, 56, 3)
  fixed = video.decode_turns(clips["libx264"], num_turns=1,
                             resize=video.ResizePolicy(height=28, width=56))
  assert fixed.frames.shape == (1, 2, 28, 56, 3)
  np.testing.assert_allclose(fixed.frames[0, 0, :, :, 1].mean(), 100, atol=3)


def test_too_many_turns_is_an_error(clips):
  with pytest.raises(video.VideoError, match="clip_libx264.mp4: video is 3.500 s long but 9"):
    video.decode_turns(clips["libx264"], num_turns=9)


def test_errors_name_the_file(tmp_path):
  missing = str(tmp_path / "nope.mp4")
  with pytest.raises(video.VideoError, match="nope.mp4: file not found") as e:
    video.decode_turns(missing)
  assert e.value.path == missing
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  with pytest.raises(video.VideoError, match="empty.mp4: zero-length"):
    video.decode_turns(str(empty))
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(os.urandom(2048))
  with pytest.raises(video.VideoError, match="garbage.mp4: cannot open"):
    video.probe(str(garbage))
  text = tmp_path / "notes.txt"
  text.write_text("hello, this is not a video\n" * 20)
  with pytest.raises(video.VideoError, match="notes.txt"):
    video.decode_turns(str(text), num_turns=1)


def test_audio_only_file_is_unsupported(tmp_path):
  import av
  path = str(tmp_path / "tone.wav")
  with av.open(path, mode="w") as c:
    s = c.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    for p in s.encode(frame):
      c.mux(p)
    for p in s.encode():
      c.mux(p)
  with pytest.raises(video.VideoError, match="tone.wav: unsupported: the file has no video"):
    video.decode_turns(path, num_turns=1)


def test_truncated_file_is_an_error_or_decodes_its_prefix(tmp_path, clips):
  data = open(clips["libx264"], "rb").read()
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(data[: len(data) // 3])
  # A cut mp4 loses its index (moov atom at the end): opening must fail naming the file.
  with pytest.raises(video.VideoError, match="cut.mp4"):
    video.decode_turns(str(cut), num_turns=1)
