"""The run's config nodes -> the objects both training stages build: the mesh (of the tree's
config_check.MeshSection), tokenizer, backbone config (ModelSection), forward and unembedding
functions, the SFT data iterator (DataSection), the step count and the initial state from a
Hugging Face checkpoint, or a random model of a config."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from streampro_jax import _config, models, parallel
from streampro_jax.models import common
from streampro_jax.data import synthetic
from streampro_jax.data import tokenizer as tok_lib
from streampro_jax.train import state as state_lib

__all__ = ["clean_on_early_failure", "load_hf_state", "make_data", "make_forward", "make_mesh",
           "make_model_config", "make_tokenizer", "make_unembed", "random_model",
           "random_params", "total_steps_of"]


@contextlib.contextmanager
def clean_on_early_failure(workdir: str):
  """A run that fails before it writes ``<workdir>/config.json`` leaves the workdir as it found
  it: the paths this block created (the workdir itself, its ``tokenizer`` folder) are removed,
  so nothing half-written greets the corrected command. Once config.json exists (data and model
  built), a failure keeps everything (checkpoints, metrics) for the resume."""
  made = [p for p in (workdir, os.path.join(workdir, "tokenizer")) if not os.path.exists(p)]
  config_json = os.path.join(workdir, "config.json")
  had_config = os.path.exists(config_json)
  try:
    yield
  except BaseException:
    if not had_config and not os.path.exists(config_json):
      for p in reversed(made):  # the tokenizer folder, then the workdir when it was new
        shutil.rmtree(p, ignore_errors=True)
    raise


def make_mesh(mesh_section, devices=None):
  """The device mesh of a run's mesh node (config_check.MeshSection: its axis sizes,
  parallel.make_mesh) over `devices` (default: every device of every process), logged."""
  mesh = parallel.make_mesh(mesh_section.sizes, devices)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.devices.size,
               jax.process_count())
  return mesh


def make_tokenizer(config, workdir: str):
  """Tokenizer from ``config.tokenizer``: "synthetic" (built under ``<workdir>/tokenizer`` of
  this process) or a folder (``data.tokenizer.load_tokenizer``, decision tokens added)."""
  name = config.tokenizer
  if name == "synthetic":
    out = os.path.join(workdir, "tokenizer", f"process_{jax.process_index()}")
    return tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(), out)
  tokenizer, _ = tok_lib.load_tokenizer(name)
  return tokenizer


def make_model_config(model, tokenizer):
  """Backbone config (``model.family``: qwen2_5_vl | qwen3_vl) of a model section: the run's
  config_check.ModelSection, or a config's ``model`` mapping (a ConfigDict, a workdir's
  config.json section).

  See ``models.config_from_section``: an HF checkpoint's config.json, or a tiny random config
  carrying the tokenizer's special ids.
  """
  return models.config_from_section(_config.as_dict(model), tokenizer)


def random_params(model_config, seed: int = 0):
  """Random parameters of a backbone config: its ``init_params`` under jit, unboxed (plain
  arrays). The same seed gives the same parameters."""
  init = functools.partial(models.backbone_module(model_config).init_params, model_config)
  return nn.unbox(jax.jit(init)(jax.random.key(int(seed))))


def random_model(config, workdir: str, seed: int = 0):
  """(params, model_config, tokenizer) of a training config with random weights: the tokenizer
  of ``config.tokenizer`` (the synthetic one is built under ``<workdir>/tokenizer``), the
  backbone config of ``config.model`` (``make_model_config``) and ``random_params(., seed)``.
  For the tiny configs (``configs/tiny_synthetic.py``): the live-stream benchmark and tests."""
  tokenizer = make_tokenizer(config, workdir)
  model_config = make_model_config(config.model, tokenizer)
  return random_params(model_config, seed), model_config, tokenizer


def make_forward(module, video_grid_thw):
  """forward_fn(params, batch, return_hidden) for either backbone on a data.batch.Batch.

  Args:
    module: ``models.build(config)`` (``Qwen2_5_VL`` or ``Qwen3_VL``).
    video_grid_thw: i64[K, 3], the grids of ONE row's K turns (static: host-side index plans).
  """
  grid = np.asarray(video_grid_thw)

  def forward(params, batch, return_hidden=False):
    return module.apply({"params": params}, batch.input_ids,
                        pixel_values_videos=batch.pixel_values_videos, video_grid_thw=grid,
                        attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, return_hidden=return_hidden)

  return forward


def make_unembed(model_config):
  """params -> unembedding [D, V] in the model's compute dtype (as its own logits use it)."""
  dtype = model_config.compute_dtype
  return lambda params: common.unembedding(params, model_config).astype(dtype)


def make_data(data, tokenizer, model_config):
  """(iterator, pipeline) of this host from the run's data node (config_check.DataSection:
  a PipelineConfig whose batch_size is the global batch, with its source keys); source "synth"
  generates SynthStream in memory (``data.num_videos`` videos of ``data.split``, frames rendered
  lazily), other sources go through ``pipeline.make_train_iterator``. ``data.narration=True``
  (SynthStream sources only) trains on ``synthetic.narration_record`` of each video instead of
  its questions: a caption on every turn (pretraining a base model from scratch);
  ``data.narration_answers`` adds its own question answered on every turn for half the videos
  (``synthetic.NarrationSource``)."""
  # grain is imported only here: the step and setup code run where grain is absent (the GPU
  # benchmark image, tests/test_gpu_benchmark.py).
  from streampro_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  section = dataclasses.asdict(data)  # the pipeline's readers take the section as a mapping
  source = None
  if data.source == "synth":
    synth_cfg = synthetic.SynthConfig.from_dict(dict(data.synth))
    pairs = synthetic.generate(data.split, data.num_videos, seed=data.synth_seed,
                               config=synth_cfg, with_frames=False)
    source = pipeline.RecordSource([r for r, _ in pairs], frames=synthetic.render_frames)
  if data.narration:
    source = synthetic.NarrationSource(
        source if source is not None else pipeline.source_from_config(section),
        answers=data.narration_answers)
  return pipeline.make_train_iterator(section, tokenizer=tokenizer, model_config=model_config,
                                      source=source)


def total_steps_of(run, num_trajectories: int) -> int:
  """run.total_steps if > 0, else floor(num_epochs * trajectories / global batch), from the run's
  config tree (config_check.SFTRun | GRPORun)."""
  if run.total_steps > 0:
    return run.total_steps
  steps = int(run.num_epochs * num_trajectories // run.global_batch_size)
  if steps < 1:
    raise ValueError(f"{run.num_epochs} epochs of {num_trajectories} trajectories at global "
                     f"batch {run.global_batch_size} is less than one step")
  return steps


def load_hf_state(model, model_config, tokenizer, tx, shardings, mesh):
  """TrainState from the Hugging Face checkpoint of the run's model node
  (config_check.ModelSection), loaded straight into the param shardings; with
  ``model.reinit_decision_rows`` the decision tokens' embedding rows are drawn afresh."""
  _, params = models.backbone_module(model_config).load_hf_checkpoint(
      model.hf_checkpoint, dtype=jnp.float32, shardings=shardings.params,
      scan_layers=model_config.scan_layers)
  if model.reinit_decision_rows:
    ids = tok_lib.decision_token_ids(tokenizer)
    v = model_config.text.vocab_size
    reinit = lambda p: tok_lib.resize_param_vocab(p, v, reinit_ids=ids)  # noqa: E731
    params = jax.jit(reinit, out_shardings=shardings.params)(params)
    logging.info("re-initialised embedding rows of the decision tokens %s", ids)
  return state_lib.state_from_params(params, tx, shardings, mesh)
