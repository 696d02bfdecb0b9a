"""The README's first command (launch/demo.py): the smoke budget end to end, and the default budget
against README's table and the raw file it was written from.

Runs the demo as a subprocess (the way a user runs it: one CPU device, not the 8 fake devices
of conftest.py), then checks results.json, the figures, and that a rerun skips every finished
stage. Also checks the demo config builders (pure functions, no compilation), and that README's
results block is what benchmarks/demo_results.py writes from the raw files.
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
SEED_STAGES = ("sft_ce", "sft_focal", "sft_cb_stream", "grpo") + tuple(
    f"eval_{split}_{v}" for split in ("validation", "test") for v in VARIANTS)
STAGES = ("data", "base") + tuple(f"seed_0/{s}" for s in SEED_STAGES)


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
  # One base model for every seed (the stand-in for the pretrained VLM).
  assert b.data.tfds_dir == "/data" and b.data.split == "train" and b.seed == cfg.base.seed == 0
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
  assert "StreamPro-F1 x100, SynthStream test split" in log
  assert "SynthStream validation split" in log
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    res = json.load(f)
  assert res["budget"] == "smoke" and res["seeds"] == [0]
  assert res["numerics"]["pinned"] and len(res["numerics"]["base_params_sha256"]) == 64
  for split in ("validation", "test"):
    assert set(res["per_seed"]["0"][split]) == set(VARIANTS)
    for v in VARIANTS:
      r = res["per_seed"]["0"][split][v]
      for key in ("W-Avg", "PU", "TR", "PA"):
        assert 0.0 <= r[key] <= 1.0, (v, key, r[key])
      assert set(r["per_task"]) == set(TASKS)
      # W-Avg is the QA-weighted mean of the per-task F1 (one QA per task in the smoke split).
      with open(os.path.join(workdir, "seed_0", f"eval_{split}_{v}", "scores.json"),
                encoding="utf-8") as f:
        detail = json.load(f)["per_task"]
      counts = {t: detail[t]["count"] for t in TASKS}
      want = sum(r["per_task"][t] * counts[t] for t in TASKS) / sum(counts.values())
      assert r["W-Avg"] == pytest.approx(want, abs=1e-12)   # 7 terms of float64: exact to ~1e-15
      assert r["decisions"]["turns"] > 0
  for name in ("f1", "offsets", "pr", "seeds"):
    path = res["figures"][name]
    assert os.path.getsize(path) > 1000 and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  for stage in STAGES:
    assert os.path.exists(os.path.join(workdir, stage, "DONE.json")), stage
    assert res["timings"][stage]["skipped"] is False
  # The base model is a Hugging Face folder that the SFT variants started from.
  assert os.path.exists(os.path.join(workdir, "base", "hf", "config.json"))
  with open(os.path.join(workdir, "seed_0", "sft_ce", "config.json"), encoding="utf-8") as f:
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
  assert res2["per_seed"] == res["per_seed"]

  # A workdir belongs to one set of settings; the refusal names the keys that differ.
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "demo.py"),
                         f"--workdir={workdir}", "--budget=default"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode != 0 and "other settings" in proc.stderr
  assert "budget: 'smoke' -> 'default'" in proc.stderr
  assert "data.num_train: 16 -> 256" in proc.stderr


sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import demo_results  # noqa: E402  pylint: disable=g-import-not-at-top


def _readme():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    return f.read()


def test_readme_results_block_is_what_the_raw_files_give():
  block = demo_results.render(demo_results.read(demo_results.SEED0),
                              demo_results.read(demo_results.SEEDS))
  assert demo_results.check(_readme(), block) == [], (
      "README.md's demo results differ from the raw files: run "
      ".venv/bin/python benchmarks/demo_results.py")


def test_the_checks_fail_on_a_planted_wrong_digit():
  one = demo_results.read(demo_results.SEED0)
  block = demo_results.render(one, demo_results.read(demo_results.SEEDS))
  readme = _readme()
  # README: one digit of seed 0's CB-Stream test W-Avg changed.
  cell = f"**{100 * one['per_seed']['0']['test']['sft_cb_stream']['W-Avg']:.1f}**"
  wrong = cell[:-3] + str((int(cell[-3]) + 1) % 10) + "**"
  row = next(line for line in readme.splitlines() if line.startswith("| sft_cb_stream |")
             and cell in line)
  diff = demo_results.check(readme.replace(row, row.replace(cell, wrong), 1), block)
  assert any(wrong in line for line in diff), diff
  # A run: one score off by 0.1 point, another decision count.
  run = json.loads(json.dumps(one))
  run["per_seed"]["0"]["test"]["grpo"]["W-Avg"] += 1e-3
  run["per_seed"]["0"]["validation"]["sft_ce"]["decisions"]["response"] += 1
  problems = demo_results.compare_run(run, one)
  assert len(problems) == 2 and "test, grpo, W-Avg" in problems[0], problems
  assert demo_results.compare_run(one, one) == []


def _readme_demo_args():
  """The arguments of README's first command after launch/demo.py (--workdir and the rest)."""
  first = next(line for line in _readme().splitlines() if "launch/demo.py" in line)
  return first.split("launch/demo.py", 1)[1].split()


@pytest.mark.slow
@pytest.mark.first
def test_readme_first_command_prints_readme_table(tmp_path):
  """README's first command on a fresh workdir prints the table README shows, to the digit.

  The demo pins XLA:CPU's rounding (streampro_jax.numerics), so on a host of the CI kind its
  base model has the raw file's parameter hash and every number is the raw file's. On a host whose
  base model differs (a CPU family the pin does not cover), the digits cannot match; the test
  then checks the findings that hold over the three seeds (a gap positive on every seed and at
  least twice its spread must be positive here too) and says so.
  """
  args = [a for a in _readme_demo_args() if not a.startswith("--workdir")]
  workdir = str(tmp_path / "demo")
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)           # the user's setting: one CPU device
  env["HF_HUB_OFFLINE"] = "1"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "demo.py"),
                         f"--workdir={workdir}", "--noprogress_bar", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=45 * 60, check=False)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    res = json.load(f)
  raw = demo_results.read(demo_results.SEED0)
  if res["numerics"]["base_params_sha256"] != raw["numerics"]["base_params_sha256"]:
    import warnings  # pylint: disable=g-import-not-at-top
    warnings.warn(f"this host ({res['numerics']['cpu']}) trains another base model than the raw "
                  f"file's host ({raw['numerics']['cpu']}): digits not compared, findings only")
    many = demo_results.read(demo_results.SEEDS)
    for split in ("validation", "test"):
      for gap, holds in many["findings"][split].items():
        a, b = gap.split(" - ")
        scores = res["per_seed"]["0"][split]
        if holds:
          assert scores[a]["W-Avg"] > scores[b]["W-Avg"], (split, gap)
    return
  assert demo_results.compare_run(res, raw) == []
  with open(os.path.join(workdir, "table.md"), encoding="utf-8") as f:
    printed = f.read()
  from streampro_jax.bench import seeds as seeds_lib  # pylint: disable=g-import-not-at-top
  assert printed.strip() == seeds_lib.demo_text(raw).strip()
  assert seeds_lib.seed_tables(raw).strip() in _readme()
