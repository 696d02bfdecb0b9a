"""A training workdir carries the config that made it (issue 16 item 4): resuming it with another
config stops and names every differing key; --allow_config_change (explicit) resumes and keeps
the previous config file."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import tiny_synthetic
from streampro_jax.train import config_check

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_changed_config_is_refused_and_named(tmp_path):
  a = tiny_synthetic.get_config()
  assert config_check.check_workdir_config(str(tmp_path), a) == []
  assert config_check.check_workdir_config(str(tmp_path), a) == []   # the same run: fine
  b = tiny_synthetic.get_config()
  b.debug_kill_after_step = 5      # run control, not identity
  b.log_every_steps = 1
  assert config_check.check_workdir_config(str(tmp_path), b) == []
  b.loss.kind = "ce"
  b.optim.lr = 1e-4
  with pytest.raises(config_check.ConfigError) as e:
    config_check.check_workdir_config(str(tmp_path), b)
  assert "loss.kind: 'cb_stream' -> 'ce'" in str(e.value)
  assert "optim.lr: 0.003 -> 0.0001" in str(e.value)
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    assert json.load(f)["loss"]["kind"] == "cb_stream"   # not overwritten
  diffs = config_check.check_workdir_config(str(tmp_path), b, allow_change=True)
  assert len(diffs) == 2
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    assert json.load(f)["loss"]["kind"] == "ce"
  with open(tmp_path / "config.previous.0.json", encoding="utf-8") as f:
    assert json.load(f)["loss"]["kind"] == "cb_stream"


def test_launcher_stops_on_a_changed_config(tmp_path):
  """launch/train_sft.py into a CB-Stream workdir with --config.loss.kind=ce: exit status 2 and
  the differing key, before anything is built (it resumed silently and overwrote config.json)."""
  config_check.check_workdir_config(str(tmp_path), tiny_synthetic.get_config())
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "train_sft.py"),
       f"--config={ROOT / 'configs' / 'tiny_synthetic.py'}", f"--workdir={tmp_path}",
       "--config.loss.kind=ce"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300, check=False)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "loss.kind: 'cb_stream' -> 'ce'" in out.stderr
  assert not (tmp_path / "checkpoints").exists()
  with open(tmp_path / "config.json", encoding="utf-8") as f:
    assert json.load(f)["loss"]["kind"] == "cb_stream"
