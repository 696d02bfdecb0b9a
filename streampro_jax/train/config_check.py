"""Training configs checked when loaded: a key that no code reads is an error naming it.

A config is plain data (configs/*.py return ConfigDicts); the trainers read it section by
section. A key that nothing reads is a silent no-op (``data.tfds_name`` where the pipeline reads
``data.tfds_dir``, ``data.frame_size`` after the frames were set), so ``check_config`` refuses it
before anything is built, and names it with the keys the reader does take.

Where each section's keys come from (the readers, not a hand list where a reader has a schema):

  model        the backbone Config's fields that config.json does not carry (the compute settings:
               dtype, param_dtype, attention_impl, remat, and whatever field the Config gains),
               plus family, hf_checkpoint, reinit_decision_rows, tiny_text (TextConfig fields)
               and tiny_vision (VisionConfig fields), read by models.config_from_section;
  data         pipeline.PipelineConfig fields (batch_size comes from global_batch_size), source
               and the keys of pipeline.SOURCE_KEYS (synth: synthetic.SynthConfig fields), plus
               narration (train/setup.make_data);
  rollout      sampling.SamplerConfig fields (temperature and top_p come from grpo);
  grpo         grpo.GRPOStepConfig fields, with top_p, ref_param_dtype (train/grpo_trainer) and
               preset;
  mesh         parallel.MESH_CONFIG_KEYS: the axis sizes and the logical-axis rules;
  optim        optim.OptimConfig fields;
  checkpoint   checkpoint.CheckpointConfig fields;
  loss         sft.LossConfig fields (sft sits above this module: the list below, which a test
               compares with the dataclass);
  top level, reward, init: the keys their readers take (listed below next to the reader's
               name).

A key that belongs to another mode of its reader (``data.jsonl`` when ``data.source`` is
"tfds", ``model.tiny_text`` next to an ``hf_checkpoint``) may stay in a config at its neutral
value (so that ``--config.data.source=jsonl --config.data.jsonl=...`` works on the command line);
any other value is an error naming both keys.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

TRAINERS = ("sft", "grpo")

# Readers without a dataclass: the keys they take (reader in the comment).
_TOP_LEVEL = ("seed", "global_batch_size", "num_epochs", "total_steps", "log_every_steps",
              "tokenizer", "tensorboard", "debug_kill_after_step",   # sft.train, GRPOTrainer
              "debug_kill_mid_save",
              "xla_preset")                                          # launch/_common.start
_LOSS = ("kind", "beta", "text_weight", "gamma", "chunk_size",   # sft.LossConfig
         "count_scope")
_REWARD = ("weights", "tau", "max_answers", "max_checks", "judge",   # GRPOTrainer, build_judge
           "rubrics_file", "missing_rubric",                         # grpo_trainer rubric files
           "matching")                                               # RewardScorer
_INIT = ("sft_workdir", "sft_step")                                  # load_initial_params
_GRPO_EXTRA = ("top_p", "ref_param_dtype",  # GRPOTrainer
               "preset")                    # grpo.GRPOStepConfig


class ConfigError(ValueError):
  """A config key that no code reads (or that its reader ignores in the chosen mode)."""


@dataclasses.dataclass(frozen=True)
class Section:
  """What the readers of one section take.

  Attributes:
    read: keys read.
    neutral: keys of another mode of the reader, allowed only at this value.
    why: per neutral key, the reason it is not read now (for the message).
    nested: key -> Section of a sub-dict (tiny_text, synth, ...).
  """
  read: frozenset[str]
  neutral: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  why: Mapping[str, str] = dataclasses.field(default_factory=dict)
  nested: Mapping[str, Section] = dataclasses.field(default_factory=dict)


def _fields(cls) -> frozenset[str]:
  return frozenset(f.name for f in dataclasses.fields(cls))


def _plain(value: Any) -> Any:
  """ConfigDict / tuple -> dict / list, for comparing with neutral values."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def model_section(model_cfg: Mapping[str, Any], trainer: str) -> Section:
  """The model section's keys (models.config_from_section and the trainers)."""
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  mod, config_cls = models.backbone_module(model_cfg), models.config_class(model_cfg)
  hf_keys = set(config_cls().to_hf())
  compute = {f for f in _fields(config_cls) - {"text", "vision"}
             if f not in hf_keys or f == "dtype"}
  read = {"family", "hf_checkpoint"} | compute
  neutral, why = {}, {}
  if model_cfg.get("hf_checkpoint"):
    for key in ("tiny_text", "tiny_vision"):
      neutral[key] = {}
      why[key] = "the architecture comes from model.hf_checkpoint's config.json"
  else:
    read |= {"tiny_text", "tiny_vision"}
  if trainer == "sft":
    read.add("reinit_decision_rows")
  else:
    neutral["reinit_decision_rows"] = False
    why["reinit_decision_rows"] = "GRPO starts from a trained policy and re-initialises nothing"
  nested = {"tiny_text": Section(_fields(mod.TextConfig)),
            "tiny_vision": Section(_fields(mod.VisionConfig))}
  return Section(frozenset(read), neutral, why, nested)


def data_section(data_cfg: Mapping[str, Any], trainer: str) -> Section:
  """The data section's keys (pipeline.PipelineConfig, pipeline.SOURCE_KEYS, setup.make_data)."""
  from streampro_jax.data import pipeline, synthetic  # pylint: disable=g-import-not-at-top
  source = data_cfg.get("source", None)
  if source not in pipeline.SOURCE_KEYS:
    raise ConfigError(f"config.data.source = {source!r}; expected one of "
                      f"{sorted(pipeline.SOURCE_KEYS)}")
  read = set(_fields(pipeline.PipelineConfig) - {"batch_size"}) | {"source"}
  read |= set(pipeline.SOURCE_KEYS[source])
  neutral, why = {}, {}
  for other, keys in pipeline.SOURCE_KEYS.items():
    for key, value in keys.items():
      if key not in read:
        neutral[key] = value
        why[key] = f"data.source is {source!r} (only source {other!r} reads it)"
  if trainer == "sft":
    read.add("narration")
  else:
    neutral["narration"] = False
    why["narration"] = "GRPO samples the questions of its records"
  nested = {"synth": Section(_fields(synthetic.SynthConfig))}
  return Section(frozenset(read), neutral, why, nested)


def sections(config: Mapping[str, Any], trainer: str) -> dict[str, Section]:
  """{"" (top level) or section name: Section} of a `trainer` ("sft" | "grpo") config."""
  from streampro_jax import grpo, parallel, sampling  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import checkpoint, optim  # pylint: disable=g-import-not-at-top
  if trainer not in TRAINERS:
    raise ValueError(f"trainer {trainer!r}; expected one of {TRAINERS}")
  common = {"mesh": Section(frozenset(parallel.MESH_CONFIG_KEYS)),
            "optim": Section(_fields(optim.OptimConfig)),
            "checkpoint": Section(_fields(checkpoint.CheckpointConfig))}
  if "model" in config:
    common["model"] = model_section(config["model"], trainer)
  if "data" in config:
    common["data"] = data_section(config["data"], trainer)
  if trainer == "sft":
    top = Section(frozenset(_TOP_LEVEL + ("num_microbatches", "model", "mesh", "data", "optim",
                                          "loss", "checkpoint")))
    return {"": top, "loss": Section(frozenset(_LOSS)), **common}
  top = Section(frozenset(_TOP_LEVEL + ("model", "mesh", "data", "optim", "checkpoint", "init",
                                        "grpo", "reward", "rollout")),
                neutral={"num_microbatches": 1},
                why={"num_microbatches": "GRPO accumulates over grpo.num_microbatches"})
  return {"": top, **common,
          "init": Section(frozenset(_INIT)),
          "grpo": Section((_fields(grpo.GRPOStepConfig) - {"reward_weights"})
                          | set(_GRPO_EXTRA)),
          "reward": Section(frozenset(_REWARD)),
          "rollout": Section(_fields(sampling.SamplerConfig) - {"temperature", "top_p"})}


def _problems(values: Mapping[str, Any], section: Section, path: str) -> list[str]:
  out = []
  for key in values:
    name = f"{path}.{key}" if path else key
    if key in section.read:
      if key in section.nested and values[key] is not None:
        out += _problems(values[key], section.nested[key], name)
      continue
    if key in section.neutral:
      if _plain(values[key]) != _plain(section.neutral[key]):
        out.append(f"config.{name} = {_plain(values[key])!r} is not read: "
                   f"{section.why.get(key, 'another mode reads it')} (leave it at "
                   f"{section.neutral[key]!r})")
      continue
    known = sorted(section.read)
    near = difflib.get_close_matches(key, known, n=1)
    hint = f"nearest valid key: config.{path + '.' if path else ''}{near[0]}; " if near else ""
    out.append(f"config.{name}: no code reads this key ({hint}the keys read here: "
               f"{', '.join(known)})")
  return out


def unread_keys(config: Mapping[str, Any], trainer: str) -> list[str]:
  """One message per key of `config` that the `trainer` does not read (empty: all read)."""
  secs = sections(config, trainer)
  out = _problems(config, secs[""], "")
  for name, section in secs.items():
    if name and name in config and config[name] is not None:
      out += _problems(config[name], section, name)
  return out


def _raise(problems: list[str], what: str) -> None:
  """ConfigError of `problems`: the one problem as it is, or a count and one line each."""
  if len(problems) == 1:
    raise ConfigError(problems[0])
  if problems:
    raise ConfigError(f"{len(problems)} {what}:\n  " + "\n  ".join(problems))


def check_config(config: Mapping[str, Any], trainer: str) -> None:
  """Raises ConfigError listing every key of `config` that the `trainer` does not read."""
  _raise(unread_keys(config, trainer), "config keys that no code reads")


def input_problems(config: Mapping[str, Any], trainer: str) -> list[str]:
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
  (input_problems)."""
  _raise(input_problems(config, trainer), "inputs of the config that are not there")


# ------------------------------------------------------------------------------------------------
# A workdir carries the config that made it.

CONFIG_FILE = "config.json"
# Keys that change how a run is watched or paced, not what it computes: they may differ on resume.
RUN_CONTROL_KEYS = ("debug_kill_after_step", "debug_kill_mid_save", "log_every_steps",
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
                ignore: tuple[str, ...] = RUN_CONTROL_KEYS) -> list[str]:
  """'key: old -> new' for every dotted key whose value differs (absent keys show as
  <absent>), leaving out `ignore`; both sides as JSON values."""
  a, b = _flat(_plain(old)), _flat(_plain(new))
  out = []
  for key in sorted(set(a) | set(b)):
    if key in ignore or a.get(key, "<absent>") == b.get(key, "<absent>"):
      continue
    out.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
  return out


def config_as_json(config) -> dict:
  """The config as the JSON dict written to <workdir>/config.json."""
  import json  # pylint: disable=g-import-not-at-top
  text = (config.to_json_best_effort() if hasattr(config, "to_json_best_effort")
          else json.dumps(config, default=str))
  return json.loads(text)


def check_workdir_config(workdir: str, config, *, allow_change: bool = False,
                         write: bool = True) -> list[str]:
  """Compares `config` with the one that made `workdir` (its config.json) and records it.

  A workdir holds one run: resuming it with another config would mix two runs' checkpoints and
  metrics under one name. A difference outside RUN_CONTROL_KEYS raises ConfigError naming every
  differing key, unless `allow_change` (the launchers' --allow_config_change), which logs them
  and keeps the previous file as config.previous.<n>.json. With `write` (process 0), writes
  config.json. Returns the differences.
  """
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  from absl import logging  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, CONFIG_FILE)
  new = config_as_json(config)
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
