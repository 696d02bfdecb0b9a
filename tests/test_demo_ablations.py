"""benchmarks/demo_ablations.py: every run's overrides reach a config key its trainer reads, the
runs' selection, and the summary's paired statistics (hand-computed)."""

import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import demo_ablations as abl  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import demo as demo_configs  # noqa: E402  pylint: disable=g-import-not-at-top

from streampro_jax.train import config_check  # noqa: E402  pylint: disable=g-import-not-at-top

from helpers import tolerances as tol  # noqa: E402  pylint: disable=g-bad-import-order

# Values here are host-side float64 arithmetic (Python floats) of a few dozen operations on
# values of order one, compared with hand-computed references: tol.approx64, rel and abs
# gamma_64 in float64 (7e-15) (tests/helpers/tolerances.py).


@pytest.mark.parametrize("run", abl.RUNS, ids=lambda r: r.name)
def test_each_run_changes_a_key_its_trainer_reads(run):
  cfg = demo_configs.get_config("default")
  if run.stage == "sft":
    ref = demo_configs.sft_config(cfg, "cb_stream", "/data", base_hf_dir="/base/hf")
    c = demo_configs.sft_config(cfg, "cb_stream", "/data", base_hf_dir="/base/hf")
    trainer = "sft"
  else:
    ref = demo_configs.grpo_config(cfg, "/sft", "/data")
    c = demo_configs.grpo_config(cfg, "/sft", "/data")
    abl.demo_lib.apply_overrides(ref, dict(abl.PAPER_GRPO))
    trainer = "grpo"
  abl.demo_lib.apply_overrides(c, run.override_dict())
  config_check.build(c, trainer)       # no key the trainer does not read
  changed = {k: v for k, v in run.overrides
             if k not in abl.PAPER_GRPO or abl.PAPER_GRPO[k] != v}
  for key, value in changed.items():
    node = c
    for part in key.split("."):
      node = node[part]
    assert node == value, key
  # A reference changes nothing beyond the paper settings; an ablation changes something.
  assert (c.to_json() == ref.to_json()) == (not run.reference)


def test_paper_settings_are_the_grpo_reference():
  cfg = demo_configs.get_config("default")
  c = demo_configs.grpo_config(cfg, "/sft", "/data")
  abl.demo_lib.apply_overrides(c, dict(abl.PAPER_GRPO))
  assert c.reward.tau == 8.0 and c.grpo.temperature == 1.0
  assert tuple(c.reward.weights) == (0.1, 0.45, 0.45) and c.reward.matching == "gt_first"
  with pytest.raises(KeyError, match="no field 'taus'"):
    abl.demo_lib.apply_overrides(c, {"reward.taus": 3.0})
  with pytest.raises(KeyError, match="no field 'rewards'"):
    abl.demo_lib.apply_overrides(c, {"rewards.tau": 3.0})


def test_selection_adds_the_references():
  names = [r.name for r in abl.selected_runs(["grpo_tau3", "sft_text1"])]
  assert names == ["sft_cb_stream", "grpo_paper", "sft_text1", "grpo_tau3"]
  assert len(abl.selected_runs([])) == len(abl.RUNS)
  with pytest.raises(Exception, match="unknown ablations \\['tau3'\\]"):
    abl.selected_runs(["tau3"])


def _scores(w):
  return {"W-Avg": w, "PU": 0.0, "TR": 0.0, "PA": 0.0}


def test_summary_pairs_seeds_and_lists_missing_runs():
  per_seed = {
      0: {"grpo_paper": _scores(0.10), "grpo_tau3": _scores(0.13)},
      1: {"grpo_paper": _scores(0.20), "grpo_tau3": _scores(0.19)},
      2: {"grpo_paper": _scores(0.30)},                 # grpo_tau3 not finished on seed 2
  }
  s = abl.summarize(per_seed)
  ref = s["runs"]["grpo_paper"]["W-Avg"]
  assert ref["mean"] == tol.approx64(0.20) and ref["std"] == tol.approx64(0.10)
  d = s["differences"]["grpo_tau3"]
  # Paired over seeds 0 and 1 only: +0.03 and -0.01 -> mean 0.01, std sqrt(0.0008) = 0.0283.
  assert d["seeds"] == [0, 1] and d["wins"] == 1
  assert d["mean"] == tol.approx64(0.01)
  assert d["std"] == pytest.approx(math.sqrt(((0.02) ** 2 + (0.02) ** 2) / 1))
  assert s["missing"]["grpo_tau3"] == [2] and s["missing"]["sft_text1"] == [0, 1, 2]
  text = abl.table(s)
  assert "| grpo_tau3 | tau 3.0 | 16.0 +- 4.2 | +1.0 +- 2.8 (vs grpo_paper) | 1/2 | 0,1 |" in text
  assert "| sft_text1 | text_weight 1.0 | not run |" in text


def test_a_run_reusing_a_demo_stage_has_exactly_that_stages_config():
  """grpo_tau3 is the demo's own grpo stage (reused, not retrained): its overrides must give the
  demo's GRPO config, key for key; sft_cb_stream is the demo's SFT stage of that name."""
  cfg = demo_configs.get_config("default")
  run = abl.RUN_BY_NAME["grpo_tau3"]
  assert run.stage_dir == "grpo"
  c = demo_configs.grpo_config(cfg, "/sft", "/data")
  abl.demo_lib.apply_overrides(c, run.override_dict())
  assert c.to_json() == demo_configs.grpo_config(cfg, "/sft", "/data").to_json()
  assert abl.RUN_BY_NAME["sft_cb_stream"].stage_dir == "sft_cb_stream"
  assert [r.name for r in abl.RUNS if r.stage_name] == ["grpo_tau3"]
