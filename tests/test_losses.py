"""Tests of streampro_jax.losses: hand-computed values, float64 NumPy references, gradients,
jit / sharding, and the chunked-vocabulary variant."""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streampro_jax import losses

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

SIL, RESP = 2, 3  # decision token ids in the tiny vocabularies below.
LN2 = math.log(2.0)
# Tolerances (tests/helpers/tolerances.py), float32 against exact or float64 values:
# hand case: log-softmax over V = 4 (max, 4 exps, their sum, a log: 8 roundings), class weights
# (6), the weighted sum over 5 tokens and one division (6): 20 roundings, relative.
HAND_RTOL = tol.rel_ops_bound(20)
# random case (V = 7, 12 tokens, logits ~ 2 N(0, 1)): log-softmax (11), weights (6), sum over 12
# tokens and a division (13): 30 roundings; logsumexp rounds on the logits' scale, at most 4x the
# mean per-token loss here (|z| <= 2 x 3 sigma vs a loss ~ 1.5-2): x 4.
RANDOM_RTOL = 4 * tol.rel_ops_bound(30)


def _hand_case():
  """B=1, T=5, V=4; logits = log(probs) so every -log p is a multiple of ln 2.

  t  probs                       label        supervised   -log p(label)
  0  [.5, .25, .125, .125]       0 text       yes          ln2
  1  [.125, .125, .5, .25]       2 silence    yes          ln2
  2  [.25, .25, .25, .25]        2 silence    yes          2 ln2
  3  [.25, .125, .125, .5]       3 response   yes          ln2
  4  [.25, .25, .25, .25]        1 text       no           -
  """
  probs = np.array([[.5, .25, .125, .125], [.125, .125, .5, .25], [.25] * 4,
                    [.25, .125, .125, .5], [.25] * 4])
  logits = jnp.asarray(np.log(probs)[None], jnp.float32)
  labels = jnp.array([[0, SIL, SIL, RESP, 1]], jnp.int32)
  mask = jnp.array([[1, 1, 1, 1, 0]], jnp.float32)
  return logits, labels, mask


def test_cb_stream_hand_computed():
  logits, labels, mask = _hand_case()
  # n_sil = 2, n_resp = 1, beta = 0.9999:
  # E_sil = (1 - b^2) / (1 - b) = 1 + b = 1.9999, E_resp = 1.
  # w_sil = (1/1.9999) / (1/1.9999 + 1) * 2 = 2 / 2.9999
  # w_resp = 1 / (1/1.9999 + 1) * 2 = 3.9998 / 2.9999
  # L = (2.0 * ln2 + w_sil * (ln2 + 2 ln2) + w_resp * ln2) / 4
  #   = ln2 / 4 * (2 + (6 + 3.9998) / 2.9999)
  expected = LN2 / 4 * (2 + 9.9998 / 2.9999)
  got = losses.cb_stream_loss(logits, labels, mask, decision_token_ids=(SIL, RESP))
  np.testing.assert_allclose(got, expected, rtol=HAND_RTOL)
  w = losses.cb_stream_class_weights(jnp.array([2.0, 1.0]))
  # effective numbers (8 roundings, test_effective_number_accurate_in_float32), inverses, their
  # sum and the normalisation (4).
  np.testing.assert_allclose(w, [2 / 2.9999, 3.9998 / 2.9999], rtol=tol.rel_ops_bound(12))


def test_cb_stream_absent_class_left_out():
  logits, labels, mask = _hand_case()
  labels = labels.at[0, 3].set(0)  # no response token left: t3 becomes text with -log p = 2 ln2.
  # Only silence present -> w_sil = 1. L = (2 * ln2 + 1 * ln2 + 1 * 2 ln2 + 2 * 2 ln2) / 4.
  expected = (2 * LN2 + LN2 + 2 * LN2 + 4 * LN2) / 4
  got = losses.cb_stream_loss(logits, labels, mask, decision_token_ids=(SIL, RESP))
  np.testing.assert_allclose(got, expected, rtol=HAND_RTOL)
  np.testing.assert_allclose(losses.cb_stream_class_weights(jnp.array([5.0, 0.0])), [1.0, 0.0])


def test_cross_entropy_hand_computed():
  logits, labels, mask = _hand_case()
  # (ln2 + ln2 + 2 ln2 + ln2) / 4
  np.testing.assert_allclose(losses.cross_entropy_loss(logits, labels, mask), 5 * LN2 / 4,
                             rtol=HAND_RTOL)


def test_focal_hand_computed():
  logits, labels, mask = _hand_case()
  # 3 decision tokens: alpha_sil = (3 / 2) / 2 = 0.75, alpha_resp = (3 / 1) / 2 = 1.5.
  # t0 text: ln2; t1: .75 * (1 - .5)^2 * ln2 = .1875 ln2; t2: .75 * (.75)^2 * 2 ln2 = .84375 ln2;
  # t3: 1.5 * (.5)^2 * ln2 = .375 ln2.  L = 2.40625 ln2 / 4.
  got = losses.focal_stream_loss(logits, labels, mask, decision_token_ids=(SIL, RESP))
  np.testing.assert_allclose(got, 2.40625 * LN2 / 4, rtol=HAND_RTOL)


def test_empty_mask_gives_zero():
  logits, labels, _ = _hand_case()
  mask = jnp.zeros((1, 5))
  for fn in (lambda: losses.cb_stream_loss(logits, labels, mask, decision_token_ids=(SIL, RESP)),
             lambda: losses.cross_entropy_loss(logits, labels, mask),
             lambda: losses.focal_stream_loss(logits, labels, mask,
                                              decision_token_ids=(SIL, RESP))):
    assert float(fn()) == 0.0


def test_effective_number_accurate_in_float32():
  n = np.array([1, 2, 3, 10, 100, 1234, 10_000, 54_321, 1_000_000, 10_000_000], np.float64)
  beta = 0.9999
  ref = -np.expm1(n * np.log1p(-(1 - beta))) / (1 - beta)  # float64
  got = np.asarray(losses._effective_number(jnp.asarray(n, jnp.float32), beta), np.float64)
  # log1p(-(1 - beta)) and 1 - beta rounded to float32 (2u), times n (u; n exact), expm1 (its
  # argument's error times a condition number x / (1 - e^-x) e^-x <= 1, plus <= 2 ulp of its
  # own), the division (u): 8 roundings (measured 2.3u on this host).
  np.testing.assert_allclose(got, ref, rtol=tol.rel_ops_bound(8))
  # The naive float32 formula misses it by far (so the check above can fail).
  naive = (1 - np.float32(beta) ** n.astype(np.float32)) / (1 - np.float32(beta))
  assert np.max(np.abs(naive / ref - 1)) > 1e-4
  np.testing.assert_allclose(losses._effective_number(jnp.array([3.0]), 1.0), [3.0])
  np.testing.assert_allclose(losses._effective_number(jnp.array([3.0]), 0.0), [1.0])


# ---- NumPy float64 reference ---------------------------------------------------------------


def _np_loss(logits, labels, mask, kind, beta=0.9999, text_weight=2.0, gamma=2.0,
             ids=(SIL, RESP)):
  logits = logits.astype(np.float64)
  m = logits.max(-1, keepdims=True)
  logp_all = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  logp = np.take_along_axis(logp_all, labels[..., None], -1)[..., 0]
  nll = -logp
  mask = mask.astype(np.float64)
  n = np.array([np.sum(mask * (labels == k)) for k in ids])
  present = n > 0
  if kind == "ce":
    w = np.ones_like(nll)
  elif kind == "cb_stream":
    e = np.where(present, (1 - beta ** np.where(present, n, 1)) / (1 - beta), 1.0)
    inv = np.where(present, 1 / e, 0.0)
    wk = inv / inv.sum() * present.sum()
    w = np.full_like(nll, text_weight)
    for k, tok in enumerate(ids):
      w = np.where(labels == tok, wk[k], w)
  else:
    alpha = np.where(present, n.sum() / np.where(present, n, 1) / present.sum(), 0.0)
    w = np.ones_like(nll)
    p = np.exp(logp)
    for k, tok in enumerate(ids):
      w = np.where(labels == tok, alpha[k] * (1 - p) ** gamma, w)
  return np.sum(mask * w * nll) / max(mask.sum(), 1.0)


def _random_case(seed, b=2, t=6, v=7):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, t, v)) * 2.0
  labels = rng.integers(0, v, size=(b, t))
  labels[0, 0], labels[0, 1], labels[1, 2] = SIL, SIL, RESP
  mask = (rng.random((b, t)) < 0.8).astype(np.float64)
  mask[0, 0] = mask[0, 1] = mask[1, 2] = 1.0
  return logits, labels.astype(np.int32), mask


KINDS = ("cb_stream", "ce", "focal")


def _jax_loss(kind, logits, labels, mask, **kw):
  if kind == "ce":
    return losses.cross_entropy_loss(logits, labels, mask)
  if kind == "cb_stream":
    return losses.cb_stream_loss(logits, labels, mask, decision_token_ids=(SIL, RESP), **kw)
  return losses.focal_stream_loss(logits, labels, mask, decision_token_ids=(SIL, RESP), **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_value_and_grad_match_float64_reference(kind):
  logits, labels, mask = _random_case(0)
  fn = jax.jit(jax.value_and_grad(
      lambda lg: _jax_loss(kind, lg, jnp.asarray(labels), jnp.asarray(mask, jnp.float32))))
  val, grad = fn(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(val, _np_loss(logits, labels, mask, kind), rtol=RANDOM_RTOL)
  # Central finite differences of the float64 reference: truncation (h^2 / 6 times the third
  # derivative, ~1e-12) and rounding (2^-53 |f| / h, ~1e-9) are far below the float32
  # gradient's error: the softmax's roundings (RANDOM_RTOL) on the gradient's scale.
  h = 1e-6
  fd = np.zeros_like(logits)
  it = np.nditer(logits, flags=["multi_index"])
  for _ in it:
    idx = it.multi_index
    lp, lm = logits.copy(), logits.copy()
    lp[idx] += h
    lm[idx] -= h
    fd[idx] = (_np_loss(lp, labels, mask, kind) - _np_loss(lm, labels, mask, kind)) / (2 * h)
  np.testing.assert_allclose(grad, fd, atol=RANDOM_RTOL * np.abs(fd).max() + 1e-9, rtol=0)
  # Unsupervised positions get no gradient.
  assert np.all(np.asarray(grad)[mask == 0] == 0.0)


def test_cb_stream_weights_carry_no_gradient_and_text_weight():
  logits, labels, mask = _random_case(1)
  args = (jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(mask, jnp.float32))
  for tw in (1.0, 3.0):
    np.testing.assert_allclose(
        losses.cb_stream_loss(*args, decision_token_ids=(SIL, RESP), text_weight=tw),
        _np_loss(logits, labels, mask, "cb_stream", text_weight=tw), rtol=RANDOM_RTOL)


@pytest.mark.parametrize("kind", ("cb_stream", "focal"))
def test_sum_and_count_accumulation_with_global_counts(kind):
  logits, labels, mask = _random_case(2, b=4)
  lg, lb, mk = (jnp.asarray(logits, jnp.float32), jnp.asarray(labels),
                jnp.asarray(mask, jnp.float32))
  full = _jax_loss(kind, lg, lb, mk)
  counts = losses.decision_class_counts(lb, mk, (SIL, RESP))
  fn = (losses.cb_stream_loss_sum_and_count if kind == "cb_stream"
        else losses.focal_stream_loss_sum_and_count)
  total, count = 0.0, 0.0
  for sl in (slice(0, 1), slice(1, 4)):
    s, c = fn(lg[sl], lb[sl], mk[sl], decision_token_ids=(SIL, RESP), class_counts=counts)
    total, count = total + s, count + c
  # The same terms summed in two parts (1 row + 3 rows) then added: another order of a sum of
  # <= 24 positive terms, plus the division: 2 gamma_24 + u.
  np.testing.assert_allclose(total / count, full, rtol=tol.f32_sum_bound(24, 1.0) + tol.U32)


def test_sharded_jit_counts_over_global_batch():
  devices = np.array(jax.devices())
  chex.assert_equal(len(devices), 8)
  mesh = jax.sharding.Mesh(devices, ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  logits, labels, mask = _random_case(3, b=8, t=4, v=5)
  # Only the first row holds a response: local (per-device) counts would differ from global ones.
  labels[1:][labels[1:] == RESP] = 0
  labels[0, 0] = RESP
  mask[0, 0] = 1
  args = [jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(mask, jnp.float32)]
  sharded = [jax.device_put(a, sharding) for a in args]
  fn = jax.jit(lambda lg, lb, mk: losses.cb_stream_loss(lg, lb, mk, decision_token_ids=(SIL, RESP)))
  np.testing.assert_allclose(fn(*sharded), _np_loss(logits, labels, mask, "cb_stream"),
                             rtol=RANDOM_RTOL)


def test_metrics_hand_computed():
  logits, labels, mask = _hand_case()
  # argmax per row: t0 -> 0 (label 0, ok), t1 -> 2 (silence, ok), t2 -> 0 (tie, first; label 2,
  # wrong), t3 -> 3 (response, ok), t4 unsupervised.
  m = losses.metrics(logits, labels, mask, decision_token_ids=(SIL, RESP))
  np.testing.assert_allclose(m["token_accuracy"], 3 / 4)
  np.testing.assert_allclose(m["decision_accuracy"], 2 / 3)
  np.testing.assert_allclose(m["silence_recall"], 1 / 2)
  np.testing.assert_allclose(m["response_recall"], 1.0)
  np.testing.assert_allclose(m["n_silence"], 2.0)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_plain(kind):
  rng = np.random.default_rng(4)
  b, t, d, v = 2, 5, 6, 23  # V = 23 is not a multiple of the chunk size 8.
  hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
  unembed = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  _, labels, mask = _random_case(5, b=b, t=t, v=v)
  labels, mask = jnp.asarray(labels), jnp.asarray(mask, jnp.float32)
  kw = {} if kind == "ce" else {"decision_token_ids": (SIL, RESP)}

  def plain(h, w):
    return losses.loss_sum_and_count(kind, h @ w, labels, mask, **kw)[0] / jnp.sum(mask)

  def chunked(h, w):
    return losses.chunked_stream_loss(h, w, labels, mask, kind=kind, chunk_size=8, **kw)

  v1, g1 = jax.value_and_grad(plain, argnums=(0, 1))(hidden, unembed)
  v2, g2 = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(hidden, unembed)
  # Chunked vs plain: other orders of the same sums (logits h @ w over d = 6, logsumexp over
  # V = 23 in chunks of 8, the token sum over 10): two orders, on the logits' scale
  # (|h @ w| <= ~4x the mean loss, as above); the gradients pass the same chain back.
  rel = 4 * tol.chain_bound([d, v, b * t], 1.0)
  np.testing.assert_allclose(v2, v1, rtol=rel)
  for x, y in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
    np.testing.assert_allclose(x, y, atol=2 * rel * tol.max_abs(y), rtol=0)
  nll, pred = losses.chunked_token_stats(hidden, unembed, labels, chunk_size=8)
  np.testing.assert_array_equal(pred, jnp.argmax(hidden @ unembed, -1))
  nll_ref = losses.token_nll(hidden @ unembed, labels)
  np.testing.assert_allclose(nll, nll_ref, atol=4 * tol.chain_bound([d, v], 1.0)
                             * max(tol.max_abs(nll_ref), 1.0), rtol=0)


def test_chunked_backward_keeps_no_full_logits():
  """No buffer of the compiled forward + backward pass is as large as the [B, T, V] logits."""
  b, t, d, v, c = 2, 8, 4, 4096, 256
  hidden = jnp.ones((b, t, d), jnp.float32)
  unembed = jnp.ones((d, v), jnp.float32) * 0.01
  labels = jnp.zeros((b, t), jnp.int32)
  mask = jnp.ones((b, t), jnp.float32)
  fn = jax.jit(jax.grad(lambda h, w: losses.chunked_stream_loss(
      h, w, labels, mask, kind="ce", chunk_size=c), argnums=(0, 1)))
  hlo = fn.lower(hidden, unembed).compile().as_text()
  sizes = [math.prod(int(x) for x in dims.split(",") if x)
           for dims in re.findall(r"f32\[([\d,]*)\]", hlo)]
  assert max(sizes) < b * t * v, f"largest f32 buffer {max(sizes)} >= B*T*V = {b * t * v}"
  # The plain loss does hold one (so the check can fail).
  plain = jax.jit(jax.grad(lambda h, w: losses.cross_entropy_loss(h @ w, labels, mask),
                           argnums=(0, 1)))
  hlo = plain.lower(hidden, unembed).compile().as_text()
  sizes = [math.prod(int(x) for x in dims.split(",") if x)
           for dims in re.findall(r"f32\[([\d,]*)\]", hlo)]
  assert max(sizes) >= b * t * v
