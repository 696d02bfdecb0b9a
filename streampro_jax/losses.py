"""Stage-1 (SFT) losses: CB-Stream, plain cross-entropy and the Streamo focal baseline.

All three share one shape convention (docs/method.md section 2):

  logits    f32[B, T, V]  (any float dtype; the math runs in float32)
  labels    i32[B, T]     target token at each position (already shifted)
  loss_mask f32[B, T]     1 where the position is supervised, 0 elsewhere

and one structure: a per-token negative log-likelihood nll_i = -log p(y_i), a per-token weight w_i
that depends only on the labels (a constant in the gradient, except the focal factor), and

  L = (1 / N) * sum_i mask_i * w_i * nll_i,     N = sum_i mask_i.

Every loss has a `*_sum_and_count` variant returning (sum_i mask_i * w_i * nll_i, N) so gradient
accumulation stays exact: sum the sums and the counts over micro-batches and divide once. The
class-balanced weights of CB-Stream and focal depend on the decision-token counts n_k of the whole
global batch; a caller that accumulates over micro-batches computes them once with
`decision_class_counts` on the full global batch and passes them as `class_counts`. Without
`class_counts` the counts are taken over the arrays given (inside jit on a sharded array, that is
the global batch).

`chunked_stream_loss` computes the same losses from hidden states and the unembedding matrix
without materialising the [B, T, V] logits.

Input rules (checked at entry with chex; an error names the function and the argument):
  * logits are floating, labels are integers (float labels are rejected, never truncated), and
    loss_mask has exactly the shape of labels (a [T] mask for [B, T] labels is an error, it is
    not broadcast).
  * A masked-out position never reaches the value or the gradient: its label may be anything
    (the Hugging Face ignore label -100, an id past the vocabulary) and its logits may be NaN or
    inf. An out-of-vocabulary label at a *supervised* position gives a NaN loss (loudly wrong
    data; it cannot raise under jit).
  * decision_token_ids are static Python ints, distinct and inside the vocabulary.

Static arguments under jax.jit: `STATIC_ARGNAMES` names them per function (decision_token_ids,
beta, kind, chunk_size); `cb_stream_loss_jit`, `cross_entropy_loss_jit`, `focal_stream_loss_jit`
and `chunked_stream_loss_jit` are the already-jitted entry points.

Class-count scopes (config `loss.count_scope`, see train/sft.py and docs/components.md#count-scope):
`class_counts` may be one f32[K] vector for the whole batch or one f32[..., K] row of counts per
sequence (`grouped_class_counts`: the counts of the group of rows each row belongs to).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from streampro_jax import _checks, parallel

__all__ = [
    "LOSS_KINDS", "STATIC_ARGNAMES", "cb_stream_class_weights", "cb_stream_loss",
    "cb_stream_loss_jit", "cb_stream_loss_sum_and_count", "chunked_stream_loss",
    "chunked_stream_loss_jit", "chunked_token_stats", "cross_entropy_loss",
    "cross_entropy_loss_jit", "decision_class_counts", "focal_stream_loss",
    "focal_stream_loss_jit", "focal_stream_loss_sum_and_count", "grouped_class_counts",
    "loss_sum_and_count", "metrics", "metrics_from_sums", "metrics_sums", "token_logps",
    "token_logps_from_hidden", "token_nll", "weighted_nll_sum_and_count"
]

_Array = jax.Array

LOSS_KINDS = ("cb_stream", "ce", "focal")


# ----------------------------------------------------------------------------------------------
# Per-token pieces.
# ----------------------------------------------------------------------------------------------


def _check_inputs(fn: str, logits: _Array, labels: _Array, loss_mask: _Array | None) -> None:
  """logits float [..., V] with leading shape = labels' shape; labels int; mask = labels' shape."""
  _checks.floating(fn, "logits", logits)
  _checks.integer(fn, "labels", labels)
  if jnp.ndim(logits) != jnp.ndim(labels) + 1:
    raise _checks.ArgumentError(
        f"{fn}: logits has shape {tuple(jnp.shape(logits))}, labels {tuple(jnp.shape(labels))}; "
        "expected logits [B, T, V] for labels [B, T]")
  _checks.shape(fn, "labels", labels, tuple(jnp.shape(logits))[:-1],
                "(the leading shape of logits)")
  if loss_mask is not None:
    _checks.floating_or_bool(fn, "loss_mask", loss_mask)
    _checks.shape(fn, "loss_mask", loss_mask, tuple(jnp.shape(labels)),
                  "(the shape of labels; it is not broadcast)")


def token_nll(logits: _Array, labels: _Array, loss_mask: _Array | None = None) -> _Array:
  """Per-token negative log-likelihood.

  nll[b, t] = logsumexp_v(logits[b, t, v]) - logits[b, t, labels[b, t]], in float32.

  A label outside [0, V) gives NaN there. With loss_mask, masked-out positions give 0 whatever
  their logits (NaN included) and label (-100 included), with a zero gradient.

  Args:
    logits: f32[B, T, V] (or any leading shape [..., V]).
    labels: i32[B, T] (the leading shape of logits).
    loss_mask: optional [B, T], 1 where supervised.

  Returns:
    f32[B, T].
  """
  _check_inputs("token_nll", logits, labels, loss_mask)
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  if loss_mask is not None:
    keep = jnp.asarray(loss_mask) > 0
    logits = jnp.where(keep[..., None], logits, 0.0)
    labels = jnp.where(keep, labels, 0)
  v = logits.shape[-1]
  in_vocab = (labels >= 0) & (labels < v)
  lse = jax.nn.logsumexp(logits, axis=-1)
  safe = jnp.where(in_vocab, labels, 0)
  label_logit = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
  return jnp.where(in_vocab, lse - label_logit, jnp.nan)


def _decision_ids(decision_token_ids: Sequence[int] | _Array, vocab_size: int | None = None,
                  fn: str = "losses") -> np.ndarray:
  """The decision token ids as a NumPy i32[K]: static, distinct and inside [0, vocab_size)."""
  if isinstance(decision_token_ids, jax.core.Tracer):
    raise _checks.ArgumentError(
        f"{fn}: decision_token_ids: must be static Python ints (name it in static_argnames, see "
        "losses.STATIC_ARGNAMES), got a traced array")
  if decision_token_ids is None:
    raise _checks.ArgumentError(f"{fn}: decision_token_ids: missing; CB-Stream and focal need "
                                "the decision token ids (</Silence>, </Response>)")
  raw = np.asarray(decision_token_ids)
  if raw.size and not np.issubdtype(raw.dtype, np.integer):
    raise _checks.ArgumentError(f"{fn}: decision_token_ids: expected ints, got {raw.dtype}")
  ids = raw.astype(np.int64).reshape(-1)
  if ids.shape[0] == 0:
    raise _checks.ArgumentError(f"{fn}: decision_token_ids is empty; CB-Stream needs the "
                                "decision token ids (</Silence>, </Response>).")
  if len(set(ids.tolist())) != ids.shape[0]:
    raise _checks.ArgumentError(f"{fn}: decision_token_ids {ids.tolist()}: two ids are equal")
  if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
    raise _checks.ArgumentError(f"{fn}: decision_token_ids {ids.tolist()}: an id lies outside "
                                f"the vocabulary [0, {vocab_size})")
  return ids.astype(np.int32)  # NumPy: a constant under jit (never a tracer).


def decision_class_counts(labels: _Array, loss_mask: _Array,
                          decision_token_ids: Sequence[int] | _Array) -> _Array:
  """Number of supervised positions whose target is each decision token.

  n_k = sum_{b,t} loss_mask[b, t] * [labels[b, t] == decision_token_ids[k]].

  Args:
    labels: i32[B, T].
    loss_mask: [B, T], 1 where supervised.
    decision_token_ids: K ints (for StreamPro K = 2: </Silence>, </Response>).

  Returns:
    f32[K] counts (float32 so that they can be summed across micro-batches / hosts).
  """
  ids = _decision_ids(decision_token_ids, fn="decision_class_counts")
  _checks.shape("decision_class_counts", "loss_mask", loss_mask, tuple(jnp.shape(labels)),
                "(the shape of labels)")
  is_k = (labels[..., None] == ids).astype(jnp.float32)  # [B, T, K]
  mask = (jnp.asarray(loss_mask) > 0).astype(jnp.float32)[..., None]
  return jnp.sum(is_k * mask, axis=tuple(range(labels.ndim)))


def grouped_class_counts(labels: _Array, loss_mask: _Array,
                         decision_token_ids: Sequence[int] | _Array, *,
                         num_groups: int) -> _Array:
  """Decision-class counts of contiguous groups of rows, repeated for each row of the group.

  The B rows are split into num_groups contiguous blocks of B / num_groups rows (the rows one
  device holds when the batch is sharded over num_groups devices); row b gets the counts of its
  block: out[b, k] = sum_{b' in block(b), t} loss_mask[b', t] * [labels[b', t] == id_k].
  num_groups = B gives each row its own counts; num_groups = 1 the whole batch's.

  Args:
    labels: i32[B, T]; loss_mask: [B, T].
    decision_token_ids: K static ints.
    num_groups: static int dividing B.

  Returns:
    f32[B, K] (pass as class_counts to the losses).
  """
  ids = _decision_ids(decision_token_ids, fn="grouped_class_counts")
  _checks.rank("grouped_class_counts", "labels", labels, 2)
  _checks.shape("grouped_class_counts", "loss_mask", loss_mask, tuple(jnp.shape(labels)),
                "(the shape of labels)")
  b = labels.shape[0]
  if num_groups < 1 or b % num_groups:
    raise _checks.ArgumentError(f"grouped_class_counts: num_groups {num_groups} does not "
                                f"divide the {b} rows")
  is_k = (labels[..., None] == ids).astype(jnp.float32)
  mask = (jnp.asarray(loss_mask) > 0).astype(jnp.float32)[..., None]
  per_row = jnp.sum(is_k * mask, axis=1)                               # [B, K]
  per_group = per_row.reshape(num_groups, b // num_groups, -1).sum(1)  # [groups, K]
  return jnp.repeat(per_group, b // num_groups, axis=0)


def _cb_stream_weight_ratio(n_silence: float, n_response: float, beta: float = 0.9999) -> float:
  """w_response / w_silence of CB-Stream for class counts (n_silence, n_response) (host float).

  With both classes present the ratio is E_silence / E_response,
  E_k = (1 - beta**n_k) / (1 - beta) (the table in docs/components.md#count-scope).
  """
  w = np.asarray(cb_stream_class_weights(jnp.asarray([n_silence, n_response], jnp.float32),
                                         beta))
  return float(w[1] / w[0])


def _effective_number(n: _Array, beta: float) -> _Array:
  """Effective number of samples E = (1 - beta**n) / (1 - beta), accurate in float32.

  Computed as -expm1(n * log1p(-(1 - beta))) / (1 - beta) with log1p(-(1 - beta)) and 1 - beta
  evaluated in Python float64 (beta is a static hyper-parameter), so at beta = 0.9999 the result is
  accurate to ~1e-6 relative where the naive float32 formula loses about three digits.
  beta = 1 gives the limit E = n; beta = 0 gives E = 1 for n >= 1.

  Args:
    n: counts, any shape (float).
    beta: static float in [0, 1].

  Returns:
    float32 array of n's shape.
  """
  beta = float(beta)
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must lie in [0, 1], got {beta}")
  n = jnp.asarray(n, jnp.float32)
  if beta == 1.0:
    return n
  one_minus_beta = 1.0 - beta
  if beta == 0.0:
    return jnp.where(n > 0, 1.0, 0.0).astype(jnp.float32)
  log_beta = math.log1p(-one_minus_beta)
  return -jnp.expm1(n * jnp.float32(log_beta)) / jnp.float32(one_minus_beta)


def cb_stream_class_weights(class_counts: _Array, beta: float = 0.9999) -> _Array:
  """Class-balanced weights of the decision classes (docs/method.md section 2).

  E_k = (1 - beta**n_k) / (1 - beta)
  w_k = (1 / E_k) / sum_{j present} (1 / E_j) * |S_present|    (w_k = 0 for an absent class)

  A class with n_k = 0 is absent and is left out of the normalisation, so a batch holding a single
  class gives it weight 1. The result carries no gradient.

  Args:
    class_counts: f32[K] counts n_k (or f32[..., K]: one set of counts per row).
    beta: static float.

  Returns:
    f32[K] (or f32[..., K]).
  """
  n = jax.lax.stop_gradient(jnp.asarray(class_counts, jnp.float32))
  present = n > 0
  e = _effective_number(jnp.where(present, n, 1.0), beta)
  inv = jnp.where(present, 1.0 / e, 0.0)
  num_present = jnp.sum(present.astype(jnp.float32), axis=-1, keepdims=True)
  total = jnp.sum(inv, axis=-1, keepdims=True)
  return jnp.where(present, inv / jnp.where(total > 0, total, 1.0) * num_present, 0.0)


def _focal_class_alphas(class_counts: _Array) -> _Array:
  """Streamo focal class weights alpha_k = (sum_j n_j / n_k) / |S_present| (0 when n_k = 0).

  Args:
    class_counts: f32[K] (or f32[..., K], one set per row).

  Returns:
    f32[K] (or f32[..., K]), no gradient.
  """
  n = jax.lax.stop_gradient(jnp.asarray(class_counts, jnp.float32))
  present = n > 0
  num_present = jnp.maximum(jnp.sum(present.astype(jnp.float32), axis=-1, keepdims=True), 1.0)
  total = jnp.sum(n, axis=-1, keepdims=True)
  return jnp.where(present, total / jnp.where(present, n, 1.0) / num_present, 0.0)


def _per_token_class_value(labels: _Array, ids: _Array, class_values: _Array,
                           other: _Array | float) -> _Array:
  """value_i = class_values[k] if labels_i == ids[k] else other.

  class_values is f32[K] or f32[B, K] (one set per row of labels [B, T]).
  """
  is_k = labels[..., None] == ids  # [B, T, K]
  if class_values.ndim == labels.ndim:  # per-row values [B, K] -> [B, 1, K]
    class_values = class_values[..., None, :]
  in_s = jnp.any(is_k, axis=-1)
  picked = jnp.sum(jnp.where(is_k, class_values, 0.0), axis=-1)
  return jnp.where(in_s, picked, other)


def weighted_nll_sum_and_count(nll: _Array, labels: _Array, loss_mask: _Array, *, kind: str,
                               decision_token_ids, beta: float = 0.9999,
                               text_weight: float = 2.0, gamma: float = 2.0,
                               class_counts: _Array | None = None):
  """Shared weighting of per-token nll f32[B, T] for every loss kind (see the module docstring).

  Masked-out positions are selected away (jnp.where), so a NaN nll there reaches neither the sum
  nor the gradient. class_counts: None (counted here), f32[K], or f32[B, K] per row.
  """
  fn = "weighted_nll_sum_and_count"
  _checks.shape(fn, "loss_mask", loss_mask, tuple(jnp.shape(labels)),
                "(the shape of labels; it is not broadcast)")
  _checks.shape(fn, "nll", nll, tuple(jnp.shape(labels)), "(the shape of labels)")
  keep = jnp.asarray(loss_mask) > 0
  mask = jnp.where(keep, jnp.asarray(loss_mask, jnp.float32), 0.0)
  count = jnp.sum(mask)
  nll = jnp.where(keep, nll, 0.0)
  if kind == "ce":
    return jnp.sum(mask * nll), count
  if kind not in LOSS_KINDS:
    raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")
  ids = _decision_ids(decision_token_ids, fn=fn)
  if class_counts is None:
    class_counts = decision_class_counts(labels, loss_mask, ids)
  cc_shape = tuple(jnp.shape(class_counts))
  if cc_shape not in ((ids.shape[0],), tuple(jnp.shape(labels))[:-1] + (ids.shape[0],)):
    raise _checks.ArgumentError(
        f"{fn}: class_counts has shape {cc_shape}; expected ({ids.shape[0]},) or "
        f"{tuple(jnp.shape(labels))[:-1] + (ids.shape[0],)} (one set per row)")
  if kind == "cb_stream":
    w = _per_token_class_value(labels, ids, cb_stream_class_weights(class_counts, beta),
                               jnp.asarray(text_weight, jnp.float32))
    w = jax.lax.stop_gradient(w)
    return jnp.sum(mask * w * nll), count
  # focal: decision tokens alpha_k * (1 - p)^gamma * nll, text tokens nll.
  alpha = jax.lax.stop_gradient(
      _per_token_class_value(labels, ids, _focal_class_alphas(class_counts), 1.0))
  is_decision = jnp.any(labels[..., None] == ids, axis=-1)
  one_minus_p = -jnp.expm1(-nll)  # 1 - exp(-nll), accurate near p = 1.
  focal = jnp.power(jnp.maximum(one_minus_p, 0.0), jnp.asarray(gamma, jnp.float32))
  w = jnp.where(is_decision, alpha * focal, 1.0)
  return jnp.sum(mask * w * nll), count


def _safe_div(total: _Array, count: _Array) -> _Array:
  return total / jnp.maximum(count, 1.0)


# ----------------------------------------------------------------------------------------------
# Public losses on logits.
# ----------------------------------------------------------------------------------------------


def cb_stream_loss_sum_and_count(logits: _Array, labels: _Array, loss_mask: _Array, *,
                                 decision_token_ids, beta: float = 0.9999,
                                 text_weight: float = 2.0,
                                 class_counts: _Array | None = None) -> tuple[_Array, _Array]:
  """CB-Stream numerator and denominator: (sum_i mask_i * w_i * nll_i, N). See cb_stream_loss."""
  _check_inputs("cb_stream_loss", logits, labels, loss_mask)
  _decision_ids(decision_token_ids, logits.shape[-1], "cb_stream_loss")
  return weighted_nll_sum_and_count(token_nll(logits, labels, loss_mask), labels, loss_mask,
                                 kind="cb_stream",
                                 decision_token_ids=decision_token_ids, beta=beta,
                                 text_weight=text_weight, class_counts=class_counts)


def cb_stream_loss(logits: _Array, labels: _Array, loss_mask: _Array, *, decision_token_ids,
                   beta: float = 0.9999, text_weight: float = 2.0,
                   class_counts: _Array | None = None) -> _Array:
  """Class-balanced streaming loss (CB-Stream, docs/method.md section 2).

  n_k   = number of supervised positions with target k, for k in S = decision tokens
  E_k   = (1 - beta**n_k) / (1 - beta)
  w_k   = (1 / E_k) / sum_{j in S_present} (1 / E_j) * |S_present|
  w_i   = w_{y_i} if y_i in S else text_weight
  L_CB  = (1 / N) * sum_i mask_i * w_i * (-log p(y_i)),    N = sum_i mask_i

  Weights are constants in the gradient. An absent class is left out of the normalisation. N = 0
  gives 0.

  Args:
    logits: f32[B, T, V].
    labels: i32[B, T] targets (already shifted).
    loss_mask: [B, T], 1 where supervised.
    decision_token_ids: the decision token ids (</Silence>, </Response>).
    beta: static float, 0.9999 by default.
    text_weight: lambda_text, 2.0 by default.
    class_counts: optional f32[K] global counts n_k (for gradient accumulation); by default they
      are counted over `labels`/`loss_mask`.

  Returns:
    f32 scalar.
  """
  return _safe_div(*cb_stream_loss_sum_and_count(
      logits, labels, loss_mask, decision_token_ids=decision_token_ids, beta=beta,
      text_weight=text_weight, class_counts=class_counts))


def cross_entropy_loss(logits: _Array, labels: _Array, loss_mask: _Array) -> _Array:
  """Plain token cross-entropy: L = (1 / N) * sum_i mask_i * (-log p(y_i)), N = sum_i mask_i.

  Args:
    logits: f32[B, T, V]; labels: i32[B, T]; loss_mask: [B, T].

  Returns:
    f32 scalar (0 when N = 0).
  """
  _check_inputs("cross_entropy_loss", logits, labels, loss_mask)
  return _safe_div(*weighted_nll_sum_and_count(token_nll(logits, labels, loss_mask), labels,
                                               loss_mask, kind="ce", decision_token_ids=None))


def focal_stream_loss_sum_and_count(logits: _Array, labels: _Array, loss_mask: _Array, *,
                                    decision_token_ids, gamma: float = 2.0,
                                    class_counts: _Array | None = None) -> tuple[_Array, _Array]:
  """Focal numerator and denominator. See focal_stream_loss."""
  _check_inputs("focal_stream_loss", logits, labels, loss_mask)
  _decision_ids(decision_token_ids, logits.shape[-1], "focal_stream_loss")
  return weighted_nll_sum_and_count(token_nll(logits, labels, loss_mask), labels, loss_mask,
                                 kind="focal",
                                 decision_token_ids=decision_token_ids, gamma=gamma,
                                 class_counts=class_counts)


def focal_stream_loss(logits: _Array, labels: _Array, loss_mask: _Array, *, decision_token_ids,
                      gamma: float = 2.0, class_counts: _Array | None = None) -> _Array:
  """Streamo focal baseline (docs/method.md section 2).

  alpha_k = (sum_j n_j / n_k) / |S_present|               (constant in the gradient)
  l_i     = alpha_{y_i} * (1 - p_i)**gamma * (-log p_i)   if y_i in S
          = -log p_i                                      otherwise
  L       = (1 / N) * sum_i mask_i * l_i

  The focal factor (1 - p_i)**gamma is differentiated, as in the standard focal loss.

  Args:
    logits: f32[B, T, V]; labels: i32[B, T]; loss_mask: [B, T].
    decision_token_ids: the decision token ids.
    gamma: focusing parameter, 2.0 by default.
    class_counts: optional f32[K] global counts (see cb_stream_loss).

  Returns:
    f32 scalar.
  """
  return _safe_div(*focal_stream_loss_sum_and_count(
      logits, labels, loss_mask, decision_token_ids=decision_token_ids, gamma=gamma,
      class_counts=class_counts))


# ----------------------------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------------------------


def metrics_sums(predictions: _Array, labels: _Array, loss_mask: _Array, *,
                 decision_token_ids) -> dict[str, _Array]:
  """Counts behind `metrics`, summable over micro-batches and hosts.

  Args:
    predictions: i32[B, T] argmax token at each position.
    labels: i32[B, T]; loss_mask: [B, T].
    decision_token_ids: (silence_id, response_id).

  Returns:
    dict of f32 scalars: tokens, tokens_correct, decision, decision_correct, silence,
    silence_correct, response, response_correct.
  """
  ids = _decision_ids(decision_token_ids)
  if ids.shape[0] != 2:
    raise ValueError(f"metrics expect 2 decision tokens (silence, response), got {ids.shape[0]}")
  mask = loss_mask.astype(jnp.float32)
  correct = (predictions == labels).astype(jnp.float32) * mask
  is_sil = (labels == ids[0]).astype(jnp.float32) * mask
  is_resp = (labels == ids[1]).astype(jnp.float32) * mask
  return {
      "tokens": jnp.sum(mask),
      "tokens_correct": jnp.sum(correct),
      "decision": jnp.sum(is_sil + is_resp),
      "decision_correct": jnp.sum(correct * (is_sil + is_resp)),
      "silence": jnp.sum(is_sil),
      "silence_correct": jnp.sum(correct * is_sil),
      "response": jnp.sum(is_resp),
      "response_correct": jnp.sum(correct * is_resp),
  }


def metrics_from_sums(sums: dict[str, _Array]) -> dict[str, _Array]:
  """Ratios from `metrics_sums` (0 when a denominator is 0)."""
  return {
      "token_accuracy": _safe_div(sums["tokens_correct"], sums["tokens"]),
      "decision_accuracy": _safe_div(sums["decision_correct"], sums["decision"]),
      "silence_recall": _safe_div(sums["silence_correct"], sums["silence"]),
      "response_recall": _safe_div(sums["response_correct"], sums["response"]),
      "n_silence": sums["silence"],
      "n_response": sums["response"],
  }


def metrics(logits: _Array, labels: _Array, loss_mask: _Array, *,
            decision_token_ids) -> dict[str, _Array]:
  """Token and decision metrics from logits, with predictions = argmax over the full vocabulary.

  token_accuracy    = correct supervised tokens / supervised tokens
  decision_accuracy = correct positions among supervised positions whose target is a decision token
  silence_recall    = positions with target </Silence> predicted </Silence> / such positions
  response_recall   = positions with target </Response> predicted </Response> / such positions
  plus n_silence and n_response (the counts). A ratio with an empty denominator is 0.

  Args:
    logits: f32[B, T, V]; labels: i32[B, T]; loss_mask: [B, T].
    decision_token_ids: (silence_id, response_id).

  Returns:
    dict of f32 scalars.
  """
  predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return metrics_from_sums(metrics_sums(predictions, labels, loss_mask,
                                        decision_token_ids=decision_token_ids))


# ----------------------------------------------------------------------------------------------
# Chunked-vocabulary variant.
# ----------------------------------------------------------------------------------------------


def _chunk_body(hidden_btd: _Array, labels: _Array, carry, xs):
  """One vocabulary chunk: per-token logsumexp, label logit, max logit and its index."""
  w_dc, start = xs
  chunk = w_dc.shape[-1]
  logits = jnp.einsum("btd,dc->btc", hidden_btd, w_dc, preferred_element_type=jnp.float32)
  logits = parallel.constrain(logits, parallel.ACT_LOGITS)
  vocab_idx = start + jnp.arange(chunk, dtype=jnp.int32)
  valid = vocab_idx < carry  # carry holds the true vocabulary size (a constant).
  logits = jnp.where(valid, logits, -jnp.inf)
  lse = jax.nn.logsumexp(logits, axis=-1)
  local = labels - start
  in_chunk = (local >= 0) & (local < chunk)
  label_logit = jnp.take_along_axis(logits, jnp.clip(local, 0, chunk - 1)[..., None],
                                    axis=-1)[..., 0]
  label_logit = jnp.where(in_chunk, label_logit, 0.0)
  best = jnp.max(logits, axis=-1)
  best_idx = start + jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return carry, (lse, label_logit, jax.lax.stop_gradient(best), best_idx)


def chunked_token_stats(hidden_btd: _Array, unembed_dv: _Array, labels: _Array, *,
                        chunk_size: int, loss_mask: _Array | None = None) -> tuple[_Array, _Array]:
  """Per-token nll and argmax prediction from hidden states, one vocabulary chunk at a time.

  logits = hidden_btd @ unembed_dv is never materialised whole: a lax.scan over ceil(V / C)
  chunks of C columns computes each chunk's logsumexp, label logit and max; the per-chunk values
  ([n_chunks, B, T]) are combined at the end (lse = logsumexp over chunks). The scan body is
  wrapped in jax.checkpoint, so the backward pass recomputes each chunk's [B, T, C] logits
  instead of storing them. The matmul accumulates in float32.

  Args:
    hidden_btd: [B, T, D] final hidden states (after the final norm).
    unembed_dv: [D, V] unembedding matrix (the transposed lm_head / tied embedding).
    labels: i32[B, T].
    chunk_size: static int C > 0 (V need not be a multiple; the tail is masked).
    loss_mask: optional [B, T]; masked-out positions get nll 0 whatever their hidden states
      (NaN included) and labels, with a zero gradient.

  Returns:
    (nll f32[B, T], predictions i32[B, T]).
  """
  fn = "chunked_token_stats"
  _checks.rank(fn, "unembed_dv", unembed_dv, 2)
  _checks.floating(fn, "hidden_btd", hidden_btd)
  _checks.integer(fn, "labels", labels)
  _checks.shape(fn, "labels", labels, tuple(jnp.shape(hidden_btd))[:-1],
                "(the leading shape of hidden_btd)")
  if loss_mask is not None:
    _checks.shape(fn, "loss_mask", loss_mask, tuple(jnp.shape(labels)),
                  "(the shape of labels; it is not broadcast)")
    keep = jnp.asarray(loss_mask) > 0
    hidden_btd = jnp.where(keep[..., None], hidden_btd, jnp.zeros((), hidden_btd.dtype))
    labels = jnp.where(keep, labels, 0)
  d, v = unembed_dv.shape
  if hidden_btd.shape[-1] != d:
    raise ValueError(f"hidden size {hidden_btd.shape[-1]} != unembedding rows {d}")
  if chunk_size <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  chunk = min(int(chunk_size), v)
  n_chunks = -(-v // chunk)
  pad = n_chunks * chunk - v
  w = jnp.pad(unembed_dv, ((0, 0), (0, pad))) if pad else unembed_dv
  w_ndc = w.reshape(d, n_chunks, chunk).transpose(1, 0, 2)
  starts = jnp.arange(n_chunks, dtype=jnp.int32) * chunk
  labels = labels.astype(jnp.int32)
  body = jax.checkpoint(functools.partial(_chunk_body, hidden_btd, labels))
  _, (lse_c, label_c, best_c, idx_c) = jax.lax.scan(body, jnp.int32(v), (w_ndc, starts))
  lse = jax.nn.logsumexp(lse_c, axis=0)
  in_vocab = (labels >= 0) & (labels < v)
  nll = jnp.where(in_vocab, lse - jnp.sum(label_c, axis=0), jnp.nan)
  which = jnp.argmax(best_c, axis=0)  # first chunk holding the max -> smallest index on ties.
  predictions = jnp.take_along_axis(idx_c, which[None], axis=0)[0]
  return nll, predictions


def chunked_stream_loss(hidden_btd: _Array, unembed_dv: _Array, labels: _Array, loss_mask: _Array,
                        *, kind: str = "cb_stream", decision_token_ids=None,
                        chunk_size: int = 8192, beta: float = 0.9999, text_weight: float = 2.0,
                        gamma: float = 2.0, class_counts: _Array | None = None) -> _Array:
  """The loss `kind` ("cb_stream" | "ce" | "focal") of logits = hidden_btd @ unembed_dv.

  Same value and gradients as cb_stream_loss / cross_entropy_loss / focal_stream_loss on the full
  logits, with peak memory O(B * T * chunk_size) instead of O(B * T * V) (see
  chunked_token_stats).

  Args:
    hidden_btd: [B, T, D]; unembed_dv: [D, V]; labels: i32[B, T]; loss_mask: [B, T].
    kind: which loss.
    decision_token_ids: needed for "cb_stream" and "focal".
    chunk_size: static vocabulary chunk size.
    beta, text_weight: CB-Stream parameters; gamma: focal parameter.
    class_counts: optional global counts (see cb_stream_loss).

  Returns:
    f32 scalar.
  """
  if kind != "ce":
    _decision_ids(decision_token_ids, unembed_dv.shape[-1], "chunked_stream_loss")
  nll, _ = chunked_token_stats(hidden_btd, unembed_dv, labels, chunk_size=chunk_size,
                               loss_mask=loss_mask)
  return _safe_div(*weighted_nll_sum_and_count(
      nll, labels, loss_mask, kind=kind, decision_token_ids=decision_token_ids, beta=beta,
      text_weight=text_weight, gamma=gamma, class_counts=class_counts))


def loss_sum_and_count(kind: str, logits: _Array, labels: _Array, loss_mask: _Array, *,
                       decision_token_ids=None, beta: float = 0.9999, text_weight: float = 2.0,
                       gamma: float = 2.0,
                       class_counts: _Array | None = None) -> tuple[_Array, _Array]:
  """Dispatch by name ("cb_stream" | "ce" | "focal") for config-driven trainers."""
  _check_inputs("loss_sum_and_count", logits, labels, loss_mask)
  if kind != "ce":
    _decision_ids(decision_token_ids, logits.shape[-1], "loss_sum_and_count")
  return weighted_nll_sum_and_count(token_nll(logits, labels, loss_mask), labels, loss_mask,
                                 kind=kind,
                                 decision_token_ids=decision_token_ids, beta=beta,
                                 text_weight=text_weight, gamma=gamma, class_counts=class_counts)


# ----------------------------------------------------------------------------------------------
# Static arguments under jax.jit, and already-jitted entry points.
# ----------------------------------------------------------------------------------------------

STATIC_ARGNAMES: dict[str, tuple[str, ...]] = {
    "cb_stream_loss": ("decision_token_ids", "beta"),
    "cb_stream_loss_sum_and_count": ("decision_token_ids", "beta"),
    "cross_entropy_loss": (),
    "focal_stream_loss": ("decision_token_ids",),
    "focal_stream_loss_sum_and_count": ("decision_token_ids",),
    "chunked_stream_loss": ("kind", "decision_token_ids", "chunk_size", "beta"),
    "chunked_token_stats": ("chunk_size",),
    "loss_sum_and_count": ("kind", "decision_token_ids", "beta"),
    "decision_class_counts": ("decision_token_ids",),
    "grouped_class_counts": ("decision_token_ids", "num_groups"),
    "metrics": ("decision_token_ids",),
    "token_logps": ("temperature",),
    "token_logps_from_hidden": ("chunk_size", "temperature"),
}
"""The arguments each public loss needs static under jax.jit (Python ints / floats / strings:
decision_token_ids as a tuple of ints). text_weight, gamma and class_counts may be traced."""

cb_stream_loss_jit = jax.jit(cb_stream_loss, static_argnames=STATIC_ARGNAMES["cb_stream_loss"])
cross_entropy_loss_jit = jax.jit(cross_entropy_loss)
focal_stream_loss_jit = jax.jit(focal_stream_loss,
                                static_argnames=STATIC_ARGNAMES["focal_stream_loss"])
chunked_stream_loss_jit = jax.jit(chunked_stream_loss,
                                  static_argnames=STATIC_ARGNAMES["chunked_stream_loss"])


# ----------------------------------------------------------------------------------------------
# Per-token log-probabilities of sampled tokens (GRPO and the rollout sampler).
# ----------------------------------------------------------------------------------------------


def token_logps(logits: _Array, targets: _Array, *, temperature: float = 1.0) -> _Array:
  """log p(targets) under softmax(logits / temperature).

  logp[b, t] = logits[b, t, y] / temp - logsumexp_v(logits[b, t, v] / temp), y = targets[b, t].

  Args:
    logits: [B, T, V] (any float dtype; computed in float32).
    targets: i32[B, T] the sampled tokens (already shifted: logits at t predict targets[t]).
    temperature: the sampling temperature of the rollouts (1.0 in StreamPro).

  Returns:
    f32[B, T].
  """
  logits = logits.astype(jnp.float32)
  if temperature != 1.0:
    logits = logits / jnp.float32(temperature)
  return -token_nll(logits, targets)


def token_logps_from_hidden(hidden_btd: _Array, unembed_dv: _Array, targets: _Array, *,
                            chunk_size: int = 8192, temperature: float = 1.0) -> _Array:
  """token_logps of logits = hidden_btd @ unembed_dv, one vocabulary chunk at a time.

  Never materialises [B, T, V] logits (see losses.chunked_token_stats).

  Args:
    hidden_btd: [B, T, D]; unembed_dv: [D, V]; targets: i32[B, T].
    chunk_size: static vocabulary chunk size.
    temperature: logits are divided by it (folded into the hidden states).

  Returns:
    f32[B, T].
  """
  if temperature != 1.0:
    hidden_btd = hidden_btd.astype(jnp.float32) / jnp.float32(temperature)
  nll, _ = chunked_token_stats(hidden_btd, unembed_dv, targets, chunk_size=chunk_size)
  return -nll
