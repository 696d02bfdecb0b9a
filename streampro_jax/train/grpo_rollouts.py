"""The GRPO recipe's rollouts: the sampler settings of a run, the prompts of a batch of samples,
and the host metrics of a rollout batch.

The recipe samples G rollouts of each (record, question) sample with sampling.StreamingSampler
(configured by :func:`sampler_config`) from the prompts :func:`stream_prompts` builds, and logs
:func:`rollout_stats` of what came back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from streampro_jax import sampling
from streampro_jax.data import schema
from streampro_jax.train import config_check

__all__ = ["rollout_stats", "sampler_config", "stream_prompts"]


def sampler_config(run: config_check.GRPORun) -> sampling.SamplerConfig:
  """sampling.SamplerConfig of a GRPO run: temperature and top_p from its grpo section (the update
  shares the temperature), the other fields from its rollout section."""
  return sampling.SamplerConfig(temperature=run.grpo.temperature, top_p=run.grpo.top_p,
                                **dataclasses.asdict(run.rollout))


def stream_prompts(samples: Sequence[tuple[schema.Record, int, np.ndarray]], data
                   ) -> list[sampling.StreamPrompt]:
  """The sampler's prompts of a PromptIterator batch [(record, question index, frames)], cut to
  data.max_turns turns at data's frame size (`data`: the run's grpo_data.GRPOData)."""
  return [sampling.prompt_from_record(
      record, record.questions[q], frames, data.proc, max_turns=data.max_turns,
      frame_size=(data.pcfg.frame_height, data.pcfg.frame_width))
          for record, q, frames in samples]


def rollout_stats(batch: sampling.RolloutBatch) -> dict[str, float]:
  """Host metrics of a rollout batch: response_rate and invalid_rate (over real turns),
  responses_per_rollout, sampled_tokens (loss-masked), mean_length (real tokens per row)."""
  real = batch.decisions >= 0
  turns = max(int(real.sum()), 1)
  return {"response_rate": float((batch.decisions == sampling.TURN_RESPONSE).sum() / turns),
          "invalid_rate": float((batch.decisions == sampling.TURN_INVALID).sum() / turns),
          "responses_per_rollout": float((batch.decisions == sampling.TURN_RESPONSE).sum()
                                         / batch.decisions.shape[0]),
          "sampled_tokens": float(batch.loss_mask.sum()),
          "mean_length": float(batch.lengths.mean())}
