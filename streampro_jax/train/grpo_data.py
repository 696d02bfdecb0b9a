"""The GRPO recipe's prompts: a checkpointable stream of (record, question) samples of this host.

:class:`_PromptIterator` walks every (record, question) trajectory of a record source in a seeded
order, sharded per host, and saves its position with the checkpoints; :func:`make_grpo_data` is
the run builder's data function of the GRPO recipe (train/run.build_run's data_fn): the pipeline
settings, processor, video grid and chat format of the run (:class:`GRPOData`) with the
iterator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np

from streampro_jax.data import chat_format, pipeline, pipeline_config, schema
from streampro_jax.train import run as run_lib

__all__ = ["GRPOData", "make_grpo_data"]


class _PromptIterator:
  """Yields lists of ``batch_size`` (record, question index) samples of this host.

  The order is a grain MapDataset over every (record, question) trajectory of the source:
  seeded shuffle (a new permutation every epoch), repeated forever, sharded per host
  (``ds[process_index::process_count]``). The state is the position in that sequence
  (``{"position": int}``), so ``set_state`` resumes exactly. With ``max_turns``, a trajectory
  whose question is asked on a turn >= max_turns (after the cut of a long record) is skipped and
  counted in ``skipped``.
  """

  def __init__(self, source, batch_size: int, *, seed: int = 0, shuffle: bool = True,
               process_index: int = 0, process_count: int = 1, max_turns: int | None = None):
    self.source = source
    self.batch_size = int(batch_size)
    self.max_turns = max_turns
    self.skipped = 0
    index = pipeline.trajectory_index(source)
    if len(index) == 0:
      raise ValueError("the source holds no trajectory (no record with a question)")
    self.num_trajectories = len(index)
    ds = grain.MapDataset.source(index)
    if shuffle:
      ds = ds.shuffle(seed=seed)
    ds = ds.repeat(None)
    if process_count > 1:
      ds = ds[process_index::process_count]
    self._ds = ds
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self) -> list[tuple[schema.Record, int, np.ndarray]]:
    """[(record, question index, frames uint8[K * tp, H, W, 3])] of the next batch."""
    out = []
    misses = 0
    while len(out) < self.batch_size:
      ex, q = (int(v) for v in self._ds[self.position])
      self.position += 1
      record, frames = self.source[ex]
      if self.max_turns is not None:
        k = chat_format.num_turns(record.duration)
        if chat_format.ask_turn(record.questions[q].ask_time, k) >= self.max_turns:
          self.skipped += 1
          misses += 1
          if misses > 10 * self.num_trajectories:
            raise ValueError(f"no trajectory asks its question before turn {self.max_turns}")
          continue
      out.append((record, q, frames))
    return out

  def get_state(self) -> dict[str, int]:
    return {"position": int(self.position), "skipped": int(self.skipped)}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.position = int(state["position"])
    self.skipped = int(state.get("skipped", 0))


@dataclasses.dataclass
class GRPOData:
  """What the GRPO recipe builds with its prompts: the pipeline settings (the run's data node,
  config_check.DataSection, a PipelineConfig), the processor, the video grid (1, gh, gw), the
  chat format and the row sizes."""
  pcfg: pipeline_config.PipelineConfig
  proc: Any
  grid: tuple[int, int, int]
  chat: chat_format.ChatFormat
  max_turns: int
  seq_len: int


def make_grpo_data(r: run_lib.Run, source=None) -> run_lib.Data:
  """The GRPO recipe's data of run `r` (run_lib.build_run's data_fn, with `source` bound): a
  _PromptIterator of B = global batch / hosts samples per step over `source` (default
  config.data's source); Data.extra is the run's GRPOData."""
  mcfg, pcfg = r.model_config, r.tree.data
  proc = pipeline.processor_config(pcfg, mcfg)
  _, gh, gw = proc.grid(pcfg.frame_height, pcfg.frame_width)
  tokens_per_turn = gh * gw // (mcfg.vision.spatial_merge_size ** 2)
  chat = chat_format.ChatFormat(r.tokenizer, tokens_per_turn=tokens_per_turn,
                                system_prompt=pcfg.system_prompt)
  data = GRPOData(pcfg, proc, (1, gh, gw), chat, max_turns=pcfg.max_turns,
                  seq_len=pcfg.seq_len)
  src = (source if source is not None
         else pipeline.source_from_config(dataclasses.asdict(pcfg)))
  gb, n_proc = r.tree.global_batch_size, jax.process_count()
  if gb % n_proc:
    raise ValueError(f"global batch {gb} is not divisible by {n_proc} hosts")
  prompts = _PromptIterator(src, gb // n_proc, seed=pcfg.seed, shuffle=pcfg.shuffle,
                           process_index=jax.process_index(), process_count=n_proc,
                           max_turns=data.max_turns)
  return run_lib.Data(prompts, prompts.num_trajectories, extra=data)
