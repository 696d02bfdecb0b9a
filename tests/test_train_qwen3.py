"""Both trainers run the Qwen3-VL backbone: 2 SFT steps, then 2 GRPO steps from that SFT run."""

import importlib
import os
import pathlib

import jax
import numpy as np
import pytest

from configs import tiny_synthetic_grpo, tiny_synthetic_qwen3
from streampro_jax.models import qwen3_vl
from streampro_jax.train import grpo_trainer, sft

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.py")
                                        if p.stem not in ("__init__", "common")))
def test_every_config_file_loads(name):
  mod = importlib.import_module(f"configs.{name}")
  config = mod.get_config()
  if name != "demo":  # the demo's config holds budgets, not a trainer config
    assert "model" in config and "optim" in config, name
  else:
    assert "budget" in config


@pytest.mark.slow
def test_qwen3_sft_then_grpo(tmp_path):
  c = tiny_synthetic_qwen3.get_config()
  c.total_steps = 2
  c.data.num_videos = 8
  c.checkpoint.every_steps = 2
  state = sft.train(c, os.path.join(tmp_path, "sft"))
  assert int(state.step) == 2
  assert "deepstack_merger_list_0" in state.params["visual"]

  g = tiny_synthetic_qwen3.to_qwen3(tiny_synthetic_grpo.get_config())
  g.init.sft_workdir = os.path.join(tmp_path, "sft")
  g.total_steps = 2
  g.data.num_videos = 4
  trainer = grpo_trainer.GRPOTrainer(g, os.path.join(tmp_path, "grpo"))
  assert isinstance(trainer.model_config, qwen3_vl.Qwen3_VLConfig)
  before = jax.tree.map(np.asarray, trainer.state.params)
  for step in range(2):
    metrics = trainer.train_step(step)
    assert np.isfinite(float(metrics["loss"])), metrics
  after = jax.tree.map(np.asarray, trainer.state.params)
  # The vision tower stays frozen; the language model moves.
  for a, b in zip(jax.tree.leaves(after["visual"]["blocks_0"]),
                  jax.tree.leaves(before["visual"]["blocks_0"])):
    np.testing.assert_array_equal(a, b)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["layers_0"]),
                                                    jax.tree.leaves(before["layers_0"]))]
  assert any(moved)
