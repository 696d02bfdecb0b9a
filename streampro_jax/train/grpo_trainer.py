"""Stage-2 GRPO training loop (docs/method.md section 3) around the streaming sampler and the jitted
step.

One step (``GRPOTrainer.train_step``):

  B (record, question) samples of this host            PromptIterator (checkpointable position)
  -> G rollouts each, turn by turn with a KV cache      sampling.StreamingSampler (current params)
  -> judge (batched, one call per sample group)         judges.* via rewards.group_*_inputs
  -> rewards per rollout: R_fmt, R_turn (tau), R_traj   RewardScorer (host arrays f32[N])
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
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from streampro_jax import _config, grpo, judges, models, parallel, rewards, sampling
from streampro_jax.data import batch as batch_lib
from streampro_jax.data import chat_format, pipeline, pipeline_config, schema, synthetic
from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import config_check, grpo_step, loop, optim
from streampro_jax.train import run as run_lib
from streampro_jax.train import metrics as metrics_lib
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

PROACTIVE_TASKS = ("GP", "RF")


# ----------------------------------------------------------------------------------------------
# Prompts: a checkpointable stream of (record, question) samples.
# ----------------------------------------------------------------------------------------------


class PromptIterator:
  """Yields lists of ``batch_size`` (record, question index) samples of this host.

  The order is a grain MapDataset over every (record, question) trajectory of the source:
  seeded shuffle (a new permutation every epoch), repeated forever, sharded per host
  (``ds[process_index::process_count]``). The state is the position in that sequence
  (``{"position": int}``), so ``set_state`` resumes exactly. With ``max_turns``, a trajectory
  whose question is asked on a turn >= max_turns (after the cut of a long record) is skipped and
  counted in ``skipped``.
  """

  def __init__(self, source, batch_size: int, *, seed: int = 0, shuffle: bool = True,
               process_index: int = 0, process_count: int = 1, max_turns: int | None = None):
    self.source = source
    self.batch_size = int(batch_size)
    self.max_turns = max_turns
    self.skipped = 0
    index = pipeline.trajectory_index(source)
    if len(index) == 0:
      raise ValueError("the source holds no trajectory (no record with a question)")
    self.num_trajectories = len(index)
    ds = grain.MapDataset.source(index)
    if shuffle:
      ds = ds.shuffle(seed=seed)
    ds = ds.repeat(None)
    if process_count > 1:
      ds = ds[process_index::process_count]
    self._ds = ds
    self.position = 0

  def __iter__(self):
    return self

  def __next__(self) -> list[tuple[schema.Record, int, np.ndarray]]:
    """[(record, question index, frames uint8[K * tp, H, W, 3])] of the next batch."""
    out = []
    misses = 0
    while len(out) < self.batch_size:
      ex, q = (int(v) for v in self._ds[self.position])
      self.position += 1
      record, frames = self.source[ex]
      if self.max_turns is not None:
        k = chat_format.num_turns(record.duration)
        if chat_format.ask_turn(record.questions[q].ask_time, k) >= self.max_turns:
          self.skipped += 1
          misses += 1
          if misses > 10 * self.num_trajectories:
            raise ValueError(f"no trajectory asks its question before turn {self.max_turns}")
          continue
      out.append((record, q, frames))
    return out

  def get_state(self) -> dict[str, int]:
    return {"position": int(self.position), "skipped": int(self.skipped)}

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.position = int(state["position"])
    self.skipped = int(state.get("skipped", 0))


# ----------------------------------------------------------------------------------------------
# Rewards of a rollout batch.
# ----------------------------------------------------------------------------------------------


class SyntheticRubricJudge:
  """A judge for SynthStream: answers by exact / span match (judges.MatchJudge), rubric
  checkpoints by ``synthetic.check_rubric`` on the rollout's (time, text) responses."""

  def __init__(self):
    self._match = judges.MatchJudge()
    self.stats = self._match.stats

  def score_answers(self, items):
    return self._match.score_answers(items)

  def check_responses(self, responses: Sequence[tuple[float, str]], checks: Sequence[str]
                      ) -> list[bool | None]:
    self.stats.add("requests", len(checks))
    out: list[bool | None] = []
    for c in checks:
      try:
        out.append(bool(synthetic.check_rubric(c, responses)))
      except ValueError:  # Not a SynthStream template: a failure, counted, never a silent 0.
        self.stats.add("failures")
        out.append(None)
    return out


def build_judge(reward_cfg: Mapping[str, Any]):
  """The judge of ``config.reward.judge``: a ConfigDict/dict for judges.build_judge (kind
  "match" | "openai" | "local"), or a string: "synthetic" (SyntheticRubricJudge), "match" /
  "exact" (judges.MatchJudge)."""
  spec = _config.as_dict(reward_cfg).get("judge", "match")
  if isinstance(spec, str):
    if spec == "synthetic":
      return SyntheticRubricJudge()
    if spec in ("match", "exact"):
      return judges.MatchJudge()
    raise ValueError(f"reward.judge {spec!r}; expected 'synthetic', 'match' or a judge config")
  return judges.build_judge(spec)


@functools.partial(jax.jit, static_argnames=("proactive", "matching"))
def _turn_f1(pred_times, pred_mask, gt_times, gt_mask, acc, tau, *, proactive: bool,
             matching: str = "gt_first"):
  fn = functools.partial(rewards.turn_f1_reward, proactive=proactive, matching=matching)
  return jax.vmap(lambda a, b, c, d, e: fn(a, b, c, d, e, tau=tau))(
      pred_times, pred_mask, gt_times, gt_mask, acc)


MISSING_RUBRIC_POLICIES = ("error", "zero")


def load_rubrics(path: str) -> dict[tuple[str, str], tuple[str, ...]]:
  """{(record id, question id): rubric statements} of an annotation JSONL holding rubrics (the
  output of launch/write_rubrics.py). Questions without a rubric are left out."""
  records, _ = schema.load_jsonl(path)
  return {(r.id, q.id): tuple(q.rubric) for r in records for q in r.questions if q.rubric}


def rubrics_from_config(reward_cfg: Mapping[str, Any]):
  """(rubrics mapping or None, missing_rubric policy) from config.reward: ``rubrics_file`` (a
  launch/write_rubrics.py output; its rubrics replace the data's) and ``missing_rubric``
  ("error", the default: a sample without a rubric stops the run; "zero": R_traj = 0 for that
  sample, counted in the metric rubric_fallbacks)."""
  reward_cfg = _config.as_dict(reward_cfg)
  path = str(reward_cfg.get("rubrics_file", "") or "")
  policy = str(reward_cfg.get("missing_rubric") or RewardScorer.missing_rubric)
  if policy not in MISSING_RUBRIC_POLICIES:
    raise ValueError(f"config.reward.missing_rubric = {policy!r}; expected one of "
                     f"{MISSING_RUBRIC_POLICIES}")
  rubrics = load_rubrics(path) if path else None
  if rubrics is not None:
    logging.info("rubrics: %d questions from %s", len(rubrics), path)
  return rubrics, policy


@dataclasses.dataclass
class RewardScorer:
  """Host-side rewards of a RolloutBatch: R_fmt, R_turn, R_traj per rollout (f32[N] each).

  Attributes:
    judge: a judges.Judge (or SyntheticRubricJudge).
    tau: the time scale of R_turn (8 s in the paper, every task).
    max_turns: padded prediction count P (a rollout responds at most once per turn).
    max_answers: padded ground-truth count.
    max_checks: padded rubric size.
    rubrics: optional {(record id, question id): rubric} written before RL (load_rubrics); it
      takes precedence over the rubric a record carries.
    missing_rubric: "error" (a sample without a rubric raises, naming it) or "zero" (its R_traj
      is 0, and the sample is counted in the returned rubric_fallbacks).
    matching: R_turn's matching order, rewards.MATCHING_ORDERS ("gt_first": the paper's
      Algorithm 1; "prediction_first": its ablation).
  """
  judge: Any
  tau: float = 8.0
  max_turns: int = 64
  max_answers: int = 32
  max_checks: int = 16
  rubrics: Mapping[tuple[str, str], Sequence[str]] | None = None
  missing_rubric: str = "error"
  matching: str = "gt_first"

  @classmethod
  def from_config(cls, reward: config_check.RewardSection, *, judge=None,
                  max_turns: int) -> RewardScorer:
    """The scorer of a run's reward section: its judge (`judge` overrides reward.judge), its
    rubric file and policy, tau, padded sizes and matching order."""
    judge = judge if judge is not None else build_judge(reward)
    rubrics, missing_rubric = rubrics_from_config(reward)
    return cls(judge, tau=reward.tau, max_turns=max_turns, max_answers=reward.max_answers,
               max_checks=reward.max_checks, rubrics=rubrics, missing_rubric=missing_rubric,
               matching=reward.matching)

  def __post_init__(self):
    if self.matching not in rewards.MATCHING_ORDERS:
      raise ValueError(f"config.reward.matching = {self.matching!r}; expected one of "
                       f"{rewards.MATCHING_ORDERS}")

  def score(self, batch: sampling.RolloutBatch,
            samples: Sequence[tuple[schema.Record, int]]) -> dict[str, np.ndarray]:
    """Rewards of the N = len(samples) * G rollouts (groups contiguous).

    Ground truths due after the rollout's last turn (a record cut to max_turns) are left out.
    Returns reward_fmt, reward_turn, reward_traj f32[N], judge_failures i32[N] and
    rubric_fallbacks i32[N] (1 on the rows of a sample scored without a rubric).
    """
    g = batch.group_size
    n = len(samples) * g
    fmt_valid = np.zeros((n, self.max_turns), bool)
    fmt_mask = np.zeros((n, self.max_turns), bool)
    p, ng = self.max_turns, self.max_answers
    arrays = dict(pred_times=np.zeros((n, p), np.float32), pred_mask=np.zeros((n, p), bool),
                  gt_times=np.zeros((n, ng), np.float32), gt_mask=np.zeros((n, ng), bool),
                  acc=np.zeros((n, p, ng), np.float32))
    proactive = np.zeros((n,), bool)
    traj = np.zeros((n,), np.float32)
    failures = np.zeros((n,), np.int32)
    fallbacks = np.zeros((n,), np.int32)
    if self.missing_rubric not in MISSING_RUBRIC_POLICIES:
      raise ValueError(f"missing_rubric {self.missing_rubric!r}; expected one of "
                       f"{MISSING_RUBRIC_POLICIES}")
    for b, (record, qi) in enumerate(samples):
      q = record.questions[qi]
      rows = slice(b * g, (b + 1) * g)
      msgs = [batch.messages[r] for r in range(b * g, (b + 1) * g)]
      k = int(batch.num_turns[b * g])
      if k > self.max_turns:
        raise ValueError(f"sample {record.id!r} has {k} turns > reward max_turns "
                         f"{self.max_turns}")
      for i, m in enumerate(msgs):
        fmt_valid[b * g + i], fmt_mask[b * g + i] = rewards.format_inputs(m, pad_to=p)
      ask = chat_format.ask_turn(q.ask_time, chat_format.num_turns(record.duration))
      answers = [a for a in q.answers
                 if chat_format.answer_turn(a.response_time, ask) < k]
      if len(answers) > ng:
        raise ValueError(f"sample {record.id!r} has {len(answers)} answers > reward "
                         f"max_answers {ng}")
      tf1 = rewards.group_turn_f1_inputs(msgs, answers, self.judge, question=q.question,
                                         task=q.task, tau=self.tau,
                                         proactive=q.task in PROACTIVE_TASKS,
                                         max_preds=p, max_gts=ng)
      for key in arrays:
        arrays[key][rows] = tf1[key]
      failures[rows] += tf1["judge_failures"]
      proactive[rows] = q.task in PROACTIVE_TASKS
      stored = self.rubrics.get((record.id, q.id)) if self.rubrics is not None else None
      checks = list(stored or q.rubric or ())
      if checks:
        passed, mask, fails = self._rubric(msgs, checks, q.question)
        traj[rows] = np.asarray(rewards.rubric_reward(passed, mask))
        failures[rows] += fails
      elif self.missing_rubric == "zero":
        fallbacks[rows] = 1
      else:
        raise ValueError(
            f"sample {record.id!r} question {q.id!r} has no rubric: write them before RL with "
            "launch/write_rubrics.py (config.reward.rubrics_file), or set "
            "config.reward.missing_rubric='zero' to score R_traj = 0 (counted in "
            "rubric_fallbacks)")
    fmt = np.asarray(rewards.format_reward(fmt_valid, fmt_mask))
    args = [jnp.asarray(arrays[k]) for k in ("pred_times", "pred_mask", "gt_times", "gt_mask",
                                             "acc")]
    tau = jnp.float32(self.tau)
    turn = np.where(
        proactive, np.asarray(_turn_f1(*args, tau, proactive=True, matching=self.matching)),
        np.asarray(_turn_f1(*args, tau, proactive=False, matching=self.matching)))
    return {"reward_fmt": fmt.astype(np.float32), "reward_turn": turn.astype(np.float32),
            "reward_traj": traj, "judge_failures": failures, "rubric_fallbacks": fallbacks}

  def _rubric(self, msgs, checks, question):
    if len(checks) > self.max_checks:
      raise ValueError(f"{len(checks)} rubric checks > reward max_checks {self.max_checks}")
    if hasattr(self.judge, "check_responses"):
      n, c = len(msgs), len(checks)
      passed, mask = np.zeros((n, c), bool), np.zeros((n, c), bool)
      fails = np.zeros((n,), np.int32)
      for r, m in enumerate(msgs):
        for j, mark in enumerate(self.judge.check_responses(
            rewards.predictions_from_messages(m), checks)):
          if mark is None:
            fails[r] += 1
          else:
            passed[r, j], mask[r, j] = mark, True
      return passed, mask, fails
    out = rewards.group_rubric_inputs(msgs, checks, self.judge, question=question)
    return out["checks"], out["check_mask"], out["judge_failures"]


def rollout_stats(batch: sampling.RolloutBatch) -> dict[str, float]:
  """Host metrics of a rollout batch: response_rate and invalid_rate (over real turns),
  responses_per_rollout, sampled_tokens (loss-masked), mean_length (real tokens per row)."""
  real = batch.decisions >= 0
  turns = max(int(real.sum()), 1)
  return {"response_rate": float((batch.decisions == sampling.TURN_RESPONSE).sum() / turns),
          "invalid_rate": float((batch.decisions == sampling.TURN_INVALID).sum() / turns),
          "responses_per_rollout": float((batch.decisions == sampling.TURN_RESPONSE).sum()
                                         / batch.decisions.shape[0]),
          "sampled_tokens": float(batch.loss_mask.sum()),
          "mean_length": float(batch.lengths.mean())}


def rows_with_sampled_vision_tokens(batch: sampling.RolloutBatch, vision_ids: Sequence[int]
                                    ) -> np.ndarray:
  """bool[N]: rows whose assistant messages hold a sampled vision placeholder token.

  The teacher-forced forward would fill such a <|video_pad|> with visual features (shifting every
  later turn's features), which the sampler did not do, so these rows' log-probs are not those
  of the sampled sequence: the trainer masks them out of the loss (their reward still counts in
  the group statistics) and reports how many.
  """
  sampled = (batch.loss_mask + batch.forced_mask) > 0
  hit = np.isin(batch.labels, np.asarray(list(vision_ids))) & sampled
  return hit.any(axis=1)


# ----------------------------------------------------------------------------------------------
# Initial parameters.
# ----------------------------------------------------------------------------------------------


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
  init_fn = lambda r: setup_lib.nn_unbox(backbone.init_params(model_config, r))  # noqa: E731
  return jax.jit(init_fn, out_shardings=param_shardings)(rng)


# ----------------------------------------------------------------------------------------------
# The trainer.
# ----------------------------------------------------------------------------------------------


def sampler_config(run: config_check.GRPORun) -> sampling.SamplerConfig:
  """sampling.SamplerConfig of a GRPO run: temperature and top_p from its grpo section (the update
  shares the temperature), the other fields from its rollout section."""
  return sampling.SamplerConfig(temperature=run.grpo.temperature, top_p=run.grpo.top_p,
                                **dataclasses.asdict(run.rollout))


@dataclasses.dataclass
class GRPOData:
  """What the GRPO recipe builds with its prompts: the pipeline settings, the processor, the
  video grid (1, gh, gw), the chat format and the row sizes."""
  pcfg: pipeline_config.PipelineConfig
  proc: Any
  grid: tuple[int, int, int]
  chat: chat_format.ChatFormat
  max_turns: int
  seq_len: int


def build_grpo_run(config, workdir: str, *, source=None, allow_config_change: bool = False,
                   devices=None) -> run_lib.Run:
  """train/run.build_run with the GRPO data: a PromptIterator of B = global batch / hosts
  samples per step over `source` (default config.data's source); Data.extra is a GRPOData."""

  def data_fn(r: run_lib.Run) -> run_lib.Data:
    mcfg, data_cfg = r.model_config, r.config.data
    pcfg = pipeline_config.PipelineConfig.from_config(data_cfg)
    proc = pipeline.processor_config(pcfg, mcfg)
    _, gh, gw = proc.grid(pcfg.frame_height, pcfg.frame_width)
    tokens_per_turn = gh * gw // (mcfg.vision.spatial_merge_size ** 2)
    chat = chat_format.ChatFormat(r.tokenizer, tokens_per_turn=tokens_per_turn,
                                  system_prompt=pcfg.system_prompt)
    data = GRPOData(pcfg, proc, (1, gh, gw), chat, max_turns=int(data_cfg.max_turns),
                    seq_len=int(data_cfg.seq_len))
    src = source if source is not None else pipeline.source_from_config(data_cfg)
    gb, n_proc = r.tree.global_batch_size, jax.process_count()
    if gb % n_proc:
      raise ValueError(f"global batch {gb} is not divisible by {n_proc} hosts")
    prompts = PromptIterator(src, gb // n_proc, seed=pcfg.seed, shuffle=pcfg.shuffle,
                             process_index=jax.process_index(), process_count=n_proc,
                             max_turns=data.max_turns)
    return run_lib.Data(prompts, prompts.num_trajectories, extra=data)

  return run_lib.build_run(config, workdir, "grpo", data_fn=data_fn,
                           allow_config_change=allow_config_change, devices=devices)


def reference_params(init_params, step_cfg: grpo.GRPOStepConfig, dtype: str = ""):
  """The reference policy: a separate copy of the initial params (the train state is donated),
  in `dtype` ("" keeps each parameter's), or None when the KL term is off (beta 0)."""
  if step_cfg.beta == 0.0:
    return None
  return jax.tree.map(lambda p: jnp.array(p, dtype=dtype or p.dtype, copy=True),
                      init_params)


def make_learner(run: run_lib.Run, module, step_cfg: grpo.GRPOStepConfig,
                 grid: tuple[int, int, int], example: batch_lib.Batch):
  """The jitted GRPO update of the run: (state, ref_params, batch) -> (state, metrics), the
  policy's log-probs from `module` over max_turns turns of `grid`."""
  max_turns = run.data.extra.max_turns
  turns = np.tile(np.asarray(grid, np.int64).reshape(1, 3), (max_turns, 1))
  logps_fn = grpo.make_logps_fn(setup_lib.make_forward(module, turns),
                                temperature=step_cfg.temperature,
                                chunk_size=step_cfg.logps_chunk_size,
                                unembed_fn=setup_lib.make_unembed(run.model_config))
  return grpo_step.make_grpo_step(
      logps_fn, run.tx, step_cfg, state_shardings=run.shardings,
      batch_sharding=example.shardings(run.mesh), mesh=run.mesh,
      trainable=optim.trainable_mask(run.abstract_params, run.tree.optim.frozen),
      schedule=run.schedule, rules=run.rules)


class GRPOTrainer:
  """Everything a GRPO run holds; ``train_step`` runs one step, ``train`` the loop.

  Built from its units: the run (build_grpo_run: train/run.build_run with the prompts), the
  sampler (sampler_config), the rewards (RewardScorer.from_config), the reference policy
  (reference_params) and the learner (make_learner, the jitted update).

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
    self.config = config
    self.workdir = workdir
    self.run = build_grpo_run(config, workdir, source=source,
                              allow_config_change=allow_config_change, devices=devices)
    run, data = self.run, self.run.data.extra
    self.tree = run.tree
    self.mesh, self.rules = run.mesh, run.rules
    self.tokenizer, self.model_config = run.tokenizer, run.model_config
    self.pcfg, self.proc, self.grid, self.chat = data.pcfg, data.proc, data.grid, data.chat
    self.max_turns, self.seq_len = data.max_turns, data.seq_len
    self.prompts, self.total_steps = run.data.iterator, run.total_steps
    self.group_size = run.tree.grpo.group_size
    self.vision_ids = (self.model_config.video_token_id, self.model_config.image_token_id)
    # The sampler runs on the training mesh (one process or many): rows over (data, fsdp), the
    # parameters where the rules put them (docs/rollouts.md, "Rollouts on the mesh").
    self.sampler = sampling.StreamingSampler(
        self.model_config, self.chat, sampler_config(run.tree), video_grid=self.grid,
        mesh=self.mesh, rules=self.rules)
    gb = run.tree.global_batch_size
    logging.info("batch: %d samples x G %d = %s; seq_len %d, max_turns %d, grid %s; %d steps",
                 gb, self.group_size, parallel.describe_batch(gb * self.group_size, self.mesh),
                 self.seq_len, self.max_turns, self.grid, self.total_steps)
    self.scorer = RewardScorer.from_config(run.tree.reward, judge=judge,
                                           max_turns=self.max_turns)
    self.judge = self.scorer.judge
    self.step_cfg = grpo.GRPOStepConfig.from_config(dataclasses.asdict(run.tree.grpo),
                                                    {"weights": run.tree.reward.weights})
    self.ref_params = None
    initial = {}

    def load_policy(r: run_lib.Run) -> None:
      # The initial policy, and the reference: a separate copy of it (the train state is
      # donated), optionally in a smaller dtype (grpo.ref_param_dtype).
      initial["params"] = load_initial_params(r.tree, r.model_config, r.abstract_params,
                                              r.shardings.params, r.rng)
      self.ref_params = reference_params(initial["params"], self.step_cfg,
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
    self.tx, self.schedule, self.boxed = run.tx, run.schedule, run.abstract
    self.shardings, self.ckpt, self.state = run.shardings, run.checkpointer, run.state
    self.module = models.build(self.model_config)
    self.step_fn = run.step = make_learner(run, self.module, self.step_cfg, self.grid,
                                           self._example_batch())

  # -- pieces of a step ----------------------------------------------------------------------

  def _example_batch(self) -> batch_lib.Batch:
    n = self.tree.global_batch_size * self.group_size // jax.process_count()
    return batch_lib.abstract_batch(n, self.seq_len, self.max_turns * self.grid[1] * self.grid[2],
                                    self.proc.patch_dim,
                                    optional=("old_logps",) + grpo.REWARD_KEYS)

  def make_prompts(self, samples) -> list[sampling.StreamPrompt]:
    return [sampling.prompt_from_record(
        record, record.questions[q], frames, self.proc, max_turns=self.max_turns,
        frame_size=(self.pcfg.frame_height, self.pcfg.frame_width))
            for record, q, frames in samples]

  def rollout(self, samples, step: int) -> sampling.RolloutBatch:
    """G rollouts of each sample with the current params (seed = f(config.seed, step))."""
    seed = self.tree.seed * 1_000_003 + int(step)
    return self.sampler.sample(self.state.params, self.make_prompts(samples),
                               group_size=self.group_size, seed=seed, seq_len=self.seq_len)

  def update_batch(self, rb: sampling.RolloutBatch, reward_arrays
                   ) -> tuple[batch_lib.Batch, int]:
    """The host batch of the jitted step (pixels padded to max_turns) and the masked-row count."""
    batch = rb.as_batch()
    pix = batch.pixel_values_videos
    want = self.max_turns * self.grid[1] * self.grid[2]
    if pix.shape[1] < want:
      pix = np.pad(pix, ((0, 0), (0, want - pix.shape[1]), (0, 0)))
    batch = batch.replace(pixel_values_videos=pix,
                          **{k: reward_arrays[k] for k in grpo.REWARD_KEYS})
    bad = rows_with_sampled_vision_tokens(rb, self.vision_ids)
    if bad.any():
      batch = batch.replace(loss_mask=batch.loss_mask * (~bad)[:, None].astype(np.float32))
    return batch, int(bad.sum())

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
    host_batch, masked = self.update_batch(rb, reward_arrays)
    batch = host_batch.shard(self.mesh)
    self.state, m = self.step_fn(self.state, self.ref_params, batch)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    t3 = time.perf_counter()
    m.update(rollout_stats(rb))
    m["masked_rows_vision_tokens"] = float(masked)
    m["judge_failures"] = float(reward_arrays["judge_failures"].sum())
    m["rubric_fallbacks"] = float(reward_arrays["rubric_fallbacks"].sum() // self.group_size)
    m["skipped_samples"] = float(self.prompts.skipped)
    m.update(rollout_s=t1 - t0, reward_s=t2 - t1, update_s=t3 - t2, step_s=t3 - t0,
             rollout_tokens_per_s=m["sampled_tokens"] / max(t1 - t0, 1e-9))
    return m

  def train(self):
    """The loop (train/loop.py) from the current step to total_steps; returns the final state."""
    cfg = self.config

    def step_fn(state, step):
      self.state = state
      m = self.train_step(step)
      return self.state, m

    writer = metrics_lib.create_writer(
        self.workdir, total_steps=self.total_steps, enabled=jax.process_index() == 0,
        tensorboard=bool(cfg.tensorboard),
        start_step=int(jax.device_get(self.state.step)) // self.step_cfg.num_passes)
    self.state, _ = loop.train_loop(
        self.state, step_fn,
        start_step=int(jax.device_get(self.state.step)) // self.step_cfg.num_passes,
        total_steps=self.total_steps, checkpointer=self.ckpt, data_iterator=self.prompts,
        writer=writer, log_every=int(cfg.log_every_steps),
        kill_after=int(cfg.debug_kill_after_step),
        kill_mid_save=bool(cfg.debug_kill_mid_save))
    logging.info("judge: %s", getattr(self.judge, "stats", None))
    return self.state


def train(config, workdir: str, **kwargs):
  """Runs (or resumes) GRPO as configured; returns the final TrainState. See GRPOTrainer."""
  return GRPOTrainer(config, workdir, **kwargs).train()
