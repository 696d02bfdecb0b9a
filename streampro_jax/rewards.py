"""Stage-2 (GRPO) rewards: format, turn-level F1, trajectory rubric, and their combination.

docs/method.md section 3. The jittable reward functions take fixed-shape arrays with masks, so a
whole group (or batch) of rollouts is scored with jax.vmap over a leading axis:

  R = w_fmt * R_fmt + w_turn * R_turn + w_traj * R_traj,    weights (0.1, 0.45, 0.45)

The host-side helpers at the bottom turn a rollout's decoded assistant messages and a sample's
answers into those arrays (calling a judge from streampro_jax.judges for S_acc and the rubric).

Note: S' = S_time + S_acc lies in [0, 2], so R_turn = 2 * sum(S') / (N_pred + N_gt) lies in
[0, 2] (a perfect rollout scores 2). This is the paper's formula and is kept as is.

Under jax.jit no argument of these functions needs to be static (STATIC_ARGNAMES lists none):
tau, proactive and the reward weights may be traced. `turn_f1_reward_jit` is an already-jitted
entry point. Shapes are checked at entry (chex); an error names the argument.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from streampro_jax import _checks, prompts

__all__ = ["MATCHING_ORDERS", "STATIC_ARGNAMES", "combine", "format_inputs", "format_reward",
           "group_rubric_inputs", "group_turn_f1_inputs", "parse_message",
           "predictions_from_messages", "rubric_reward", "turn_f1_reward", "turn_f1_reward_jit",
           "ParsedTurn"]

_Array = jax.Array

_DEFAULT_WEIGHTS = (0.1, 0.45, 0.45)


# ----------------------------------------------------------------------------------------------
# Jittable rewards.
# ----------------------------------------------------------------------------------------------


def format_reward(step_valid: _Array, step_mask: _Array) -> _Array:
  """Fraction of a rollout's turns whose assistant message is well formed.

  R_fmt = sum_k valid_k * mask_k / sum_k mask_k    (0 when no turn is masked in)

  A message is valid when it is a lone </Silence>, or </Response> followed by non-empty text
  (see `_message_is_valid`).

  Args:
    step_valid: bool[..., K].
    step_mask: [..., K], 1 for real turns, 0 for padding.

  Returns:
    f32[...] (a scalar for one rollout).
  """
  _checks.shape("format_reward", "step_mask", step_mask, tuple(jnp.shape(step_valid)),
                "(the shape of step_valid)")
  mask = jnp.asarray(step_mask).astype(jnp.float32)
  total = jnp.sum(mask, axis=-1)
  good = jnp.sum(jnp.asarray(step_valid).astype(jnp.float32) * mask, axis=-1)
  return jnp.where(total > 0, good / jnp.maximum(total, 1.0), 0.0)


def rubric_reward(checks: _Array, check_mask: _Array) -> _Array:
  """Fraction of rubric checkpoints passed: R_traj = sum_c pass_c * mask_c / sum_c mask_c.

  0 when no checkpoint is masked in (a sample without a rubric, or one whose every check failed
  to be judged; the judge counts those failures).

  Args:
    checks: bool[..., C] pass/fail.
    check_mask: [..., C], 1 for real (and judged) checkpoints.

  Returns:
    f32[...].
  """
  _checks.shape("rubric_reward", "check_mask", check_mask, tuple(jnp.shape(checks)),
                "(the shape of checks)")
  mask = jnp.asarray(check_mask).astype(jnp.float32)
  total = jnp.sum(mask, axis=-1)
  good = jnp.sum(jnp.asarray(checks).astype(jnp.float32) * mask, axis=-1)
  return jnp.where(total > 0, good / jnp.maximum(total, 1.0), 0.0)


def combine(fmt: _Array, turn: _Array, traj: _Array,
            weights: Sequence[float] = _DEFAULT_WEIGHTS) -> _Array:
  """R = weights[0] * fmt + weights[1] * turn + weights[2] * traj (elementwise, any shape).

  weights: 3 numbers (Python floats or a traced f32[3]).
  """
  if len(weights) != 3:
    raise ValueError(f"weights must hold 3 numbers (fmt, turn, traj), got {len(weights)}")
  w = jnp.asarray(weights, jnp.float32)
  w_fmt, w_turn, w_traj = w[0], w[1], w[2]
  return (w_fmt * jnp.asarray(fmt, jnp.float32) + w_turn * jnp.asarray(turn, jnp.float32)
          + w_traj * jnp.asarray(traj, jnp.float32))


MATCHING_ORDERS = ("gt_first", "prediction_first")
"""turn_f1_reward's matching orders: the paper's GT-first Algorithm 1, and its ablation."""


def turn_f1_reward(pred_times: _Array, pred_mask: _Array, gt_times: _Array, gt_mask: _Array,
                   acc: _Array, *, tau: float = 8.0, proactive: bool = False,
                   matching: str = "gt_first") -> _Array:
  """Turn-level F1 reward R_turn with GT-first greedy matching (docs/method.md section 3,
  Algorithm 1).

  S_time(p, g) = max(0, 1 - |t_p - t_g| / tau)
  S'(p, g)     = S_time(p, g) + acc[p, g]
  Ground truths are visited in time order (equal times: index order). Each takes, among the
  predictions not yet matched whose time lies in its closed window [t_g - tau, t_g + tau]
  ([t_g - tau, t_g] when proactive), the one with the largest S', provided that S' > 0 strictly
  (Algorithm 1 starts the best score at 0): a prediction whose S' is 0 for this ground truth is
  not matched and stays free for a later one. Ties go to the earliest prediction (by time, then
  by index). A ground truth with no candidate of positive S' stays unmatched.
  matching="prediction_first" swaps the roles (the paper's ablation of the matching order):
  predictions are visited in time order and each takes the not yet matched ground truth with
  the largest positive S' whose window holds it (ties: the earliest ground truth).
  R_turn = 2 * sum(S' of matched pairs) / (N_pred + N_gt); 1 when N_pred = N_gt = 0, 0 when
  exactly one of them is 0. R_turn lies in [0, 2] (S' can reach 2).

  Args:
    pred_times: f32[P] prediction times (a response's turn time Y).
    pred_mask: bool[P], True for real predictions.
    gt_times: f32[G] ground-truth response times.
    gt_mask: bool[G], True for real ground truths.
    acc: f32[P, G] answer accuracy S_acc in [0, 1] of prediction p against ground truth g
      (a concrete acc with a real pair outside [0, 1] is an ArgumentError; under jit it is not
      checked).
    tau: time scale in seconds (8 in RL); may be a traced scalar. A Python tau must be > 0; a
      traced tau of 0 is the limit tau -> 0 (S_time = 1 at dt = 0, the window is the point t_g;
      never NaN), a traced negative tau matches nothing.
    proactive: bool, True for Proactive Agency tasks (late answers never match); may be traced
      (a bool scalar, e.g. vmapped over a group of mixed tasks).
    matching: "gt_first" (the paper's Algorithm 1) or "prediction_first"; a Python string.

  Returns:
    f32 scalar. vmap over a leading axis to score a group.
  """
  fn = "turn_f1_reward"
  if matching not in MATCHING_ORDERS:
    raise ValueError(f"{fn}: matching {matching!r}; expected one of {MATCHING_ORDERS}")
  _checks.rank(fn, "pred_times", pred_times, 1)
  _checks.rank(fn, "gt_times", gt_times, 1)
  num_p, num_g = jnp.shape(pred_times)[0], jnp.shape(gt_times)[0]
  _checks.shape(fn, "pred_mask", pred_mask, (num_p,), "(the shape of pred_times)")
  _checks.shape(fn, "gt_mask", gt_mask, (num_g,), "(the shape of gt_times)")
  _checks.shape(fn, "acc", acc, (num_p, num_g), "= (P, G)")
  _checks.in_range(fn, "acc", acc, 0.0, 1.0,
                   where=None if isinstance(pred_mask, jax.core.Tracer)
                   or isinstance(gt_mask, jax.core.Tracer)
                   else np.asarray(pred_mask, bool)[:, None] & np.asarray(gt_mask, bool)[None])
  _checks.rank(fn, "tau", tau, 0)
  _checks.rank(fn, "proactive", proactive, 0)
  pred_times = jnp.asarray(pred_times, jnp.float32)
  gt_times = jnp.asarray(gt_times, jnp.float32)
  pred_mask = jnp.asarray(pred_mask, bool)
  gt_mask = jnp.asarray(gt_mask, bool)
  acc = jnp.asarray(acc, jnp.float32)
  if isinstance(tau, (int, float)) and not tau > 0:
    raise ValueError(f"tau must be positive, got {tau}")
  tau = jnp.asarray(tau, jnp.float32)
  proactive = jnp.asarray(proactive, bool)

  n_pred = jnp.sum(pred_mask.astype(jnp.float32))
  n_gt = jnp.sum(gt_mask.astype(jnp.float32))
  if num_p == 0 or num_g == 0:  # Static shapes with no slot at all: nothing can match.
    return jnp.where(n_pred + n_gt == 0, 1.0, 0.0)

  # Predictions sorted by (time, index), masked ones last: argmax then picks the earliest on ties.
  p_order = jnp.argsort(jnp.where(pred_mask, pred_times, jnp.inf), stable=True)
  p_times = pred_times[p_order]
  p_valid = pred_mask[p_order]
  # Ground truths in (time, index) order, masked ones last.
  g_order = jnp.argsort(jnp.where(gt_mask, gt_times, jnp.inf), stable=True)
  acc_sorted = acc[p_order][:, g_order]
  g_times = gt_times[g_order]
  g_valid = gt_mask[g_order]

  # [P, G] in the sorted orders: the window, S_time and S' of every pair.
  diff = p_times[:, None] - g_times[None, :]
  in_window = jnp.where(proactive, (diff >= -tau) & (diff <= 0.0), jnp.abs(diff) <= tau)
  # S_time; tau <= 0 (traced) is the limit tau -> 0: 1 at dt = 0, else 0 (no 0 / 0).
  safe_tau = jnp.where(tau > 0, tau, 1.0)
  s_time = jnp.where(tau > 0, jnp.maximum(0.0, 1.0 - jnp.abs(diff) / safe_tau),
                     (diff == 0.0).astype(jnp.float32))
  s_prime = s_time + acc_sorted
  # Algorithm 1: only a strictly positive S' is a match.
  allowed = p_valid[:, None] & g_valid[None, :] & in_window & (s_prime > 0.0)
  if matching == "prediction_first":  # visit predictions; candidates are ground truths
    allowed, s_prime = allowed.T, s_prime.T
  num_cand, num_visit = allowed.shape  # visit the columns; candidates are the rows

  def visit(j, state):
    taken, total = state
    cand = allowed[:, j] & ~taken
    best = jnp.argmax(jnp.where(cand, s_prime[:, j], -jnp.inf))  # first (earliest) on ties
    found = jnp.any(cand)
    taken = taken.at[best].set(taken[best] | found)
    total = total + jnp.where(found, s_prime[best, j], 0.0)
    return taken, total

  _, total = jax.lax.fori_loop(0, num_visit, visit,
                               (jnp.zeros((num_cand,), bool), jnp.float32(0.0)))
  denom = n_pred + n_gt
  both_empty = denom == 0
  return jnp.where(both_empty, 1.0, 2.0 * total / jnp.maximum(denom, 1.0))


STATIC_ARGNAMES: dict[str, tuple[str, ...]] = {
    "format_reward": (), "rubric_reward": (), "combine": (), "turn_f1_reward": ("matching",),
}
"""The arguments each reward needs static under jax.jit (tau, proactive and the weights may be
traced; turn_f1_reward's matching order is a Python string)."""

turn_f1_reward_jit = jax.jit(turn_f1_reward, static_argnames=STATIC_ARGNAMES["turn_f1_reward"])


# ----------------------------------------------------------------------------------------------
# Host-side helpers: rollout text + sample answers -> reward arrays.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParsedTurn:
  """One assistant message: decision "silence" | "response" | "invalid", its text, validity."""
  decision: str
  text: str
  valid: bool


def parse_message(message: str) -> ParsedTurn:
  """Parses one decoded assistant message (special tokens kept, <|im_end|> already stripped).

  - exactly "</Silence>" (surrounding whitespace ignored)      -> silence, valid
  - "</Response>" + text, text non-empty after stripping       -> response, valid
  - "</Response>" with empty text                              -> response, invalid
  - anything else (no decision token first, both tokens, ...)  -> invalid
  A message that starts with </Response> is a prediction (it is timed by its turn) even when
  invalid; its text is judged as given.
  """
  s = message.strip()
  if s.endswith("<|im_end|>"):
    s = s[: -len("<|im_end|>")].rstrip()
  if s == prompts.SILENCE_TOKEN:
    return ParsedTurn("silence", "", True)
  if s.startswith(prompts.RESPONSE_TOKEN):
    text = s[len(prompts.RESPONSE_TOKEN):].strip()
    valid = bool(text) and prompts.SILENCE_TOKEN not in text and prompts.RESPONSE_TOKEN not in text
    return ParsedTurn("response", text, valid)
  return ParsedTurn("invalid", s, False)


def _message_is_valid(message: str) -> bool:
  """The R_fmt rule for one message (see parse_message)."""
  return parse_message(message).valid


def _pad(values: Sequence[Any], size: int, fill, dtype, what: str) -> tuple[np.ndarray, np.ndarray]:
  if len(values) > size:
    raise ValueError(f"{len(values)} {what} do not fit in the padded size {size}")
  arr = np.full((size,), fill, dtype=dtype)
  mask = np.zeros((size,), dtype=bool)
  if values:
    arr[: len(values)] = np.asarray(values, dtype=dtype)
    mask[: len(values)] = True
  return arr, mask


def format_inputs(messages: Sequence[str], pad_to: int | None = None):
  """(step_valid bool[K'], step_mask bool[K']) of a rollout's per-turn messages for format_reward.

  Args:
    messages: the K assistant messages, one per turn.
    pad_to: K' >= K (defaults to K).
  """
  size = len(messages) if pad_to is None else pad_to
  return _pad([_message_is_valid(m) for m in messages], size, False, bool, "turns")


def _answer_fields(answer) -> tuple[float, str]:
  """(response time, text) of a dict or schema.Answer-like object (response time = time or end)."""
  if isinstance(answer, dict):
    if "time" in answer:
      return float(answer["time"]), str(answer["text"])
    return float(answer["end"]), str(answer["text"])
  rt = getattr(answer, "response_time", None)
  if rt is None:
    rt = answer.time if getattr(answer, "time", None) is not None else answer.end
  return float(rt), str(answer.text)


def predictions_from_messages(messages: Sequence[str]) -> list[tuple[float, str]]:
  """[(t_p, text)] of a rollout: turn k (0-based) responding gives t_p = k + 1
  (docs/method.md section 1)."""
  out = []
  for k, m in enumerate(messages):
    parsed = parse_message(m)
    if parsed.decision == "response":
      out.append((float(k + 1), parsed.text))
  return out


def _trajectory_text(messages: Sequence[str]) -> str:
  """A rollout rendered for the rubric judge: one line per response, "[Xs-Ys] text".

  Silent turns are left out; a rollout with no response renders as "(no responses)".
  """
  lines = [f"[{int(t) - 1}s-{int(t)}s] {text}" for t, text in predictions_from_messages(messages)]
  return "\n".join(lines) if lines else "(no responses)"


def _turn_f1_inputs(messages: Sequence[str], answers: Sequence[Any], judge, *, question: str = "",
                   task: str = "", tau: float = 8.0, proactive: bool = False,
                   max_preds: int | None = None, max_gts: int | None = None) -> dict[str, Any]:
  """Arrays for turn_f1_reward from a rollout's messages and a sample's answers.

  Predictions are the response turns (t_p = turn index + 1). S_acc is asked of the judge only for
  pairs that could match (t_p inside the ground truth's window; the others can never be matched,
  so their acc is 0 and costs no judge call). A judge failure (None) is entered as 0 and counted
  in the returned "judge_failures", so a caller can drop or re-judge the sample; it is never hidden.

  Args:
    messages: the rollout's assistant messages, one per turn.
    answers: the sample's answers (dicts with "time" or "start"/"end", and "text"; or
      schema.Answer objects).
    judge: a streampro_jax.judges.Judge.
    question, task: passed to the judge; for task "TG" S_acc is the span IoU
      (spans.text_iou) and the judge is not called, whatever it is.
    tau, proactive: the matching window (as turn_f1_reward).
    max_preds, max_gts: padded sizes P and G (default: the actual counts).

  Returns:
    dict with pred_times f32[P], pred_mask bool[P], gt_times f32[G], gt_mask bool[G],
    acc f32[P, G], judge_failures int.
  """
  out = group_turn_f1_inputs([messages], answers, judge, question=question, task=task, tau=tau,
                             proactive=proactive, max_preds=max_preds, max_gts=max_gts)
  return {k: (v[0] if k != "judge_failures" else int(v[0])) for k, v in out.items()}


def group_turn_f1_inputs(group_messages: Sequence[Sequence[str]], answers: Sequence[Any], judge,
                         *, question: str = "", task: str = "", tau: float = 8.0,
                         proactive: bool = False, max_preds: int | None = None,
                         max_gts: int | None = None) -> dict[str, np.ndarray]:
  """_turn_f1_inputs for the G rollouts of one sample, stacked, with ONE batched judge call.

  Returns:
    dict with pred_times f32[G, P], pred_mask bool[G, P], gt_times f32[G, NG], gt_mask
    bool[G, NG], acc f32[G, P, NG], judge_failures i32[G]; P defaults to the largest number of
    predictions in the group (possibly 0).
  """
  from streampro_jax import judges as judges_lib  # Local import: judges is host-only code.

  preds = [predictions_from_messages(m) for m in group_messages]
  gts = [_answer_fields(a) for a in answers]
  p_size = max((len(p) for p in preds), default=0) if max_preds is None else max_preds
  g_size = len(gts) if max_gts is None else max_gts
  n = len(group_messages)
  pred_times = np.zeros((n, p_size), np.float32)
  pred_mask = np.zeros((n, p_size), bool)
  acc = np.zeros((n, p_size, g_size), np.float32)
  failures = np.zeros((n,), np.int32)
  gt_times, gt_mask = _pad([t for t, _ in gts], g_size, 0.0, np.float32, "ground truths")
  where, items = [], []
  for r, rollout in enumerate(preds):
    pred_times[r], pred_mask[r] = _pad([t for t, _ in rollout], p_size, 0.0, np.float32,
                                       "predictions")
    for i, (t_p, text_p) in enumerate(rollout):
      for j, (t_g, text_g) in enumerate(gts):
        if t_g - tau <= t_p <= (t_g if proactive else t_g + tau):
          where.append((r, i, j))
          items.append(judges_lib.AnswerItem(question=question, prediction=text_p,
                                             reference=text_g, task=task))
  if items and task.upper() == "TG":
    # Temporal Grounding: S_acc is the span IoU whatever the judge (docs/method.md section 3); no
    # judge call.
    from streampro_jax import spans  # pylint: disable=g-import-not-at-top
    scores = [spans.text_iou(it.prediction, it.reference) for it in items]
  elif items:
    scores = judge.score_answers(items)
  if items:
    for (r, i, j), score in zip(where, scores, strict=True):
      if score is None or not math.isfinite(score):
        failures[r] += 1
      else:
        acc[r, i, j] = min(max(float(score), 0.0), 1.0)
  return {"pred_times": pred_times, "pred_mask": pred_mask,
          "gt_times": np.broadcast_to(gt_times, (n, g_size)).copy(),
          "gt_mask": np.broadcast_to(gt_mask, (n, g_size)).copy(), "acc": acc,
          "judge_failures": failures}


def _rubric_inputs(messages: Sequence[str], checks: Sequence[str], judge, *, question: str = "",
                  max_checks: int | None = None) -> dict[str, Any]:
  """Arrays for rubric_reward: the judge marks each checkpoint on the rendered trajectory.

  A check the judge fails to mark (None) is masked out and counted in "judge_failures".

  Returns:
    dict with checks bool[C], check_mask bool[C], judge_failures int.
  """
  out = group_rubric_inputs([messages], checks, judge, question=question, max_checks=max_checks)
  return {k: (v[0] if k != "judge_failures" else int(v[0])) for k, v in out.items()}


def group_rubric_inputs(group_messages: Sequence[Sequence[str]], checks: Sequence[str], judge, *,
                        question: str = "", max_checks: int | None = None) -> dict[str, Any]:
  """_rubric_inputs for the G rollouts of one sample, stacked ([G, C] arrays, judge_failures
  i32[G]); uses the judge's batched `check_rubrics` when it has one (concurrent HTTP requests)."""
  size = len(checks) if max_checks is None else max_checks
  if len(checks) > size:
    raise ValueError(f"{len(checks)} rubric checks do not fit in the padded size {size}")
  n = len(group_messages)
  passed = np.zeros((n, size), bool)
  mask = np.zeros((n, size), bool)
  failures = np.zeros((n,), np.int32)
  if checks:
    trajs = [_trajectory_text(m) for m in group_messages]
    if hasattr(judge, "check_rubrics"):
      marks = judge.check_rubrics(trajs, [list(checks)] * n, [question] * n)
    else:
      marks = [judge.check_rubric(t, list(checks), question=question) for t in trajs]
    for r, row in enumerate(marks):
      for c, mark in enumerate(row):
        if mark is None:
          failures[r] += 1
        else:
          passed[r, c] = bool(mark)
          mask[r, c] = True
  return {"checks": passed, "check_mask": mask, "judge_failures": failures}
