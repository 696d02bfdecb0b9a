"""The GRPO policy's start and its frozen reference (pi_ref of the KL term, docs/method.md sec. 3).

:func:`load_initial_params` reads the initial policy from ``config.init`` (an SFT workdir's
checkpoint through :func:`restore_params`), ``config.model.hf_checkpoint``, or a random init,
straight into the parameters' shardings; :func:`reference_params` copies it into the reference
the update reads (not stored in GRPO checkpoints: a resumed run reads it again from the same
source).
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from streampro_jax import grpo, models
from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import config_check

__all__ = ["load_initial_params", "reference_params", "restore_params"]


def restore_params(checkpoint_dir: str, abstract_params, param_shardings, step: int = -1):
  """Only the params of a TrainState checkpoint (``<dir>/<step>/state``, train/checkpoint.py),
  read straight into ``param_shardings`` (orbax partial restore; the optimizer state is not
  read, so any SFT optimizer works). step -1: the newest."""
  step = ckpt_lib.newest_complete_step(checkpoint_dir, step)
  target = {"params": ckpt_lib.abstract_with_shardings(abstract_params, param_shardings)}
  ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  out = ckptr.restore(
      os.path.join(os.path.abspath(checkpoint_dir), str(step), ckpt_lib.STATE),
      args=ocp.args.PyTreeRestore(item=target,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True))
  logging.info("initial params: checkpoint %d of %s", step, checkpoint_dir)
  return out["params"]


def load_initial_params(run: config_check.GRPORun, model_config, abstract_params,
                        param_shardings, rng):
  """Initial (= reference) params from run.init.sft_workdir, run.model.hf_checkpoint, or a
  random init, placed in ``param_shardings``."""
  backbone = models.backbone_module(model_config)
  if run.init.sft_workdir:
    return restore_params(os.path.join(run.init.sft_workdir, "checkpoints"), abstract_params,
                          param_shardings, run.init.sft_step)
  if run.model.hf_checkpoint:
    _, params = backbone.load_hf_checkpoint(run.model.hf_checkpoint, dtype=jnp.float32,
                                            shardings=param_shardings,
                                            scan_layers=model_config.scan_layers)
    logging.info("initial params: %s", run.model.hf_checkpoint)
    return params
  logging.warning("no config.init.sft_workdir nor model.hf_checkpoint: GRPO from a RANDOM init")
  init_fn = lambda r: nn.unbox(backbone.init_params(model_config, r))  # noqa: E731
  return jax.jit(init_fn, out_shardings=param_shardings)(rng)


def reference_params(init_params, step_cfg: grpo.GRPOStepConfig, dtype: str = ""):
  """The reference policy: a separate copy of the initial params (the train state is donated),
  in `dtype` ("" keeps each parameter's), or None when the KL term is off (beta 0)."""
  if step_cfg.beta == 0.0:
    return None
  return jax.tree.map(lambda p: jnp.array(p, dtype=dtype or p.dtype, copy=True),
                      init_params)
