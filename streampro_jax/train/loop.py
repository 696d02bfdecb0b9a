"""The one training loop of both stages: steps, metrics, progress, checkpoints, resume and the
kill-for-testing switch.

  for step in start + 1 .. total_steps:
    state, metrics = step_fn(state, step)       (device or host scalars; StopIteration: no data)
    every log_every steps (and the first, and the last): fetch the pending metrics once, write
      every step's metrics, the rates (steps_per_sec, eta_s, tokens_per_sec) with the last one
    checkpointer.maybe_save(step, state, data position)
    step == kill_after: flush, wait for checkpoints (unless kill_mid_save: that step's save is
      still being written), SIGKILL this process (resume tests)
  a final checkpoint of the last step, when it has none

A run resumes from its newest checkpoint (the caller restores state and data position, and
passes the restored step as ``start_step``), so a killed run continues exactly.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from absl import logging

from streampro_jax.train import metrics as metrics_lib

__all__ = ["train_loop"]

_StepFn = Callable[[Any, int], tuple[Any, Mapping[str, Any]]]


def _write_metrics(writer, fetched: Sequence[tuple[int, Mapping[str, Any]]],
                   rates: Mapping[str, float]) -> None:
  """Writes each step's metrics; the rates (nan ones left out) go with the last step."""
  for i, (step, m) in enumerate(fetched):
    scalars = {k: float(v) for k, v in m.items()}
    if i == len(fetched) - 1:
      scalars.update({k: v for k, v in rates.items() if v == v})
    writer.write_scalars(step, scalars)
  writer.flush()


def train_loop(state, step_fn: _StepFn, *, start_step: int, total_steps: int, checkpointer,
               data_iterator=None, writer, log_every: int = 1, kill_after: int = -1,
               kill_mid_save: bool = False):
  """Runs steps start_step + 1 .. total_steps; returns (final state, last step run).

  Args:
    state: the (restored or fresh) train state.
    step_fn: (state, step) -> (state, metrics dict of scalars); raises StopIteration when the
      data runs out (the loop stops after the previous step).
    start_step: the last completed step (0 for a fresh run).
    total_steps: the last step.
    checkpointer: a train/checkpoint.Checkpointer (saved every its every_steps and at the end;
      closed on return).
    data_iterator: checkpointed with the state (its get_state / set_state position).
    writer: a metrics writer (metrics.create_writer); closed on return.
    log_every: metrics are fetched from the devices every log_every steps (and at the first and
      the last step): the loop does not wait for the devices in between.
    kill_after: SIGKILL this process after that step (tests of resume); -1: never.
    kill_mid_save: with kill_after, the SIGKILL comes as soon as that step's asynchronous save has
      started (the crash-during-save test), not after the pending writes finish.
  """
  progress = metrics_lib.Progress(total_steps, start_step)
  log_every = max(int(log_every), 1)
  pending, t_last = [], None
  step = start_step
  for step in range(start_step + 1, total_steps + 1):
    try:
      state, metrics = step_fn(state, step)
    except StopIteration:
      logging.warning("data ran out at step %d of %d", step, total_steps)
      step -= 1
      break
    pending.append((step, metrics))
    if t_last is None or step % log_every == 0 or step == total_steps:
      fetched = [(s, jax.device_get(m)) for s, m in pending]
      now = time.perf_counter()
      rates = progress.update(step, now)
      if t_last is not None and all("tokens" in m for _, m in fetched):
        # The first step compiles: rates are timed from its end.
        tokens = sum(float(m["tokens"]) for _, m in fetched)
        rates["tokens_per_sec"] = tokens / max(now - t_last, 1e-9)
      t_last = now
      _write_metrics(writer, fetched, rates)
      pending = []
    saved = checkpointer.maybe_save(step, state, data_iterator, last_step=total_steps)
    if step == kill_after:
      writer.flush()
      if kill_mid_save:
        logging.warning("debug_kill_after_step=%d, debug_kill_mid_save: sending SIGKILL to myself "
                        "%s", step, f"while checkpoint {step} is written" if saved
                        else "(no save at this step)")
      else:
        logging.warning("debug_kill_after_step=%d: sending SIGKILL to myself", step)
        checkpointer.wait()
      os.kill(os.getpid(), signal.SIGKILL)
  if step >= 1 and step not in checkpointer.all_steps():
    checkpointer.save(step, state, data_iterator)
  checkpointer.close()
  writer.close()
  return state, step
