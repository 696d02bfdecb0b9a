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

A killed run leaves at most a partial temporary directory, which orbax ignores; the run resumes
from the newest finalised checkpoint.
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

STATE = "state"
DATA = "data"


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


def abstract_with_shardings(abstract_tree, shardings):
  """ShapeDtypeStructs carrying the target shardings (the restore target)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)


class Checkpointer:
  """Keep-N asynchronous orbax checkpoints of (train state, data iterator state)."""

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3, every_steps: int = 1000,
               async_save: bool = True):
    """Args:
      directory: where checkpoints go (created if missing); usually ``<workdir>/checkpoints``.
      keep: how many of the newest checkpoints to keep (None or 0 keeps all).
      every_steps: :meth:`maybe_save` saves when ``step % every_steps == 0``.
      async_save: write in a background thread (the step loop continues).
    """
    self.directory = epath.Path(directory).absolute()
    self.every_steps = int(every_steps)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep or None, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=(STATE, DATA))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator=None, *, force: bool = True) -> bool:
    """Starts saving ``state`` (and the iterator's current state) as checkpoint ``step``."""
    items = {STATE: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA] = IteratorStateSave(data_iterator.get_state())
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
    target = abstract_with_shardings(abstract_state, shardings)
    items = {STATE: ocp.args.StandardRestore(target)}
    has_data = (self.directory / str(step) / DATA).exists()
    if data_iterator is not None:
      if not has_data:
        raise FileNotFoundError(f"checkpoint {step} in {self.directory} has no data iterator state")
      items[DATA] = IteratorStateRestore(data_iterator)
    restored = self.manager.restore(int(step), args=ocp.args.Composite(**items))
    logging.info("restored checkpoint %d from %s", step, self.directory)
    return restored[STATE]

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

  def restore_or(self, state, shardings, data_iterator=None):
    """Restores the newest checkpoint if any; else returns ``state`` unchanged.

    Returns:
      (state, step): step is the restored step, or None when nothing was restored.
    """
    self.manager.reload()
    step = self.latest_step()
    if step is None:
      return state, None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    return self.restore(step, abstract, shardings, data_iterator), step

  def wait(self):
    """Blocks until pending asynchronous saves are written."""
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
