"""benchmarks/gpu_train_step.py --tiny: the GPU benchmark's code paths (scanned init, remat
policies, the SFT and GRPO steps, the transformers step) run on CPU, and it imports nothing the
GPU image lacks (grain, tensorflow_datasets, av, ml_collections, tensorboardX)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_train_step.py")
ABSENT_ON_GPU = ("grain", "tensorflow_datasets", "av", "ml_collections", "tensorboardX")


@pytest.mark.slow
def test_tiny_run_reports_every_part():
  # Two remat policies (the new default and the one transformers' default matches) and the tuned
  # baseline's code path: torch.compile with the selective (dots_no_batch) checkpointing; each
  # variant is one more process with its own compile, so the test keeps to these (CI budget).
  proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--steps", "1",
                         "--policies=dots_attn,full", "--torch_variants=compile:dots_no_batch"],
                        capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
          if line.startswith("RESULT ")]
  parts = [r["part"] for r in rows]
  for part in ("matmul", "init", "sft_step", "grpo_step", "torch_step"):
    assert part in parts, parts
  sft = [r for r in rows if r["part"] == "sft_step"]
  assert {r["policy"] for r in sft} == {"dots_attn", "full"}
  assert all("error" not in r and r["step_s"] > 0 and r["loss"] > 0 for r in sft), sft
  torch_rows = [r for r in rows if r["part"] == "torch_step"]
  assert [r["variant"] for r in torch_rows] == ["compile:dots_no_batch"]
  assert all(r["step_s"] > 0 for r in torch_rows), torch_rows
  assert "== summary ==" in proc.stdout


def test_imports_only_what_the_gpu_image_has():
  code = ("import sys; sys.argv = ['x']; import runpy; "
          f"m = runpy.run_path({SCRIPT!r}, run_name='bench'); "
          "from streampro_jax import grpo, losses, parallel; "
          "from streampro_jax.models import qwen2_5_vl; "
          "from streampro_jax.train import optim, sft, state; "
          f"bad = [n for n in {ABSENT_ON_GPU!r} if n in sys.modules]; print(bad)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
