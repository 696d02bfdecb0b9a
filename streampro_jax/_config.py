"""Dataclass settings from a config section, so that each default is written once: in the dataclass.

Every ``from_config`` of the package (grpo.GRPOStepConfig, pipeline_config.PipelineConfig,
video.ResizePolicy, the processors' configs, optim.OptimConfig, ...) takes the keys of its section
that name a field of its dataclass with :func:`field_values`; a key left out (or set to None where
the field's default is not None) keeps the dataclass default. Keys that are not fields are left to
their other readers, and train/config_check.py refuses a key that no reader takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["as_dict", "field_values"]


def as_dict(section: Any) -> dict[str, Any]:
  """A mapping, ConfigDict or object with attributes (None: empty) -> a plain dict of its keys."""
  if section is None:
    return {}
  if isinstance(section, Mapping) or hasattr(section, "items"):
    return dict(section.items())
  return dict(vars(section))


def _convert(value: Any, default: Any, where: str) -> Any:
  """`value` as the type of the field's default (int, float, str, bool or tuple), else as is;
  ValueError naming `where` for a value that the conversion would change (2.5 for an int)."""
  if isinstance(default, bool) or not isinstance(default, (int, float, str, tuple)):
    return value
  if isinstance(default, tuple):
    return value if isinstance(value, tuple) else tuple(value)
  if isinstance(value, type(default)) and not isinstance(value, bool):
    return value
  try:
    out = type(default)(value)
  except (TypeError, ValueError):
    out = None
  if out is None or (isinstance(value, (int, float)) and out != value):
    raise ValueError(f"{where} = {value!r}: expected a value of type {type(default).__name__}")
  return out


def field_values(cls: type, section: Any, *, section_name: str = "") -> dict[str, Any]:
  """{field: value} for the keys of `section` that are fields of the dataclass `cls`.

  Args:
    cls: a dataclass.
    section: a mapping, ConfigDict or object with attributes; None reads as empty.
    section_name: the section's name in the config (for the message), e.g. "grpo".

  Returns:
    The values, each converted to the type of its field's default (int, float, str, bool, tuple);
    a None value where the default is not None is left out (the default applies), so
    ``cls(**field_values(cls, {}))`` == ``cls()``.
  """
  values = as_dict(section)
  out = {}
  for f in dataclasses.fields(cls):
    if f.name not in values:
      continue
    value = values[f.name]
    default = f.default if f.default is not dataclasses.MISSING else None
    if value is None and default is not None:
      continue
    where = f"config.{section_name}.{f.name}" if section_name else f"{cls.__name__}.{f.name}"
    out[f.name] = value if value is None else _convert(value, default, where)
  return out
