"""streampro_jax/live.py and launch/stream.py: live sessions on the harness's sampler."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from streampro_jax import live, sampling
from streampro_jax.bench import harness, streampro_f1

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Values here are host-side float64 arithmetic (Python floats) of a few dozen operations on
# values of order one, compared with hand-computed references: tol.approx64, rel and abs
# gamma_64 in float64 (7e-15) (tests/helpers/tolerances.py).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frames(k, seed=0, tp=2, size=16):
  return np.random.default_rng(seed).integers(0, 256, (k, tp, size, size, 3), dtype=np.uint8)


@pytest.mark.slow
def test_session_equals_the_benchmark_sampler(tiny_random_model):
  """Turn by turn, a LiveSession gives the messages StreamingSampler.sample gives on the whole
  stream (same sampler settings): what users watch is what the benchmark measures."""
  params, mcfg, tok = tiny_random_model
  cfg = live.LiveConfig(frame_height=16, frame_width=16, max_text_tokens=6)
  model = live.LiveModel(params, mcfg, tok, cfg)
  frames = _frames(6)
  session = model.new_session("s")
  got = [session.step(frames[k], ["What colour is the circle?"] if k == 2 else ())
         for k in range(6)]
  sampler = harness.make_sampler(mcfg, tok, cfg.harness_config(),
                                 user_chunk_len=model.user_chunk_len, capacity=model.capacity)
  patches = np.stack([model.patches(f) for f in frames])
  prompt = sampling.StreamPrompt(patches, "What colour is the circle?", ask_turn=2)
  want = sampler.sample(params, [prompt], group_size=1)
  assert [r.message for r in got] == want.messages[0]
  assert [r.decision for r in got] == [sampling.DECISION_NAMES[int(d)] for d in want.decisions[0]]
  assert [r.time for r in got] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  assert got[2].questions == ("What colour is the circle?",)
  assert not any(r.overflow for r in got)


def test_session_skips_seconds_and_forces_answers(tiny_random_model):
  params, mcfg, tok = tiny_random_model
  model = live.LiveModel(params, mcfg, tok, live.LiveConfig(
      frame_height=16, frame_width=16, max_text_tokens=4, force_response_at_ask=True))
  s = model.new_session()
  frames = _frames(3)
  assert s.step(frames[0]).turn == 0
  r = s.step(frames[1], ["Where is it?"], turn=5)   # seconds 1-4 dropped
  assert (r.turn, r.time, r.decision) == (5, 6.0, "response") and r.text
  with pytest.raises(ValueError, match="turns must increase"):
    s.step(frames[2], turn=3)
  with pytest.raises(live.QuestionTooLong, match="max_question_tokens"):
    s.step(frames[2], ["word " * 200])


def test_iter_video_and_folder_follow_the_decoder_rule(tmp_path):
  """Incremental decoding gives data/video.py's frames (t = k + (j + 0.5) / 2)."""
  from PIL import Image
  from streampro_jax.data import video
  frames = np.zeros((12, 16, 16, 3), np.uint8)
  for i in range(12):
    frames[i] = i * 20   # 4 fps, 3 s: a different grey per frame
  path = str(tmp_path / "v.mp4")
  video._encode_video(path, frames, fps=4)
  want = video.decode_turns(path, frames_per_turn=2).frames
  got = list(live._iter_video(path, frames_per_turn=2))
  assert [k for k, _ in got] == [0, 1, 2]
  np.testing.assert_array_equal(np.stack([f for _, f in got]), want)
  folder = tmp_path / "frames"
  folder.mkdir()
  for i in range(6):   # 2 fps, 3 s
    Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(folder / f"{i:03d}.png")
  got = list(live.iter_source(str(folder), frames_per_turn=2, folder_fps=2.0))
  assert [int(f[j, 0, 0, 0]) for _, f in got for j in range(2)] == [0, 40, 80, 120, 160, 200]


def test_transcript_results_are_scored_by_the_harness_scorers(tmp_path):
  path = str(tmp_path / "t.jsonl")
  w = live.TranscriptWriter(path, "clip")
  decisions = ["silence", "silence", "response", "silence", "response"]
  texts = ["", "", "red", "", "blue"]
  for k, (d, x) in enumerate(zip(decisions, texts)):
    w.turn(live.TurnResult(k, float(k + 1), d, x, "", ("colour?",) if k == 1 else (), 0.01,
                           False))
  w.summary({"turns": 5})
  w.close()
  turns, summary = live._read_transcript(path)
  assert summary["turns"] == 5 and len(turns) == 5
  (res,) = live._transcript_results(turns, task="OU")
  assert res["id"] == "clip/q0" and res["ask_turn"] == 1
  assert res["predictions"] == [[3.0, "red"], [5.0, "blue"]]
  item = {"id": res["id"], "task": "OU", "question": "colour?",
          "answers": [{"text": "red", "time": 3.0}], "predictions": res["predictions"]}
  from streampro_jax import judges
  scores = streampro_f1.score_benchmark([item], judges.MatchJudge())
  qa = scores["per_qa"][0]
  # red at 3 s matches the answer (at 3 s) exactly: S = 1; blue does
  # not: P = 1/2, R = 1.
  assert qa["recall"] == tol.approx64(1.0) and qa["precision"] == tol.approx64(0.5)
  with open(path, "a", encoding="utf-8") as f:
    f.write('{"kind": "turn", "tur')   # killed mid-write: the torn last line is skipped
  assert len(live._read_transcript(path)[0]) == 5
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"kind": "what"}\n')
  with pytest.raises(ValueError, match="bad.jsonl:1: field 'kind'"):
    live._read_transcript(str(bad))


@pytest.mark.slow
def test_stream_command_writes_the_transcript(tmp_path):
  """launch/stream.py --checkpoint=random on a generated 6 s video: one line per second,
  questions at their seconds, forced answers there, the summary and the latency report."""
  from streampro_jax.data import video
  frames = np.zeros((24, 32, 32, 3), np.uint8)
  for i in range(24):
    frames[i, :, : (i * 2) % 32] = 220
  path = str(tmp_path / "clip.mp4")
  video._encode_video(path, frames, fps=4)
  transcript = str(tmp_path / "out" / "t.jsonl")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "stream.py"), "--checkpoint=random",
       f"--video={path}", "--question=What is moving?@2.5", "--question=Tell me when it stops",
       f"--transcript={transcript}", "--force_response_at_ask", "--max_text_tokens=4",
       "--silence_every=0"],
      capture_output=True, text=True, timeout=240, env=env, cwd=str(tmp_path))
  assert out.returncode == 0, out.stderr[-3000:]
  turns, summary = live._read_transcript(transcript)
  assert [t["turn"] for t in turns] == list(range(6))
  assert [t["time"] for t in turns] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  assert turns[0]["questions"] == ["Tell me when it stops"]
  assert turns[2]["questions"] == ["What is moving?"]
  assert all(not t["questions"] for k, t in enumerate(turns) if k not in (0, 2))
  assert turns[0]["decision"] == turns[2]["decision"] == "response"
  assert all(t["decision"] in ("silence", "response", "invalid") for t in turns)
  assert summary["turns"] == 6 and summary["dropped"] == 0 and summary["median_ms"] > 0
  assert "[    2s] Q: What is moving?" in out.stdout
  assert "latency median" in out.stdout and "real-time factor" in out.stdout
  results = live._transcript_results(turns)
  assert [r["ask_turn"] for r in results] == [0, 2]
  assert json.dumps(results)   # JSON-able, as results.jsonl lines


@pytest.mark.slow
def test_stream_command_ctrl_c_keeps_the_transcript(tmp_path):
  """SIGINT while streaming in real time: exit 0, every finished turn and the summary kept."""
  import signal
  import time
  from streampro_jax.data import video
  path = str(tmp_path / "long.mp4")
  video._encode_video(path, np.zeros((60 * 2, 16, 16, 3), np.uint8), fps=2)   # 60 s
  transcript = str(tmp_path / "t.jsonl")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "launch", "stream.py"), "--checkpoint=random",
       f"--video={path}", "--realtime", "--silence_every=1", "--max_text_tokens=2",
       f"--transcript={transcript}"],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=str(tmp_path))
  try:
    deadline = time.monotonic() + 180
    seen = 0
    for line in proc.stdout:   # bounded: 60 s of video, and the deadline
      seen += "silent for" in line
      if seen >= 2 or time.monotonic() > deadline:
        break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=240)   # a loaded CI machine may still be compiling
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0
  assert "interrupted" in rest and "latency median" in rest
  turns, summary = live._read_transcript(transcript)
  assert summary is not None and summary["interrupted"] is True
  assert 2 <= len(turns) < 60 and summary["turns"] == len(turns)
  assert [t["turn"] for t in turns] == sorted(t["turn"] for t in turns)
