"""benchmarks/demo_settings.py: each setting reaches the trainer configs it names (and nothing
else moves), builds under the strict config tree, shares a data set and base model only with a
setting equal to it outside the SFT section, and unknown settings or keys are refused."""

import os
import sys

import pytest
from absl import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import demo_settings as settings_lib  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import demo as demo_configs  # noqa: E402  pylint: disable=g-import-not-at-top

from streampro_jax.train import config_check  # noqa: E402  pylint: disable=g-import-not-at-top


def _get(cfg, dotted):
  for part in dotted.split("."):
    cfg = cfg[part]
  return cfg


@pytest.mark.parametrize("name", sorted(settings_lib.SETTINGS))
def test_setting_changes_what_it_names_and_nothing_else(name):
  ref = demo_configs.get_config("default")
  cfg = settings_lib.setting_config(name)
  over = settings_lib.SETTINGS[name]
  for key, value in over.items():
    assert _get(cfg, key) == value != _get(ref, key), key
  # Every other leaf is the demo's: flatten both and drop the overridden keys.
  flat = lambda c: {k: v for k, v in _flatten(c.to_dict()).items() if k not in over}  # noqa: E731
  assert flat(cfg) == flat(ref)
  for kind in ("ce", "cb_stream"):
    c = demo_configs.sft_config(cfg, kind, "/data", base_hf_dir="/base/hf")
    config_check.build(c, "sft")
    assert c.total_steps == over.get("sft.steps", ref.sft.steps)
    assert c.global_batch_size == over.get("sft.batch_size", ref.sft.batch_size)
  # A setting shares the data and base model of one whose config matches it outside the SFT
  # section (the demo config's data, model and base sections, here checked leaf by leaf).
  owner = settings_lib.stage_owner(name)
  owner_cfg = settings_lib.setting_config(owner)
  for section in ref:
    if section != "sft":
      assert cfg[section] == owner_cfg[section], (name, owner, section)


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def test_settings_share_data_and_base_only_with_equal_ones():
  owners = {name: settings_lib.stage_owner(name) for name in settings_lib.SETTINGS}
  assert owners["difficulty0"] == "difficulty0" and owners["difficulty1"] == "difficulty1"
  assert owners["base_answers"] == "base_answers"          # its own base model
  assert {owners[n] for n in ("steps150", "steps400", "steps600", "batch16", "sft_lr4")} == {
      "difficulty0"}


def test_unknown_setting_and_key_are_refused(monkeypatch):
  with pytest.raises(app.UsageError, match="unknown setting 'steps900'"):
    settings_lib.setting_config("steps900")
  monkeypatch.setitem(settings_lib.SETTINGS, "typo", {"sft.stepz": 5})
  with pytest.raises(KeyError, match="'sft.stepz': the config has no field 'stepz'"):
    settings_lib.setting_config("typo")
  monkeypatch.setitem(settings_lib.SETTINGS, "deep_typo", {"data.synthh.difficulty": 1})
  with pytest.raises(KeyError, match="'data.synthh.difficulty': the config has no field 'synthh'"):
    settings_lib.setting_config("deep_typo")


def test_effective_values_are_the_setting_over_the_demo():
  ref = demo_configs.get_config("default")
  for name, over in settings_lib.SETTINGS.items():
    got = settings_lib.effective_values(settings_lib.setting_config(name))
    assert list(got) == list(settings_lib.RECORDED_KEYS)
    for key, value in got.items():
      assert value == over.get(key, _get(ref, key)), (name, key)
  assert settings_lib.effective_values(settings_lib.setting_config("steps150"))["sft.steps"] == 150


def test_grpo_settings_are_settings():
  assert set(settings_lib.WITH_GRPO) <= set(settings_lib.SETTINGS)
