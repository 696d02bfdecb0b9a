"""One run builder for both recipes: the set-up chain that sft.train and the GRPO trainer share.

:func:`build_run` reads the config tree (config_check.build, strict), checks the workdir's
config.json (a workdir holds one run), and builds the mesh and its rules, the tokenizer and the
backbone config, then asks the recipe for its data. :func:`Run.attach_state` completes the run:
the optimizer and LR schedule over the run's optimizer steps, the abstract parameters and the
TrainState shardings, the workdir's config.json, the checkpointer, and the state (restored from
the newest complete checkpoint with the data position, or the recipe's fresh state). The recipe
then sets ``run.step``, its jitted update.

  run = run_lib.build_run(config, workdir, "sft", data_fn=...)
  run.attach_state(optimizer_steps=run.total_steps, fresh_state=...)
  run.step = make_sft_step(...)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from absl import logging
from jax.sharding import Mesh

from streampro_jax import models
from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import config_check, optim
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

__all__ = ["Data", "Run", "build_run"]


@dataclasses.dataclass
class Data:
  """A recipe's training data.

  Attributes:
    iterator: the checkpointable iterator the loop draws from (its position is saved with the
      state).
    num_trajectories: trajectories per epoch (total_steps when config.total_steps <= 0).
    extra: whatever else the recipe built with it (the SFT pipeline, the GRPO pipeline config).
  """
  iterator: Any
  num_trajectories: int
  extra: Any = None


@dataclasses.dataclass
class Run:
  """A training run, built by :func:`build_run` and completed by :meth:`attach_state`.

  Attributes:
    tree: the frozen config tree (config_check.SFTRun | config_check.GRPORun).
    config: the ConfigDict it was built from (written to the workdir's config.json).
    workdir: checkpoints/, metrics.jsonl, tb/, tokenizer/, config.json.
    mesh, rules: the device mesh and the logical-axis rules.
    tokenizer, model_config: the tokenizer and the backbone config.
    data: the recipe's Data.
    total_steps: recipe steps of the run.
    tx, schedule: optimizer and LR schedule over the optimizer steps (attach_state).
    rng: the run's key (config seed); the abstract parameters and a fresh init use it.
    abstract: the boxed abstract parameters (logical axis names), jax.eval_shape of the init.
    shardings: the TrainState's shardings.
    checkpointer: keep-N checkpoints of <workdir>/checkpoints.
    state: the TrainState (restored or fresh).
    resumed_from: the checkpoint step restored, or None.
    step: the recipe's jitted update (set by the recipe).
  """
  tree: Any
  config: Any
  workdir: str
  mesh: Mesh
  rules: Sequence
  tokenizer: Any
  model_config: Any
  data: Data
  total_steps: int
  allow_config_change: bool = False
  tx: Any = None
  schedule: Any = None
  rng: Any = None
  abstract: Any = None
  shardings: Any = None
  checkpointer: ckpt_lib.Checkpointer | None = None
  state: Any = None
  resumed_from: int | None = None
  step: Callable | None = None

  @property
  def abstract_params(self):
    """The abstract parameters without their logical-axis boxes."""
    return nn.unbox(self.abstract)

  def init_fn(self):
    """rng -> boxed random parameters of the backbone."""
    return functools.partial(models.backbone_module(self.model_config).init_params,
                             self.model_config)

  def attach_state(self, *, optimizer_steps: int,
                   fresh_state: Callable[[Run], Any],
                   before_checkpointer: Callable[[Run], None] | None = None) -> None:
    """The optimizer, shardings, config.json, checkpointer and state of the run.

    Args:
      optimizer_steps: optimizer steps of the whole run (the LR schedule's length).
      fresh_state: run -> TrainState when there is no checkpoint to resume (called after the
        shardings exist).
      before_checkpointer: run -> None, called once the parameters' shardings exist and before
        config.json is written (the GRPO recipe loads its initial policy there, so that a run
        that cannot load it leaves no config.json).
    """
    tree = self.tree
    self.tx = optim.make_optimizer(tree.optim, optimizer_steps)
    self.schedule = optim.make_schedule(tree.optim, optimizer_steps)
    self.rng = jax.random.key(tree.seed)
    self.abstract = jax.eval_shape(self.init_fn(), self.rng)
    self.shardings = state_lib.state_shardings(self.tx, self.abstract, self.mesh, self.rules)
    logging.info("parameters: %s", optim.count_params(self.abstract_params, tree.optim.frozen))
    if before_checkpointer is not None:
      before_checkpointer(self)
    config_check.check_workdir_config(self.workdir, self.config,
                                      allow_change=self.allow_config_change,
                                      write=jax.process_index() == 0)
    self.checkpointer = ckpt_lib.Checkpointer.from_config(
        os.path.join(self.workdir, "checkpoints"), tree.checkpoint)
    restored, latest = self.checkpointer.restore_newest(
        state_lib.abstract_state(self.tx, self.abstract), self.shardings, self.data.iterator)
    self.resumed_from = latest
    if latest is not None:
      self.state = restored
    else:
      self.state = fresh_state(self)


def build_run(config, workdir: str, trainer: str, *,
              data_fn: Callable[[Run], Data], allow_config_change: bool = False,
              devices=None) -> Run:
  """The shared first half of a run: tree, workdir check, mesh, tokenizer, model config, data.

  Args:
    config: the run's ConfigDict.
    workdir: the run's folder (created).
    trainer: "sft" | "grpo" (which tree, config_check._RUN_TYPES).
    data_fn: run -> Data (the recipe's data; the run's data and total_steps are not set yet).
    allow_config_change: resume a workdir whose config.json differs (logged).
    devices: the devices of the mesh (default every device of every process).

  Raises config_check.ConfigError for a key no field declares, or when <workdir>/config.json
  holds another config (unless allow_config_change); nothing is written before these checks.
  """
  tree = config_check.build(config, trainer)
  config_check.check_workdir_config(workdir, config, allow_change=allow_config_change,
                                    write=False)
  os.makedirs(workdir, exist_ok=True)
  mesh, rules = setup_lib.make_mesh(tree.mesh, devices), tree.mesh.rules
  tokenizer = setup_lib.make_tokenizer(tree, workdir)
  model_config = setup_lib.make_model_config(tree.model, tokenizer)
  run = Run(tree=tree, config=config, workdir=workdir, mesh=mesh, rules=rules,
            tokenizer=tokenizer, model_config=model_config, data=None, total_steps=0,
            allow_config_change=allow_config_change)
  run.data = data_fn(run)
  run.total_steps = setup_lib.total_steps_of(tree, run.data.num_trajectories)
  return run
