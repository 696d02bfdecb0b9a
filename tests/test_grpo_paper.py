"""GRPO aggregation modes by hand (TRL / veRL sequence mean over every sequence), the veRL-style
preset, static arguments and argument errors (issue 20 item 5, issue 16 item 9)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streampro_jax import grpo

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Tolerance of these float32 GRPO losses (ratio exp, clip, min, the masked means over <= 5
# tokens and 3 rows: <= 16 roundings) against a hand value or a jitted / traced twin, relative
# (tests/helpers/tolerances.py).
HAND_RTOL = tol.rel_ops_bound(16)


def _case():
  """B = 3, T = 3, ratio 1 (logps = old), beta 0: loss_t = -A_b on masked-in tokens.

  row 0: A = 1,  mask 1 1 0  -> token sum -2, mean -1
  row 1: A = -2, mask 1 1 1  -> token sum  6, mean  2
  row 2: A = 5,  mask 0 0 0  (an empty completion)
  """
  lp = jnp.zeros((3, 3))
  adv = jnp.array([1.0, -2.0, 5.0])
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
  return lp, adv, mask


@pytest.mark.parametrize("aggregation,want", [
    ("sequence-mean-token-mean", (-1 + 2 + 0) / 3),         # TRL / veRL: all 3 sequences
    ("nonempty-sequence-mean-token-mean", (-1 + 2) / 2),    # the previous default
    ("token-mean", 4 / 5),                                  # DAPO / veRL default
    ("sequence-sum-token-mean", -1 + 2),
    ("sequence-mean-token-sum", 4 / 3 / 3),                 # Dr. GRPO: / T / B
])
def test_aggregations_by_hand(aggregation, want):
  lp, adv, mask = _case()
  got = grpo.grpo_loss(lp, lp, None, adv, mask, beta=0.0, aggregation=aggregation)
  assert float(got) == tol.approx_ops(want)
  # Micro-batches of one row each, summed, give the same value (exact accumulation).
  nums, dens = zip(*(grpo.grpo_loss_sum_and_count(lp[i:i + 1], lp[i:i + 1], None, adv[i:i + 1],
                                                  mask[i:i + 1], beta=0.0,
                                                  aggregation=aggregation) for i in range(3)))
  if aggregation != "sequence-sum-token-mean":
    assert float(sum(nums) / max(sum(dens), 1.0)) == tol.approx_ops(want)


def test_verl_preset_and_from_config():
  cfg = grpo.GRPOStepConfig.from_config(dict(group_size=4, preset="verl"))
  assert (cfg.beta, cfg.kl_estimator, cfg.aggregation) == (0.001, "k3", "token-mean")
  cfg = grpo.GRPOStepConfig.from_config(dict(group_size=4, preset="verl-no-kl"))
  assert (cfg.beta, cfg.aggregation) == (0.0, "token-mean")
  cfg = grpo.GRPOStepConfig.from_config(dict(group_size=4, preset="spec"))
  assert (cfg.beta, cfg.aggregation) == (0.04, "sequence-mean-token-mean")
  # The preset wins over the section's own values (it is the one switch a user flips).
  cfg = grpo.GRPOStepConfig.from_config(dict(group_size=4, beta=0.04, preset="verl"))
  assert cfg.beta == 0.001
  with pytest.raises(ValueError, match="preset"):
    grpo.GRPOStepConfig.from_config(dict(group_size=4, preset="ppo"))


def test_group_advantages_2d_input_message():
  with pytest.raises(ValueError, match=r"rewards.*rank|1-D|shape \(2, 4\)"):
    grpo.group_advantages(jnp.zeros((2, 4)), 4)
  with pytest.raises(ValueError, match="10 rewards do not split into groups of 4"):
    grpo.group_advantages(jnp.zeros((10,)), 4)


def test_static_argnames_and_jitted_entry_points():
  lp, adv, mask = _case()
  ref = lp + 0.5
  # beta and epsilon may be traced; only the mode names are static.
  f = jax.jit(grpo.grpo_loss, static_argnames=grpo.STATIC_ARGNAMES["grpo_loss"])
  got = f(lp, lp, ref, adv, mask, epsilon=jnp.float32(0.2), beta=jnp.float32(0.04))
  np.testing.assert_allclose(got, grpo.grpo_loss(lp, lp, ref, adv, mask), rtol=HAND_RTOL)
  np.testing.assert_allclose(grpo.grpo_loss_jit(lp, lp, ref, adv, mask),
                             grpo.grpo_loss(lp, lp, ref, adv, mask), rtol=HAND_RTOL)
  r = jnp.array([1.0, 2.0, 3.0, 5.0])
  np.testing.assert_allclose(grpo.group_advantages_jit(r, 2), grpo.group_advantages(r, 2))
  g = jax.jit(grpo.group_advantages, static_argnames=grpo.STATIC_ARGNAMES["group_advantages"])
  np.testing.assert_allclose(g(r, group_size=2), grpo.group_advantages(r, 2))


def test_grpo_shape_errors_name_the_argument():
  lp, adv, mask = _case()
  with pytest.raises(ValueError, match="advantages"):
    grpo.grpo_loss(lp, lp, None, adv[:2], mask, beta=0.0)
  with pytest.raises(ValueError, match="mask"):
    grpo.grpo_loss(lp, lp, None, adv, mask[0], beta=0.0)
  with pytest.raises(ValueError, match="old_logps"):
    grpo.grpo_loss(lp, lp[:, :2], None, adv, mask, beta=0.0)


def test_nan_logps_at_masked_positions_reach_neither_loss_nor_gradient():
  lp, adv, mask = _case()
  bad = lp.at[0, 2].set(jnp.nan).at[2].set(jnp.nan)
  f = lambda x: grpo.grpo_loss(x, lp, lp, adv, mask)  # noqa: E731
  val, grad = jax.value_and_grad(f)(bad)
  assert np.isfinite(val) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(val, f(lp), rtol=HAND_RTOL)
