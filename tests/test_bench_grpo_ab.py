"""benchmarks/grpo_step_ab.py: the demo's GRPO config it times on either checkout."""

import pathlib
import sys

from configs import demo, tiny_synthetic_grpo

from streampro_jax.train import config_check

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import grpo_step_ab  # noqa: E402  pylint: disable=g-import-not-at-top


def test_demo_grpo_config_is_the_demos_grpo_stage():
  d = demo.get_config("default")
  c = grpo_step_ab.demo_grpo_config(demo, tiny_synthetic_grpo)
  config_check.build(c, "grpo")   # every key is one the GRPO trainer reads
  assert c.global_batch_size == d.grpo.batch_size and c.grpo.group_size == d.grpo.group_size
  assert c.rollout.max_text_tokens == d.grpo.max_text_tokens
  assert c.grpo.temperature == d.grpo.temperature
  assert (c.data.seq_len, c.data.max_turns) == (d.grpo.seq_len, d.max_turns)
  assert c.rollout.capacity == d.grpo.capacity and not c.model.reinit_decision_rows
  assert grpo_step_ab.demo_grpo_config(demo, tiny_synthetic_grpo,
                                       temperature=0.3).grpo.temperature == 0.3


def test_the_child_program_carries_the_config_builder():
  """The child runs on another checkout: it must define demo_grpo_config itself."""
  code = compile(grpo_step_ab._CHILD, "<child>", "exec")  # pylint: disable=protected-access
  assert "demo_grpo_config" in code.co_names
  assert "def demo_grpo_config(" in grpo_step_ab._CHILD  # pylint: disable=protected-access
