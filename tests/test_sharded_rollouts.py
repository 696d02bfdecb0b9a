"""Rollouts on the training mesh, one process: GRPOTrainer's sampler runs on the mesh of its
update (here data 2 x fsdp 4 on 8 fake CPU devices), its KV cache and per-row arrays split by
row over the 8 devices, and one GRPO step (rollouts -> rewards -> update) equals the same step on
one device at the same seed: identical tokens and rewards, the update within rounding.
"""

import jax
import numpy as np
import pytest

from configs import tiny_synthetic_grpo
from streampro_jax.train import grpo_learner, grpo_trainer
from helpers import tolerances as tol  # pylint: disable=g-bad-import-order


def _config(mesh):
  c = tiny_synthetic_grpo.get_config()
  c.total_steps = 1
  c.tensorboard = False
  c.model.tiny_text = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1)
  c.model.tiny_vision = dict(depth=1, hidden_size=32, fullatt_block_indexes=(0,))
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  # 2 samples x G 4 = 8 update rows; the sampler's 2 prompts do not split over the 8 row
  # shards (its frames are [B, P, D] rows), so it pads them to 8 and drops the padding.
  c.global_batch_size = 2
  c.data.num_videos = 4
  c.data.synth = dict(resolution=32, min_duration=12, max_duration=12, difficulty=0)
  c.data.max_turns, c.data.seq_len = 6, 512
  c.rollout.max_text_tokens = 4
  c.rollout.capacity = 1024
  c.checkpoint.async_save = False
  # Adam eps 0.1: the first step lr * g / (|g| + eps) is continuous in the gradient (Lipschitz
  # 1 / eps), so float32 summation-order noise in near-zero gradient entries stays noise-sized
  # and the derived bound below is far under the step itself (the check can fail).
  c.optim.lr, c.optim.eps = 1e-2, 0.1
  return c


def _step(trainer):
  """One GRPO step from its public pieces (GRPOTrainer.train_step without the timing): the
  rollout batch, the rewards, the metrics and the updated params (host)."""
  samples = next(trainer.prompts)
  rb = trainer.rollout(samples, 0)
  assert not rb.overflow.any()
  rewards = trainer.scorer.score(rb, [(r, q) for r, q, _ in samples])
  vision_ids = (trainer.model_config.video_token_id, trainer.model_config.image_token_id)
  host_batch, _ = grpo_learner.update_batch(rb, rewards, trainer.data, vision_ids)
  batch = host_batch.shard(trainer.mesh)
  state, m = trainer.step_fn(trainer.state, trainer.ref_params, batch)
  return rb, rewards, jax.device_get(m), jax.device_get(state.params)


@pytest.mark.slow
def test_rollouts_sharded_over_8_devices_equal_one_device(tmp_path):
  one = grpo_trainer.GRPOTrainer(_config((1, 1, 1)), str(tmp_path / "one"),
                                 devices=jax.devices()[:1])
  eight = grpo_trainer.GRPOTrainer(_config((2, 4, 1)), str(tmp_path / "eight"))
  init = jax.device_get(one.state.params)
  assert eight.sampler.mesh is eight.mesh and eight.sampler.row_multiple() == 8

  # The KV cache after a turn: every leaf split by row over the 8 devices (rows on dim 1 of
  # the scanned [L, N, K, cap, H] stacks), each device holding exactly 1/8 of its bytes.
  s = eight.sampler
  st = s.init_state(eight.state.params, num_prompts=8, group_size=eight.group_size,
                    capacity=256, user_chunk_len=64)
  d = s.patches_per_turn
  frames = np.zeros((8, d, one.data.proc.patch_dim), np.float32)
  st, _ = s.step_turn(eight.state.params, st, frames)
  total = per_device = 0
  for leaf in jax.tree.leaves(st.cache):
    shards = leaf.addressable_shards
    assert len({sh.device for sh in shards}) == 8
    for sh in shards:
      assert sh.data.nbytes * 8 == leaf.nbytes, (leaf.shape, leaf.sharding)
    total += leaf.nbytes
    per_device += shards[0].data.nbytes
  assert per_device * 8 == total

  rb1, r1, m1, p1 = _step(one)
  rb8, r8, m8, p8 = _step(eight)
  # The same rows (2 x G, the padding dropped), token for token, and the same rewards: the
  # draws depend only on (seed, turn, step, row) and the logits agree far inside the gaps
  # between the sampled tokens' probabilities (a flip would show here).
  assert rb8.input_ids.shape == rb1.input_ids.shape == (8, 512)
  for k in ("input_ids", "loss_mask", "position_ids", "decisions"):
    np.testing.assert_array_equal(getattr(rb1, k), getattr(rb8, k), err_msg=k)
  for k in ("reward_fmt", "reward_turn", "reward_traj"):
    np.testing.assert_array_equal(r1[k], r8[k], err_msg=k)
  # The update: both runs sum the same float32 terms in other orders (the 8-way all-reduce of
  # the gradient, the row-split logits). Adam's first step moves each parameter by
  # lr * g / (|g| + eps) (bias-corrected), so a gradient entry that differs by delta moves the
  # parameter by at most lr * adam_gain(1) * delta / eps (tol.adam_param_bound). delta: the
  # rounding of the gradient's sums, at most model_rel (the longest chain of float32 sums
  # through the model, forward and backward, tolerances.model_rel) of the gradient's scale, the
  # clipped gradient norm min(|g|, 1).
  mcfg = one.model_config
  rel = 2 * tol.model_rel(mcfg, 512)
  delta = rel * min(float(m1["grad_norm"]), 1.0)
  cfg = one.tree.optim
  bound = tol.adam_param_bound(delta, [float(one.run.schedule(0))], float(cfg.eps))
  diff = tol.max_abs_diff(p1, p8)
  tol.assert_within(diff, bound, "params after the step, 8 devices vs 1")
  assert tol.max_abs_diff(p1, init) > 2 * bound  # the step moved the params: the check can fail
  assert m1["loss"] == pytest.approx(m8["loss"], rel=rel, abs=rel)
