"""launch/write_rubrics.py end to end against a local OpenAI-compatible stub server (good, malformed
and failing replies; resume), and the GRPO reward scorer reading the written rubrics."""

import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from launch import write_rubrics  # noqa: E402
from streampro_jax import judges, prompts  # noqa: E402
from streampro_jax.data import pipeline, schema, synthetic, video  # noqa: E402
from streampro_jax.train import grpo_rewards  # noqa: E402
import loopback_http  # noqa: E402  pylint: disable=g-bad-import-order
from helpers import tolerances as tol  # noqa: E402  pylint: disable=g-bad-import-order
from test_grpo_trainer import _rollout_batch  # noqa: E402

DIMS = ("granularity", "coherence", "coverage")


def _items(word):
  """Six rubric items; three name a quoted word the match judge can look for."""
  out = []
  for i in range(6):
    text = (f'The answer must mention "{word}".' if i % 2 == 0
            else f'The answer shall not mention "never{i}".')
    out.append({"rubric_id": i + 1, "dimension": DIMS[i % 3], "rubric": text})
  return out


class _Server(loopback_http.LoopbackServer):
  """Chat completions: the rubric-writer prompt's question picks the reply."""

  def __init__(self):
    self.mode = "first"
    self.asked: list[str] = []
    self.bodies: list[dict] = []
    outer = self

    class Handler(loopback_http.JSONHandler):

      def do_POST(self):  # noqa: N802
        body = self.read_json()
        content = body["messages"][-1]["content"]
        outer.bodies.append(body)
        prompt = content if isinstance(content, str) else content[0]["text"]
        question = prompt.split("\n", 1)[0]
        outer.asked.append(question)
        if outer.mode == "first" and "FAILQ" in question:
          data, status = b'{"error": "boom"}', 500
        else:
          if outer.mode == "first" and "MALFORMEDQ" in question:
            content = json.dumps([it["rubric"] for it in _items("x")])  # plain strings
          else:
            content = json.dumps(_items(question.split()[-1]))
          data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
          status = 200
        self.send_json(data, status)

    self.start(Handler)


@pytest.fixture()
def server():
  with _Server() as s:
    yield s


def _record(rid, question, answer_text, rubric=None):
  q = {"id": "q0", "task": "OU", "ask_time": 0.0, "question": question,
       "answers": [{"time": 3.0, "text": answer_text}]}
  if rubric is not None:
    q["rubric"] = rubric
  return {"id": rid, "video": "synth://x", "duration": 10.0, "questions": [q]}


def _input(tmp_path):
  path = tmp_path / "rl.jsonl"
  rows = [_record("v0", "OKQ What is red? circle", "red circle"),
          _record("v1", "MALFORMEDQ What is blue? square", "blue square"),
          _record("v2", "FAILQ What is green? star", "green star"),
          _record("v3", "KEPTQ Which? any", "x", rubric=['Mentions "kept".'])]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _judge(server, **kw):
  cfg = dict(base_url=server.base_url, model="m", api_key_env=None, timeout_s=5.0,
             max_retries=0, backoff_s=0.01)
  cfg.update(kw)
  return judges.OpenAIJudge(judges.OpenAIJudgeConfig(**cfg))


def test_write_rubrics_end_to_end_resume_and_trainer_reads_them(server, tmp_path):
  src, out = _input(tmp_path), tmp_path / "rl.rubrics.jsonl"
  judge = _judge(server)
  summary = write_rubrics.write_rubrics(str(src), str(out), judge, batch_size=2,
                                        frames_per_clip=0)
  judge.close()
  assert (summary["questions"], summary["kept"], summary["written"], summary["failed"]) == (
      4, 1, 1, 2)
  assert [(f["record_id"], f["line"]) for f in summary["failures"]] == [("v1", 2), ("v2", 3)]
  assert summary["judge"]["malformed"] == 1 and summary["judge"]["failures"] == 2
  assert len(server.asked) == 3                                # KEPTQ is never asked
  records, _ = schema.load_jsonl(str(out))                     # a valid annotation file
  by_id = {r.id: r for r in records}
  assert [r.id for r in records] == ["v0", "v1", "v2", "v3"]  # input order
  assert by_id["v0"].questions[0].rubric == tuple(it["rubric"] for it in _items("circle"))
  assert by_id["v0"].meta["rubric_items"]["q0"] == _items("circle")
  assert by_id["v0"].meta["rubric_writer"]["video_frames"] == 0   # the text-only writer
  assert all(isinstance(b["messages"][-1]["content"], str) for b in server.bodies)
  assert by_id["v1"].questions[0].rubric is None and by_id["v2"].questions[0].rubric is None
  assert by_id["v3"].questions[0].rubric == ('Mentions "kept".',)
  listed = [json.loads(l) for l in open(str(out) + ".failures.jsonl")]
  assert [f["record_id"] for f in listed] == ["v1", "v2"]

  # Resume: only the two failed questions are asked again; v0's rubric is kept as written.
  server.mode = "second"
  server.asked.clear()
  judge = _judge(server)
  summary = write_rubrics.write_rubrics(str(src), str(out), judge, batch_size=8,
                                        frames_per_clip=0)
  judge.close()
  assert (summary["kept"], summary["written"], summary["failed"]) == (2, 2, 0)
  assert sorted(q.split()[1] for q in server.asked) == ["FAILQ", "MALFORMEDQ"]
  assert open(str(out) + ".failures.jsonl").read() == ""

  # The GRPO trainer's scorer reads them (config.reward.rubrics_file) for the input's records,
  # which carry no rubric themselves.
  rubrics, policy = grpo_rewards._rubrics_from_config({"rubrics_file": str(out)})
  assert policy == "error" and rubrics[("v0", "q0")] == tuple(
      it["rubric"] for it in _items("circle"))
  rec = schema.parse_record(_record("v0", "OKQ What is red? circle", "red circle"))
  s, r = "</Silence>", "</Response>"
  rows = [[s, s, r + " red circle"] + [s] * 7,          # mentions "circle": 6 / 6 pass
          [s, s, r + " never3 blue"] + [s] * 7]          # no "circle", says "never3": 2 / 6
  scorer = grpo_rewards.RewardScorer(judges.MatchJudge(), tau=8.0, max_turns=10,
                                     max_answers=4, max_checks=8, rubrics=rubrics)
  got = scorer.score(_rollout_batch(rows, 2), [(rec, 0)])
  # A ratio of counts, in float32 or float64: one division.
  np.testing.assert_allclose(got["reward_traj"], [1.0, 2 / 6], rtol=tol.rel_ops_bound(1))
  assert got["rubric_fallbacks"].tolist() == [0, 0]
  # Without the file, the same record has no rubric: a clear error.
  with pytest.raises(ValueError, match="'v0' question 'q0' has no rubric"):
    grpo_rewards.RewardScorer(judges.MatchJudge(), max_turns=10, max_answers=4).score(
        _rollout_batch(rows, 2), [(rec, 0)])
  with pytest.raises(ValueError, match="missing_rubric"):
    grpo_rewards._rubrics_from_config({"missing_rubric": "skip"})


def test_write_rubrics_command_line(server, tmp_path):
  src, out = _input(tmp_path), tmp_path / "out.jsonl"
  cfg = json.dumps({"kind": "openai", "base_url": server.base_url, "model": "m",
                    "api_key_env": None, "max_retries": 0, "timeout_s": 5.0})
  cmd = [sys.executable, os.path.join(ROOT, "launch", "write_rubrics.py"), f"--input={src}",
         f"--output={out}", f"--judge={cfg}", "--batch_size=3", "--frames_per_clip=0"]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
  assert r.returncode == 1, r.stderr[-2000:]          # two questions failed
  assert "1 rubrics kept, 1 written, 2 failed" in r.stdout
  assert "record 'v2' question 'q0'" in r.stdout and f"{src}:3:" in r.stdout
  server.mode = "second"
  r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
  assert r.returncode == 0, r.stdout + r.stderr[-2000:]
  assert "2 rubrics kept, 2 written, 0 failed" in r.stdout


def _decode_data_url(url):
  assert url.startswith("data:image/jpeg;base64,")
  img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
  assert img.format == "JPEG"
  return np.asarray(img.convert("RGB"), np.int32)


def test_clip_frames_pick_the_frame_shown_at_each_time(tmp_path):
  # SynthStream: frame i shows time (i + 1) / fps; 4 frames of a clip of duration D sit at
  # (k + 0.5) D / 4, so at fps f the frame index is floor(t f) - 1.
  rec = synthetic.make_record("train", 0)
  spec, dur = rec.meta["synth"], rec.duration
  times, frames = pipeline.clip_frames(rec, 4)
  np.testing.assert_array_equal(times, (np.arange(4) + 0.5) * dur / 4)
  want = [int(np.floor(t * spec["fps"])) - 1 for t in times]
  np.testing.assert_array_equal(frames, synthetic.render_frames(rec)[want])
  # A real file: one flat colour per second; the frame at (k + 0.5) * 4 / 4 s is second k's.
  colours = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], np.uint8)
  clip = np.repeat(colours, 8, axis=0)[:, None, None, :] * np.ones((1, 32, 32, 1), np.uint8)
  video._encode_video(str(tmp_path / "c.mp4"), clip, fps=8.0)
  real = schema.parse_record(dict(_record("r", "q", "a"), video="c.mp4", duration=4.0),
                             file=str(tmp_path / "x.jsonl"))
  times, frames = pipeline.clip_frames(real, 4)
  np.testing.assert_array_equal(times, [0.5, 1.5, 2.5, 3.5])
  # Lossless x264 in yuv444p: the RGB -> YUV -> RGB round trip moves a value by a few levels.
  np.testing.assert_allclose(frames.mean(axis=(1, 2)), colours, atol=4)


def test_rubric_writer_sees_the_video(server, tmp_path):
  """The paper's writer: frames of each clip go with the question as OpenAI image_url parts; the
  file records how many; a clip that cannot be read fails its questions with the reason."""
  rec = synthetic.make_record("train", 1)
  row = rec.to_json()
  row["questions"] = [dict(row["questions"][0], question="OKQ What happens? ball")]
  row["questions"][0].pop("rubric", None)                       # SynthStream writes its own
  bad = dict(_record("v9", "OKQ Where? gone", "x"), video="missing.mp4")
  src, out = tmp_path / "rl.jsonl", tmp_path / "out.jsonl"
  src.write_text(json.dumps(row) + "\n" + json.dumps(bad) + "\n")
  judge = _judge(server)
  summary = write_rubrics.write_rubrics(str(src), str(out), judge, frames_per_clip=3)
  judge.close()
  assert (summary["written"], summary["failed"]) == (1, 1)
  assert summary["failures"][0]["record_id"] == "v9"
  assert "missing.mp4" in summary["failures"][0]["reason"]
  (body,) = server.bodies                                      # v9 is never sent
  parts = body["messages"][-1]["content"]
  assert [p["type"] for p in parts] == ["text"] + ["text", "image_url"] * 3
  assert prompts._RUBRIC_WRITE_WITH_FRAMES.format(n=3) in parts[0]["text"]
  assert prompts._RUBRIC_WRITE_TEXT_ONLY not in parts[0]["text"]
  times, frames = pipeline.clip_frames(rec, 3)
  assert [p["text"] for p in parts[1::2]] == [f"{round(float(t), 2):g}s:" for t in times]
  for p, frame in zip(parts[2::2], frames):
    got = _decode_data_url(p["image_url"]["url"])
    assert got.shape == frame.shape
    # JPEG at quality 90 on flat synthetic shapes: mean error well under 4 levels of 255.
    assert np.abs(got - frame).mean() < 4.0
  records, _ = schema.load_jsonl(str(out))
  assert records[0].meta["rubric_writer"]["video_frames"] == 3
  assert records[0].questions[0].rubric == tuple(it["rubric"] for it in _items("ball"))
  # A judge that cannot take images refuses frames instead of dropping them.
  with pytest.raises(ValueError, match="cannot take images"):
    judges._LLMJudge(backend_id="x").write_rubrics(["q"], [[(1.0, "a")]], frames=[[(0.5, "u")]])


def test_writer_down_stops_after_two_empty_batches(tmp_path):
  """Issue 28: with the judge down every batch still ran all its retries. Nothing listens on the
  port: each request fails at once; two batches in a row with nothing written stop the run."""
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as sock:                        # a free port, closed again: refused
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  src, out = tmp_path / "rl.jsonl", tmp_path / "out.jsonl"
  src.write_text("".join(json.dumps(_record(f"v{i}", f"OKQ q{i}? x", "a")) + "\n"
                         for i in range(5)))
  judge = judges.OpenAIJudge(judges.OpenAIJudgeConfig(
      base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key_env=None, timeout_s=2.0,
      max_retries=0))
  summary = write_rubrics.write_rubrics(str(src), str(out), judge, batch_size=1,
                                        frames_per_clip=0)
  judge.close()
  assert summary["failed"] == 2 and summary["judge"]["calls"] == 2
  assert "last 2 batches" in summary["stopped"] and "3 questions not asked" in summary["stopped"]
  assert [r.questions[0].rubric for r in schema.load_jsonl(str(out))[0]] == [None] * 5
