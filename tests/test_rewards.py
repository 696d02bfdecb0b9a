"""Tests of streampro_jax.rewards: hand-computed cases for every rule of docs/method.md section 3
and a pure-Python reference of the turn-level F1 matching compared on random inputs."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streampro_jax import grpo, judges, rewards

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Tolerances (tests/helpers/tolerances.py): the rewards are float32 formulas of a few operations
# (time score 1 - |dt| / tau, S' sums, F1 = 2 sum S' / (n_p + n_g), weighted sums): at most 16
# roundings against the hand value, relative (tol.approx_ops / HAND_RTOL).
HAND_RTOL = tol.rel_ops_bound(16)

_turn_f1 = jax.jit(rewards.turn_f1_reward, static_argnames=("proactive",))


def turn_f1(preds, gts, acc=None, *, tau=8.0, proactive=False, pad_p=0, pad_g=0):
  """Calls turn_f1_reward on plain lists, optionally with padding slots (garbage times)."""
  p, g = len(preds), len(gts)
  pred_times = np.array(list(preds) + [99.0] * pad_p, np.float32)
  gt_times = np.array(list(gts) + [-7.0] * pad_g, np.float32)
  pred_mask = np.array([True] * p + [False] * pad_p)
  gt_mask = np.array([True] * g + [False] * pad_g)
  full = np.full((p + pad_p, g + pad_g), 0.9, np.float32)  # padding slots hold junk accuracy.
  if acc is not None:
    full[:p, :g] = acc
  else:
    full[:p, :g] = 0.0
  return float(_turn_f1(pred_times, pred_mask, gt_times, gt_mask, full, tau=tau,
                        proactive=proactive))


# ---- turn_f1_reward: hand-computed cases ------------------------------------------------------


def test_empty_cases():
  assert turn_f1([], [], pad_p=2, pad_g=2) == 1.0  # both empty -> 1
  assert turn_f1([3.0], [], pad_g=1) == 0.0       # no ground truth -> 0
  assert turn_f1([], [3.0], pad_p=1) == 0.0       # no prediction -> 0


def test_perfect_match_scores_two():
  # S' = S_time + S_acc = 1 + 1; R = 2 * 2 / (1 + 1) = 2 (R_turn can exceed 1: paper formula).
  assert turn_f1([5.0], [5.0], [[1.0]]) == tol.approx_ops(2.0)


def test_window_is_closed():
  # dt = 8 = tau: inside the window, S_time = 0, S' = acc = 0.5 -> R = 2 * 0.5 / 2 = 0.5.
  assert turn_f1([13.0], [5.0], [[0.5]]) == tol.approx_ops(0.5)
  assert turn_f1([-3.0], [5.0], [[0.5]]) == tol.approx_ops(0.5)
  # dt = 8.5: outside, no match, R = 0 even with a perfect answer.
  assert turn_f1([13.5], [5.0], [[1.0]]) == 0.0


def test_proactive_window():
  # Late prediction (dt = +1): matches normally (S' = 7/8 + 1), never for proactive tasks.
  assert turn_f1([6.0], [5.0], [[1.0]]) == tol.approx_ops(1.875)
  assert turn_f1([6.0], [5.0], [[1.0]], proactive=True) == 0.0
  # Early prediction (dt = -4): S_time = 0.5, S' = 1.5, R = 1.5; dt = -8 still inside.
  assert turn_f1([1.0], [5.0], [[1.0]], proactive=True) == tol.approx_ops(1.5)
  assert turn_f1([-3.0], [5.0], [[0.25]], proactive=True) == tol.approx_ops(0.25)
  # A prediction exactly at t_g (dt = 0) is inside the proactive window.
  assert turn_f1([5.0], [5.0], [[0.0]], proactive=True) == tol.approx_ops(1.0)


def test_tau_scales_s_time():
  # tau = 3, dt = 1: S_time = 2/3, acc 0 -> R = 2/3.
  assert turn_f1([4.0], [5.0], [[0.0]], tau=3.0) == tol.approx_ops(2 / 3)


def test_gt_first_greedy_in_time_order():
  # Ground truths given out of order: g0 at 10, g1 at 4; predictions at 5 and 9, acc 0.
  # g1 (t=4) first takes p@5 (S' = 7/8; p@9 would give 3/8); g0 then takes p@9 (7/8).
  # R = 2 * 1.75 / 4 = 0.875.
  assert turn_f1([5.0, 9.0], [10.0, 4.0]) == tol.approx_ops(0.875)


def test_greedy_is_not_optimal_matching():
  # GT A at 4, GT B at 12, one prediction at 8 (dt 4 from both: S_time 0.5).
  # acc[p, A] = 0, acc[p, B] = 1. A comes first and takes it: S' = 0.5; B gets nothing.
  # R = 2 * 0.5 / 3 = 1/3 (an optimal assignment would give 2 * 1.5 / 3 = 1).
  assert turn_f1([8.0], [4.0, 12.0], [[0.0, 1.0]]) == tol.approx_ops(1 / 3)


def test_equal_gt_times_keep_given_order():
  # Two ground truths at t = 5 (g0 first in the given order), one prediction at 5.
  # g0 goes first: S' = 1 + 0.25 -> R = 2 * 1.25 / 3. (g1 first would give 2 * 2 / 3.)
  assert turn_f1([5.0], [5.0, 5.0], [[0.25, 1.0]]) == tol.approx_ops(2 * 1.25 / 3)


def test_largest_s_prime_wins():
  # One GT at 5; p0 at 5 with acc 0 (S' = 1), p1 at 7 with acc 1 (S' = 0.75 + 1 = 1.75).
  # p1 is taken: R = 2 * 1.75 / 3.
  assert turn_f1([5.0, 7.0], [5.0], [[0.0], [1.0]]) == tol.approx_ops(2 * 1.75 / 3)


def test_ties_go_to_earliest_prediction_by_time():
  # Predictions p0 at 7, p1 at 3; GT g0 at 5, g1 at 8; acc 0.
  # g0: both S' = 0.75 -> tie -> the earliest in time, p1 (t=3). g1: p0 (dt 1) -> 0.875.
  # R = 2 * (0.75 + 0.875) / 4. (Taking p0 for g0 would leave g1 with p1: 0.375.)
  assert turn_f1([7.0, 3.0], [5.0, 8.0]) == tol.approx_ops(2 * 1.625 / 4)


def test_ties_at_equal_time_go_to_lowest_index():
  # p0 and p1 both at t=3; g0 at 3 (acc 0 for both: tie -> p0), g1 at 4 with acc[p1, g1] = 1.
  # g0 takes p0 (S' = 1); g1 takes p1 (S' = 7/8 + 1). R = 2 * 2.875 / 4.
  assert turn_f1([3.0, 3.0], [3.0, 4.0], [[0.0, 0.0], [0.0, 1.0]]) == tol.approx_ops(2 * 2.875 / 4)


def test_each_prediction_matched_once():
  # Two GTs at 5 and 6, one prediction at 5 (acc 1 for both): only one pair counts.
  # g0 takes it: S' = 2; R = 2 * 2 / 3.
  assert turn_f1([5.0], [5.0, 6.0], [[1.0, 1.0]]) == tol.approx_ops(4 / 3)


def test_padding_is_ignored():
  base = turn_f1([5.0, 9.0], [10.0, 4.0])
  assert turn_f1([5.0, 9.0], [10.0, 4.0], pad_p=3, pad_g=2) == tol.approx_ops(base)
  # Masked slots in the middle as well.
  pred_times = np.array([5.0, 1.0, 9.0], np.float32)
  pred_mask = np.array([True, False, True])
  gt_times = np.array([4.0, 4.0, 10.0], np.float32)
  gt_mask = np.array([True, False, True])
  acc = np.ones((3, 3), np.float32) * 0.5
  acc[:, 1] = 1.0
  acc[1, :] = 1.0
  got = _turn_f1(pred_times, pred_mask, gt_times, gt_mask, acc, tau=8.0, proactive=False)
  # g@4 takes p@5 (7/8 + .5), g@10 takes p@9 (7/8 + .5): R = 2 * 2.75 / 4.
  assert float(got) == tol.approx_ops(2 * 2.75 / 4)


def test_vmap_over_group():
  g = 4
  pred_times = jnp.array([[5.0, 9.0], [5.0, 0.0], [0.0, 0.0], [13.5, 2.0]])
  pred_mask = jnp.array([[True, True], [True, False], [False, False], [True, True]])
  gt_times = jnp.broadcast_to(jnp.array([10.0, 4.0]), (g, 2))
  gt_mask = jnp.ones((g, 2), bool)
  acc = jnp.zeros((g, 2, 2))
  fn = jax.jit(jax.vmap(functools.partial(rewards.turn_f1_reward, tau=8.0)))
  got = fn(pred_times, pred_mask, gt_times, gt_mask, acc)
  want = [turn_f1([5.0, 9.0], [10.0, 4.0]), turn_f1([5.0], [10.0, 4.0]),
          turn_f1([], [10.0, 4.0]), turn_f1([13.5, 2.0], [10.0, 4.0])]
  np.testing.assert_allclose(got, want, rtol=HAND_RTOL)


# ---- independent pure-Python reference on random inputs ----------------------------------------


def reference_turn_f1(preds, gts, acc, tau, proactive):
  """Plain-Python GT-first greedy matching, written from docs/method.md section 3."""
  if not preds and not gts:
    return 1.0
  if not preds or not gts:
    return 0.0
  matched = set()
  total = 0.0
  for j in sorted(range(len(gts)), key=lambda j: (gts[j], j)):
    best = None
    best_s = 0.0  # Algorithm 1 (App. B.1): the best score starts at 0, a match needs S' > 0.
    for i in sorted(range(len(preds)), key=lambda i: (preds[i], i)):
      if i in matched:
        continue
      dt = preds[i] - gts[j]
      inside = (-tau <= dt <= 0) if proactive else (abs(dt) <= tau)
      if not inside:
        continue
      s = max(0.0, 1.0 - abs(dt) / tau) + acc[i][j]
      if s > best_s:
        best, best_s = (s, i), s
    if best is not None:
      matched.add(best[1])
      total += best[0]
  return 2.0 * total / (len(preds) + len(gts))


P_MAX, G_MAX = 6, 5
_times = st.integers(0, 40).map(lambda x: x / 2.0)  # multiples of 0.5 s: exact in float32.


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True)
@hypothesis.given(
    pred_slots=st.lists(st.tuples(st.booleans(), _times), min_size=P_MAX, max_size=P_MAX),
    gt_slots=st.lists(st.tuples(st.booleans(), _times), min_size=G_MAX, max_size=G_MAX),
    acc=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=P_MAX * G_MAX,
                 max_size=P_MAX * G_MAX),
    tau=st.sampled_from([2.0, 4.0, 8.0]),
    proactive=st.booleans())
def test_matches_reference_on_random_inputs(pred_slots, gt_slots, acc, tau, proactive):
  pred_mask = np.array([m for m, _ in pred_slots])
  pred_times = np.array([t for _, t in pred_slots], np.float32)
  gt_mask = np.array([m for m, _ in gt_slots])
  gt_times = np.array([t for _, t in gt_slots], np.float32)
  acc = np.array(acc, np.float32).reshape(P_MAX, G_MAX)
  p_idx = np.flatnonzero(pred_mask)
  g_idx = np.flatnonzero(gt_mask)
  want = reference_turn_f1([float(pred_times[i]) for i in p_idx],
                           [float(gt_times[j]) for j in g_idx],
                           [[float(acc[i, j]) for j in g_idx] for i in p_idx], tau, proactive)
  got = _turn_f1(pred_times, pred_mask, gt_times, gt_mask, acc, tau=tau, proactive=proactive)
  # float32 turn_f1 vs the float64 reference: <= 2 x 8 matched pairs of a few roundings each,
  # then the F1 quotient: 32 roundings on the result's scale (<= 2).
  assert float(got) == tol.approx_ops(want, ops=32)


# ---- format, rubric, combine --------------------------------------------------------------------


def test_parse_message_rules():
  assert rewards.parse_message("</Silence>") == rewards.ParsedTurn("silence", "", True)
  assert rewards.parse_message(" </Silence><|im_end|>").valid
  assert rewards.parse_message("</Response> the cup falls") == rewards.ParsedTurn(
      "response", "the cup falls", True)
  assert rewards.parse_message("</Response>   ") == rewards.ParsedTurn("response", "", False)
  assert not rewards.parse_message("</Silence> extra").valid
  assert not rewards.parse_message("hello").valid
  assert not rewards.parse_message("</Response> a </Silence>").valid
  assert rewards.parse_message("").decision == "invalid"


def test_format_reward():
  msgs = ["</Silence>", "</Response> yes", "</Response>", "junk"]
  valid, mask = rewards.format_inputs(msgs, pad_to=6)
  np.testing.assert_array_equal(valid, [True, True, False, False, False, False])
  np.testing.assert_array_equal(mask, [True] * 4 + [False] * 2)
  assert float(rewards.format_reward(jnp.asarray(valid), jnp.asarray(mask))) == 0.5
  assert float(rewards.format_reward(jnp.zeros(3, bool), jnp.zeros(3))) == 0.0
  batched = jax.vmap(rewards.format_reward)(jnp.array([[True, False], [True, True]]),
                                            jnp.ones((2, 2)))
  np.testing.assert_allclose(batched, [0.5, 1.0])


def test_rubric_reward():
  checks = jnp.array([True, False, True, True, False])
  mask = jnp.array([1, 1, 1, 1, 0])
  assert float(rewards.rubric_reward(checks, mask)) == 0.75
  assert float(rewards.rubric_reward(checks, jnp.zeros(5))) == 0.0
  np.testing.assert_allclose(
      jax.vmap(rewards.rubric_reward)(jnp.stack([checks, ~checks]), jnp.stack([mask, mask])),
      [0.75, 0.25])


def test_combine():
  # 0.1 * 1 + 0.45 * 1.5 + 0.45 * 0.5 = 0.1 + 0.675 + 0.225 = 1.0
  assert float(rewards.combine(1.0, 1.5, 0.5)) == tol.approx_ops(1.0)
  assert float(rewards.combine(1.0, 1.0, 1.0, weights=(0.1, 0.9, 0.0))) == tol.approx_ops(1.0)
  np.testing.assert_allclose(rewards.combine(jnp.ones(3), jnp.zeros(3), jnp.ones(3)),
                             [0.55] * 3, rtol=HAND_RTOL)
  with pytest.raises(ValueError, match="3 numbers"):
    rewards.combine(1.0, 1.0, 1.0, weights=(0.5, 0.5))


# ---- host-side helpers ------------------------------------------------------------------------


def test_turn_f1_inputs_with_match_judge():
  # Turn k responds -> t_p = k + 1. Responses at turns 2 (t=3) and 19 (t=20).
  msgs = ["</Silence>"] * 20
  msgs[2] = "</Response> The red cube"
  msgs[19] = "</Response> blue"
  answers = [{"time": 4.0, "text": "the red cube."}, {"start": 1.0, "end": 30.0, "text": "Blue"}]
  judge = judges.MatchJudge()
  out = rewards._turn_f1_inputs(msgs, answers, judge, tau=8.0, max_preds=4, max_gts=3)
  np.testing.assert_array_equal(out["pred_times"][:2], [3.0, 20.0])
  np.testing.assert_array_equal(out["pred_mask"], [True, True, False, False])
  np.testing.assert_array_equal(out["gt_times"][:2], [4.0, 30.0])  # interval -> its end.
  np.testing.assert_array_equal(out["gt_mask"], [True, True, False])
  # In-window pairs only: (t3, g4) yes, (t3, g30) no, (t20, g4) no, (t20, g30) no (dt 10 > 8).
  assert judge.stats.requests == 1
  np.testing.assert_array_equal(out["acc"][:2, :2], [[1.0, 0.0], [0.0, 0.0]])
  assert out["judge_failures"] == 0
  r = rewards.turn_f1_reward(out["pred_times"], out["pred_mask"], out["gt_times"],
                             out["gt_mask"], out["acc"])
  # Only (t3, g4): S' = 7/8 + 1. R = 2 * 1.875 / 4.
  assert float(r) == tol.approx_ops(2 * 1.875 / 4)
  with pytest.raises(ValueError, match="2 predictions do not fit in the padded size 1"):
    rewards._turn_f1_inputs(msgs, answers, judge, max_preds=1)


class _FailingJudge:
  def __init__(self):
    self.stats = judges.JudgeStats()

  def score_answers(self, items):
    return [None] * len(items)

  def check_rubric(self, trajectory_text, checks, question=""):
    return [True, None, False][:len(checks)]


def test_helpers_report_judge_failures():
  msgs = ["</Response> a", "</Silence>"]
  out = rewards._turn_f1_inputs(msgs, [{"time": 1.0, "text": "a"}], _FailingJudge())
  assert out["judge_failures"] == 1
  np.testing.assert_array_equal(out["acc"], [[0.0]])
  rub = rewards._rubric_inputs(msgs, ["c1", "c2", "c3"], _FailingJudge(), max_checks=4)
  np.testing.assert_array_equal(rub["checks"], [True, False, False, False])
  np.testing.assert_array_equal(rub["check_mask"], [True, False, True, False])
  assert rub["judge_failures"] == 1
  assert float(rewards.rubric_reward(rub["checks"], rub["check_mask"])) == 0.5


def test_trajectory_text():
  msgs = ["</Silence>", "</Response> first", "</Silence>", "</Response> second"]
  assert rewards._trajectory_text(msgs) == "[1s-2s] first\n[3s-4s] second"
  assert rewards._trajectory_text(["</Silence>"]) == "(no responses)"


class _CountingJudge(judges.MatchJudge):
  def __init__(self):
    super().__init__()
    self.batches = 0

  def score_answers(self, items):
    self.batches += 1
    return super().score_answers(items)


def test_group_helpers_end_to_end():
  """G = 3 rollouts of one sample -> one judge batch -> vmapped rewards -> advantages."""
  answers = [{"time": 3.0, "text": "red"}, {"time": 9.0, "text": "blue"}]
  checks = ['mentions "red"', 'mentions "blue"']
  group = [
      ["</Silence>", "</Silence>", "</Response> red"] + ["</Silence>"] * 5 + ["</Response> blue"],
      ["</Silence>"] * 9,
      ["</Response> green", "oops"] + ["</Silence>"] * 7,
  ]
  judge = _CountingJudge()
  t = rewards.group_turn_f1_inputs(group, answers, judge)
  assert judge.batches == 1
  assert t["acc"].shape == (3, 2, 2) and t["pred_mask"].sum() == 3
  for r, msgs in enumerate(group):
    single = rewards._turn_f1_inputs(msgs, answers, judges.MatchJudge(), max_preds=2)
    for k in ("pred_times", "pred_mask", "gt_times", "gt_mask", "acc"):
      np.testing.assert_array_equal(t[k][r], single[k])
  turn = jax.vmap(rewards.turn_f1_reward)(t["pred_times"], t["pred_mask"], t["gt_times"],
                                          t["gt_mask"], t["acc"])
  # Rollout 0: both answers on time and right: R_turn = 2 * (2 + 2) / 4 = 2.
  # Rollout 1: no prediction: 0. Rollout 2: "green" at t=1 matches the GT at 3 (S' = 6/8 + 0),
  # R = 2 * 0.75 / 3 = 0.5.
  np.testing.assert_allclose(turn, [2.0, 0.0, 0.5], rtol=HAND_RTOL)
  rub = rewards.group_rubric_inputs(group, checks, judge)
  traj = rewards.rubric_reward(jnp.asarray(rub["checks"]), jnp.asarray(rub["check_mask"]))
  np.testing.assert_allclose(traj, [1.0, 0.0, 0.0])
  fmt_arrays = [rewards.format_inputs(m, pad_to=9) for m in group]
  fmt = jax.vmap(rewards.format_reward)(jnp.asarray(np.stack([v for v, _ in fmt_arrays])),
                                        jnp.asarray(np.stack([k for _, k in fmt_arrays])))
  np.testing.assert_allclose(fmt, [1.0, 1.0, 8 / 9], rtol=HAND_RTOL)
  total = rewards.combine(fmt, turn, traj)
  np.testing.assert_allclose(total, [0.1 + 0.9 + 0.45, 0.1, 0.1 * 8 / 9 + 0.225], rtol=HAND_RTOL)
  adv = grpo.group_advantages(total, 3)
  # The advantages of G = 3 sum to 0 up to the mean (3 roundings), centring, division (2) and the
  # final sum (3): 8 roundings on their scale (|A| <= 2 / sqrt(3) < 1.2).
  assert adv[0] > 0 > adv[1]
  assert abs(float(jnp.sum(adv))) <= tol.rel_ops_bound(8) * 1.2


def test_turn_f1_rejects_accuracy_outside_0_1():
  """Issue 28: acc = 5 gave R_turn = 5.67, beyond the documented [0, 2]; a concrete acc outside
  [0, 1] on a real pair is an error naming it (padding is not looked at)."""
  import numpy as np
  from streampro_jax import _checks
  t, m = np.array([4.0, 0.0], np.float32), np.array([True, False])
  with pytest.raises(_checks.ArgumentError, match="turn_f1_reward: acc .*outside \\[0, 1\\]"):
    rewards.turn_f1_reward(t, m, t, m, np.array([[5.0, 0.0], [0.0, 0.0]], np.float32))
  padded = np.array([[1.0, 9.0], [9.0, 9.0]], np.float32)   # 9 only on padded pairs
  assert float(rewards.turn_f1_reward(t, m, t, m, padded)) == pytest.approx(2.0)
