"""The input pipeline's settings and its sources' config keys: plain data, importable without
grain (train/config_check.py builds the config tree from them, also on machines without grain,
such as the GPU benchmarks' image). data/pipeline.py builds the pipeline they describe."""

from __future__ import annotations

import dataclasses
from typing import Any

from streampro_jax import _config, prompts

__all__ = ["SOURCE_KEYS", "PipelineConfig"]

# The source spec of a config's data section: per `source`, the keys `source_from_config` reads
# and their values when unset. A data section may hold every source's keys (so that
# `--config.data.source=jsonl --config.data.jsonl=...` works on the command line); the keys of
# the sources not chosen must keep these values (train/config_check.py).
SOURCE_KEYS = {
    "tfds": {"tfds_dir": "", "split": "train"},
    "jsonl": {"jsonl": "", "frames_per_turn": 2, "on_error": "fail"},
    "synth": {"split": "train", "num_videos": 0, "synth_seed": 0, "synth": {}},
}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Settings of the input pipeline.

  Attributes:
    seq_len: T, tokens per row.
    batch_size: B, rows per batch on this host.
    max_turns: K, turns per row (size of the pixel buffer); longer records are cut.
    frame_height: every frame is resized to this height (a multiple of patch * merge).
    frame_width: every frame is resized to this width (a multiple of patch * merge).
    seed: shuffle seed (the same on every host).
    shuffle: shuffle trajectories (a new permutation every epoch).
    num_epochs: passes over the data; None repeats forever.
    num_threads: grain read threads for the map (decode, render, patchify).
    prefetch_buffer_size: rows read ahead.
    system_prompt: the chat format's system prompt.
    min_pixels: processor setting (unused by the fixed-size resize; kept for parity configs).
  """
  seq_len: int = 4096
  batch_size: int = 8
  max_turns: int = 64
  frame_height: int = 224
  frame_width: int = 224
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None
  num_threads: int = 4
  prefetch_buffer_size: int = 8
  system_prompt: str = prompts.STREAMING_SYSTEM_PROMPT

  @classmethod
  def from_config(cls, cfg: Any, **overrides) -> PipelineConfig:
    """From a mapping / ConfigDict (config.data: its keys that name a field; the source keys are
    read by source_from_config), then `overrides`; a key left out keeps the field's default."""
    return cls(**{**_config.field_values(cls, cfg, section_name="data"), **overrides})
