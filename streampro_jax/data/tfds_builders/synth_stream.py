"""TFDS builder for SynthStream (data/synthetic.py) in the array_record format.

Examples have the features of jsonl_videos.features: the record's JSON line (with the scene spec
in meta["synth"]), its id, frames uint8 [K * tp, H, W, 3] (frame 2k and 2k + 1 are turn k's; the
generator renders fps = tp frames per second), num_turns and num_questions.

Use:
  cfg = SynthStreamConfig(name="tiny", num_videos={"train": 64, "validation": 8},
                          synth={"resolution": 56, "min_duration": 12, "max_duration": 16})
  builder = SynthStream(config=cfg, data_dir="/data/tfds", file_format="array_record")
  jsonl_videos.build(builder)
  source = builder.as_data_source()["train"]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from streampro_jax.data import schema, synthetic
from streampro_jax.data.tfds_builders import jsonl_videos

__all__ = ["SynthStream", "SynthStreamConfig"]


@dataclasses.dataclass(eq=False)
class SynthStreamConfig(tfds.core.BuilderConfig):
  """Config of SynthStream.

  Attributes:
    num_videos: split -> number of samples (samples 0 .. n-1 of that split).
    seed: generator seed.
    synth: keyword arguments of synthetic.SynthConfig (resolution, durations, difficulty, ...).
    frames_per_turn: frames stored per turn (the generator's fps must be a multiple; frames are
      taken evenly inside each second, the last of each group of fps / frames_per_turn).
    on_error: "fail" or "skip" for samples the generator or the schema rejects.
  """
  num_videos: dict[str, int] = dataclasses.field(
      default_factory=lambda: {"train": 64, "validation": 8, "test": 8})
  seed: int = 0
  synth: dict[str, Any] = dataclasses.field(default_factory=dict)
  frames_per_turn: int = 2
  on_error: str = "fail"

  def synth_config(self) -> synthetic.SynthConfig:
    return synthetic.SynthConfig.from_dict(self.synth)


def _turn_frames(frames_thwc: np.ndarray, fps: int, frames_per_turn: int) -> np.ndarray:
  """[K * fps, H, W, 3] -> [K, n, H, W, 3] (n = frames_per_turn): frames (j + 1) * fps / n - 1.

  With fps = n (the default) this is a reshape.
  """
  if fps % frames_per_turn:
    raise ValueError(f"fps {fps} is not a multiple of frames_per_turn {frames_per_turn}")
  k = frames_thwc.shape[0] // fps
  step = fps // frames_per_turn
  per_second = frames_thwc[:k * fps].reshape(k, fps, *frames_thwc.shape[1:])
  return per_second[:, step - 1::step]


class SynthStream(jsonl_videos.NoCodePathMixin, tfds.core.GeneratorBasedBuilder):
  """SynthStream samples: record JSON + rendered frames."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = [SynthStreamConfig(name="default")]

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.build_reports: dict[str, jsonl_videos.BuildReport] = {}

  def _info(self) -> tfds.core.DatasetInfo:
    res = self.builder_config.synth_config().resolution
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=jsonl_videos.features(res, res))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.num_videos.items()}

  def _generate_examples(self, split: str, num_videos: int):
    cfg = self.builder_config
    synth_cfg = cfg.synth_config()
    report = self.build_reports.setdefault(split, jsonl_videos.BuildReport(split))
    for index in range(num_videos):
      try:
        record = synthetic.make_record(split, index, seed=cfg.seed, config=synth_cfg)
        frames = _turn_frames(synthetic.render_frames(record), synth_cfg.fps, cfg.frames_per_turn)
      except (schema.DataError, ValueError) as e:
        if cfg.on_error == "fail":
          raise
        report.skip(e)
        continue
      report.num_records += 1
      yield record.id, jsonl_videos.example_of(record, frames)
