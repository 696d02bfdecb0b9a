"""End-to-end smoke test of the README's first command (launch/demo.py --budget=smoke).

Runs the demo as a subprocess (the way a user runs it: one CPU device, not the 8 fake devices
of conftest.py), then checks results.json, the figures, and that a rerun skips every finished
stage. Also checks the demo config builders (pure functions, no compilation).
"""

import json
import os
import subprocess
import sys

import pytest

from configs import demo as demo_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = ("sft_ce", "sft_focal", "sft_cb_stream", "grpo")
TASKS = ("EU", "OU", "AA", "TP", "TG", "GP", "RF")
STAGES = ("data", "base", "sft_ce", "sft_focal", "sft_cb_stream", "grpo", "eval_sft_ce",
          "eval_sft_focal", "eval_sft_cb_stream", "eval_grpo")


def _run_demo(workdir, *extra):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)           # the user's setting: one CPU device
  env["HF_HUB_OFFLINE"] = "1"
  cmd = [sys.executable, os.path.join(ROOT, "launch", "demo.py"), f"--workdir={workdir}",
         "--budget=smoke", "--noprogress_bar", *extra]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  return proc.stdout + proc.stderr


def test_configs_same_init_data_and_budget_across_losses():
  cfg = demo_configs.get_config("default")
  cfg.seed = 3
  kinds = {}
  for variant, kind in demo_configs.LOSS_OF_VARIANT.items():
    c = demo_configs.sft_config(cfg, kind, "/data", base_hf_dir="/base/hf")
    kinds[variant] = c.loss.kind
    # Every variant starts from the base model with fresh decision-token rows, vision frozen.
    assert c.model.hf_checkpoint == "/base/hf" and c.model.reinit_decision_rows
    assert c.optim.frozen == r"^visual/(?!merger/)" and not c.data.narration
    # Everything but the loss is the same: init seed, data order, steps, batch, lr, model.
    c.loss.kind = "x"
    if variant == "sft_ce":
      ref = c.to_json()
    assert c.to_json() == ref
  assert kinds == {"sft_ce": "ce", "sft_focal": "focal", "sft_cb_stream": "cb_stream"}
  # The base model: cross-entropy on the narration of the same training videos, vision trained.
  b = demo_configs.base_config(cfg, "/data")
  assert b.data.narration and b.loss.kind == "ce" and b.optim.frozen == ""
  assert b.data.tfds_dir == "/data" and b.data.split == "train" and b.seed == 3
  assert b.model.to_json() == demo_configs.sft_config(cfg, "ce", "/data").model.to_json()
  g = demo_configs.grpo_config(cfg, "/sft", "/data")
  assert g.init.sft_workdir == "/sft" and g.seed == 3
  assert tuple(g.reward.weights) == (0.1, 0.45, 0.45)
  # GRPO's model is the SFT one; it re-initialises no decision rows (a key GRPO does not read
  # must keep its neutral value: train/config_check.py).
  assert not g.model.reinit_decision_rows
  g.model.reinit_decision_rows = True
  assert g.model.to_json() == demo_configs.sft_config(cfg, "ce", "/data").model.to_json()
  with pytest.raises(ValueError, match="budget 'huge'"):
    demo_configs.get_config("huge")


@pytest.mark.slow
def test_smoke_end_to_end_and_resume(tmp_path):
  workdir = str(tmp_path / "demo")
  log = _run_demo(workdir)
  assert "StreamPro-F1 on the SynthStream test split" in log
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    res = json.load(f)
  assert res["budget"] == "smoke"
  assert set(res["variants"]) == set(VARIANTS)
  for v in VARIANTS:
    r = res["variants"][v]
    for key in ("W-Avg", "PU", "TR", "PA"):
      assert 0.0 <= r[key] <= 1.0, (v, key, r[key])
    assert set(r["per_task"]) == set(TASKS)
    # W-Avg is the QA-weighted mean of the per-task F1 (one QA per task in the smoke split).
    counts = {t: r["per_task_detail"][t]["count"] for t in TASKS}
    want = sum(r["per_task"][t] * counts[t] for t in TASKS) / sum(counts.values())
    assert r["W-Avg"] == pytest.approx(want, abs=1e-9)
    assert r["decisions"]["turns"] > 0
  for name in ("f1", "offsets", "pr"):
    path = res["figures"][name]
    assert os.path.getsize(path) > 1000 and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  for stage in STAGES:
    assert os.path.exists(os.path.join(workdir, stage, "DONE.json")), stage
    assert res["timings"][stage]["skipped"] is False
  # The base model is a Hugging Face folder that the SFT variants started from.
  assert os.path.exists(os.path.join(workdir, "base", "hf", "config.json"))
  with open(os.path.join(workdir, "sft_ce", "config.json"), encoding="utf-8") as f:
    assert json.load(f)["model"]["hf_checkpoint"] == os.path.join(workdir, "base", "hf")

  # A rerun reuses every finished stage and rebuilds only the report.
  stamp = {s: os.path.getmtime(os.path.join(workdir, s, "DONE.json")) for s in STAGES}
  log2 = _run_demo(workdir)
  for stage in STAGES:
    assert f"[skip] {stage}:" in log2, stage
    assert os.path.getmtime(os.path.join(workdir, stage, "DONE.json")) == stamp[stage]
  assert "sft.py" not in log2 and "step 1/" not in log2   # no training step ran
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    res2 = json.load(f)
  assert all(res2["timings"][s]["skipped"] for s in STAGES)
  assert res2["variants"] == res["variants"]

  # A workdir belongs to one budget / seed.
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "demo.py"),
                         f"--workdir={workdir}", "--budget=smoke", "--seed=1"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode != 0 and "other settings" in proc.stderr
