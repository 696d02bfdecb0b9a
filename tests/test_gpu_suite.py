"""benchmarks/gpu_suite.py: every part of issue 33's device script runs end to end on CPU with
--tiny, writes its JSON lines with the header fields, and the script and every module its parts
import load without what the GPU image lacks."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_suite.py")
ABSENT_ON_GPU = ("grain", "tensorflow_datasets", "av", "ml_collections", "tensorboardX")


@pytest.mark.slow
def test_tiny_suite_runs_its_own_parts(tmp_path):
  out = tmp_path / "suite.jsonl"
  # The sft and decode parts call benchmarks/gpu_train_step.py's and rollout_decode.py's
  # functions, run --tiny by tests/test_gpu_benchmark.py and tests/test_bench_rollout_decode.py
  # (fp8 and dots_attn by tests/test_fp8.py); this runs the parts only the suite has (CI budget).
  proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--parts=grpo,live",
                         "--live_seconds", "6", "--frames_search", "2", f"--out={out}"],
                        capture_output=True, text=True, timeout=1500, cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  errors = [r for r in rows if "error" in r]
  assert not errors, errors
  for r in rows:
    for key in ("commit", "date", "machine", "load_before", "load_after", "versions", "command"):
      assert key in r, (key, r["part"])
  parts = {r["part"] for r in rows}
  assert {"grpo/step", "grpo/frames_search", "live"} <= parts, parts
  steps = [r for r in rows if r["part"] == "grpo/step"]
  assert len(steps) == 2 and all(r["rows"] == 8 and r["overflow"] == 0 for r in steps)
  # The sampler's and the trainer's log-probs are the same function of the same weights on the
  # first step (float32 on CPU): they agree closely.
  assert steps[0]["behaviour_corr"] > 0.99, steps[0]
  search = next(r for r in rows if r["part"] == "grpo/frames_search")
  assert search["largest_fitting_turns"] == 2, search
  live = next(r for r in rows if r["part"] == "live")
  assert live["seconds_of_video"] == 6 and live["p95_s"] >= live["p50_s"] > 0
  assert not live["overflow"]


def test_suite_imports_only_what_the_gpu_image_has():
  code = ("import sys; sys.argv = ['x']; import runpy; "
          f"sys.path.insert(0, {os.path.join(ROOT, 'benchmarks')!r}); "
          f"m = runpy.run_path({SCRIPT!r}, run_name='bench'); "
          "import gpu_train_step, live_stream, rollout_decode; "
          "from streampro_jax import grpo, live, models, parallel, sampling; "
          "from streampro_jax.data import chat_format, synthetic, tokenizer; "
          "from streampro_jax.train import grpo_step, optim, setup, sft, state; "
          f"bad = [n for n in {ABSENT_ON_GPU!r} if n in sys.modules]; print(bad)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
