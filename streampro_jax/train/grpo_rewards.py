"""Rewards of a GRPO rollout batch (docs/method.md section 3): R_fmt, R_turn and R_traj per rollout.

Owns the judge of ``config.reward.judge`` (:func:`_build_judge`; :class:`_SyntheticRubricJudge` for
SynthStream), the rubrics written before RL (:func:`_load_rubrics`, :func:`_rubrics_from_config`)
and :class:`RewardScorer`, which turns a sampling.RolloutBatch and its (record, question) samples
into host arrays f32[N] (the jitted update combines them, grpo_step.make_grpo_step).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from streampro_jax import _config, judges, rewards, sampling
from streampro_jax.data import chat_format, schema, synthetic
from streampro_jax.train import config_check

__all__ = ["RewardScorer"]

_PROACTIVE_TASKS = ("GP", "RF")
"""The tasks whose R_turn is the proactive variant (rewards.turn_f1_reward(proactive=True))."""


class _SyntheticRubricJudge:
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


def _build_judge(reward_cfg: Mapping[str, Any]):
  """The judge of ``config.reward.judge``: a ConfigDict/dict for judges.build_judge (kind
  "match" | "openai" | "local"), or a string: "synthetic" (_SyntheticRubricJudge), "match" /
  "exact" (judges.MatchJudge)."""
  spec = _config.as_dict(reward_cfg).get("judge", "match")
  if isinstance(spec, str):
    if spec == "synthetic":
      return _SyntheticRubricJudge()
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


_MISSING_RUBRIC_POLICIES = ("error", "zero")


def _load_rubrics(path: str) -> dict[tuple[str, str], tuple[str, ...]]:
  """{(record id, question id): rubric statements} of an annotation JSONL holding rubrics (the
  output of launch/write_rubrics.py). Questions without a rubric are left out."""
  records, _ = schema.load_jsonl(path)
  return {(r.id, q.id): tuple(q.rubric) for r in records for q in r.questions if q.rubric}


def _rubrics_from_config(reward_cfg: Mapping[str, Any]):
  """(rubrics mapping or None, missing_rubric policy) from config.reward: ``rubrics_file`` (a
  launch/write_rubrics.py output; its rubrics replace the data's) and ``missing_rubric``
  ("error", the default: a sample without a rubric stops the run; "zero": R_traj = 0 for that
  sample, counted in the metric rubric_fallbacks)."""
  reward_cfg = _config.as_dict(reward_cfg)
  path = str(reward_cfg.get("rubrics_file", "") or "")
  policy = str(reward_cfg.get("missing_rubric") or RewardScorer.missing_rubric)
  if policy not in _MISSING_RUBRIC_POLICIES:
    raise ValueError(f"config.reward.missing_rubric = {policy!r}; expected one of "
                     f"{_MISSING_RUBRIC_POLICIES}")
  rubrics = _load_rubrics(path) if path else None
  if rubrics is not None:
    logging.info("rubrics: %d questions from %s", len(rubrics), path)
  return rubrics, policy


@dataclasses.dataclass
class RewardScorer:
  """Host-side rewards of a RolloutBatch: R_fmt, R_turn, R_traj per rollout (f32[N] each).

  Attributes:
    judge: a judges.Judge (or _SyntheticRubricJudge).
    tau: the time scale of R_turn (8 s in the paper, every task).
    max_turns: padded prediction count P (a rollout responds at most once per turn).
    max_answers: padded ground-truth count.
    max_checks: padded rubric size.
    rubrics: optional {(record id, question id): rubric} written before RL (_load_rubrics); it
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
    judge = judge if judge is not None else _build_judge(reward)
    rubrics, missing_rubric = _rubrics_from_config(reward)
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
    if self.missing_rubric not in _MISSING_RUBRIC_POLICIES:
      raise ValueError(f"missing_rubric {self.missing_rubric!r}; expected one of "
                       f"{_MISSING_RUBRIC_POLICIES}")
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
                                         proactive=q.task in _PROACTIVE_TASKS,
                                         max_preds=p, max_gts=ng)
      for key in arrays:
        arrays[key][rows] = tf1[key]
      failures[rows] += tf1["judge_failures"]
      proactive[rows] = q.task in _PROACTIVE_TASKS
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
