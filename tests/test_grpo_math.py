"""Tests of the GRPO math in streampro_jax.grpo against hand-computed values and NumPy float64
references (values and finite-difference gradients)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streampro_jax import grpo, losses

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Tolerances (tests/helpers/tolerances.py), float32 against hand values or float64 references.
# A hand formula of a few float32 operations (logs, exps, a mean or std over <= 8 values): at most
# 16 roundings, relative to the result.
HAND_RTOL = tol.rel_ops_bound(16)

# ---- group advantages --------------------------------------------------------------------------


def _np_advantages(r, g, eps=1e-6, ddof=1):
  r = np.asarray(r, np.float64).reshape(-1, g)
  c = r - r.mean(1, keepdims=True)
  std = np.sqrt((c ** 2).sum(1, keepdims=True) / (g - ddof))
  return (c / (std + eps)).reshape(-1)


def test_group_advantages_hand_computed():
  # Group [0, 1, 2, 3]: mean 1.5, sample std sqrt((2.25 + .25 + .25 + 2.25) / 3) = sqrt(5/3).
  a = grpo.group_advantages(jnp.array([0.0, 1.0, 2.0, 3.0]), 4, eps=0.0)
  s = math.sqrt(5 / 3)
  np.testing.assert_allclose(a, [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], rtol=HAND_RTOL)
  # ddof = 0: population std sqrt(5/4).
  a0 = grpo.group_advantages(jnp.array([0.0, 1.0, 2.0, 3.0]), 4, eps=0.0, ddof=0)
  np.testing.assert_allclose(a0, np.array([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(1.25),
                             rtol=HAND_RTOL)


def test_group_advantages_match_reference():
  rng = np.random.default_rng(0)
  r = rng.random(6 * 8).astype(np.float32) * 2.0
  for ddof in (0, 1):
    # float32 mean (8 terms), centring, std (8 squares, a sqrt), division: 2 gamma_8 on the
    # rewards' scale (<= 2) per sum, ~20 roundings, relative to the std (>= 0.3 for these
    # uniform rewards): absolute on the advantages' scale (|A| <= sqrt(7)).
    want = _np_advantages(r, 8, ddof=ddof)
    np.testing.assert_allclose(grpo.group_advantages(jnp.asarray(r), 8, ddof=ddof), want,
                               atol=tol.rel_ops_bound(20) * 2 / 0.3 * np.abs(want).max(), rtol=0)


def test_equal_rewards_give_exact_zeros_in_float32():
  vals = [0.1, 0.7, 1.0 / 3.0, 0.2 + 0.45 * 0.3, 1e-7, 123.456]
  r = np.repeat(np.array(vals, np.float32), 8)
  r[-8:] = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], np.float32)  # one varied group.
  a = np.asarray(jax.jit(grpo.group_advantages, static_argnums=1)(jnp.asarray(r), 8))
  assert np.all(a[:-8] == 0.0)
  assert np.all(np.abs(a[-8:]) > 0.1)


def test_group_advantages_errors():
  with pytest.raises(ValueError, match="10 rewards do not split into groups of 4"):
    grpo.group_advantages(jnp.zeros(10), 4)
  with pytest.raises(ValueError, match="group size 1 with ddof 1"):
    grpo.group_advantages(jnp.zeros(3), 1)


# ---- the GRPO loss ----------------------------------------------------------------------------


def _np_grpo(logps, old, ref, adv, mask, eps=0.2, beta=0.04, kl="k3",
             aggregation="sequence-mean-token-mean"):
  logps, old, ref, adv, mask = (np.asarray(x, np.float64) for x in (logps, old, ref, adv, mask))
  ratio = np.exp(logps - old)
  a = adv[:, None]
  pg = -np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a)
  if kl == "k3":
    klv = np.exp(ref - logps) - (ref - logps) - 1
  elif kl == "k1":
    klv = logps - ref
  else:
    klv = 0.5 * (logps - ref) ** 2
  per = pg + beta * klv
  n_b = mask.sum(1)
  if aggregation == "sequence-mean-token-mean":   # TRL / veRL: every sequence of the batch
    return np.mean((per * mask).sum(1) / np.maximum(n_b, 1))
  if aggregation == "nonempty-sequence-mean-token-mean":
    keep = n_b > 0
    return np.mean((per * mask).sum(1)[keep] / n_b[keep])
  if aggregation == "sequence-sum-token-mean":
    keep = n_b > 0
    return np.sum((per * mask).sum(1)[keep] / n_b[keep])
  if aggregation == "token-mean":
    return (per * mask).sum() / mask.sum()
  if aggregation == "sequence-mean-token-sum":
    return (per * mask).sum() / per.shape[1] / per.shape[0]
  raise ValueError(aggregation)


def test_grpo_loss_hand_computed():
  # Token 0: ratio 1.5, A = +1 -> clipped: -min(1.5, 1.2) = -1.2.
  # Token 1: ratio 0.5, A = +1 -> -min(0.5, 0.8) = -0.5 (not clipped: the minimum is unclipped).
  # Row 2 (A = -1): token 0 ratio 0.5 -> -min(-0.5, -0.8) = 0.8 (clipped); token 1 masked.
  # KL k3 with ref - logp = ln 2 on every token: 2 - ln2 - 1 = 1 - ln2.
  logps = jnp.log(jnp.array([[1.5, 0.5], [0.5, 1.0]]))
  old = jnp.zeros((2, 2))
  ref = logps + math.log(2.0)
  adv = jnp.array([1.0, -1.0])
  mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
  kl = 1 - math.log(2.0)
  # sequence-mean-token-mean: row 1 mean (-1.2 - 0.5) / 2 + .04 kl, row 2: 0.8 + .04 kl.
  want = ((-1.7 / 2) + 0.8) / 2 + 0.04 * kl
  loss, aux = grpo.grpo_loss_and_aux(logps, old, ref, adv, mask)
  # The loss cancels: its terms sum to |.| ~ 0.85 for a result ~ 0.013, so HAND_RTOL applies on
  # the terms' scale (x 0.85 / |want|); k3 = e^d - d - 1 cancels too (terms ~3.3, result 0.31).
  terms = (1.2 + 0.5) / 4 + 0.8 / 2 + 0.04 * kl
  np.testing.assert_allclose(loss, want, atol=HAND_RTOL * terms, rtol=0)
  np.testing.assert_allclose(aux["clip_fraction"], 2 / 3, rtol=tol.U32)  # a count ratio
  np.testing.assert_allclose(aux["kl_mean"], kl, atol=HAND_RTOL * (2 + math.log(2) + 1), rtol=0)
  np.testing.assert_allclose(aux["ratio_max"], 1.5, rtol=HAND_RTOL)  # exp(log 1.5)
  # token-mean: (-1.2 - 0.5 + 0.8) / 3 + .04 kl.
  np.testing.assert_allclose(grpo.grpo_loss(logps, old, ref, adv, mask, aggregation="token-mean"),
                             -0.9 / 3 + 0.04 * kl, atol=HAND_RTOL * terms, rtol=0)
  # k1 on the same tokens: logp - ref = -ln 2.
  np.testing.assert_allclose(
      grpo.grpo_loss(logps, old, ref, adv, mask, kl="k1"),
      ((-1.7 / 2) + 0.8) / 2 - 0.04 * math.log(2.0), atol=HAND_RTOL * terms, rtol=0)


def _random_batch(seed, b=6, t=7):
  rng = np.random.default_rng(seed)
  logps = -rng.random((b, t)) * 3
  old = logps + rng.normal(size=(b, t)) * 0.3
  ref = logps + rng.normal(size=(b, t)) * 0.3
  adv = rng.normal(size=(b,))
  mask = (rng.random((b, t)) < 0.7).astype(np.float64)
  mask[-1] = 0.0  # one rollout with no assistant token.
  mask[0, 0] = 1.0
  return logps, old, ref, adv, mask


@pytest.mark.parametrize("aggregation,kl", [(a, "k3") for a in grpo.AGGREGATIONS]
                         + [("sequence-mean-token-mean", "k1"), ("token-mean", "k2")])
def test_grpo_loss_and_grad_match_reference(aggregation, kl):
  logps, old, ref, adv, mask = _random_batch(1)
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  fn = lambda lp: grpo.grpo_loss(lp, f32(old), f32(ref), f32(adv), f32(mask), kl=kl,  # noqa: E731
                                 aggregation=aggregation)
  val, grad = jax.jit(jax.value_and_grad(fn))(f32(logps))
  ref_fn = lambda lp: _np_grpo(lp, old, ref, adv, mask, kl=kl,  # noqa: E731
                               aggregation=aggregation)
  # float32 vs float64: per token ~10 roundings (ratio exp, clip, min, k3's exp), the masked
  # means over 7 tokens and 6 rows (~14): 24 roundings on the terms' scale (ratio x |A| <= ~5,
  # k3 terms <= ~3), absolute.
  scale = 5.0
  np.testing.assert_allclose(val, ref_fn(logps), atol=tol.rel_ops_bound(24) * scale, rtol=0)
  h = 1e-6
  fd = np.zeros_like(logps)
  for idx in np.ndindex(*logps.shape):
    lp, lm = logps.copy(), logps.copy()
    lp[idx] += h
    lm[idx] -= h
    fd[idx] = (ref_fn(lp) - ref_fn(lm)) / (2 * h)
  # Finite differences of the float64 reference: truncation ~h^2 and rounding 2^-53 |f| / h
  # (~1e-9); the float32 gradient: ~10 roundings per entry on its scale (ratio x |A| / n).
  np.testing.assert_allclose(grad, fd, atol=tol.rel_ops_bound(10) * scale * np.abs(fd).max()
                             + 1e-8, rtol=0)
  assert np.all(np.asarray(grad)[mask == 0] == 0.0)


def test_first_update_gradient_is_minus_advantage_over_length():
  # logps == old == ref: ratio 1, no clipping, k3 gradient 0 -> dL/dlogp[b, t] = -A_b / n_b / B'.
  logps = jnp.array([[-1.0, -2.0, -0.5], [-0.3, -0.2, -0.1]])
  adv = jnp.array([2.0, -1.0])
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
  g = jax.grad(lambda lp: grpo.grpo_loss(lp, logps, logps, adv, mask))(logps)
  np.testing.assert_allclose(g, [[-2.0 / 2 / 2, -2.0 / 2 / 2, 0.0], [1 / 3 / 2] * 3],
                             rtol=HAND_RTOL)


def test_sum_and_count_accumulates_exactly():
  logps, old, ref, adv, mask = (jnp.asarray(x, jnp.float32) for x in _random_batch(2))
  for aggregation in ("sequence-mean-token-mean", "token-mean"):
    full = grpo.grpo_loss(logps, old, ref, adv, mask, aggregation=aggregation)
    num = den = 0.0
    for sl in (slice(0, 2), slice(2, 6)):
      n, d = grpo.grpo_loss_sum_and_count(logps[sl], old[sl], ref[sl], adv[sl], mask[sl],
                                          aggregation=aggregation)
      num, den = num + n, den + d
    # Two partial sums (2 + 4 rows) added vs one sum over 6 rows of <= 7 tokens: two orders of
    # <= 42 terms on the terms' scale (<= 5 vs a result >= ~0.1), plus the division.
    np.testing.assert_allclose(num / den, full, atol=tol.f32_sum_bound(42, 5.0) + tol.U32,
                               rtol=0)


def test_token_logps_and_kl_estimators():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]]))
  targets = jnp.array([[0, 2]])
  np.testing.assert_allclose(losses.token_logps(logits, targets), np.log([[0.5, 0.3]]),
                             rtol=HAND_RTOL)
  # temperature 2: softmax(log p / 2) = sqrt(p) / sum sqrt(p).
  p = np.array([0.5, 0.25, 0.25])
  np.testing.assert_allclose(losses.token_logps(logits, targets, temperature=2.0)[0, 0],
                             np.log(np.sqrt(p[0]) / np.sqrt(p).sum()), rtol=HAND_RTOL)
  rng = np.random.default_rng(3)
  hidden = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 11)), jnp.float32)
  tg = jnp.asarray(rng.integers(0, 11, size=(2, 3)))
  np.testing.assert_allclose(losses.token_logps_from_hidden(hidden, w, tg, chunk_size=4,
                                                          temperature=0.7),
                             losses.token_logps(hidden @ w, tg, temperature=0.7),
                             atol=4 * tol.chain_bound([4, 11], 1.0) * 5, rtol=0)
  # (chunked vs whole: other orders of h @ w over 4 and a logsumexp over 11 in chunks of 4, on
  # the logits' scale |h @ w| / 0.7 <= ~5, x 4 for logsumexp's terms)
  lp, rf = jnp.array([-1.0]), jnp.array([-1.5])
  # k3 = e^d - d - 1 at d = -0.5: terms ~2.1 for a result ~0.107: HAND_RTOL on the terms.
  np.testing.assert_allclose(grpo.kl_k3(lp, rf), math.exp(-0.5) + 0.5 - 1,
                             atol=HAND_RTOL * 2.1, rtol=0)
  np.testing.assert_allclose(grpo.kl_k1(lp, rf), 0.5)
  np.testing.assert_allclose(grpo.kl_k2(lp, rf), 0.125)


def test_beta_zero_needs_no_reference_and_errors():
  lp = jnp.zeros((1, 2))
  np.testing.assert_allclose(
      grpo.grpo_loss(lp, lp, None, jnp.array([1.0]), jnp.ones((1, 2)), beta=0.0), -1.0)
  with pytest.raises(ValueError, match="ref_logps is None"):
    grpo.grpo_loss(lp, lp, None, jnp.array([1.0]), jnp.ones((1, 2)))
  with pytest.raises(ValueError, match="unknown aggregation"):
    grpo.grpo_loss(lp, lp, lp, jnp.array([1.0]), jnp.ones((1, 2)), aggregation="x")
  with pytest.raises(ValueError, match="unknown KL estimator"):
    grpo.grpo_loss(lp, lp, lp, jnp.array([1.0]), jnp.ones((1, 2)), kl="k9")


def test_logprob_agreement_by_hand():
  """Trainer x = (-1, -2, -3), sampler y = (-1, -2, -4) (a masked-out fourth token of garbage):
  mean |x - y| = 1/3; centred x = (1, 0, -1), y = (4/3, 1/3, -5/3): cov 3, Sxx 2, Syy 42/9,
  corr = 3 / sqrt(2 * 42 / 9) = 9 / sqrt(84)."""
  x = jnp.array([[-1.0, -2.0, -3.0, 50.0]])
  y = jnp.array([[-1.0, -2.0, -4.0, -90.0]])
  mask = jnp.array([[1, 1, 1, 0]])
  got = grpo.logprob_agreement(x, y, mask)
  assert float(got["mean_abs_diff"]) == tol.approx_ops(1 / 3, ops=8)
  assert float(got["corr"]) == tol.approx_ops(9 / math.sqrt(84), ops=32)
  # Sums add over micro-batches: two halves give the same agreement as the whole.
  halves = [grpo.agreement_sums(x[:, :2], y[:, :2], mask[:, :2]),
            grpo.agreement_sums(x[:, 2:], y[:, 2:], mask[:, 2:])]
  joined = grpo.agreement_from_sums(jax.tree.map(lambda a, b: a + b, *halves))
  assert float(joined["corr"]) == tol.approx_ops(9 / math.sqrt(84), ops=32)
  # A constant side (or nothing masked in) has no correlation to speak of: 0, not NaN.
  assert float(grpo.logprob_agreement(x, jnp.full_like(y, -2.0), mask)["corr"]) == 0.0
  assert float(grpo.logprob_agreement(x, y, jnp.zeros_like(mask))["corr"]) == 0.0
