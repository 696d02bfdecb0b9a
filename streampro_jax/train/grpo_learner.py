"""The GRPO learner: the jitted, sharded, donated update of a run and the host batch it reads.

:func:`make_learner` builds the update (grpo_step.make_grpo_step over the policy's teacher-forced
log-probs) for the batch layout :func:`example_batch` describes; :func:`update_batch` turns a
rollout batch and its rewards into that batch, masking out of the loss the rows whose sampled
text holds a vision placeholder (:func:`_rows_with_sampled_vision_tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from streampro_jax import grpo, sampling
from streampro_jax.data import batch as batch_lib
from streampro_jax.train import grpo_step, optim
from streampro_jax.train import run as run_lib
from streampro_jax.train import setup as setup_lib

__all__ = ["example_batch", "make_learner", "update_batch"]


def example_batch(data, group_size: int, global_batch_size: int) -> batch_lib.Batch:
  """The abstract shapes of this host's update batch (N = global batch x G / hosts rows of
  data.seq_len tokens, pixels of data.max_turns turns of data.grid, old log-probs and the reward
  components): what the update's shardings are built from. `data`: the run's
  grpo_data.GRPOData."""
  n = global_batch_size * group_size // jax.process_count()
  return batch_lib.abstract_batch(n, data.seq_len, data.max_turns * data.grid[1] * data.grid[2],
                                  data.proc.patch_dim,
                                  optional=("old_logps",) + grpo.REWARD_KEYS)


def _rows_with_sampled_vision_tokens(batch: sampling.RolloutBatch, vision_ids: Sequence[int]
                                     ) -> np.ndarray:
  """bool[N]: rows whose assistant messages hold a sampled vision placeholder token.

  The teacher-forced forward would fill such a <|video_pad|> with visual features (shifting every
  later turn's features), which the sampler did not do, so these rows' log-probs are not those
  of the sampled sequence: the trainer masks them out of the loss (their reward still counts in
  the group statistics) and reports how many.
  """
  sampled = (batch.loss_mask + batch.forced_mask) > 0
  hit = np.isin(batch.labels, np.asarray(list(vision_ids))) & sampled
  return hit.any(axis=1)


def update_batch(rb: sampling.RolloutBatch, reward_arrays: Mapping[str, np.ndarray], data,
                 vision_ids: Sequence[int]) -> tuple[batch_lib.Batch, int]:
  """The host batch of the jitted update (pixels padded to data.max_turns turns of data.grid)
  and the count of rows masked for a sampled vision token. `data`: the run's
  grpo_data.GRPOData; vision_ids: the model's (video, image) placeholder ids."""
  batch = rb.as_batch()
  pix = batch.pixel_values_videos
  want = data.max_turns * data.grid[1] * data.grid[2]
  if pix.shape[1] < want:
    pix = np.pad(pix, ((0, 0), (0, want - pix.shape[1]), (0, 0)))
  batch = batch.replace(pixel_values_videos=pix,
                        **{k: reward_arrays[k] for k in grpo.REWARD_KEYS})
  bad = _rows_with_sampled_vision_tokens(rb, vision_ids)
  if bad.any():
    batch = batch.replace(loss_mask=batch.loss_mask * (~bad)[:, None].astype(np.float32))
  return batch, int(bad.sum())


def make_learner(run: run_lib.Run, module, step_cfg: grpo.GRPOStepConfig,
                 grid: tuple[int, int, int], example: batch_lib.Batch):
  """The jitted GRPO update of the run: (state, ref_params, batch) -> (state, metrics), the
  policy's log-probs from `module` over max_turns turns of `grid`."""
  max_turns = run.data.extra.max_turns
  turns = np.tile(np.asarray(grid, np.int64).reshape(1, 3), (max_turns, 1))
  logps_fn = grpo.make_logps_fn(setup_lib.make_forward(module, turns),
                                temperature=step_cfg.temperature,
                                chunk_size=step_cfg.logps_chunk_size,
                                unembed_fn=setup_lib.make_unembed(run.model_config))
  return grpo_step.make_grpo_step(
      logps_fn, run.tx, step_cfg, state_shardings=run.shardings,
      batch_sharding=example.shardings(run.mesh), mesh=run.mesh,
      trainable=optim.trainable_mask(run.abstract_params, run.tree.optim.frozen),
      schedule=run.schedule, rules=run.rules)
