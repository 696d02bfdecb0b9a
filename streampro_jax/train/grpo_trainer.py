"""The GRPO recipe (stage 2, docs/method.md section 3): build the run, loop, log, checkpoint.

Its units live in their own modules: the prompts (grpo_data), the sampler settings and rollout
metrics (grpo_rollouts), the rewards (grpo_rewards), the initial and reference policy
(grpo_policy) and the jitted update (grpo_learner); this file wires them into one step and hands
it to train/loop.train_loop.

One step (``GRPOTrainer.train_step``):

  B (record, question) samples of this host            grpo_data (its prompt iterator, saved)
  -> G rollouts each, turn by turn with a KV cache      sampling.StreamingSampler (current params)
  -> judge (batched, one call per sample group)         judges.* via rewards.group_*_inputs
  -> rewards per rollout: R_fmt, R_turn (tau), R_traj   grpo_rewards.RewardScorer (f32[N])
  -> the jitted, sharded, donated update                grpo_step.make_grpo_step: R = combine(),
     (group advantages on the global array, reference   group advantages, ref / old log-probs,
     log-probs, num_passes optimizer steps)             num_passes optimizer steps
  -> metrics (console, TensorBoard, metrics.jsonl) -> orbax checkpoint (state + data position)

Initial policy (``config.init``): the newest (or ``sft_step``) checkpoint of an SFT workdir written
by launch/train_sft.py (only its params are read, orbax partial restore straight into the target
shardings), or a Hugging Face checkpoint folder (``config.model.hf_checkpoint``), or, when neither
is set, a random init (tests, benchmarks). The reference policy of the KL term is that initial
policy, frozen; on resume it is read again from the same source (it is not stored in the GRPO
checkpoints). Resuming restores params, optimizer state, step and the prompt position, and the
rollout seed of step s is a function of (config.seed, s), so a resumed run samples what the
uninterrupted run would have sampled.

Python use (what launch/train_grpo.py does)::

  from configs import tiny_synthetic_grpo
  from streampro_jax.train import grpo_trainer
  config = tiny_synthetic_grpo.get_config()
  config.init.sft_workdir = "/tmp/tiny_sft"          # a launch/train_sft.py workdir
  state = grpo_trainer.train(config, "/tmp/tiny_grpo")

Across processes each process samples its own rows (its share of the prompts) with the globally
sharded params (StreamingSampler(mesh=...), docs/rollouts.md); the update sees the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
from absl import logging

from streampro_jax import grpo, models, parallel, sampling
from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import grpo_data, grpo_learner, grpo_policy, grpo_rewards, grpo_rollouts
from streampro_jax.train import loop
from streampro_jax.train import metrics as metrics_lib
from streampro_jax.train import run as run_lib
from streampro_jax.train import state as state_lib

__all__ = ["GRPOTrainer", "train"]


def _build_grpo_run(config, workdir: str, *, source=None, allow_config_change: bool = False,
                    devices=None) -> run_lib.Run:
  """train/run.build_run with the GRPO data (grpo_data.make_grpo_data over `source`, default
  config.data's source); Data.extra is a grpo_data.GRPOData."""
  return run_lib.build_run(config, workdir, "grpo",
                           data_fn=functools.partial(grpo_data.make_grpo_data, source=source),
                           allow_config_change=allow_config_change, devices=devices)


class GRPOTrainer:
  """Everything a GRPO run holds; ``train_step`` runs one step, ``train`` the loop.

  Built from its units: the run (_build_grpo_run), the sampler (grpo_rollouts.sampler_config),
  the rewards (grpo_rewards.RewardScorer.from_config), the initial and reference policy
  (grpo_policy) and the learner (grpo_learner.make_learner, the jitted update).

  Args:
    config: a GRPO config (configs/tiny_synthetic_grpo.py documents every field).
    workdir: checkpoints/, metrics.jsonl, tb/, tokenizer/.
    judge: overrides config.reward.judge.
    source: overrides the record source of config.data.
    allow_config_change: resume a workdir whose config.json differs (launch/_common.py's
      --allow_config_change; the differences are logged).
    devices: the devices of the mesh (default every device of every process; tests compare a
      run on one device with a run on eight).
  """

  def __init__(self, config, workdir: str, *, judge=None, source=None,
               allow_config_change: bool = False, devices=None):
    self.workdir = workdir
    self.run = run = _build_grpo_run(config, workdir, source=source,
                                     allow_config_change=allow_config_change, devices=devices)
    self.data: grpo_data.GRPOData = run.data.extra
    self.tree, self.mesh, self.model_config = run.tree, run.mesh, run.model_config
    self.prompts, self.total_steps = run.data.iterator, run.total_steps
    self.group_size = run.tree.grpo.group_size
    # The sampler runs on the training mesh (one process or many): rows over (data, fsdp), the
    # parameters where the rules put them (docs/rollouts.md, "Rollouts on the mesh").
    self.sampler = sampling.StreamingSampler(
        self.model_config, self.data.chat, grpo_rollouts.sampler_config(run.tree),
        video_grid=self.data.grid, mesh=self.mesh, rules=run.rules)
    gb = run.tree.global_batch_size
    logging.info("batch: %d samples x G %d = %s; seq_len %d, max_turns %d, grid %s; %d steps",
                 gb, self.group_size, parallel.describe_batch(gb * self.group_size, self.mesh),
                 self.data.seq_len, self.data.max_turns, self.data.grid, self.total_steps)
    self.scorer = grpo_rewards.RewardScorer.from_config(run.tree.reward, judge=judge,
                                                        max_turns=self.data.max_turns)
    self.step_cfg = grpo.GRPOStepConfig.from_config(dataclasses.asdict(run.tree.grpo),
                                                    {"weights": run.tree.reward.weights})
    self.ref_params = None
    initial = {}

    def load_policy(r: run_lib.Run) -> None:
      # The initial policy, and the reference: a separate copy of it (the train state is
      # donated), optionally in a smaller dtype (grpo.ref_param_dtype).
      initial["params"] = grpo_policy.load_initial_params(
          r.tree, r.model_config, r.abstract_params, r.shardings.params, r.rng)
      self.ref_params = grpo_policy.reference_params(initial["params"], self.step_cfg,
                                                     r.tree.grpo.ref_param_dtype)

    run.attach_state(
        optimizer_steps=self.total_steps * self.step_cfg.num_passes,
        fresh_state=lambda r: state_lib.state_from_params(initial.pop("params"), r.tx,
                                                          r.shardings, r.mesh),
        before_checkpointer=load_policy)
    initial.clear()
    if run.resumed_from is not None:
      logging.info("resumed from GRPO checkpoint %d (prompt position %d)%s", run.resumed_from,
                   self.prompts.position, ckpt_lib.skipped_note(run.checkpointer))
    self.ckpt, self.state = run.checkpointer, run.state
    example = grpo_learner.example_batch(self.data, self.group_size, gb)
    self.step_fn = run.step = grpo_learner.make_learner(
        run, models.build(self.model_config), self.step_cfg, self.data.grid, example)

  def rollout(self, samples, step: int) -> sampling.RolloutBatch:
    """G rollouts of each sample with the current params (seed = f(config.seed, step))."""
    seed = self.tree.seed * 1_000_003 + int(step)
    return self.sampler.sample(self.state.params,
                               grpo_rollouts.stream_prompts(samples, self.data),
                               group_size=self.group_size, seed=seed,
                               seq_len=self.data.seq_len)

  def train_step(self, step: int) -> dict[str, float]:
    """One GRPO step (rollout -> judge/rewards -> update); returns host metrics incl. the time
    split rollout_s / reward_s / update_s (the update is waited for)."""
    t0 = time.perf_counter()
    samples = next(self.prompts)
    rb = self.rollout(samples, step)
    if rb.overflow.any():
      raise RuntimeError(f"KV cache overflow in {int(rb.overflow.sum())} rollouts; raise "
                         "config.rollout.capacity")
    t1 = time.perf_counter()
    reward_arrays = self.scorer.score(rb, [(r, q) for r, q, _ in samples])
    t2 = time.perf_counter()
    vision_ids = (self.model_config.video_token_id, self.model_config.image_token_id)
    host_batch, masked = grpo_learner.update_batch(rb, reward_arrays, self.data, vision_ids)
    batch = host_batch.shard(self.mesh)
    self.state, m = self.step_fn(self.state, self.ref_params, batch)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    t3 = time.perf_counter()
    m.update(grpo_rollouts.rollout_stats(rb))
    m["masked_rows_vision_tokens"] = float(masked)
    m["judge_failures"] = float(reward_arrays["judge_failures"].sum())
    m["rubric_fallbacks"] = float(reward_arrays["rubric_fallbacks"].sum() // self.group_size)
    m["skipped_samples"] = float(self.prompts.skipped)
    m.update(rollout_s=t1 - t0, reward_s=t2 - t1, update_s=t3 - t2, step_s=t3 - t0,
             rollout_tokens_per_s=m["sampled_tokens"] / max(t1 - t0, 1e-9))
    return m

  def train(self):
    """The loop (train/loop.py) from the current step to total_steps; returns the final state."""
    tree = self.tree

    def step_fn(state, step):
      self.state = state
      m = self.train_step(step)
      return self.state, m

    start = int(jax.device_get(self.state.step)) // self.step_cfg.num_passes
    writer = metrics_lib.create_writer(
        self.workdir, total_steps=self.total_steps, enabled=jax.process_index() == 0,
        tensorboard=tree.tensorboard, start_step=start)
    self.state, _ = loop.train_loop(
        self.state, step_fn, start_step=start, total_steps=self.total_steps,
        checkpointer=self.ckpt, data_iterator=self.prompts, writer=writer,
        log_every=tree.log_every_steps, kill_after=tree.debug_kill_after_step,
        kill_mid_save=tree.debug_kill_mid_save)
    logging.info("judge: %s", getattr(self.scorer.judge, "stats", None))
    return self.state


def train(config, workdir: str, **kwargs):
  """Runs (or resumes) GRPO as configured; returns the final TrainState. See GRPOTrainer."""
  return GRPOTrainer(config, workdir, **kwargs).train()
