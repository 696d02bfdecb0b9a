"""benchmarks/demo_sft_budget.py: each setting reaches the SFT trainer's config (the steps and
global batch it names, nothing else), builds under the strict config tree, and unknown settings
or keys are refused."""

import os
import sys

import pytest
from absl import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import demo_sft_budget as budget  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import demo as demo_configs  # noqa: E402  pylint: disable=g-import-not-at-top

from streampro_jax.train import config_check  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.parametrize("name", sorted(budget.SETTINGS))
def test_setting_changes_only_the_sft_budget(name):
  ref = demo_configs.get_config("default")
  cfg = budget.setting_config(name)
  over = budget.SETTINGS[name]
  for kind in ("ce", "cb_stream"):
    c = demo_configs.sft_config(cfg, kind, "/data", base_hf_dir="/base/hf")
    config_check.build(c, "sft")
    assert c.total_steps == over.get("sft.steps", ref.sft.steps)
    assert c.global_batch_size == over.get("sft.batch_size", ref.sft.batch_size)
  # Nothing outside the SFT section moves (the base model and data are shared).
  for section in ref:
    if section != "sft":
      assert cfg[section] == ref[section], section


def test_unknown_setting_and_key_are_refused(monkeypatch):
  with pytest.raises(app.UsageError, match="unknown setting 'steps900'"):
    budget.setting_config("steps900")
  monkeypatch.setitem(budget.SETTINGS, "typo", {"sft.stepz": 5})
  with pytest.raises(KeyError, match="sft.stepz is not a key"):
    budget.setting_config("typo")
