"""TFDS builder: "JSONL annotations + video files" -> array_record (no TensorFlow needed).

Each example is one annotation record with its decoded frames:
  record  Text   the record's JSON line (schema.Record.to_jsonl_line()),
  id      Text   the record id,
  frames  uint8  [K * tp, H, W, 3], turn k = frames [k*tp, (k+1)*tp) (data/video.py sampling),
  num_turns, num_questions  int32.

Videos are decoded at build time with data/video.py (frames_per_turn frames per second, resized
by the config's ResizePolicy). Bad records follow the schema's policy: on_error="fail" raises the
first DataError / VideoError; "skip" drops the record, and `builder.build_reports[split]` (also
written as `{split}.build_report.json` by `build`) counts them with their messages.

Use:
  cfg = JsonlVideosConfig(name="mydata_224", splits={"train": "/data/train.jsonl"},
                          height=224, width=224)
  builder = JsonlVideos(config=cfg, data_dir="/data/tfds", file_format="array_record")
  build(builder)                                 # download_and_prepare + side files
  source = builder.as_data_source()["train"]     # random access, for data/pipeline.py
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from streampro_jax.data import schema
from streampro_jax.data import video as video_lib

__all__ = [
    "BuildReport", "JsonlVideos", "JsonlVideosConfig", "NoCodePathMixin", "build", "example_of",
    "features"
]


def features(height: int | None, width: int | None) -> tfds.features.FeaturesDict:
  """The example features (frames of a fixed size when height/width are given)."""
  return tfds.features.FeaturesDict({
      "record": tfds.features.Text(),
      "id": tfds.features.Text(),
      "frames": tfds.features.Tensor(shape=(None, height, width, 3), dtype=np.uint8,
                                     encoding="bytes"),
      "num_turns": tfds.features.Scalar(dtype=np.int32),
      "num_questions": tfds.features.Scalar(dtype=np.int32),
  })


@dataclasses.dataclass
class BuildReport:
  """What building one split did."""
  split: str
  num_records: int = 0
  num_skipped: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)

  def skip(self, err: Exception) -> None:
    self.num_skipped += 1
    self.errors.append(str(err))


def example_of(record: schema.Record, frames_kthwc: np.ndarray) -> dict[str, Any]:
  """The stored example of a record and its frames [K, tp, H, W, 3]."""
  k = frames_kthwc.shape[0]
  return {"record": record.to_jsonl_line(), "id": record.id,
          "frames": frames_kthwc.reshape(-1, *frames_kthwc.shape[2:]),
          "num_turns": np.int32(k), "num_questions": np.int32(len(record.questions))}


@dataclasses.dataclass(eq=False)
class JsonlVideosConfig(tfds.core.BuilderConfig):
  """Config of JsonlVideos.

  Attributes:
    splits: split name -> JSONL annotation file (videos relative to the file's folder).
    frames_per_turn: frames sampled inside each second (temporal_patch_size).
    height, width: fixed frame size (both set), else max_pixels/min_pixels (smart resize), else
      the native size.
    max_pixels, min_pixels: see video.ResizePolicy.
    on_error: "fail" or "skip" for bad records and unreadable videos.
  """
  splits: dict[str, str] = dataclasses.field(default_factory=dict)
  frames_per_turn: int = 2
  height: int | None = None
  width: int | None = None
  max_pixels: int | None = None
  min_pixels: int = 56 * 56
  on_error: str = "fail"

  def resize_policy(self) -> video_lib.ResizePolicy:
    return video_lib.ResizePolicy(max_pixels=self.max_pixels, min_pixels=self.min_pixels,
                                  height=self.height, width=self.width)


class NoCodePathMixin:
  """TFDS looks for a checksums file next to the builder's code through `importlib_resources`,
  a package that is not installed here (and these builders download nothing): no code path."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # pylint: disable=invalid-name
    return None


class JsonlVideos(NoCodePathMixin, tfds.core.GeneratorBasedBuilder):
  """Annotation records (schema JSONL) with their videos decoded into 1-second turns."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = [JsonlVideosConfig(name="default")]

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.build_reports: dict[str, BuildReport] = {}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=features(cfg.height, cfg.width))

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    if not cfg.splits:
      raise ValueError("JsonlVideosConfig.splits is empty: give {split: jsonl path}")
    return {split: self._generate_examples(split, path) for split, path in cfg.splits.items()}

  def _generate_examples(self, split: str, path: str):
    cfg = self.builder_config
    if cfg.on_error not in ("fail", "skip"):
      raise ValueError(f"on_error must be 'fail' or 'skip', got {cfg.on_error!r}")
    report = self.build_reports.setdefault(split, BuildReport(split))
    load = schema.LoadReport(file=str(path))
    resize = cfg.resize_policy()
    for record in schema.iter_jsonl(path, on_error=cfg.on_error, report=load):
      try:
        dec = video_lib.decode_turns(record.video_path(), frames_per_turn=cfg.frames_per_turn,
                                     num_turns=_num_turns(record), resize=resize)
      except video_lib.VideoError as e:
        err = schema.DataError(str(path), record.source_line, "video", str(e))
        if cfg.on_error == "fail":
          raise err from e
        report.skip(err)
        continue
      report.num_records += 1
      yield record.id, example_of(record, dec.frames)
    for e in load.errors:
      report.skip(e)


def _num_turns(record: schema.Record) -> int:
  from streampro_jax.data import chat_format  # pylint: disable=g-import-not-at-top
  return chat_format.num_turns(record.duration)


def build(builder: tfds.core.DatasetBuilder, **prepare_kwargs) -> dict[str, dict]:
  """download_and_prepare, then write per split `{split}.question_counts.json` (questions per
  example in the stored order, read by pipeline.TfdsSource) and `{split}.build_report.json`.

  Returns: split -> report dict (num_records, num_skipped, errors).
  """
  from streampro_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  builder.download_and_prepare(**prepare_kwargs)
  reports = {}
  sources = builder.as_data_source()
  for split, source in sources.items():
    counts = [int(source[i]["num_questions"]) for i in range(len(source))]
    with open(os.path.join(builder.data_dir, f"{split}.{pipeline.QUESTION_COUNTS_FILE}"),
              "w") as f:
      json.dump(counts, f)
    rep = getattr(builder, "build_reports", {}).get(split)
    rep = dataclasses.asdict(rep) if rep is not None else {"split": split,
                                                           "num_records": len(source),
                                                           "num_skipped": 0, "errors": []}
    with open(os.path.join(builder.data_dir, f"{split}.build_report.json"), "w") as f:
      json.dump(rep, f, indent=1)
    reports[split] = rep
  return reports
