"""Tests of what the losses do with bad or unusual input (issue 16 items 7 and 9) and of the
CB-Stream class-count scopes (issue 20 item 5): hand-computed numbers, errors naming the argument.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streampro_jax import losses

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

SIL, RESP = 2, 3
LN2 = math.log(2.0)
# Tolerance of these float32 losses against a hand value or a clean twin (tests/helpers/
# tolerances.py): log-softmax over V = 4 (8 roundings), class weights (6), the weighted sum over
# <= 16 tokens and a division (at most 17 for a sum of 16 terms): 31 roundings, relative. A
# clean twin runs the same operations in the same order (the bad entry is masked out before any
# sum), so it is bit-identical unless XLA fuses the two programs differently.
HAND_RTOL = tol.rel_ops_bound(31)
FNS = {
    "cb_stream": lambda lg, lb, mk: losses.cb_stream_loss(lg, lb, mk,
                                                          decision_token_ids=(SIL, RESP)),
    "ce": losses.cross_entropy_loss,
    "focal": lambda lg, lb, mk: losses.focal_stream_loss(lg, lb, mk,
                                                         decision_token_ids=(SIL, RESP)),
}


def _case():
  """B=1, T=3, V=4, uniform logits: every supervised -log p = 2 ln 2; t = 2 is masked out."""
  logits = jnp.zeros((1, 3, 4), jnp.float32)
  labels = jnp.array([[0, SIL, 1]], jnp.int32)
  mask = jnp.array([[1.0, 1.0, 0.0]], jnp.float32)
  return logits, labels, mask


@pytest.mark.parametrize("kind", sorted(FNS))
@pytest.mark.parametrize("bad_label", [-100, 4, 10_000])
def test_out_of_vocab_label_at_masked_position_is_ignored(kind, bad_label):
  logits, labels, mask = _case()
  want = FNS[kind](logits, labels, mask)
  got = FNS[kind](logits, labels.at[0, 2].set(bad_label), mask)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, want, rtol=HAND_RTOL)
  # CE by hand: both supervised tokens -log p = 2 ln 2.
  if kind == "ce":
    np.testing.assert_allclose(got, 2 * LN2, rtol=HAND_RTOL)


@pytest.mark.parametrize("kind", sorted(FNS))
def test_nan_logits_at_masked_position_reach_neither_loss_nor_gradient(kind):
  logits, labels, mask = _case()
  bad = logits.at[0, 2, :].set(jnp.nan)
  val, grad = jax.value_and_grad(lambda lg: FNS[kind](lg, labels, mask))(bad)
  want_val, want_grad = jax.value_and_grad(lambda lg: FNS[kind](lg, labels, mask))(logits)
  assert np.isfinite(val) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(val, want_val, rtol=HAND_RTOL)
  np.testing.assert_allclose(grad, want_grad, atol=HAND_RTOL * tol.max_abs(want_grad), rtol=0)
  np.testing.assert_array_equal(np.asarray(grad)[0, 2], 0.0)


def test_nan_hidden_at_masked_position_chunked():
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(1, 3, 4)), jnp.float32)
  unembed = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  labels = jnp.array([[0, SIL, -100]], jnp.int32)
  mask = jnp.array([[1.0, 1.0, 0.0]], jnp.float32)
  f = lambda h: losses.chunked_stream_loss(h, unembed, labels, mask, kind="cb_stream",  # noqa
                                           decision_token_ids=(SIL, RESP), chunk_size=4)
  val, grad = jax.value_and_grad(f)(hidden.at[0, 2].set(jnp.nan))
  want = f(hidden)
  assert np.isfinite(val) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(val, want, rtol=HAND_RTOL)


def test_t_shaped_mask_is_an_error_naming_the_argument():
  logits, labels, mask = _case()
  for name, fn in FNS.items():
    with pytest.raises(ValueError, match="loss_mask"):
      fn(logits, labels, mask[0])
    del name


def test_float_labels_are_rejected():
  logits, labels, mask = _case()
  with pytest.raises(ValueError, match="labels"):
    losses.cross_entropy_loss(logits, labels.astype(jnp.float32), mask)
  with pytest.raises(ValueError, match="labels"):
    losses.token_nll(logits, labels.astype(jnp.float32) + 0.5)


def test_shape_errors_name_the_argument():
  logits, labels, mask = _case()
  with pytest.raises(ValueError, match="logits"):
    losses.cross_entropy_loss(logits[0], labels, mask)       # [T, V] logits for [B, T] labels
  with pytest.raises(ValueError, match="labels"):
    losses.cross_entropy_loss(logits, labels[:, :2], mask)
  with pytest.raises(ValueError, match="logits"):
    losses.cross_entropy_loss(logits.astype(jnp.int32), labels, mask)


@pytest.mark.parametrize("ids,match", [((SIL, SIL), "equal"), ((SIL, 4), "outside"),
                                       ((-1, RESP), "outside")])
def test_bad_decision_ids_are_rejected(ids, match):
  logits, labels, mask = _case()
  with pytest.raises(ValueError, match=match):
    losses.cb_stream_loss(logits, labels, mask, decision_token_ids=ids)
  with pytest.raises(ValueError, match=match):
    losses.focal_stream_loss(logits, labels, mask, decision_token_ids=ids)


def test_jit_entry_points_and_static_argnames():
  logits, labels, mask = _case()
  want = losses.cb_stream_loss(logits, labels, mask, decision_token_ids=(SIL, RESP), beta=0.99)
  got = losses.cb_stream_loss_jit(logits, labels, mask, decision_token_ids=(SIL, RESP), beta=0.99)
  np.testing.assert_allclose(got, want, rtol=HAND_RTOL)
  for name, static in losses.STATIC_ARGNAMES.items():
    assert hasattr(losses, name), name
    jax.jit(getattr(losses, name), static_argnames=static)  # names exist in the signature
  f = jax.jit(losses.focal_stream_loss, static_argnames=losses.STATIC_ARGNAMES["focal_stream_loss"])
  np.testing.assert_allclose(
      f(logits, labels, mask, decision_token_ids=(SIL, RESP), gamma=2.0),
      losses.focal_stream_loss(logits, labels, mask, decision_token_ids=(SIL, RESP)),
      rtol=HAND_RTOL)


# ---- count scopes ------------------------------------------------------------------------------


def _scope_case():
  """B=4 rows, T=4, V=4, uniform logits (every -log p = 2 ln 2), beta = 0.5 for round numbers.

  row 0: S S S R     row 1: S S S S     row 2: S R R R     row 3: S S S S
  """
  labels = np.array([[SIL, SIL, SIL, RESP], [SIL] * 4, [SIL, RESP, RESP, RESP], [SIL] * 4],
                    np.int32)
  return jnp.zeros((4, 4, 4), jnp.float32), jnp.asarray(labels), jnp.ones((4, 4), jnp.float32)


def _w(n_sil, n_resp, beta=0.5):
  """Hand formula: E = (1 - beta^n) / (1 - beta), w_k = (1/E_k) / sum_j (1/E_j) * |present|."""
  e = [(1 - beta ** n) / (1 - beta) for n in (n_sil, n_resp) if n > 0]
  inv = [1 / x for x in e]
  w = [x / sum(inv) * len(inv) for x in inv]
  if n_resp == 0:
    return w[0], 0.0
  return w[0], w[1]


def test_count_scopes_by_hand():
  logits, labels, mask = _scope_case()
  ids = (SIL, RESP)
  # Global: n_sil = 12, n_resp = 4 -> one weight pair for all 16 tokens.
  ws, wr = _w(12, 4)
  want_global = 2 * LN2 * (12 * ws + 4 * wr) / 16
  # Per-row groups (4 groups of one row each): rows (3,1), (4,0), (1,3), (4,0).
  per = [_w(3, 1), _w(4, 0), _w(1, 3), _w(4, 0)]
  counts = [(3, 1), (4, 0), (1, 3), (4, 0)]
  want_rows = 2 * LN2 * sum(a * w[0] + b * w[1] for (a, b), w in zip(counts, per)) / 16
  # Two groups of two rows: (7, 1) and (5, 3).
  w01, w23 = _w(7, 1), _w(5, 3)
  want_pairs = 2 * LN2 * (7 * w01[0] + 1 * w01[1] + 5 * w23[0] + 3 * w23[1]) / 16
  rows_counts = losses.grouped_class_counts(labels, mask, ids, num_groups=4)
  np.testing.assert_array_equal(rows_counts, [[3, 1], [4, 0], [1, 3], [4, 0]])  # integer sums
  pairs_counts = losses.grouped_class_counts(labels, mask, ids, num_groups=2)
  np.testing.assert_array_equal(pairs_counts, [[7, 1], [7, 1], [5, 3], [5, 3]])
  for cc, want in ((None, want_global), (rows_counts, want_rows), (pairs_counts, want_pairs)):
    got = losses.cb_stream_loss(logits, labels, mask, decision_token_ids=ids, beta=0.5,
                                class_counts=cc)
    np.testing.assert_allclose(got, want, rtol=HAND_RTOL)
  # A row with silence only gives silence the weight 1 (absent class left out).
  assert per[1] == (1.0, 0.0)
  with pytest.raises(ValueError, match="num_groups"):
    losses.grouped_class_counts(labels, mask, ids, num_groups=3)


def test_weight_ratio_table_values():
  """The table of docs/components.md#count-scope: w_resp / w_sil = E_sil / E_resp at beta 0.9999."""
  r = losses._cb_stream_weight_ratio
  # One trajectory of 60 turns with 3 responses: E = n (1 - (n - 1)(1 - beta)/2 + ...).
  # Two effective numbers (8 roundings each, test_losses) and their quotient: 17 roundings.
  np.testing.assert_allclose(r(57, 3), (1 - 0.9999 ** 57) / (1 - 0.9999 ** 3),
                             rtol=tol.rel_ops_bound(17))
  assert 18.5 < r(57, 3) < 19.0
  # 512 such trajectories: 29184 vs 1536.
  np.testing.assert_allclose(r(57 * 512, 3 * 512),
                             (1 - 0.9999 ** (57 * 512)) / (1 - 0.9999 ** (3 * 512)),
                             rtol=tol.rel_ops_bound(17))
  assert 6.5 < r(57 * 512, 3 * 512) < 6.8
