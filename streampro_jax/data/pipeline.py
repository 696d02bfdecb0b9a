"""Grain input pipeline: (record, question) trajectories -> fixed-shape training batches.

Data flow (one host):

  source (TFDS array_record data source, JSONL + video files, or in-memory records)
  -> trajectory index: one entry (example, question) per question of every record
  -> grain.MapDataset: seeded shuffle (a new permutation every epoch), repeat, per-host shard
     (`ds[process_index::process_count]`, the numbers of grain's ShardOptions / jax.process_*)
  -> map: render the chat format (data/chat_format.py), frames of each turn through the
     backbone's processor (models/processing.py for Qwen2.5-VL, models/processing_qwen3.py for
     Qwen3-VL) into patches, M-RoPE position_ids through the backbone's `get_rope_index` (host
     side; `models.backbone_module(model_config)`), pad to `seq_len`
  -> IterDataset with thread prefetch -> `TrainIterator`: B rows per batch, checkpointable.

Batch: a data/batch.Batch of NumPy arrays (docs/architecture.md#shared-interfaces): input_ids
i32[B,T], labels i32[B,T], loss_mask f32[B,T], decision_class i32[B,T], attention_mask i32[B,T],
position_ids i32[3,B,T], pixel_values_videos f32[B, K*P, D] (K = max_turns, P = gh*gw,
D = 3*tp*p*p; rows of turns a trajectory does not have are zero). Inside grain a row is a dict;
`_collate` turns B rows into the Batch. The per-turn grid (1, gh, gw) is static per config:
`Pipeline.video_grid_thw` (every frame is resized to frame_height x frame_width first).
Qwen3-VL needs no extra field: its `mm_token_type_ids` follow from input_ids (the model derives
them), and its positions are in position_ids; its per-turn grid is one temporal patch, so its
M-RoPE split into (1, gh, gw) blocks changes nothing.

Long trajectories are cut by whole turns, never silently: a record longer than `max_turns` turns
keeps its first `max_turns` turns, and a trajectory whose tokens exceed `seq_len` keeps the
largest number of whole turns that fits (answers due after the cut are dropped with those turns).
A trajectory whose question comes after the cut, or whose first turn alone exceeds `seq_len`, is
dropped. `TrainIterator.stats` counts all of these (and logs the first of each kind); the counts
are part of the checkpointed state.

Checkpointing: `TrainIterator` is a grain `DatasetIterator`; `get_state()` / `set_state()` give
and take a JSON-able dict, and `grain.checkpoint.CheckpointSave(item=it)` /
`CheckpointRestore(item=it)` store it with orbax. A fresh iterator restored from the state of
another yields exactly the batches the other would have yielded next.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging

from streampro_jax import models
from streampro_jax.data import batch as batch_lib
from streampro_jax.data import chat_format, pipeline_config, schema
from streampro_jax.models import processing

__all__ = ["Pipeline", "PipelineStats", "QUESTION_COUNTS_FILE", "RecordSource", "TfdsSource",
           "TrainIterator", "TrajectoryEncoder", "VideoFileSource", "build_pipeline", "clip_frames",
           "decode_record", "make_train_iterator", "processor_config", "source_from_config",
           "synthetic_source", "tfds_source", "trajectory_index"]

QUESTION_COUNTS_FILE = "question_counts.json"

# ------------------------------------------------------------------------------------------------
# Configuration (the settings: data/pipeline_config.py).


def processor_config(cfg: pipeline_config.PipelineConfig, model_config):
  """The processor settings that match the model's vision tower; frames are pre-resized.

  processing.VideoProcessorConfig (Qwen2.5-VL: patch 14, CLIP mean/std) or
  processing_qwen3.Qwen3VideoProcessorConfig (Qwen3-VL: patch 16, mean = std = 0.5), with the
  patch sizes of `model_config` and do_resize=False (`models.video_processor_config`).
  """
  v = model_config.vision
  factor = v.patch_size * v.spatial_merge_size
  if cfg.frame_height % factor or cfg.frame_width % factor:
    raise ValueError(f"frame size {cfg.frame_height}x{cfg.frame_width} is not a multiple of "
                     f"patch_size * merge_size = {v.patch_size} * {v.spatial_merge_size} = "
                     f"{factor}")
  return models.video_processor_config(model_config)


# ------------------------------------------------------------------------------------------------
# Sources: random access to (Record, frames uint8 [T, H, W, 3]).


class RecordSource:
  """In-memory records with their frames.

  Args:
    records: the records.
    frames: per record, uint8 frames [K * tp, H, W, 3] (turn k = frames [k*tp, (k+1)*tp)), or
      a callable record -> such frames (called lazily, e.g. decode a video file).
  """

  def __init__(self, records: Sequence[schema.Record],
               frames: Sequence[np.ndarray] | Callable[[schema.Record], np.ndarray]):
    self.records = list(records)
    self.frames = frames
    if not callable(frames) and len(frames) != len(self.records):
      raise ValueError(f"{len(self.records)} records but {len(frames)} frame arrays")

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> tuple[schema.Record, np.ndarray]:
    r = self.records[i]
    return r, (self.frames(r) if callable(self.frames) else self.frames[i])

  def question_counts(self) -> list[int]:
    return [len(r.questions) for r in self.records]


class VideoFileSource(RecordSource):
  """Records whose videos are decoded on demand with data/video.py (turns of tp frames)."""

  def __init__(self, records: Sequence[schema.Record], *, frames_per_turn: int = 2,
               resize=None, base_dir: str | None = None):
    from streampro_jax.data import video  # pylint: disable=g-import-not-at-top

    def decode(record: schema.Record) -> np.ndarray:
      dec = video.decode_turns(record.video_path(base_dir), frames_per_turn=frames_per_turn,
                               num_turns=chat_format.num_turns(record.duration), resize=resize)
      return dec.frames.reshape(-1, *dec.frames.shape[2:])

    super().__init__(records, decode)


def clip_frames(record: schema.Record, num_frames: int, *, base_dir: str | None = None,
                max_pixels: int = 448 * 448) -> tuple[np.ndarray, np.ndarray]:
  """`num_frames` frames sampled evenly from a record's clip, for a reader that sees the video
  (the rubric writer): frame k at time (k + 0.5) * duration / num_frames.

  SynthStream records ("synth://") are drawn (synthetic.render_frames, the frame shown at that
  time); other videos are decoded (video.decode_frames_at) and resized to at most `max_pixels`.

  Returns:
    (float64 times [n] in seconds, uint8 frames [n, h, w, 3] RGB).
  """
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  times = (np.arange(num_frames) + 0.5) * float(record.duration) / num_frames
  if record.is_synthetic:
    from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    drawn = synthetic.render_frames(record)
    fps = int(record.meta["synth"]["fps"])
    # Frame i shows time (i + 1) / fps: the frame shown at t is the last with (i + 1) / fps <= t.
    idx = np.clip(np.floor(times * fps).astype(int) - 1, 0, len(drawn) - 1)
    return times, drawn[idx]
  from streampro_jax.data import video  # pylint: disable=g-import-not-at-top
  frames, _ = video.decode_frames_at(record.video_path(base_dir), times,
                                     video.ResizePolicy(max_pixels=max_pixels))
  return times, frames


class TfdsSource:
  """A TFDS data source of the builders in data/tfds_builders (features "record", "frames").

  Args:
    data_source: `builder.as_data_source()[split]` or `tfds.data_source(...)`.
    counts_file: optional JSON list of questions per example (written by the builders' `build`
      helpers); without it the counts are read from the examples once.
  """

  def __init__(self, data_source, counts_file: str | None = None):
    self.data_source = data_source
    self.counts_file = counts_file

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, i: int) -> tuple[schema.Record, np.ndarray]:
    ex = self.data_source[i]
    return decode_record(ex["record"]), np.asarray(ex["frames"])

  def question_counts(self) -> list[int]:
    if self.counts_file and os.path.exists(self.counts_file):
      with open(self.counts_file) as f:
        counts = json.load(f)
      if len(counts) != len(self):
        raise ValueError(f"{self.counts_file} lists {len(counts)} examples, the source has "
                         f"{len(self)}")
      return counts
    return [len(decode_record(self.data_source[i]["record"]).questions)
            for i in range(len(self))]


def decode_record(value: Any) -> schema.Record:
  """A stored record (JSON bytes / str, dict, or Record) -> schema.Record."""
  if isinstance(value, schema.Record):
    return value
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if isinstance(value, str):
    value = json.loads(value)
  return schema.from_json(value)


def trajectory_index(source) -> np.ndarray:
  """i64[N, 2]: (example index, question index) of every trajectory, in source order."""
  counts = source.question_counts()
  pairs = [(i, q) for i, n in enumerate(counts) for q in range(n)]
  return np.asarray(pairs, np.int64).reshape(-1, 2)


# ------------------------------------------------------------------------------------------------
# One trajectory -> one padded row.


class TrajectoryEncoder:
  """Turns (record, question, frames) into one padded row of the batch layout.

  Args:
    cfg: pipeline settings.
    tokenizer: HF tokenizer with the Qwen special tokens and the decision tokens.
    model_config: a backbone config (qwen2_5_vl.Qwen2_5_VLConfig or qwen3_vl.Qwen3_VLConfig:
      vision patch sizes and the special token ids used for M-RoPE; its video/image token ids
      must be the tokenizer's).
  """

  def __init__(self, cfg: pipeline_config.PipelineConfig, tokenizer, model_config):
    self._get_rope_index = models.backbone_module(model_config).get_rope_index
    self.cfg = cfg
    self.model_config = model_config
    self.proc = processor_config(cfg, model_config)
    _, gh, gw = self.proc.grid(cfg.frame_height, cfg.frame_width)
    self.grid = (1, gh, gw)
    self.patches_per_turn = gh * gw
    m = self.proc.merge_size
    self.tokens_per_turn = self.patches_per_turn // (m * m)
    self.chat = chat_format.ChatFormat(tokenizer, tokens_per_turn=self.tokens_per_turn,
                                       system_prompt=cfg.system_prompt)
    for name, tok_id in (("video_token_id", self.chat.video_pad_id),
                         ("vision_start_token_id", self.chat.vision_start_id)):
      if getattr(model_config, name) != tok_id:
        raise ValueError(f"model config {name} = {getattr(model_config, name)} but the "
                         f"tokenizer's id is {tok_id}; build the config with the tokenizer's ids")
    if len(self.chat.system_ids()) >= cfg.seq_len:
      raise ValueError(f"seq_len {cfg.seq_len} does not hold the system prompt "
                       f"({len(self.chat.system_ids())} tokens)")

  @property
  def patch_dim(self) -> int:
    return self.proc.patch_dim

  def __call__(self, record: schema.Record, question_index: int,
               frames_thwc: np.ndarray) -> dict[str, Any]:
    """One row, or {"_dropped": reason} when nothing of the trajectory fits.

    The row also carries "_turns_cut" (turns removed by the max_turns / seq_len cuts) and
    "_cut_reason" ("" when nothing was cut); TrainIterator takes them out of the batch.
    """
    cfg = self.cfg
    question = record.questions[int(question_index)]
    k_record = chat_format.num_turns(record.duration)
    k_keep = min(k_record, cfg.max_turns)
    reasons = []
    if k_keep < k_record:
      reasons.append(f"max_turns {cfg.max_turns} < {k_record} turns")
    q_turn = chat_format.ask_turn(question.ask_time, k_record)
    if q_turn >= k_keep:
      return {"_dropped": f"question asked on turn {q_turn}, after the cut at {k_keep} turns"}
    traj = self.chat.render(record, question, max_turns=k_keep)
    if len(traj) > cfg.seq_len:
      ends = traj.assistant_spans[:, 1]
      k_fit = int(np.sum(ends <= cfg.seq_len))
      if k_fit <= q_turn:
        return {"_dropped": f"{k_fit} whole turns fit in seq_len {cfg.seq_len}, the question "
                            f"is asked on turn {q_turn}"}
      reasons.append(f"seq_len {cfg.seq_len} < {len(traj)} tokens")
      traj = self.chat.render(record, question, max_turns=k_fit)
      k_keep = k_fit
    k = traj.num_turns
    frames_thwc = np.asarray(frames_thwc)
    tp = self.proc.temporal_patch_size
    if frames_thwc.ndim != 4 or frames_thwc.shape[0] < k * tp:
      raise ValueError(f"record {record.id!r}: {k} turns need {k * tp} frames, got frames of "
                       f"shape {frames_thwc.shape}")
    frames = frames_thwc[:k * tp]
    if frames.shape[1:3] != (cfg.frame_height, cfg.frame_width):
      frames = processing.resize_frames(frames, cfg.frame_height, cfg.frame_width)
    patches, grid = models.process_turns(frames.reshape(k, tp, *frames.shape[1:]), self.proc)
    assert grid == self.grid, (grid, self.grid)

    t = cfg.seq_len
    n = len(traj)
    pad = self.chat.pad_id
    row = {
        "input_ids": np.full((t,), pad, np.int32),
        "labels": np.full((t,), pad, np.int32),
        "loss_mask": np.zeros((t,), np.float32),
        "decision_class": np.zeros((t,), np.int32),
        "attention_mask": np.zeros((t,), np.int32),
    }
    row["input_ids"][:n] = traj.input_ids
    row["labels"][:n] = traj.labels
    row["loss_mask"][:n] = traj.loss_mask
    row["decision_class"][:n] = traj.decision_class
    row["attention_mask"][:n] = 1
    pos, _ = self._get_rope_index(
        row["input_ids"][None], video_grid_thw=np.tile(np.asarray(self.grid), (k, 1)),
        attention_mask=row["attention_mask"][None], config=self.model_config)
    row["position_ids"] = np.ascontiguousarray(pos[:, 0, :], np.int32)
    pix = np.zeros((cfg.max_turns * self.patches_per_turn, self.patch_dim), np.float32)
    pix[:k * self.patches_per_turn] = patches.reshape(-1, self.patch_dim)
    row["pixel_values_videos"] = pix
    row["_turns_cut"] = k_record - k
    row["_cut_reason"] = "; ".join(reasons)
    return row


# ------------------------------------------------------------------------------------------------
# Batching iterator with checkpointable state.


@dataclasses.dataclass
class PipelineStats:
  """Counts since the start of the run (checkpointed with the iterator)."""
  rows: int = 0                 # trajectories put in batches
  truncated_rows: int = 0       # trajectories cut by whole turns
  turns_cut: int = 0            # turns removed by the cuts
  dropped: int = 0              # trajectories that did not fit at all
  batches: int = 0

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


def _collate(rows: Sequence[dict[str, np.ndarray]]) -> batch_lib.Batch:
  """Stacks B rows (TrajectoryEncoder dicts) into a Batch: every field on a new axis 0, except
  position_ids [3, T] -> [3, B, T]."""
  stack = lambda k: np.stack([r[k] for r in rows])  # noqa: E731
  return batch_lib.Batch(
      input_ids=stack("input_ids"), labels=stack("labels"), loss_mask=stack("loss_mask"),
      attention_mask=stack("attention_mask"),
      position_ids=np.stack([r["position_ids"] for r in rows], axis=1),
      pixel_values_videos=stack("pixel_values_videos"), decision_class=stack("decision_class"))


class TrainIterator(grain.DatasetIterator):
  """Yields batches of `batch_size` rows; `get_state`/`set_state` make it resumable.

  State: {"rows": the grain row iterator's state at the batch boundary, "stats": counts}.
  """

  def __init__(self, row_iter: grain.DatasetIterator, batch_size: int,
               stats: PipelineStats | None = None, *, epoch_size: int | None = None):
    """epoch_size: trajectories per epoch; that many drops in a row (a whole epoch with nothing
    that fits, e.g. seq_len shorter than the system prompt plus one turn) raise ValueError
    instead of looping forever over a repeating source."""
    super().__init__(row_iter)
    self._rows = row_iter
    self.batch_size = int(batch_size)
    self.stats = stats or PipelineStats()
    self.epoch_size = epoch_size
    self._dropped_in_a_row = 0
    self._warned: set[str] = set()

  def __next__(self) -> batch_lib.Batch:
    rows = []
    while len(rows) < self.batch_size:
      row = next(self._rows)  # StopIteration ends the data (a partial batch is dropped).
      if "_dropped" in row:
        self.stats.dropped += 1
        self._dropped_in_a_row += 1
        if self.epoch_size and self._dropped_in_a_row >= self.epoch_size:
          raise ValueError(f"all {self.epoch_size} trajectories of an epoch were dropped; the "
                           f"last one: {row['_dropped']}")
        self._warn_once("dropped", f"dropped a trajectory: {row['_dropped']} (counted in "
                        "TrainIterator.stats.dropped)")
        continue
      self._dropped_in_a_row = 0
      if row["_turns_cut"]:
        self.stats.truncated_rows += 1
        self.stats.turns_cut += int(row["_turns_cut"])
        self._warn_once("cut", f"cut a trajectory by {row['_turns_cut']} whole turns "
                        f"({row['_cut_reason']}); counted in TrainIterator.stats")
      rows.append(row)
    self.stats.rows += len(rows)
    self.stats.batches += 1
    return _collate(rows)

  def _warn_once(self, kind: str, message: str) -> None:
    if kind not in self._warned:
      self._warned.add(kind)
      logging.warning("%s", message)

  def get_state(self) -> dict[str, Any]:
    return {"rows": self._rows.get_state(), "stats": self.stats.as_dict()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._rows.set_state(state["rows"])
    self.stats = PipelineStats(**state["stats"])


# ------------------------------------------------------------------------------------------------
# Putting it together.


@dataclasses.dataclass
class Pipeline:
  """A built pipeline: `iterator()` gives a fresh TrainIterator at the start of the data.

  Attributes:
    cfg: settings.
    encoder: the per-trajectory encoder.
    dataset: the grain IterDataset of rows (this host's shard).
    num_trajectories: trajectories in one epoch of the whole source (all hosts).
    video_grid_thw: i64[3], the static grid (1, gh, gw) of every turn.
  """
  cfg: pipeline_config.PipelineConfig
  encoder: TrajectoryEncoder
  dataset: grain.IterDataset
  num_trajectories: int
  video_grid_thw: np.ndarray

  def iterator(self) -> TrainIterator:
    return TrainIterator(iter(self.dataset), self.cfg.batch_size,
                         epoch_size=self.num_trajectories)

  def abstract_batch(self) -> batch_lib.Batch:
    """The shapes and dtypes of this host's batches (ShapeDtypeStructs; decision_class
    included)."""
    return batch_lib.abstract_batch(
        self.cfg.batch_size, self.cfg.seq_len, self.cfg.max_turns * self.encoder.patches_per_turn,
        self.encoder.patch_dim, optional=("decision_class",))


def build_pipeline(source, cfg: pipeline_config.PipelineConfig, *, tokenizer, model_config,
                   process_index: int | None = None,
                   process_count: int | None = None) -> Pipeline:
  """Builds the grain pipeline of one host.

  Args:
    source: RecordSource / VideoFileSource / TfdsSource (anything with __len__, __getitem__ ->
      (Record, frames) and question_counts()).
    cfg: settings (batch_size is this host's rows per batch).
    tokenizer: HF tokenizer with the decision tokens.
    model_config: a backbone config (Qwen2.5-VL or Qwen3-VL).
    process_index: this host (default jax.process_index()).
    process_count: number of hosts (default jax.process_count()).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  shard = grain.sharding.ShardOptions(shard_index=process_index, shard_count=process_count,
                                      drop_remainder=True)
  encoder = TrajectoryEncoder(cfg, tokenizer, model_config)
  index = trajectory_index(source)
  if len(index) == 0:
    raise ValueError("the source holds no trajectory (no record with a question)")
  if len(index) < shard.shard_count:
    raise ValueError(f"{len(index)} trajectories cannot be sharded over {shard.shard_count} hosts")
  ds = grain.MapDataset.source(index)
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  ds = ds.repeat(cfg.num_epochs)
  if shard.shard_count > 1:
    ds = ds[shard.shard_index::shard.shard_count]

  def encode(pair: np.ndarray) -> dict[str, Any]:
    record, frames = source[int(pair[0])]
    return encoder(record, int(pair[1]), frames)

  rows = ds.map(encode).to_iter_dataset(grain.ReadOptions(
      num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch_buffer_size))
  return Pipeline(cfg=cfg, encoder=encoder, dataset=rows, num_trajectories=len(index),
                  video_grid_thw=np.asarray(encoder.grid, np.int64))


def make_train_iterator(data_config: Any, *, tokenizer, model_config, source=None,
                        process_index: int | None = None,
                        process_count: int | None = None) -> tuple[TrainIterator, Pipeline]:
  """Training iterator from a config's `data` section.

  Args:
    data_config: ConfigDict / mapping with the pipeline_config.PipelineConfig fields, where
      `batch_size` is the GLOBAL batch (divided by the number of hosts here), and, when `source`
      is None, a source spec: `source` = "tfds" (keys `tfds_dir`, the prepared builder's
      directory such as ".../synth_stream/tiny/1.0.0", and `split`), "jsonl" (keys `jsonl`,
      `frames_per_turn`; videos decoded on demand) or "synth" (keys `split`, `num_videos`,
      `synth_seed`, `synth`: the SynthStream generator, frames rendered on demand).
    tokenizer, model_config: as build_pipeline.
    source: a ready source (overrides the spec).
    process_index, process_count: default jax.process_index() / jax.process_count().

  Returns:
    (iterator, pipeline). Checkpoint with `iterator.get_state()` / `set_state()` or
    grain.checkpoint.CheckpointSave(item=iterator) in an orbax CheckpointManager.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  global_batch = int(data_config["batch_size"])
  if global_batch % process_count:
    raise ValueError(f"global batch size {global_batch} is not divisible by {process_count} "
                     "hosts")
  cfg = pipeline_config.PipelineConfig.from_config(data_config,
                                                   batch_size=global_batch // process_count)
  if source is None:
    source = source_from_config(data_config)
  pipe = build_pipeline(source, cfg, tokenizer=tokenizer, model_config=model_config,
                        process_index=process_index, process_count=process_count)
  logging.info("data: %d trajectories; global batch %d = %d hosts x %d rows; seq_len %d, "
               "max_turns %d, grid %s per turn", pipe.num_trajectories, global_batch,
               process_count, cfg.batch_size, cfg.seq_len, cfg.max_turns,
               tuple(pipe.video_grid_thw))
  return pipe.iterator(), pipe


def source_from_config(data_config: Any):
  """A source from a config's `source` spec (see make_train_iterator and
  pipeline_config.SOURCE_KEYS)."""
  kind = data_config.get("source", None)
  known = pipeline_config.SOURCE_KEYS
  if kind not in known:
    raise ValueError(f"unknown data source {kind!r} (expected one of {sorted(known)}, or "
                     "pass source=)")
  spec = {k: data_config.get(k, v) for k, v in pipeline_config.SOURCE_KEYS[kind].items()}
  for key in ("tfds_dir", "jsonl"):
    if key in spec and not spec[key]:
      raise ValueError(f"data.source is {kind!r} but data.{key} is empty; set "
                       f"--config.data.{key}=...")
  if kind == "tfds":
    return tfds_source(spec["tfds_dir"], spec["split"])
  if kind == "jsonl":
    records, report = schema.load_jsonl(spec["jsonl"], on_error=spec["on_error"])
    if report.num_skipped:
      logging.warning("%s", report.summary())
    from streampro_jax.data import video  # pylint: disable=g-import-not-at-top
    resize = video.ResizePolicy(height=data_config["frame_height"],
                                width=data_config["frame_width"])
    # Relative video paths resolve against the annotation file's folder (Record.video_path).
    return VideoFileSource(records, frames_per_turn=int(spec["frames_per_turn"]), resize=resize)
  if int(spec["num_videos"]) < 1:
    raise ValueError(f"data.source is 'synth' but data.num_videos is {spec['num_videos']}")
  return synthetic_source(spec["split"], int(spec["num_videos"]), seed=int(spec["synth_seed"]),
                          synth=dict(spec["synth"]))


def tfds_source(builder_dir: str, split: str = "train") -> TfdsSource:
  """TfdsSource of a prepared builder directory (read with tfds.builder_from_directory, so the
  builder's code need not be imported)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(builder_dir)
  counts = os.path.join(builder_dir, f"{split}.{QUESTION_COUNTS_FILE}")
  return TfdsSource(builder.as_data_source()[split], counts_file=counts)


def synthetic_source(split: str, num_videos: int, *, seed: int = 0,
                     synth: dict | None = None) -> RecordSource:
  """SynthStream samples 0 .. num_videos-1 of a split, frames rendered when a row needs them."""
  from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  cfg = synthetic.SynthConfig.from_dict(synth or {})
  if cfg.fps != 2:
    raise ValueError(f"the in-memory SynthStream source needs fps = 2 frames per turn, got "
                     f"{cfg.fps}; build the TFDS dataset to subsample other rates")
  records = [synthetic.make_record(split, i, seed=seed, config=cfg) for i in range(num_videos)]
  return RecordSource(records, synthetic.render_frames)
