"""GRPO for StreamPro stage 2 (SPEC section 3).

Layout of this module:
  1. Per-token log-probabilities (from logits, or chunked from hidden states).
  2. KL estimators, registered by name (KL_ESTIMATORS).
  3. Group advantages.
  4. The GRPO objective (loss, loss + aux metrics, (sum, count) for gradient accumulation).
  5. (Added by the training area) the sharded GRPO update step.

Shapes: B rollouts (B = number of prompts * G, groups contiguous), T tokens per rollout.
  logps, old_logps, ref_logps  f32[B, T]   log-prob of each sampled token under the current,
                                           the behaviour (rollout) and the reference policy
  mask                         [B, T]      1 on assistant tokens (decision and text), else 0
  advantages                   f32[B]      one per rollout, broadcast over its tokens
All math runs in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from streampro_jax import losses

Array = jax.Array

AGGREGATIONS = ("sequence-mean-token-mean", "token-mean", "sequence-sum-token-mean",
                "sequence-mean-token-sum")


# ----------------------------------------------------------------------------------------------
# 1. Per-token log-probabilities.
# ----------------------------------------------------------------------------------------------


def token_logps(logits: Array, targets: Array, *, temperature: float = 1.0) -> Array:
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
  return -losses.token_nll(logits, targets)


def token_logps_from_hidden(hidden_btd: Array, unembed_dv: Array, targets: Array, *,
                            chunk_size: int = 8192, temperature: float = 1.0) -> Array:
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
  nll, _ = losses.chunked_token_stats(hidden_btd, unembed_dv, targets, chunk_size=chunk_size)
  return -nll


# ----------------------------------------------------------------------------------------------
# 2. KL estimators (per token, samples drawn from the current policy).
# ----------------------------------------------------------------------------------------------


def kl_k1(logps: Array, ref_logps: Array) -> Array:
  """k1 = logp - ref_logp (unbiased, can be negative)."""
  return logps - ref_logps


def kl_k2(logps: Array, ref_logps: Array) -> Array:
  """k2 = 0.5 * (logp - ref_logp)**2."""
  return 0.5 * jnp.square(logps - ref_logps)


def kl_k3(logps: Array, ref_logps: Array) -> Array:
  """k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 (>= 0, unbiased; the GRPO default)."""
  d = ref_logps - logps
  return jnp.expm1(d) - d


KL_ESTIMATORS: dict[str, Callable[[Array, Array], Array]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3,
}


# ----------------------------------------------------------------------------------------------
# 3. Group advantages.
# ----------------------------------------------------------------------------------------------


def group_advantages(rewards: Array, group_size: int, *, eps: float = 1e-6,
                     ddof: int = 1) -> Array:
  """Group-normalised advantages of contiguous groups of group_size rollouts.

  For group g holding rewards r_1..r_G:
    mean_g = sum_i r_i / G
    std_g  = sqrt(sum_i (r_i - mean_g)**2 / (G - ddof))
    A_i    = (r_i - mean_g) / (std_g + eps)
  A group whose rewards are all equal gets A_i = 0 exactly (the centred values are forced to 0,
  since a float32 mean of equal values need not equal them bit for bit).

  Args:
    rewards: f32[N], N = num_groups * group_size, groups contiguous.
    group_size: static G >= 1 (G > ddof).
    eps: added to the std.
    ddof: delta degrees of freedom of the std (1 = sample std, as SPEC; 0 = population std).

  Returns:
    f32[N].
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  n = rewards.shape[0]
  if group_size < 1 or n % group_size:
    raise ValueError(f"{n} rewards do not split into groups of {group_size}")
  if group_size - ddof <= 0:
    raise ValueError(f"group size {group_size} with ddof {ddof} leaves no degrees of freedom")
  r = rewards.reshape(n // group_size, group_size)
  # Centre on the first element first: exact zeros for equal values, and less cancellation.
  shifted = r - r[:, :1]
  mean = jnp.mean(shifted, axis=1, keepdims=True)
  centred = shifted - mean
  all_equal = jnp.all(r == r[:, :1], axis=1, keepdims=True)
  centred = jnp.where(all_equal, 0.0, centred)
  std = jnp.sqrt(jnp.sum(jnp.square(centred), axis=1, keepdims=True) / (group_size - ddof))
  return (centred / (std + eps)).reshape(n)


# ----------------------------------------------------------------------------------------------
# 4. The GRPO objective.
# ----------------------------------------------------------------------------------------------


def per_token_grpo_loss(logps: Array, old_logps: Array, ref_logps: Array | None,
                        advantages: Array, *, epsilon: float = 0.2, beta: float = 0.04,
                        kl: str = "k3") -> tuple[Array, dict[str, Array]]:
  """Per-token clipped-surrogate loss plus KL penalty (unmasked).

  r_t    = exp(logp_t - old_logp_t)
  pg_t   = -min(r_t * A, clip(r_t, 1 - epsilon, 1 + epsilon) * A)
  loss_t = pg_t + beta * KL_t,     KL_t = KL_ESTIMATORS[kl](logp_t, ref_logp_t)

  Args:
    logps, old_logps, ref_logps: f32[B, T] (ref_logps may be None when beta == 0).
    advantages: f32[B].
    epsilon, beta: clip range and KL coefficient; kl: "k1" | "k2" | "k3".

  Returns:
    (loss f32[B, T], parts dict with "pg", "kl", "ratio", "clipped" (bool: the clipped term was
    the minimum and differs from the unclipped one), each f32[B, T]).
  """
  logps = logps.astype(jnp.float32)
  old_logps = jax.lax.stop_gradient(old_logps.astype(jnp.float32))
  adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[:, None]
  ratio = jnp.exp(logps - old_logps)
  unclipped = ratio * adv
  clipped_ratio = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
  clipped = clipped_ratio * adv
  pg = -jnp.minimum(unclipped, clipped)
  is_clipped = clipped < unclipped
  if beta != 0.0:
    if ref_logps is None:
      raise ValueError(f"ref_logps is None but the KL coefficient beta is {beta}")
    if kl not in KL_ESTIMATORS:
      raise ValueError(f"unknown KL estimator {kl!r}; expected one of {tuple(KL_ESTIMATORS)}")
    kl_t = KL_ESTIMATORS[kl](logps, jax.lax.stop_gradient(ref_logps.astype(jnp.float32)))
  else:
    kl_t = jnp.zeros_like(logps)
  loss = pg + beta * kl_t
  return loss, {"pg": pg, "kl": kl_t, "ratio": ratio, "clipped": is_clipped.astype(jnp.float32)}


def aggregate_sum_and_count(per_token: Array, mask: Array,
                            aggregation: str = "sequence-mean-token-mean") -> tuple[Array, Array]:
  """(numerator, denominator) of an aggregation of a per-token quantity x f32[B, T].

  With m = mask, n_b = sum_t m[b, t], B' = number of sequences with n_b > 0:
    "sequence-mean-token-mean"  (sum_b [n_b > 0] * sum_t m x / n_b,  B')     (GRPO paper, default)
    "token-mean"                (sum_{b,t} m x,                      sum_b n_b)   (DAPO)
    "sequence-sum-token-mean"   (sum_b [n_b > 0] * sum_t m x / n_b,  1)      (sum over sequences
                                of per-sequence token means; a caller that accumulates divides
                                by its own global sequence count)
    "sequence-mean-token-sum"   (sum_{b,t} m x / T,                  B)      (Dr. GRPO: token sums
                                normalised by the constant length T, mean over all B sequences)
  The aggregate is numerator / max(denominator, 1) for the mean modes; summing numerators and
  denominators over micro-batches reproduces the full-batch value exactly.

  Args:
    per_token: f32[B, T]; mask: [B, T]; aggregation: one of AGGREGATIONS.

  Returns:
    (f32 scalar, f32 scalar).
  """
  mask = mask.astype(jnp.float32)
  x = per_token * mask
  n_b = jnp.sum(mask, axis=1)
  if aggregation in ("sequence-mean-token-mean", "sequence-sum-token-mean"):
    seq_means = jnp.sum(x, axis=1) / jnp.maximum(n_b, 1.0)
    num = jnp.sum(jnp.where(n_b > 0, seq_means, 0.0))
    if aggregation == "sequence-sum-token-mean":
      return num, jnp.float32(1.0)
    return num, jnp.sum((n_b > 0).astype(jnp.float32))
  if aggregation == "token-mean":
    return jnp.sum(x), jnp.sum(n_b)
  if aggregation == "sequence-mean-token-sum":
    return jnp.sum(x) / per_token.shape[1], jnp.float32(per_token.shape[0])
  raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")


def _aggregate(per_token: Array, mask: Array, aggregation: str) -> Array:
  num, den = aggregate_sum_and_count(per_token, mask, aggregation)
  return num / jnp.maximum(den, 1.0)


def grpo_loss_sum_and_count(logps: Array, old_logps: Array, ref_logps: Array | None,
                            advantages: Array, mask: Array, *, epsilon: float = 0.2,
                            beta: float = 0.04, kl: str = "k3",
                            aggregation: str = "sequence-mean-token-mean"
                            ) -> tuple[Array, Array]:
  """(numerator, denominator) of grpo_loss, for exact gradient accumulation."""
  per_token, _ = per_token_grpo_loss(logps, old_logps, ref_logps, advantages,
                                     epsilon=epsilon, beta=beta, kl=kl)
  return aggregate_sum_and_count(per_token, mask, aggregation)


def grpo_loss(logps: Array, old_logps: Array, ref_logps: Array | None, advantages: Array,
              mask: Array, *, epsilon: float = 0.2, beta: float = 0.04, kl: str = "k3",
              aggregation: str = "sequence-mean-token-mean") -> Array:
  """GRPO objective (to minimise), SPEC section 3.

  r_t    = exp(logp_t - old_logp_t)
  loss_t = -min(r_t * A_b, clip(r_t, 1 - epsilon, 1 + epsilon) * A_b) + beta * KL_t
  KL_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1   (kl="k3"; "k1": logp_t - ref_t)
  L      = aggregate(loss_t over mask)  (see aggregate_sum_and_count; default: mean over
           sequences of the per-sequence token mean)
  old_logps, ref_logps and advantages are constants in the gradient.

  Args:
    logps: f32[B, T] current policy log-probs of the sampled tokens (differentiated).
    old_logps: f32[B, T] behaviour-policy log-probs (equal to logps on the first update).
    ref_logps: f32[B, T] reference-policy log-probs (None allowed when beta == 0).
    advantages: f32[B] (group_advantages).
    mask: [B, T] 1 on assistant tokens.
    epsilon: clip range; beta: KL coefficient; kl: estimator name; aggregation: mode name.

  Returns:
    f32 scalar.
  """
  return grpo_loss_and_aux(logps, old_logps, ref_logps, advantages, mask, epsilon=epsilon,
                           beta=beta, kl=kl, aggregation=aggregation)[0]


def grpo_loss_and_aux(logps: Array, old_logps: Array, ref_logps: Array | None,
                      advantages: Array, mask: Array, *, epsilon: float = 0.2,
                      beta: float = 0.04, kl: str = "k3",
                      aggregation: str = "sequence-mean-token-mean"
                      ) -> tuple[Array, dict[str, Array]]:
  """grpo_loss plus metrics (token means over the mask, all without gradient):

  kl_mean (the chosen estimator), pg_loss (the policy term, aggregated like the loss),
  clip_fraction (tokens whose clipped term was taken), ratio_mean, ratio_max, tokens.
  """
  per_token, parts = per_token_grpo_loss(logps, old_logps, ref_logps, advantages,
                                         epsilon=epsilon, beta=beta, kl=kl)
  loss = _aggregate(per_token, mask, aggregation)
  m = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(m), 1.0)
  sg = jax.lax.stop_gradient
  aux = {
      "kl_mean": sg(jnp.sum(parts["kl"] * m) / n),
      "pg_loss": sg(_aggregate(parts["pg"], mask, aggregation)),
      "clip_fraction": sg(jnp.sum(parts["clipped"] * m) / n),
      "ratio_mean": sg(jnp.sum(parts["ratio"] * m) / n),
      "ratio_max": sg(jnp.where(jnp.sum(m) > 0,
                                jnp.max(jnp.where(m > 0, parts["ratio"], -jnp.inf)), 0.0)),
      "tokens": jnp.sum(m),
  }
  return loss, aux
