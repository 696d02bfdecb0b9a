"""benchmarks/demo_scale_cost.py: the per-step time and the projection are the arithmetic they
say (hand-computed), and every model it times builds under the strict config tree."""

import os
import sys

import pytest
from absl import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import demo_scale_cost as cost  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import demo as demo_configs  # noqa: E402  pylint: disable=g-import-not-at-top

from streampro_jax.train import config_check  # noqa: E402  pylint: disable=g-import-not-at-top


def test_per_step_is_the_difference_over_the_steps():
  # 20 steps in 13 s, 80 in 31 s: the 60 more steps took 18 s, 0.3 s each.
  assert cost.per_step([13.0, 31.0], (20, 80)) == pytest.approx(0.3, rel=1e-12)


def test_projection_is_the_default_demo_budget():
  d = demo_configs.get_config("default")
  # 1000 base steps x 0.1 + 3 variants x 300 SFT steps x 0.2 + 60 GRPO steps x 1.0 = 340 s.
  assert (d.base.steps, d.sft.steps, d.grpo.steps) == (1000, 300, 60)
  got = cost.projection({"base": 0.1, "sft_cb_stream": 0.2, "grpo": 1.0}, d)
  assert got == pytest.approx(340.0, rel=1e-12)


@pytest.mark.parametrize("name", sorted(cost.MODELS))
def test_every_model_builds_at_both_step_counts(name):
  for run in (0, 1):
    c = cost.model_config(name, run)
    for key, value in cost.MODELS[name].items():
      node = c
      for part in key.split("."):
        node = node[part]
      assert node == value, key
    assert (c.base.steps, c.sft.steps, c.grpo.steps) == tuple(
        counts[run] for _, counts in cost.STEPS.values())
    base = demo_configs.base_config(c, "/data")
    built = config_check.build(base, "sft")
    assert built.total_steps == cost.STEPS["base"][1][run]
    config_check.build(demo_configs.sft_config(c, "cb_stream", "/data"), "sft")


def test_unknown_model_is_refused():
  with pytest.raises(app.UsageError, match="unknown model 'wide999'"):
    cost.model_config("wide999", 0)
