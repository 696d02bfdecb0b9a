"""The one config tree of a training run, built from its ConfigDict by one strict function.

A config is plain data (configs/*.py return ConfigDicts). :func:`build` turns it into a frozen
dataclass tree, :class:`SFTRun` or :class:`GRPORun`, whose nodes declare every key a trainer
reads; a key that no field declares is an error naming its full path, the nearest valid key
(difflib) and the keys of its section (``config.data.tfds_name`` where the pipeline reads
``data.tfds_dir``, ``data.frame_size`` after the frames were set). It runs before anything is
built. The trainers read the tree, train/setup.py included: it builds the mesh, the backbone
config and the SFT data from the model, mesh and data nodes.

The nodes and where their fields come from (the readers' own dataclasses, not hand lists):

  model        ModelSection: family, hf_checkpoint, reinit_decision_rows, tiny_text (the
               backbone's TextConfig fields), tiny_vision (VisionConfig fields) and the compute
               settings (models.COMPUTE_KEYS: the backbone Config's fields that config.json does
               not carry), read by models.config_from_section (train/setup.make_model_config);
  mesh         MeshSection: parallel.MESH_CONFIG_KEYS (the axis sizes and the logical-axis rules,
               resolved by parallel.rules_from_config when the tree is built);
  data         DataSection: a pipeline_config.PipelineConfig (a subclass: its fields; batch_size
               is set from global_batch_size, not a key of the section) with source, the keys of
               pipeline_config.SOURCE_KEYS (synth: a dict of synthetic.SynthConfig fields) and
               narration (train/setup.make_data);
  optim        optim.OptimConfig;  checkpoint  checkpoint.CheckpointConfig;  loss  LossConfig;
  grpo         GRPOSection: grpo.GRPOStepConfig's fields but reward_weights, plus top_p (the
               sampler's), ref_param_dtype (the reference copy's dtype) and preset;
  rollout      RolloutSection: sampling.SamplerConfig's fields but temperature and top_p;
  reward       RewardSection (the reward scorer's and judge's settings);
  init         InitSection (where the GRPO policy starts).

A key that belongs to another mode of its reader (``data.jsonl`` when ``data.source`` is
"tfds", ``model.tiny_text`` next to an ``hf_checkpoint``, ``data.narration`` in a GRPO run) may
stay in a config at its neutral value (so that ``--config.data.source=jsonl
--config.data.jsonl=...`` works on the command line); any other value is an error naming both
keys. Such a key keeps its field's default in the tree.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any

from streampro_jax import _config, grpo, losses, models, parallel, sampling
from streampro_jax.data import pipeline_config, synthetic
from streampro_jax.train import checkpoint, optim

__all__ = ["ConfigError", "DataSection", "GRPORun", "GRPOSection", "InitSection", "LossConfig",
           "MeshSection", "ModelSection", "RewardSection", "RolloutSection", "SFTRun", "build",
           "check_inputs", "check_workdir_config", "config_diff"]

_TRAINERS = ("sft", "grpo")


class ConfigError(ValueError):
  """A config key that no code reads (or that its reader ignores in the chosen mode)."""


def _plain(value: Any) -> Any:
  """ConfigDict / tuple -> dict / list, for comparing with neutral values."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


# ------------------------------------------------------------------------------------------------
# The nodes.


_COUNT_SCOPES = ("global", "microbatch", "device")
"""Where CB-Stream / focal count n_k (loss.count_scope; table: docs/components.md#count-scope):
global      the whole global batch, all devices and micro-batches (docs/method.md: "the current
            global batch"; the default);
microbatch  each micro-batch of the gradient accumulation, all devices;
device      each device's rows of each micro-batch (what a data-parallel PyTorch trainer that
            does not all-reduce the counts computes, as Streamo's code; with one row per device,
            one trajectory's counts)."""


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The ``config.loss`` section of an SFT config.

  Attributes:
    kind: losses.LOSS_KINDS: "cb_stream" | "ce" | "focal".
    beta: CB-Stream's class-balance beta.
    text_weight: CB-Stream's weight of the text tokens.
    gamma: the focal loss's gamma.
    chunk_size: 0: the loss on full logits; > 0: from the final hidden states, one vocabulary
      chunk at a time.
    count_scope: _COUNT_SCOPES, where the decision-class counts n_k are taken.
  """
  kind: str = "cb_stream"
  beta: float = 0.9999
  text_weight: float = 2.0
  gamma: float = 2.0
  chunk_size: int = 0
  count_scope: str = "global"

  def __post_init__(self):
    if self.kind not in losses.LOSS_KINDS:
      raise ValueError(f"config.loss.kind = {self.kind!r}; expected one of {losses.LOSS_KINDS}")
    if self.count_scope not in _COUNT_SCOPES:
      raise ValueError(f"config.loss.count_scope = {self.count_scope!r}; expected one of "
                       f"{_COUNT_SCOPES}")

  @classmethod
  def from_config(cls, loss_cfg: Any) -> LossConfig:
    """From a ``config.loss`` mapping / ConfigDict (a LossConfig is returned as is); a key left
    out keeps the field's default."""
    if isinstance(loss_cfg, cls):
      return loss_cfg
    return cls(**_config.field_values(cls, loss_cfg, section_name="loss"))


def _fields_of(cls: type, drop: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
  """(name, type, dataclasses.field) of each field of dataclass `cls` but `drop`, defaults kept."""
  out = []
  for f in dataclasses.fields(cls):
    if f.name in drop:
      continue
    if f.default is not dataclasses.MISSING:
      out.append((f.name, f.type, dataclasses.field(default=f.default)))
    elif f.default_factory is not dataclasses.MISSING:
      out.append((f.name, f.type, dataclasses.field(default_factory=f.default_factory)))
    else:
      out.append((f.name, f.type, dataclasses.field(default=None)))
  return out


def _node(name: str, doc: str, fields: list[tuple[str, Any, Any]], *, bases: tuple = (),
          namespace: dict[str, Any] | None = None) -> type:
  cls = dataclasses.make_dataclass(name, fields, bases=bases, frozen=True,
                                   namespace={"__doc__": doc, **(namespace or {})})
  cls.__module__ = __name__
  return cls


def _dict_field():
  return dataclasses.field(default_factory=dict)


ModelSection = _node("ModelSection", """The ``config.model`` section (models.config_from_section).

  family: models.BACKBONES; hf_checkpoint: a HF folder whose config.json gives the architecture
  ("" for a random tiny model); reinit_decision_rows: re-initialise the decision tokens' rows of
  a checkpoint (SFT); tiny_text / tiny_vision: overrides of the tiny config's TextConfig /
  VisionConfig fields; the compute settings models.COMPUTE_KEYS (backbone Config defaults).""",
    [("family", str, dataclasses.field(default=models.DEFAULT_FAMILY)),
     ("hf_checkpoint", str, dataclasses.field(default="")),
     ("reinit_decision_rows", bool, dataclasses.field(default=True)),
     ("tiny_text", dict, _dict_field()),
     ("tiny_vision", dict, _dict_field())]
    + [f for f in _fields_of(models.common.VLConfig) if f[0] in models.COMPUTE_KEYS])

def _mesh_from_config(cls, mesh_cfg: Any):
  """The mesh node of a ``config.mesh`` mapping: the axis sizes converted to int, the rules
  resolved by parallel.rules_from_config (a RULE_SETS name becomes its table; a malformed pair
  is an error naming config.mesh.rules[i])."""
  values = _config.as_dict(mesh_cfg)
  sizes = _config.field_values(cls, {k: v for k, v in values.items() if k != "rules"},
                               section_name="mesh")
  return cls(**sizes, rules=parallel.rules_from_config(values))


def _mesh_sizes(self) -> dict[str, int]:
  """{axis: size} of parallel.MESH_AXES (parallel.make_mesh's argument)."""
  return {axis: getattr(self, axis) for axis in parallel.MESH_AXES}


MeshSection = _node("MeshSection", """The ``config.mesh`` section: the axis sizes of
  parallel.MESH_AXES (-1 fills the rest; ``sizes``: the dict parallel.make_mesh takes) and the
  logical-axis rules, resolved by parallel.rules_from_config when the tree is built.""",
    [(axis, int, dataclasses.field(default=-1 if axis == "data" else 1))
     for axis in parallel.MESH_AXES]
    + [("rules", tuple, dataclasses.field(default=tuple(parallel.DEFAULT_RULES)))],
    namespace={"from_config": classmethod(_mesh_from_config), "sizes": property(_mesh_sizes)})

DataSection = _node("DataSection", """The ``config.data`` section: a
  pipeline_config.PipelineConfig (its fields and from_config; batch_size is the GLOBAL batch,
  set from config.global_batch_size, as pipeline.make_train_iterator takes it) with the source
  and every source's keys (pipeline_config.SOURCE_KEYS, at their unset values), narration
  (SynthStream narration targets, SFT only) and narration_answers (with narration: half the
  videos narrate their own question's answers, synthetic.NarrationSource).""",
    [("source", str, dataclasses.field(default="synth"))]
    + [(key, type(value), _dict_field() if isinstance(value, dict)
        else dataclasses.field(default=value))
       for key, value in {k: v for keys in pipeline_config.SOURCE_KEYS.values()
                          for k, v in keys.items()}.items()]
    + [("narration", bool, dataclasses.field(default=False)),
       ("narration_answers", bool, dataclasses.field(default=False))],
    bases=(pipeline_config.PipelineConfig,))

_FROM_TOP = {DataSection: {"batch_size": "global_batch_size"}}
"""Fields of a node that the tree sets from a top-level key (not a key of the section)."""

GRPOSection = _node("GRPOSection", """The ``config.grpo`` section: grpo.GRPOStepConfig's fields
  (reward_weights come from config.reward.weights), top_p (the sampler's nucleus mass; the
  temperature is shared with the update), ref_param_dtype (the reference copy's dtype, "" =
  the parameters') and preset (grpo.GRPO_PRESETS or "").""",
    _fields_of(grpo.GRPOStepConfig, drop=("reward_weights",))
    + [("top_p", float, dataclasses.field(default=sampling.SamplerConfig.top_p)),
       ("ref_param_dtype", str, dataclasses.field(default="")),
       ("preset", str, dataclasses.field(default=""))])

RolloutSection = _node("RolloutSection", """The ``config.rollout`` section:
  sampling.SamplerConfig's fields but temperature and top_p (config.grpo holds those).""",
    _fields_of(sampling.SamplerConfig, drop=("temperature", "top_p")))


@dataclasses.dataclass(frozen=True)
class RewardSection:
  """The ``config.reward`` section.

  Attributes:
    weights: (format, turn, trajectory) reward weights.
    tau: R_turn's time scale in seconds.
    max_answers, max_checks: padded ground-truth and rubric sizes.
    matching: R_turn's matching order (rewards.MATCHING_ORDERS).
    judge: "synthetic" | "match" | a judges.build_judge config (a dict).
    rubrics_file: a launch/write_rubrics.py output whose rubrics replace the records' ("": none).
    missing_rubric: "error" | "zero" (a sample without a rubric stops the run / gets R_traj 0).
  """
  weights: tuple = grpo.GRPOStepConfig.reward_weights
  tau: float = 8.0
  max_answers: int = 32
  max_checks: int = 16
  matching: str = "gt_first"
  judge: Any = "match"
  rubrics_file: str = ""
  missing_rubric: str = "error"


@dataclasses.dataclass(frozen=True)
class InitSection:
  """The ``config.init`` section: the GRPO policy's start (sft_workdir: a launch/train_sft.py
  workdir, "" = model.hf_checkpoint or a random init; sft_step: its checkpoint, -1 = newest)."""
  sft_workdir: str = ""
  sft_step: int = -1


@dataclasses.dataclass(frozen=True)
class _RunTop:
  """Top-level keys of every training config."""
  seed: int = 0
  global_batch_size: int = 8
  num_epochs: float = 1.0
  total_steps: int = -1
  log_every_steps: int = 10
  tokenizer: str = "synthetic"
  tensorboard: bool = True
  debug_kill_after_step: int = -1
  debug_kill_mid_save: bool = False
  xla_preset: str = "none"


@dataclasses.dataclass(frozen=True)
class SFTRun(_RunTop):
  """The config tree of an SFT run (sft.train). num_microbatches: gradient accumulation steps
  per optimizer step."""
  num_microbatches: int = 1
  model: ModelSection = dataclasses.field(default_factory=ModelSection)
  mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
  data: DataSection = dataclasses.field(default_factory=DataSection)
  optim: optim.OptimConfig | None = None
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  checkpoint: checkpoint.CheckpointConfig = dataclasses.field(
      default_factory=checkpoint.CheckpointConfig)


@dataclasses.dataclass(frozen=True)
class GRPORun(_RunTop):
  """The config tree of a GRPO run (grpo_trainer.GRPOTrainer)."""
  model: ModelSection = dataclasses.field(default_factory=ModelSection)
  mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
  data: DataSection = dataclasses.field(default_factory=DataSection)
  optim: optim.OptimConfig | None = None
  checkpoint: checkpoint.CheckpointConfig = dataclasses.field(
      default_factory=checkpoint.CheckpointConfig)
  init: InitSection = dataclasses.field(default_factory=InitSection)
  grpo: GRPOSection = dataclasses.field(default_factory=GRPOSection)
  reward: RewardSection = dataclasses.field(default_factory=RewardSection)
  rollout: RolloutSection = dataclasses.field(default_factory=RolloutSection)


_RUN_TYPES = {"sft": SFTRun, "grpo": GRPORun}
"""The tree type of each trainer."""


# ------------------------------------------------------------------------------------------------
# Keys of another mode: (neutral value, why it is not read now) per key, from the section's
# values and the trainer.


def _model_modes(values: Mapping[str, Any], trainer: str) -> dict[str, tuple[Any, str]]:
  out = {}
  if values.get("hf_checkpoint"):
    for key in ("tiny_text", "tiny_vision"):
      out[key] = ({}, "the architecture comes from model.hf_checkpoint's config.json")
  if trainer == "grpo":
    out["reinit_decision_rows"] = (
        False, "GRPO starts from a trained policy and re-initialises nothing")
  return out


def _data_modes(values: Mapping[str, Any], trainer: str) -> dict[str, tuple[Any, str]]:
  source = values.get("source", None)
  if source not in pipeline_config.SOURCE_KEYS:
    raise ConfigError(f"config.data.source = {source!r}; expected one of "
                      f"{sorted(pipeline_config.SOURCE_KEYS)}")
  out = {}
  for other, keys in pipeline_config.SOURCE_KEYS.items():
    for key, value in keys.items():
      if key not in pipeline_config.SOURCE_KEYS[source] and key not in out:
        out[key] = (value, f"data.source is {source!r} (only source {other!r} reads it)")
  if trainer == "grpo":
    out["narration"] = (False, "GRPO samples the questions of its records")
  if trainer == "grpo" or not values.get("narration", False):
    out["narration_answers"] = (False, "data.narration is off (only the narration reads it)")
  return out


def _grpo_top_modes(values: Mapping[str, Any], trainer: str) -> dict[str, tuple[Any, str]]:
  del values
  if trainer == "grpo":
    return {"num_microbatches": (1, "GRPO accumulates over grpo.num_microbatches")}
  return {}


_MODES: dict[type, Callable[[Mapping[str, Any], str], dict[str, tuple[Any, str]]]] = {
    ModelSection: _model_modes, DataSection: _data_modes, SFTRun: _grpo_top_modes,
    GRPORun: _grpo_top_modes}


def _dict_keys(cls: type, key: str, values: Mapping[str, Any]) -> frozenset[str] | None:
  """The keys a dict-valued field takes (None: any, e.g. a judge config)."""
  if cls is ModelSection and key in ("tiny_text", "tiny_vision"):
    mod = models.backbone_module(values)
    sub = mod.TextConfig if key == "tiny_text" else mod.VisionConfig
    return frozenset(f.name for f in dataclasses.fields(sub))
  if cls is DataSection and key == "synth":
    return frozenset(f.name for f in dataclasses.fields(synthetic.SynthConfig))
  return None


def _unknown(name: str, path: str, key: str, known: list[str],
             declared: list[str] | None = None) -> str:
  """The message of an undeclared key: its full name, the nearest of `declared` (default
  `known`: the keys read here) and `known`."""
  near = difflib.get_close_matches(key, declared or known, n=1)
  hint = f"nearest valid key: config.{path + '.' if path else ''}{near[0]}; " if near else ""
  return (f"config.{name}: no code reads this key ({hint}the keys read here: "
          f"{', '.join(known)})")


def _node_type(tp: Any) -> type | None:
  """The dataclass of a field annotation (``X`` or ``X | None``), else None."""
  if isinstance(tp, str):
    return None
  if dataclasses.is_dataclass(tp):
    return tp
  for arg in getattr(tp, "__args__", ()):
    if dataclasses.is_dataclass(arg):
      return arg
  return None


def _check(cls: type, values: Mapping[str, Any], path: str, trainer: str,
           problems: list[str]) -> dict[str, Any]:
  """The values of `values` that fields of `cls` declare (the keys of another mode at their
  neutral value left out); one message per other key in `problems`."""
  values = _config.as_dict(values)
  modes = _MODES.get(cls, lambda v, t: {})(values, trainer)
  from_top = _FROM_TOP.get(cls, {})
  types = {f.name: f.type for f in dataclasses.fields(cls) if f.name not in from_top}
  known = sorted(k for k in types if k not in modes)
  kept = {}
  for key, value in values.items():
    name = f"{path}.{key}" if path else key
    if key in from_top:
      problems.append(f"config.{name}: no code reads this key (the tree sets it from "
                      f"config.{from_top[key]}; set that instead)")
      continue
    if key in modes:
      neutral, why = modes[key]
      if _plain(value) != _plain(neutral):
        problems.append(f"config.{name} = {_plain(value)!r} is not read: {why} (leave it at "
                        f"{neutral!r})")
      continue
    if key not in types:
      problems.append(_unknown(name, path, key, known, sorted(types)))
      continue
    sub = _node_type(_resolve(cls, key))
    if sub is not None:
      if value is not None:  # A section set to None keeps its defaults.
        kept[key] = _check(sub, value, name, trainer, problems)
      continue
    allowed = _dict_keys(cls, key, values)
    if allowed is not None and value is not None:
      for k in _config.as_dict(value):
        if k not in allowed:
          problems.append(_unknown(f"{name}.{k}", name, k, sorted(allowed)))
      value = _plain(value)
    kept[key] = value
  return kept


def _resolve(cls: type, key: str) -> Any:
  """The type of field `key` of `cls` (annotations of this module are strings)."""
  import typing  # pylint: disable=g-import-not-at-top
  return typing.get_type_hints(cls)[key]


def _make(cls: type, values: dict[str, Any], path: str) -> Any:
  """An instance of node `cls` from checked `values` (each library dataclass through its own
  from_config, so its conversions and required keys apply)."""
  kw = {}
  for key, value in values.items():
    sub = _node_type(_resolve(cls, key))
    if sub is not None and isinstance(value, dict):
      kw[key] = _make(sub, value, f"{path}.{key}" if path else key)
    else:
      kw[key] = value
  if hasattr(cls, "from_config"):
    return cls.from_config(kw)
  conv = _config.field_values(cls, kw, section_name=path)
  # A value the field conversion drops (None where the default is not None) keeps the default.
  return cls(**conv)


def _config_problems(config: Mapping[str, Any], trainer: str) -> list[str]:
  """One message per key of `config` that the `trainer`'s tree does not declare, or that its
  mode leaves unread at a value other than the neutral one (empty: every key is read)."""
  if trainer not in _TRAINERS:
    raise ValueError(f"trainer {trainer!r}; expected one of {_TRAINERS}")
  problems: list[str] = []
  _check(_RUN_TYPES[trainer], config, "", trainer, problems)
  return problems


def _raise(problems: list[str], what: str) -> None:
  """ConfigError of `problems`: the one problem as it is, or a count and one line each."""
  if len(problems) == 1:
    raise ConfigError(problems[0])
  if problems:
    raise ConfigError(f"{len(problems)} {what}:\n  " + "\n  ".join(problems))


def build(config: Mapping[str, Any], trainer: str) -> SFTRun | GRPORun:
  """The frozen config tree of a `trainer` ("sft" | "grpo") run from its ConfigDict.

  Strict: raises ConfigError listing every key no field declares (its full path, the nearest
  valid key and the keys of its section) and every key of another mode set to a value other
  than its neutral one. A key left out keeps its field's default.
  """
  if trainer not in _TRAINERS:
    raise ValueError(f"trainer {trainer!r}; expected one of {_TRAINERS}")
  problems: list[str] = []
  values = _check(_RUN_TYPES[trainer], config, "", trainer, problems)
  _raise(problems, "config keys that no code reads")
  values.setdefault("data", {})["batch_size"] = values.get("global_batch_size",
                                                           _RunTop.global_batch_size)
  return _make(_RUN_TYPES[trainer], values, "")


def _input_problems(config: Mapping[str, Any], trainer: str) -> list[str]:
  """One message per file or folder that `config` names and that is not there (empty: all
  there): data.tfds_dir (a prepared TFDS builder folder, with dataset_info.json) or data.jsonl
  for its source, model.hf_checkpoint (a folder with config.json), tokenizer (a folder, unless
  "synthetic"), and for GRPO reward.rubrics_file and init.sft_workdir (a training workdir, with
  checkpoints/). Checked before anything is built or written, so a run that cannot start
  leaves its workdir as it was."""
  import os  # pylint: disable=g-import-not-at-top

  def get(section, key):
    sec = config.get(section) if section else config
    return (sec.get(key, None) if hasattr(sec, "get") else None) or ""

  out = []
  data = config.get("data") or {}
  source = data.get("source", None)
  for key, want in (("tfds_dir", "tfds"), ("jsonl", "jsonl")):
    path = str(get("data", key))
    if source != want:
      continue
    if not path:
      out.append(f"config.data.source is {want!r} but config.data.{key} is empty; set "
                 f"--config.data.{key}=...")
    elif key == "tfds_dir" and not os.path.isfile(os.path.join(path, "dataset_info.json")):
      out.append(f"config.data.tfds_dir = {path!r} is not a prepared TFDS dataset folder (no "
                 "dataset_info.json there); pass the folder tfds build wrote (e.g. "
                 ".../streampro/1.0.0)")
    elif key == "jsonl" and not os.path.isfile(path):
      out.append(f"config.data.jsonl = {path!r}: no such file")
  hf = str(get("model", "hf_checkpoint"))
  if hf and not os.path.isfile(os.path.join(hf, "config.json")):
    out.append(f"config.model.hf_checkpoint = {hf!r} is not a Hugging Face checkpoint folder "
               "(no config.json there)")
  tok = str(get("", "tokenizer"))
  if tok and tok != "synthetic" and not os.path.isdir(tok):
    out.append(f"config.tokenizer = {tok!r}: no such folder (a tokenizer folder or "
               "'synthetic')")
  if trainer == "grpo":
    rubrics = str(get("reward", "rubrics_file"))
    if rubrics and not os.path.isfile(rubrics):
      out.append(f"config.reward.rubrics_file = {rubrics!r}: no such file (write it with "
                 "launch/write_rubrics.py)")
    sft = str(get("init", "sft_workdir"))
    if sft and not os.path.isdir(os.path.join(sft, "checkpoints")):
      out.append(f"config.init.sft_workdir = {sft!r} is not a training workdir (no "
                 "checkpoints/ there)")
  return out


def check_inputs(config: Mapping[str, Any], trainer: str) -> None:
  """Raises ConfigError naming every file or folder of `config` that is not there
  (_input_problems)."""
  _raise(_input_problems(config, trainer), "inputs of the config that are not there")


# ------------------------------------------------------------------------------------------------
# A workdir carries the config that made it.

_CONFIG_FILE = "config.json"
# Keys that change how a run is watched or paced, not what it computes: they may differ on resume.
_RUN_CONTROL_KEYS = ("debug_kill_after_step", "debug_kill_mid_save", "log_every_steps",
                    "tensorboard", "data.num_threads", "data.prefetch_buffer_size",
                    "checkpoint.every_steps", "checkpoint.keep", "checkpoint.async_save")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out if out or not prefix else {prefix: {}}
  return {prefix: tree}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], *,
                ignore: tuple[str, ...] = _RUN_CONTROL_KEYS) -> list[str]:
  """'key: old -> new' for every dotted key whose value differs (absent keys show as
  <absent>), leaving out `ignore`; both sides as JSON values."""
  a, b = _flat(_plain(old)), _flat(_plain(new))
  out = []
  for key in sorted(set(a) | set(b)):
    if key in ignore or a.get(key, "<absent>") == b.get(key, "<absent>"):
      continue
    out.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
  return out


def _config_as_json(config) -> dict:
  """The config as the JSON dict written to <workdir>/config.json."""
  import json  # pylint: disable=g-import-not-at-top
  text = (config.to_json_best_effort() if hasattr(config, "to_json_best_effort")
          else json.dumps(config, default=str))
  return json.loads(text)


def check_workdir_config(workdir: str, config, *, allow_change: bool = False,
                         write: bool = True) -> list[str]:
  """Compares `config` with the one that made `workdir` (its config.json) and records it.

  A workdir holds one run: resuming it with another config would mix two runs' checkpoints and
  metrics under one name. A difference outside _RUN_CONTROL_KEYS raises ConfigError naming every
  differing key, unless `allow_change` (the launchers' --allow_config_change), which logs them
  and keeps the previous file as config.previous.<n>.json. With `write` (process 0), writes
  config.json. Returns the differences.
  """
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  from absl import logging  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, _CONFIG_FILE)
  new = _config_as_json(config)
  diffs = []
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    diffs = config_diff(old, new)
    if diffs and not allow_change:
      raise ConfigError(
          f"{workdir} holds a run made with another config ({path}); differences:\n  " +
          "\n  ".join(diffs) + "\nuse a new --workdir, or pass --allow_config_change to resume "
          "this run with the new config")
    if diffs:
      logging.warning("resuming %s with a changed config (--allow_config_change):\n  %s",
                      workdir, "\n  ".join(diffs))
  if write:
    os.makedirs(workdir, exist_ok=True)
    if diffs:
      n = 0
      while os.path.exists(os.path.join(workdir, f"config.previous.{n}.json")):
        n += 1
      os.replace(path, os.path.join(workdir, f"config.previous.{n}.json"))
    with open(path, "w", encoding="utf-8") as f:
      json.dump(new, f, indent=2)
  return diffs
