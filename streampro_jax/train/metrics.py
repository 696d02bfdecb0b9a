"""Metric writers: console progress (step, loss, steps/s, ETA), TensorBoard events, JSONL.

Only process 0 writes (``MetricWriter(..., enabled=jax.process_index() == 0)``); the others get a
writer that does nothing. Values are plain Python floats (fetch device scalars with
``jax.device_get`` first, once per log interval, so the step loop is not synchronised every step).

  writer = metrics.create_writer(workdir, total_steps=1000)
  writer.write_scalars(step, {"loss": 1.23, "lr": 1e-5})
  writer.close()
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence

from absl import logging

__all__ = ["Progress", "create_writer", "read_jsonl", "MultiWriter"]


def _format_duration(seconds: float) -> str:
  """'1h02m03s' / '2m03s' / '3s'."""
  seconds = max(int(round(seconds)), 0)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  if h:
    return f"{h}h{m:02d}m{s:02d}s"
  if m:
    return f"{m}m{s:02d}s"
  return f"{s}s"


class Progress:
  """Step rate and ETA over the steps seen since the previous call (first interval excluded)."""

  def __init__(self, total_steps: int, start_step: int = 0):
    self.total_steps = int(total_steps)
    self._last_step = int(start_step)
    self._last_time = None
    self.steps_per_sec = float("nan")

  def update(self, step: int, now: float | None = None) -> dict[str, float]:
    """Records ``step``; returns steps_per_sec and eta_s (nan until two calls were made)."""
    now = time.perf_counter() if now is None else now
    if self._last_time is not None and step > self._last_step:
      self.steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total_steps - step) / self.steps_per_sec if self.steps_per_sec > 0 else float("nan")
    return {"steps_per_sec": self.steps_per_sec, "eta_s": eta}


class _ConsoleWriter:
  """Logs one line per call: 'step 12/100 (12%) | loss 1.234 | 3.1 steps/s | ETA 28s | ...'."""

  def __init__(self, total_steps: int, keys_first: Sequence[str] = ("loss",)):
    self.total_steps = total_steps
    self.keys_first = tuple(keys_first)

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    parts = [f"step {step}/{self.total_steps} ({100.0 * step / max(self.total_steps, 1):.0f}%)"]
    keys = [k for k in self.keys_first if k in scalars]
    keys += sorted(k for k in scalars if k not in self.keys_first
                   and k not in ("steps_per_sec", "eta_s"))
    for key in keys:
      parts.append(f"{key} {_fmt(scalars[key])}")
    if "steps_per_sec" in scalars:
      parts.append(f"{scalars['steps_per_sec']:.3g} steps/s")
    if "eta_s" in scalars and scalars["eta_s"] == scalars["eta_s"]:
      parts.append(f"ETA {_format_duration(scalars['eta_s'])}")
    logging.info(" | ".join(parts))

  def write_text(self, step: int, key: str, text: str):
    logging.info("step %d %s: %s", step, key, text)

  def flush(self):
    pass

  def close(self):
    pass


def _fmt(value: float) -> str:
  value = float(value)
  if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
    return f"{value:.3e}"
  return f"{value:.4f}"


class _TensorBoardWriter:
  """TensorBoard event files (tensorboardX) under ``logdir``."""

  def __init__(self, logdir: str | os.PathLike):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._writer = SummaryWriter(logdir=str(logdir))

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), global_step=step)

  def write_text(self, step: int, key: str, text: str):
    self._writer.add_text(key, text, global_step=step)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class _JsonlWriter:
  """One JSON object per call ({"step": ..., **scalars}) appended to ``path``.

  Appending lets a resumed run continue the same file; readers keep the last line per step. A
  run that resumes into a file that already holds lines first appends a marker line
  ``{"resumed_from_step": <start_step>, "time": <unix seconds>}`` (no "step" key): the steps
  after it that repeat earlier ones (redone after a kill) are told apart.
  """

  def __init__(self, path: str | os.PathLike, *, start_step: int | None = None,
               mark_resume: bool = True):
    self.path = os.fspath(path)
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    resumed = mark_resume and os.path.isfile(self.path) and os.path.getsize(self.path) > 0
    self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    if resumed:
      self._file.write(json.dumps({"resumed_from_step": start_step,
                                   "time": round(time.time(), 3)}) + "\n")
      self._file.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    self._file.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
                     + "\n")
    self._file.flush()

  def write_text(self, step: int, key: str, text: str):
    del step, key, text

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def read_jsonl(path: str | os.PathLike) -> dict[int, dict[str, float]]:
  """Reads a _JsonlWriter file: {step: scalars}, the last record of a step winning (resume
  markers, the lines without a "step", are left out)."""
  out = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        if "step" not in record:
          continue
        out[int(record.pop("step"))] = record
  return out


class MultiWriter:
  """Fans out to several writers; does nothing when ``enabled`` is False (non-zero processes)."""

  def __init__(self, writers: Sequence, enabled: bool = True):
    self.writers = list(writers) if enabled else []

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_text(self, step: int, key: str, text: str):
    for w in self.writers:
      w.write_text(step, key, text)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def create_writer(workdir: str | os.PathLike, *, total_steps: int, enabled: bool = True,
                  tensorboard: bool = True, start_step: int | None = None) -> MultiWriter:
  """Console + TensorBoard (``<workdir>/tb``) + JSONL (``<workdir>/metrics.jsonl``) writers;
  `start_step` (the step a resumed run continues from) goes into the JSONL resume marker."""
  writers = [_ConsoleWriter(total_steps),
             _JsonlWriter(os.path.join(workdir, "metrics.jsonl"), start_step=start_step,
                         mark_resume=enabled)]
  if tensorboard and enabled:
    writers.append(_TensorBoardWriter(os.path.join(workdir, "tb")))
  return MultiWriter(writers, enabled=enabled)
