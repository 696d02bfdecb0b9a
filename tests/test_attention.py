"""layers.attention against a NumPy reference, with the block-causal 'xla' path on rows longer
than one CAUSAL_BLOCK (several full blocks and a partial one)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streampro_jax.models import layers

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order


def _reference(q, k, v, mask, causal):
  """Plain float64 softmax attention: q [B, T, N, H], k, v [B, S, K, H], mask [B, N, T, S]."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, t, n, h = q.shape
  s, kh = k.shape[1], k.shape[2]
  k = np.repeat(k, n // kh, axis=2)
  v = np.repeat(v, n // kh, axis=2)
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
  allowed = np.broadcast_to(np.asarray(mask, bool), (b, n, t, s)).copy()
  if causal:
    allowed &= np.tril(np.ones((t, s), bool))
  logits = np.where(allowed, logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", p, v)


def _grad_bound(q, k, v, w, keys):
  """Two float32 orders of attention's gradients (tests/helpers/tolerances.py): the backward
  passes the forward's reductions again and sums dk, dv over the queries (at most `keys`): twice
  the two-sided forward bound, on the scale |w| x max(|q|, |k|, |v|, 1)."""
  scale = float(np.abs(np.asarray(w)).max()) * max(
      1.0, *(float(np.abs(np.asarray(x)).max()) for x in (q, k, v)))
  return 2 * tol.attention_bound(q, k, v, keys, two_sided=True) * scale


def _inputs(t, *, b=2, n=4, kh=2, h=8, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, t, n, h)).astype(np.float32)
  k = rng.normal(size=(b, t, kh, h)).astype(np.float32)
  v = rng.normal(size=(b, t, kh, h)).astype(np.float32)
  return q, k, v


@pytest.mark.parametrize("mask_kind", ["padding", "per_head", "none"])
def test_block_causal_xla_matches_reference(mask_kind):
  t = 2 * layers.CAUSAL_BLOCK + 37  # two full query blocks and a partial one
  q, k, v = _inputs(t)
  b, n = q.shape[0], q.shape[2]
  lengths = np.array([t, t - 50])  # row 1 ends in padding
  pad = np.arange(t)[None, :] < lengths[:, None]  # [B, S]
  if mask_kind == "padding":
    mask = pad[:, None, None, :]
  elif mask_kind == "per_head":
    rng = np.random.default_rng(1)
    mask = rng.random((b, n, t, t)) < 0.7
    mask[..., 0] = True  # every query keeps key 0 (its softmax is defined)
  else:
    mask = None
  want = _reference(q, k, v, np.ones((b, n, t, t), bool) if mask is None else mask, True)
  got = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                         mask=None if mask is None else jnp.asarray(mask), impl="xla",
                         is_causal=True)
  assert got.shape == q.shape
  bound = tol.attention_bound(q, k, v, t)  # float32 vs the float64 reference, t keys
  if mask_kind == "padding":  # padded queries attend to real keys only; compare the real rows
    tol.assert_within(tol.max_abs_diff(np.asarray(got)[1, :lengths[1]], want[1, :lengths[1]]),
                      bound, "attention: block causal padding row 1")
    tol.assert_within(tol.max_abs_diff(np.asarray(got)[0], want[0]), bound,
                      "attention: block causal padding row 0")
  else:
    tol.assert_within(tol.max_abs_diff(got, want), bound, f"attention: block causal {mask_kind}")


def test_block_causal_xla_gradients_match_jax_impl():
  t = layers.CAUSAL_BLOCK + 20
  q, k, v = _inputs(t, seed=3)
  mask = jnp.asarray((np.arange(t) < t - 9)[None, None, None, :])
  w = jnp.asarray(np.random.default_rng(4).normal(size=q.shape).astype(np.float32))

  def loss(impl, q, k, v):
    return (layers.attention(q, k, v, mask=mask, impl=impl, is_causal=True) * w).sum()

  g_xla = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(q, k, v)
  g_jax = jax.grad(lambda *a: loss("jax_xla", *a), argnums=(0, 1, 2))(q, k, v)
  for a, e in zip(g_xla, g_jax):
    tol.assert_within(tol.max_abs_diff(a, e), _grad_bound(q, k, v, w, t),
                      "attention: xla vs jax_xla gradients")


def test_block_causal_xla_long_row_uses_longer_blocks():
  """Past MAX_CAUSAL_BLOCKS * CAUSAL_BLOCK rows the blocks grow (at most MAX_CAUSAL_BLOCKS)."""
  t = layers._MAX_CAUSAL_BLOCKS * layers.CAUSAL_BLOCK + 50
  q, k, v = _inputs(t, b=1, n=2, kh=1, h=4, seed=9)
  mask = (np.arange(t) < t - 7)[None, None, None, :]
  got = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask),
                         impl="xla", is_causal=True)
  want = _reference(q, k, v, np.broadcast_to(mask, (1, 2, t, t)), True)
  tol.assert_within(tol.max_abs_diff(np.asarray(got)[:, :t - 7], want[:, :t - 7]),
                    tol.attention_bound(q, k, v, t), "attention: long row")


def test_xla_cross_attention_and_causal_with_fewer_queries():
  """T != S: a KV-cache style call (no causal) and is_causal aligned at the start."""
  q, _, _ = _inputs(5, seed=5)
  _, k, v = _inputs(70, seed=6)
  mask = np.random.default_rng(7).random((2, 1, 5, 70)) < 0.6
  mask[..., 0] = True
  got = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask),
                         impl="xla")
  bound = tol.attention_bound(q, k, v, 70)
  tol.assert_within(tol.max_abs_diff(got, _reference(q, k, v, mask, False)), bound,
                    "attention: cross attention")
  got = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), impl="xla",
                         is_causal=True)
  tol.assert_within(tol.max_abs_diff(got, _reference(q, k, v, np.ones((2, 4, 5, 70)), True)),
                    bound, "attention: causal with fewer queries")


def test_fully_masked_query_is_finite():
  t = layers.CAUSAL_BLOCK + 3
  q, k, v = _inputs(t, seed=8)
  mask = np.ones((2, 1, t, t), bool)
  mask[0, 0, t - 1, :] = False  # the last query of row 0 may attend to nothing
  got = layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=jnp.asarray(mask),
                         impl="xla", is_causal=True)
  assert np.isfinite(np.asarray(got)).all()


def test_lengths_equal_the_padding_mask_they_stand_for():
  """`lengths` (the cuDNN form of right padding) gives the attention of the dense mask it stands
  for, causal and not, on the XLA paths; 'jax' resolves to 'xla' on CPU and to cuDNN only on GPU
  in 16-bit."""
  t = 40
  q, k, v = _inputs(t, seed=5)
  lengths = jnp.asarray([t, t - 13])
  dense = jnp.asarray(np.arange(t)[None, :] < np.asarray(lengths)[:, None])[:, None, None, :]
  for causal in (False, True):
    for impl in ("xla", "jax_xla"):
      got = layers.attention(q, k, v, lengths=lengths, impl=impl, is_causal=causal)
      want = layers.attention(q, k, v, mask=dense, impl=impl, is_causal=causal)
      real = np.arange(t) < np.asarray(lengths)[:, None]  # padded query rows are unspecified
      tol.assert_within(tol.max_abs_diff(np.asarray(got)[real], np.asarray(want)[real]),
                        tol.attention_bound(q, k, v, t, two_sided=True),
                        f"attention: lengths vs dense mask {impl} causal={causal}")
  assert layers._resolve_impl("jax", jnp.bfloat16) == (
      "cudnn" if jax.default_backend() == "gpu" else "xla")
  assert layers._resolve_impl("jax", jnp.float32) == "xla"
  with pytest.raises(ValueError, match="unknown attention impl"):
    layers._resolve_impl("flash", jnp.float32)
  with pytest.raises(ValueError, match="lengths"):
    layers.attention(q.astype(jnp.bfloat16), k, v, mask=dense, impl="cudnn")


def test_segment_attention_values_and_gradients_match_a_dense_segment_mask():
  """segment_attention (gather into padded segments, custom VJP) against attention over all N
  tokens with a same-segment mask: outputs and the gradients of q, k, v. Uneven, permuted
  segments (padding slots in the short ones)."""
  rng = np.random.default_rng(3)
  n, heads, h = 11, 2, 4
  order = rng.permutation(n)
  segments = [order[:5], order[5:7], order[7:]]  # lengths 5, 2, 4
  seg_id = np.zeros(n, np.int64)
  for i, s in enumerate(segments):
    seg_id[s] = i
  plan = layers.segment_plan(segments, n)
  q, k, v = (jnp.asarray(rng.normal(size=(n, heads, h)), jnp.float32) for _ in range(3))
  w = jnp.asarray(rng.normal(size=(n, heads, h)), jnp.float32)
  mask = jnp.asarray(seg_id[:, None] == seg_id[None, :])[None, None]  # [1, 1, N, N]

  def seg(q, k, v):
    return jnp.sum(layers._segment_attention(q, k, v, plan, impl="xla") * w)

  def dense(q, k, v):
    return jnp.sum(layers.attention(q[None], k[None], v[None], mask=mask, impl="xla")[0] * w)

  out = layers._segment_attention(q, k, v, plan, impl="xla")
  ref = _reference(q[None], k[None], v[None], np.asarray(mask), False)[0]
  tol.assert_within(tol.max_abs_diff(out, ref), tol.attention_bound(q, k, v, n),
                    "attention: segments vs reference")
  for got, want in zip(jax.grad(seg, argnums=(0, 1, 2))(q, k, v),
                       jax.grad(dense, argnums=(0, 1, 2))(q, k, v)):
    tol.assert_within(tol.max_abs_diff(got, want), _grad_bound(q, k, v, w, n),
                      "attention: segment gradients vs dense mask")


def test_segment_plan_rejects_segments_that_do_not_partition_the_tokens():
  with pytest.raises(ValueError, match="partition"):
    layers.segment_plan([np.array([0, 1]), np.array([1, 2])], 3)
