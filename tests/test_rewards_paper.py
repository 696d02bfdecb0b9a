"""Turn-level F1 as the paper's Algorithm 1 (docs/method.md section 3), and the rewards' argument
handling (issue 20 item 1, issue 16 item 9): hand-computed numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streampro_jax import rewards

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Tolerances (tests/helpers/tolerances.py): the rewards are float32 formulas of a few operations
# (time score 1 - |dt| / tau, S' sums, F1 = 2 sum S' / (n_p + n_g), weighted sums): at most 16
# roundings against the hand value, relative (tol.approx_ops / HAND_RTOL).
HAND_RTOL = tol.rel_ops_bound(16)


def _args(preds, gts, acc):
  return (jnp.asarray(preds, jnp.float32), jnp.ones((len(preds),), bool),
          jnp.asarray(gts, jnp.float32), jnp.ones((len(gts),), bool),
          jnp.asarray(acc, jnp.float32))


def test_spec_worked_example_zero_score_prediction_stays_free():
  # Ground truths at 10 and 20, one prediction at 18 with S_acc 0 against both, tau 8.
  # GT 10: dt = 8, S' = 0 + 0 = 0 -> not matched (the best score starts at 0, needs > 0).
  # GT 20: dt = 2, S' = 1 - 2/8 = 0.75 -> matched. R_turn = 2 * 0.75 / (1 + 2) = 0.5.
  got = rewards.turn_f1_reward(*_args([18.0], [10.0, 20.0], [[0.0, 0.0]]), tau=8.0)
  assert float(got) == tol.approx_ops(0.5)


def test_zero_score_never_matches_even_alone():
  # Only one ground truth, S' = 0 at the window's edge: nothing matched, R = 0 (it was 0 before
  # too, but now the prediction is not used up; see the next case).
  assert float(rewards.turn_f1_reward(*_args([13.0], [5.0], [[0.0]]))) == 0.0
  # GT at 5 and 13, one prediction at 13: S' = 0 for GT 5 (dt = 8 = tau, acc 0), S' = 1 + 1 for
  # GT 13. GT 5 must leave it free: R = 2 * 2 / (1 + 2) = 4/3 (matching it up gave 0).
  got = rewards.turn_f1_reward(*_args([13.0], [5.0, 13.0], [[0.0, 1.0]]))
  assert float(got) == tol.approx_ops(4 / 3)
  # Proactive window, same rule: GT 5 and 13, prediction at 5 with acc 0 vs GT 13 (dt = -8:
  # S' = 0) and acc 1 vs GT 5 (S' = 2): GT 5 takes it; GT 13 has nothing. R = 2 * 2 / 3.
  got = rewards.turn_f1_reward(*_args([5.0], [5.0, 13.0], [[1.0, 0.0]]), proactive=True)
  assert float(got) == tol.approx_ops(4 / 3)


def test_traced_tau_zero_is_the_exact_time_limit_not_nan():
  f = jax.jit(lambda tau, *a: rewards.turn_f1_reward(*a, tau=tau))
  # tau -> 0: S_time = 1 at dt = 0, the window is the single point t_g.
  got = f(jnp.float32(0.0), *_args([5.0], [5.0], [[0.5]]))
  assert float(got) == tol.approx_ops(1.5)
  got = f(jnp.float32(0.0), *_args([6.0], [5.0], [[1.0]]))
  assert float(got) == 0.0
  # A traced tau equal to a Python tau gives the same number.
  np.testing.assert_allclose(f(jnp.float32(4.0), *_args([6.0], [5.0], [[1.0]])),
                             rewards.turn_f1_reward(*_args([6.0], [5.0], [[1.0]]), tau=4.0))
  with pytest.raises(ValueError, match="tau"):
    rewards.turn_f1_reward(*_args([6.0], [5.0], [[1.0]]), tau=0.0)


def test_proactive_may_be_traced_and_only_matching_is_static():
  args = _args([6.0], [5.0], [[1.0]])
  f = jax.jit(rewards.turn_f1_reward)
  assert float(f(*args, proactive=jnp.bool_(True))) == 0.0        # late: never for proactive
  assert float(f(*args, proactive=jnp.bool_(False))) == tol.approx_ops(1.875)
  # vmapped over a mixed group of tasks.
  stack = [jnp.stack([a, a]) for a in args]
  got = jax.vmap(rewards.turn_f1_reward)(*stack, proactive=jnp.array([True, False]))
  np.testing.assert_allclose(got, [0.0, 1.875], rtol=HAND_RTOL)
  assert rewards.STATIC_ARGNAMES["turn_f1_reward"] == ("matching",)
  np.testing.assert_allclose(rewards.turn_f1_reward_jit(*args, tau=8.0, proactive=True), 0.0)


def test_matching_order_ablation_hand_computed():
  """Ground truths at 10 and 14, predictions at 6 and 13, S_acc 0, tau 8.
  GT-first: g10 takes p13 (S' = 1 - 3/8 = 0.625, above p6's 0.5); g14 is left with p6 at
  |dt| = 8, S' = 0: no match. R = 2 * 0.625 / 4 = 0.3125.
  Prediction-first: p6 takes g10 (S' = 0.5; g14 gives 0); p13 takes g14 (S' = 0.875).
  R = 2 * 1.375 / 4 = 0.6875."""
  args = _args([6.0, 13.0], [10.0, 14.0], [[0.0, 0.0], [0.0, 0.0]])
  assert float(rewards.turn_f1_reward(*args, tau=8.0)) == tol.approx_ops(0.3125)
  got = rewards.turn_f1_reward(*args, tau=8.0, matching="gt_first")
  assert float(got) == tol.approx_ops(0.3125)
  got = rewards.turn_f1_reward_jit(*args, tau=8.0, matching="prediction_first")
  assert float(got) == tol.approx_ops(0.6875)
  # Ties among ground truths go to the earliest: p11 between g10 and g12 (both S' = 0.875) takes
  # g10, and p13 then takes g12 (0.875): 2 * 1.75 / 4.
  args = _args([11.0, 13.0], [12.0, 10.0], [[0.0, 0.0], [0.0, 0.0]])
  got = rewards.turn_f1_reward(*args, tau=8.0, matching="prediction_first")
  assert float(got) == tol.approx_ops(0.875)
  # The worked example of docs/method.md section 3 holds in both orders (one prediction).
  args = _args([18.0], [10.0, 20.0], [[0.0, 0.0]])
  for order in rewards.MATCHING_ORDERS:
    assert float(rewards.turn_f1_reward(*args, tau=8.0, matching=order)) == tol.approx_ops(0.5)
  with pytest.raises(ValueError, match="matching"):
    rewards.turn_f1_reward(*args, matching="best")


def test_argument_errors_name_the_argument():
  p, pm, g, gm, acc = _args([6.0], [5.0], [[1.0]])
  with pytest.raises(ValueError, match="pred_mask"):
    rewards.turn_f1_reward(p, jnp.ones((2,), bool), g, gm, acc)
  with pytest.raises(ValueError, match="gt_times"):
    rewards.turn_f1_reward(p, pm, g[None], gm, acc)
  with pytest.raises(ValueError, match="acc has shape"):
    rewards.turn_f1_reward(p, pm, g, gm, acc.T[None])
  with pytest.raises(ValueError, match="step_mask"):
    rewards.format_reward(jnp.ones((3,), bool), jnp.ones((4,), bool))
  with pytest.raises(ValueError, match="check_mask"):
    rewards.rubric_reward(jnp.ones((3,), bool), jnp.ones((2,), bool))


def test_combine_under_jit_with_traced_weights():
  f = jax.jit(rewards.combine)
  np.testing.assert_allclose(f(1.0, 0.5, 0.25, jnp.array([0.1, 0.6, 0.3])),
                             0.1 + 0.3 + 0.075, rtol=HAND_RTOL)


class _ZeroJudge:
  """A judge that scores every answer 0 and counts its calls (an LLM judge stand-in)."""

  def __init__(self):
    self.calls = 0

  def score_answers(self, items):
    self.calls += len(items)
    return [0.0] * len(items)


def test_tg_reward_uses_span_iou_whatever_the_judge():
  # GT "9s-12s" due at 12; prediction at Y = 12 (turn 12) "from 10s to 12s": IoU = 2 / 3.
  s, r = "</Silence>", "</Response>"
  msgs = [s] * 11 + [r + " from 10s to 12s"]
  judge = _ZeroJudge()
  out = rewards._turn_f1_inputs(msgs, [{"time": 12.0, "text": "9s-12s"}], judge, task="TG")
  np.testing.assert_allclose(out["acc"], [[2 / 3]], rtol=HAND_RTOL)
  assert judge.calls == 0 and out["judge_failures"] == 0
  # S' = 1 + 2/3, R_turn = 2 * (5/3) / 2.
  got = rewards.turn_f1_reward(out["pred_times"], out["pred_mask"], out["gt_times"],
                               out["gt_mask"], out["acc"])
  assert float(got) == tol.approx_ops(5 / 3)
  # Any other task asks the judge.
  out = rewards._turn_f1_inputs(msgs, [{"time": 12.0, "text": "9s-12s"}], judge, task="OU")
  assert judge.calls == 1 and float(out["acc"][0, 0]) == 0.0
  # A TG reference without a span is a counted failure, never a silent score.
  out = rewards._turn_f1_inputs(msgs, [{"time": 12.0, "text": "the end"}], judge, task="TG")
  assert out["judge_failures"] == 1
