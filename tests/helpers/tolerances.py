"""Derived float tolerances for the tests (issue 27, item 6; docs/components.md#test-tolerances).

Two computations that are equal in exact arithmetic but sum in another order (sharded vs one
device, scanned vs unrolled, chunked vs whole, jit vs eager, JAX vs PyTorch) differ by rounding
noise, and on XLA:CPU the order depends on the host: the core count (the intra-op thread pool,
NPROC), the ISA code is generated for (--xla_cpu_max_isa) and YNNPACK's dot kernels. A tolerance
must bound that noise on any host, and must stay close enough to it that the test can still fail:
every bound here is the derivation itself (no safety factor), and a test that multiplies one says
why.

The model (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 3.1 and 4.2):

* Unit roundoff u: float32 2^-24, bfloat16 2^-8, float64 2^-53.
* A sum of n terms in any order is the exact sum to within gamma_{n-1} * sum|x_i|, where
  gamma_n = n u / (1 - n u); two orders therefore differ by at most 2 gamma_{n-1} * sum|x_i|
  (`sum_bound`, worst case, the default: it holds for any order, so on any host).
* sum|x_i| is not observable per output element; the tests pass as `scale` the largest magnitude
  of the compared values. That is sound up to cancellation inside the sum: random-sign rounding
  errors give lam sqrt(n) u (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019: the error is below
  gamma~_n(lam) * sum|x_i|, gamma~_n(lam) = exp(lam sqrt(n) u + n u^2 / (1 - u)) - 1, except with
  probability <= 2 n exp(-lam^2 (1 - u)^2 / 2), n * 2.5e-14 at lam = 8; `gamma_prob`), so the
  worst-case n u on the output's scale leaves a factor sqrt(n) / lam for sum|x_i| / |sum x_i|.
* A network is a chain of reductions (matmuls over their contraction length, softmax sums,
  RMSNorm means). To first order the relative errors of the stages add when each stage is
  Lipschitz-1 relative to its output's scale (normalised layers, softmax): `chain_bound` sums the
  per-reduction bounds of the stages a value passes through (`path_lengths` lists them for the
  tiny transformers the tests use).
* Adam: the step-t update lr_t m^ / (sqrt(v^) + eps) has m^ = sum_k a_k g_k and
  v^ = sum_k b_k g_k^2 (bias-corrected: a_k, b_k >= 0, each summing to one), so
  |d sqrt(v^) / d g_k| <= sqrt(b_k), |m^| <= r sqrt(v^) with r^2 = sum_k a_k^2 / b_k, and the
  update moves by at most lr_t (1 + r sum_k sqrt(b_k)) delta / eps when every past gradient entry
  moves by delta (`adam_param_bound`; 1 + r sum sqrt(b_k) is 2 at t = 1, 2.44 at t = 2). With the
  default eps = 1e-8 that is a 1e8 gain: a gradient entry whose true value is at the rounding
  noise is stepped by about +-lr on either side of the comparison, a 2 lr difference that no
  tolerance below the update itself can bound on every host. So the trainer tests that compare
  parameters after Adam steps use a larger eps (1e-3 for the toy and GRPO steps, 1e-2 for the
  tiny Qwen SFT runs, whose gradient chain is longer), which keeps the map from gradients to
  parameters Lipschitz with a small constant (the sharding logic under test does not depend on
  eps), and they check that the resulting bound stays below half the largest parameter change.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

U32 = 2.0 ** -24
UBF16 = 2.0 ** -8
U64 = 2.0 ** -53
LAMBDA = 8.0


def unit_roundoff(dtype) -> float:
  """u of a dtype name or numpy/jax dtype: float32, bfloat16 or float64."""
  name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
  return {"float32": U32, "bfloat16": UBF16, "float64": U64}[name]


def gamma(n: int, u: float = U32) -> float:
  """Worst-case relative error of a length-n sum (or n chained roundings): n u / (1 - n u)."""
  if n * u >= 1:
    raise ValueError(f"n u = {n * u} >= 1: no bound")
  return n * u / (1 - n * u)


def gamma_prob(n: int, u: float = U32, lam: float = LAMBDA) -> float:
  """Higham & Mary's probabilistic gamma~_n(lam): exp(lam sqrt(n) u + n u^2 / (1 - u)) - 1."""
  return math.expm1(lam * math.sqrt(n) * u + n * u * u / (1 - u))


def sum_bound(n: int, abs_sum: float, u: float = U32, worst: bool = True) -> float:
  """Largest |difference| between two summation orders of n terms whose |x_i| sum to abs_sum:
  each order is within gamma(n - 1) * abs_sum of the exact sum (probabilistic gamma~ unless
  worst), so twice that."""
  m = max(n - 1, 1)
  return 2 * (gamma(m, u) if worst else gamma_prob(m, u)) * abs_sum


def f32_sum_bound(n: int, scale: float, worst: bool = True) -> float:
  """sum_bound in float32: n terms, `scale` = sum of their magnitudes."""
  return sum_bound(n, scale, U32, worst)


def chain_bound(lengths: Iterable[int], scale: float, u: float = U32,
                worst: bool = True) -> float:
  """A value computed through a chain of reductions of these lengths, each stage Lipschitz-1
  relative to `scale` (its output's magnitude): to first order the per-stage bounds add."""
  return sum(sum_bound(n, scale, u, worst) for n in lengths)


def rel_ops_bound(ops: int, u: float = U32) -> float:
  """Relative error of a short formula of `ops` roundings against its exact value (or a
  hand-computed reference): gamma(ops), worst case; e.g. a mean of k numbers is k roundings."""
  return gamma(ops, u)


def adam_gain(t: int, b1: float = 0.9, b2: float = 0.999) -> float:
  """1 + r sum_k sqrt(b_k) of Adam's step t (see the module docstring): the update's change,
  in units of lr * delta / eps, when each of the t gradients seen so far changes by delta."""
  a = [(1 - b1) * b1 ** (t - k) / (1 - b1 ** t) for k in range(1, t + 1)]
  b = [(1 - b2) * b2 ** (t - k) / (1 - b2 ** t) for k in range(1, t + 1)]
  r = math.sqrt(sum(x * x / y for x, y in zip(a, b)))
  return 1 + r * sum(math.sqrt(y) for y in b)


def adam_param_bound(grad_delta: float, lrs: Iterable[float], eps: float, b1: float = 0.9,
                     b2: float = 0.999, weight_decay: float = 0.0) -> float:
  """|parameter difference| after Adam(W) steps at these learning rates when every (clipped)
  gradient entry differs by at most grad_delta between the two runs: the parameter difference d
  grows by lr_t (adam_gain(t) grad_delta / eps + weight_decay d) per step. grad_delta must also
  hold the curvature times the earlier parameter difference (the caller's allowance:
  test_train_step.assert_steps_agree assumes it at most the rounding noise per step)."""
  d = 0.0
  for t, lr in enumerate(lrs, 1):
    d += lr * (adam_gain(t, b1, b2) * grad_delta / eps + weight_decay * d)
  return d


def path_lengths(*, hidden: int, intermediate: int, head_dim: int, seq: int, layers: int,
                 vocab: int = 0, backward: bool = False, tokens: int = 0) -> list[int]:
  """The reduction lengths a tiny pre-norm transformer's output passes through: per layer
  RMSNorm (hidden), q/k/v projection (hidden), q.k (head_dim), softmax sum and p.v (seq each),
  o projection (hidden), RMSNorm (hidden), gate/up (hidden), down (intermediate); then the final
  norm, the unembedding (hidden) and, with vocab, a log-softmax over it. backward: the gradient
  passes the same reductions again (transposed), and a weight gradient then sums over `tokens`.
  """
  layer = [hidden, hidden, head_dim, seq, seq, hidden, hidden, hidden, intermediate]
  out = layer * layers + [hidden, hidden] + ([vocab] if vocab else [])
  if backward:
    out = out * 2 + ([tokens] if tokens else [])
  return out


def model_path(cfg, seq: int, *, vision_seq: int = 64, vocab: bool = False,
               backward: bool = False, tokens: int = 0) -> list[int]:
  """path_lengths of a Qwen-VL config (either family): a video token's path through the vision
  tower (patch embedding over 3 x T x P x P inputs, `vision.depth` blocks attending over at most
  `vision_seq` patches, the merger over spatial_merge^2 x hidden, twice), then the text layers
  over `seq` positions (vocab: and the log-softmax over the vocabulary)."""
  t, v = cfg.text, cfg.vision
  patch = getattr(v, "in_channels", 3) * v.temporal_patch_size * v.patch_size ** 2
  merge = v.hidden_size * v.spatial_merge_size ** 2
  vision = [patch] + path_lengths(
      hidden=v.hidden_size, intermediate=v.intermediate_size,
      head_dim=v.hidden_size // v.num_heads, seq=vision_seq, layers=v.depth)[:-2] + [merge, merge]
  text = path_lengths(hidden=t.hidden_size, intermediate=t.intermediate_size,
                      head_dim=t.head_dim, seq=seq, layers=t.num_hidden_layers,
                      vocab=t.vocab_size if vocab else 0)
  fwd = vision + text
  return fwd * 2 + ([tokens] if tokens else []) if backward else fwd


def model_rel(cfg, seq: int, **kw) -> float:
  """chain_bound(model_path(cfg, seq, **kw), 1): the relative rounding bound of a tiny Qwen-VL's
  logits (or, backward=True, weight gradients) between two summation orders."""
  return chain_bound(model_path(cfg, seq, **kw), 1.0)


def logp_bound(cfg, seq: int, logit_scale: float) -> float:
  """|difference| of a token's log-prob log_softmax(z)[y] of a tiny Qwen-VL between two
  summation orders, z its logits (largest magnitude `logit_scale`) over <= `seq` positions:
  every logit moves by at most e = model_rel(cfg, seq) * logit_scale (the logits' chain on
  their scale), which moves z_y - logsumexp(z) by at most 2 e (logsumexp is 1-Lipschitz in the
  max norm); the log-softmax's own sum of V exponentials (one rounding each) is within
  gamma(V) + u of its value in either order, 2 (gamma(V) + u) apart in the log; the last
  subtraction rounds |logp| <= 2 logit_scale + log V once on each side."""
  e = model_rel(cfg, seq) * logit_scale
  v = cfg.text.vocab_size
  return 2 * e + 2 * (gamma(v) + U32) + 2 * U32 * (2 * logit_scale + math.log(v))


def logit_scale(params, cfg, batch) -> float:
  """max |logit| over the real tokens of one full forward of a RolloutBatch-like `batch`
  (input_ids, pixel_values_videos, video_grid_thw, attention_mask, position_ids): the scale
  `logp_bound` needs."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  logits = models.build(cfg).apply(
      {"params": params}, jnp.asarray(batch.input_ids),
      pixel_values_videos=jnp.asarray(batch.pixel_values_videos),
      video_grid_thw=batch.video_grid_thw, attention_mask=jnp.asarray(batch.attention_mask),
      position_ids=jnp.asarray(batch.position_ids))
  return float(np.abs(np.asarray(logits)[np.asarray(batch.attention_mask) > 0]).max())


def logit_bound(params, cfg) -> float:
  """A bound on every logit of a Qwen-VL from its parameters alone: the final RMSNorm's
  normalised vector x / sqrt(mean(x^2) + eps) has 2-norm <= sqrt(D), so by Cauchy-Schwarz
  |z_v| <= sqrt(D) |scale * W[:, v]|_2 (W the [D, V] unembedding). For `logp_bound` where no
  forward is at hand (a trainer's logged metric)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import common  # pylint: disable=g-import-not-at-top
  p = nn.unbox(params)
  scale = np.asarray(p["norm"]["scale"], np.float64)
  w = np.asarray(common.unembedding(p, cfg), np.float64)
  return float(math.sqrt(scale.size) * np.sqrt(((scale[:, None] * w) ** 2).sum(axis=0)).max())


def approx64(expected, ops: int = 64):
  """pytest.approx for host-side float64 arithmetic (Python floats, NumPy float64) of at most
  `ops` roundings on values of order one, against a hand-computed reference: rel gamma(ops) in
  float64 (64 ops: 7e-15), abs the same so exact zeros compare."""
  import pytest  # pylint: disable=g-import-not-at-top
  tol = gamma(ops, U64)
  return pytest.approx(expected, rel=tol, abs=tol)


def assert_within(observed: float, bound: float, what: str = "") -> None:
  """assert observed <= bound; with TOLERANCE_REPORT set (a file path), also appends
  `what<TAB>observed<TAB>bound` to it (the host-setting sweeps of docs/components.md read it)."""
  observed, bound = float(observed), float(bound)
  path = os.environ.get("TOLERANCE_REPORT")
  if path:
    with open(path, "a", encoding="utf-8") as f:
      f.write(f"{what}\t{observed:.3e}\t{bound:.3e}\n")
  assert observed <= bound, f"{what}: {observed:.3e} > bound {bound:.3e}"


def max_abs_diff(a, b) -> float:
  """max |a - b| over arrays or matching pytrees of arrays, in float64."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64)
                                                         - np.asarray(y, np.float64)),
                                                  initial=0.0)), a, b)
  return max(jax.tree.leaves(diffs), default=0.0)


def max_abs(a) -> float:
  """max |a| over an array or a pytree of arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return max((float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0))
              for x in jax.tree.leaves(a)), default=0.0)


def approx_ops(expected, ops: int = 16, u: float = U32):
  """pytest.approx for a short formula of at most `ops` roundings in unit roundoff u (default
  float32: 16 roundings, 9.5e-7, what pytest.approx's default rel 1e-6 stood for) against a
  hand-computed or float64 value: rel and abs gamma(ops) (abs so that exact zeros compare)."""
  import pytest  # pylint: disable=g-import-not-at-top
  t = gamma(ops, u)
  return pytest.approx(expected, rel=t, abs=t)


def attention_bound(q, k, v, keys: int, u: float = U32, two_sided: bool = False) -> float:
  """|error| of softmax(q k^T / sqrt(h)) v computed in float32 against the exact value (or, two
  sided, against another order), q [B, T, N, H] and k, v [B, S, K, H] (or without B): a score's
  error is gamma_{h+1} sum_i |q_i k_i| / sqrt(h) (the largest over the pairs), exp turns it into
  the same relative error of p (twice: numerator and normaliser), the normaliser and p . v sum
  over `keys` terms (gamma_keys each), on the scale max |v| (sum_s p_s |v_s| <= max |v|)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  q, k, v = (np.abs(np.asarray(x, np.float64)) for x in (q, k, v))
  if q.ndim == 3:
    q, k, v = q[None], k[None], v[None]
  h = q.shape[-1]
  k = np.repeat(k, q.shape[2] // k.shape[2], axis=2)
  qk = float(np.einsum("btnh,bsnh->bnts", q, k).max()) / math.sqrt(h)
  score = gamma(h + 1, u) * qk
  b = (2 * score + 2 * gamma(keys, u) + 3 * u) * float(v.max())
  return 2 * b if two_sided else b
