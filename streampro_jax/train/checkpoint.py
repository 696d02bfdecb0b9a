"""Checkpoints with orbax: train state (params, optimizer state, step) + data iterator state.

One :class:`Checkpointer` wraps an ``orbax.checkpoint.CheckpointManager`` (asynchronous saves,
keep the newest N). Each checkpoint directory ``<workdir>/checkpoints/<step>/`` holds two items:

* ``state``: the TrainState pytree (``StandardSave``); restored straight into the target
  shardings (each device reads only its shard), so a run can resume on a different mesh;
* ``data``: the data iterator state, one JSON file per process
  (``process_<i>-of-<n>.json``), from ``iterator.get_state()`` (a dict, as grain's
  ``DatasetIterator`` returns, or bytes, as grain's ``DataLoaderIterator`` returns). The state is
  captured when ``save`` is called, so the iterator may advance while the write is in flight.

Usage::

  ckpt = Checkpointer(workdir, keep=3, every_steps=500)
  state, step = ckpt.restore_or(state, shardings, data_iter)   # unchanged when none exists
  ...
  ckpt.maybe_save(step, state, data_iter)                       # async, every `every_steps`
  ckpt.close()                                                  # waits for pending writes

A checkpoint that is complete but does not read back (its array files lost or damaged later) is
moved aside to ``unreadable_<step>`` by ``restore_newest``, which then restores the previous one
and logs which step it skipped and why.

A killed run leaves at most a partial temporary directory, which orbax ignores, or a step folder
without its metadata (a crash between creating ``<step>/`` and writing into it). Opening the
checkpointer moves such incomplete step folders aside to ``incomplete_<step>`` (orbax would list
them as steps) and logs each one, so the run resumes from the newest complete checkpoint and can
save that step again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from streampro_jax import _config

__all__ = ["CheckpointConfig", "Checkpointer", "IteratorStateHandler", "IteratorStateRestore",
           "IteratorStateSave", "STATE", "abstract_with_shardings", "complete_steps", "is_complete",
           "newest_complete_step", "quiet_orbax_info", "skipped_note", "ProcessCountError"]

STATE = "state"
_DATA = "data"


class _OrbaxInfoFilter:
  """A logging filter that drops orbax's INFO / DEBUG records (a 16-step run logged ~300 lines of
  them); its warnings and errors pass, and so does everything else."""

  def filter(self, record) -> bool:
    import logging as py_logging  # pylint: disable=g-import-not-at-top
    path = str(getattr(record, "pathname", "")).replace("\\", "/")
    return record.levelno >= py_logging.WARNING or "/orbax/" not in path


def quiet_orbax_info() -> None:
  """Installs a filter on absl's handler that drops orbax's INFO / DEBUG records (the launchers
  call this once)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OrbaxInfoFilter) for f in handler.filters):
    handler.addFilter(_OrbaxInfoFilter())


# ----------------------------------------------------------------------------------------------
# Data iterator item: per-process JSON.
# ----------------------------------------------------------------------------------------------


def _state_filename(directory: epath.Path) -> epath.Path:
  return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class IteratorStateHandler(ocp.CheckpointHandler):
  """Orbax handler for data iterator states (one JSON file per process)."""

  def save(self, directory: epath.Path, args: IteratorStateSave):
    payload = args.state
    if isinstance(payload, (bytes, bytearray)):
      record = {"kind": "bytes", "state": bytes(payload).decode()}
    else:
      record = {"kind": "json", "state": payload}
    _state_filename(directory).write_text(json.dumps(record, indent=1))

  def restore(self, directory: epath.Path, args: IteratorStateRestore):
    filename = _state_filename(directory)
    if not filename.exists():
      raise FileNotFoundError(
          f"{filename} does not exist: this checkpoint was written by a run with a different "
          f"number of processes (now {jax.process_count()})")
    record = json.loads(filename.read_text())
    state = record["state"].encode() if record["kind"] == "bytes" else record["state"]
    if args.iterator is not None:
      args.iterator.set_state(state)
    return state

  def metadata(self, directory: epath.Path):
    del directory
    return None

  def structure(self, directory: epath.Path):
    del directory
    return None

  def finalize(self, directory: epath.Path):
    del directory

  def close(self):
    pass


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
  state: Any  # dict (JSON-able) or bytes, already captured from iterator.get_state().


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
  iterator: Any = None  # restored in place with iterator.set_state(...) when given.


# ----------------------------------------------------------------------------------------------
# The checkpointer.
# ----------------------------------------------------------------------------------------------


class ProcessCountError(ValueError):
  """A checkpoint's data position was saved by another number of processes."""


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying the target shardings (the restore target)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)


def is_complete(step_dir: str | os.PathLike) -> bool:
  """Whether a step folder holds a finished checkpoint: orbax's step metadata and the state
  item's metadata (both written when the save is finalised)."""
  d = epath.Path(step_dir)
  return (d / "_CHECKPOINT_METADATA").exists() and (d / STATE / "_METADATA").exists()


def complete_steps(directory: str | os.PathLike) -> tuple[list[int], list[int]]:
  """(complete steps, incomplete steps) of a checkpoint folder, both sorted; read-only (for
  reading another run's checkpoints, e.g. the SFT run a GRPO run starts from)."""
  d = epath.Path(directory)
  if not d.exists():
    return [], []
  steps = sorted(int(c.name) for c in d.iterdir() if c.name.isdigit() and c.is_dir())
  good = [s for s in steps if is_complete(d / str(s))]
  return good, [s for s in steps if s not in good]


def newest_complete_step(directory: str | os.PathLike, step: int = -1) -> int:
  """``step`` (-1: the newest complete one) of a checkpoint folder, checked to be complete.

  Logs the newer incomplete steps it skips; FileNotFoundError names the folder and the steps
  it has when there is none to take.
  """
  good, bad = complete_steps(directory)
  if step < 0:
    if not good:
      raise FileNotFoundError(f"no complete checkpoint in {directory}" + (
          f" (incomplete: {bad})" if bad else ""))
    step = good[-1]
  elif step not in good:
    raise FileNotFoundError(f"checkpoint step {step} is not a complete checkpoint in "
                            f"{directory} (complete: {good}; incomplete: {bad})")
  skipped = [s for s in bad if s > step]
  if skipped:
    logging.warning("%s: skipped incomplete checkpoint(s) %s; using step %d", directory,
                    skipped, step)
  return step


def _set_aside_incomplete(directory: str | os.PathLike) -> list[tuple[int, str]]:
  """Renames the incomplete step folders of ``directory`` to ``incomplete_<step>[_<n>]``.

  Returns [(step, new path)] of the folders moved (none when every step is complete). Only
  process 0 renames; every process returns the same list.
  """
  d = epath.Path(directory)
  if not d.exists():
    return []
  moved = []
  for child in sorted(d.iterdir(), key=lambda p: p.name):
    if not (child.name.isdigit() and child.is_dir()) or is_complete(child):
      continue
    target = d / f"incomplete_{child.name}"
    n = 1
    while target.exists():
      target = d / f"incomplete_{child.name}_{n}"
      n += 1
    if jax.process_index() == 0:
      child.rename(target)
    moved.append((int(child.name), str(target)))
  return moved


def skipped_note(ckpt: Checkpointer) -> str:
  """"" or "; skipped incomplete or unreadable checkpoint(s) [..]" for a resume message."""
  if not ckpt.set_aside:
    return ""
  return (f"; skipped incomplete or unreadable checkpoint(s) "
          f"{[s for s, _ in ckpt.set_aside]} (moved to "
          f"{', '.join(p for _, p in ckpt.set_aside)})")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """The ``config.checkpoint`` section (Checkpointer's arguments).

  Attributes:
    every_steps: save when ``step % every_steps == 0``.
    keep: how many of the newest checkpoints to keep (0, or None in a config section, keeps all).
    async_save: write in a background thread.
  """
  every_steps: int = 1000
  keep: int = 3
  async_save: bool = True

  @classmethod
  def from_config(cls, cfg: Any) -> CheckpointConfig:
    """From a ``config.checkpoint`` mapping / ConfigDict; a key left out keeps its default."""
    kw = _config.field_values(cls, cfg, section_name="checkpoint")
    if "keep" in _config.as_dict(cfg) and _config.as_dict(cfg)["keep"] is None:
      kw["keep"] = 0  # None keeps all, as 0 does.
    return cls(**kw)


class Checkpointer:
  """Keep-N asynchronous orbax checkpoints of (train state, data iterator state)."""

  @classmethod
  def from_config(cls, directory: str | os.PathLike, cfg: Any) -> Checkpointer:
    """A Checkpointer of ``directory`` with the settings of a ``config.checkpoint`` section."""
    return cls(directory, **dataclasses.asdict(CheckpointConfig.from_config(cfg)))

  def __init__(self, directory: str | os.PathLike, *, keep: int = CheckpointConfig.keep,
               every_steps: int = CheckpointConfig.every_steps,
               async_save: bool = CheckpointConfig.async_save):
    """Args:
      directory: where checkpoints go (created if missing); usually ``<workdir>/checkpoints``.
      keep: how many of the newest checkpoints to keep (None or 0 keeps all).
      every_steps: :meth:`maybe_save` saves when ``step % every_steps == 0``.
      async_save: write in a background thread (the step loop continues).
    """
    self.directory = epath.Path(directory).absolute()
    self.every_steps = int(every_steps)
    self.set_aside = _set_aside_incomplete(self.directory)
    for step, path in self.set_aside:
      logging.warning("checkpoint %d in %s is incomplete (no finalised state): skipped, moved "
                      "to %s", step, self.directory, path)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep or None, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=(STATE, _DATA))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, *, force: bool = True) -> bool:
    """Starts saving ``state`` (and the iterator's current state) as checkpoint ``step``."""
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[_DATA] = IteratorStateSave(data_iterator.get_state())
    saved = self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("checkpoint %d started (%s)", step, self.directory)
    return saved

  def maybe_save(self, step: int, state, data_iterator=None, *, last_step: int | None = None
                 ) -> bool:
    """Saves when ``step`` is a multiple of ``every_steps`` or equals ``last_step``."""
    if step % self.every_steps == 0 or (last_step is not None and step == last_step):
      if step in self.manager.all_steps():
        return False
      return self.save(step, state, data_iterator)
    return False

  def restore(self, step: int, abstract_state, shardings, data_iterator=None):
    """Restores checkpoint ``step`` into the target shardings.

    Args:
      step: which checkpoint.
      abstract_state: pytree of ShapeDtypeStructs (``state.abstract_state`` or ``jax.eval_shape``).
      shardings: matching pytree of NamedShardings (may differ from the ones saved with).
      data_iterator: when given, its state is restored in place (``set_state``).

    Returns:
      The restored state.
    """
    self._check_layout(step, abstract_state)
    if data_iterator is not None:
      self._check_process_count(step)
    target = abstract_with_shardings(abstract_state, shardings)
    items = {STATE: ocp.args.StandardRestore(target)}
    has_data = (self.directory / str(step) / _DATA).exists()
    if data_iterator is not None:
      if not has_data:
        raise FileNotFoundError(f"checkpoint {step} in {self.directory} has no data iterator state")
      items[_DATA] = IteratorStateRestore(data_iterator)
    restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
    logging.info("restored checkpoint %d from %s", step, self.directory)
    return restored[STATE]

  def restore_newest(self, abstract_state, shardings, data_iterator=None):
    """Restores the newest checkpoint that reads back, falling back past unreadable ones.

    A checkpoint whose commit markers exist but whose arrays do not read (files deleted or
    damaged after the save) is logged with the reason, moved aside to ``unreadable_<step>``
    (process 0) and the next older one is tried. A layout mismatch (_check_layout) is a config
    problem, not damage: it raises; so does a data position saved by another number of
    processes (_check_process_count).

    Returns:
      (state, step), or (None, None) when the folder holds no checkpoint. Raises RuntimeError
      naming each step and why when none reads.
    """
    self.manager.reload()
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      self._check_layout(step, abstract_state)
      if data_iterator is not None:
        self._check_process_count(step)
      try:
        return self.restore(step, abstract_state, shardings, data_iterator), step
      except Exception as err:  # pylint: disable=broad-except  (any read failure: fall back)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        why = f"{type(err).__name__}: {first}"
        failed.append(f"step {step} ({why})")
        target = self.directory / f"unreadable_{step}"
        n = 1
        while target.exists():
          target = self.directory / f"unreadable_{step}_{n}"
          n += 1
        if jax.process_index() == 0:
          (self.directory / str(step)).rename(target)
        self.set_aside.append((step, str(target)))
        logging.warning("checkpoint %d in %s cannot be read (%s): moved to %s; trying the "
                        "previous one", step, self.directory, why, target)
        self.manager.reload()
    if failed:
      raise RuntimeError(f"no checkpoint in {self.directory} reads back: {'; '.join(failed)} "
                         "(moved aside; rerun to start from scratch)")
    return None, None

  def saved_layout(self, step: int) -> str:
    """'scanned' | 'unrolled' | 'unknown': the layer layout of checkpoint `step`'s parameters
    (from orbax's tree metadata; nothing is read)."""
    try:
      meta = self.manager.item_metadata(int(step))[STATE]
    except Exception:  # pylint: disable=broad-except  (no metadata: cannot tell)
      return "unknown"
    meta = getattr(meta, "tree", meta)  # orbax TreeMetadata -> the saved tree
    params = meta.get("params") if hasattr(meta, "get") else getattr(meta, "params", None)
    if params is None or not hasattr(params, "keys"):
      return "unknown"
    from streampro_jax.models import common  # pylint: disable=g-import-not-at-top
    return common.layout_of(dict(params))

  def _check_layout(self, step: int, abstract_state) -> None:
    """A checkpoint of one layer layout never loads into the other (model.scan_layers)."""
    from streampro_jax.models import common  # pylint: disable=g-import-not-at-top
    params = getattr(abstract_state, "params", None)
    want = common.layout_of(params) if isinstance(params, dict) else "unknown"
    have = self.saved_layout(step)
    if "unknown" not in (want, have) and want != have:
      raise ValueError(
          f"checkpoint {step} in {self.directory} holds {have} layer stacks but this run's "
          f"model is {want} (model.scan_layers={want == 'scanned'}): set model.scan_layers="
          f"{have == 'scanned'} to resume it, or convert the parameters with "
          f"streampro_jax.models.scan_params / unscan_params")

  def _check_process_count(self, step: int) -> None:
    """The data position is one file per process: a checkpoint written by another number of
    processes restores its train state (without a data iterator) but not its data position."""
    data = self.directory / str(step) / _DATA
    if not data.exists() or _state_filename(data).exists():
      return
    counts = sorted({f.name.rsplit("-of-", 1)[1].removesuffix(".json")
                     for f in data.iterdir() if f.name.startswith("process_")})
    if counts:
      raise ProcessCountError(
          f"checkpoint {step} in {self.directory} was written by {' or '.join(counts)} "
          f"process(es); this run has {jax.process_count()}: its data position is saved per "
          f"process and cannot be resumed. Resume with {' or '.join(counts)} process(es), or "
          f"start a new run from its parameters (Checkpointer.restore without a data iterator "
          f"restores the train state onto any mesh and process count)")

  def restore_or(self, state, shardings, data_iterator=None):
    """Restores the newest checkpoint if any; else returns ``state`` unchanged.

    Returns:
      (state, step): step is the restored step, or None when nothing was restored.
    """
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored, step = self.restore_newest(abstract, shardings, data_iterator)
    return (state, None) if step is None else (restored, step)

  def wait(self):
    """Blocks until pending asynchronous saves are written."""
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
