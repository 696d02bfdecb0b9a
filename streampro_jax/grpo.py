"""GRPO for StreamPro stage 2 (docs/method.md section 3).

Layout of this module:
  1. KL estimators, registered by name (KL_ESTIMATORS).
  2. Group advantages.
  3. The GRPO objective (loss, loss + aux metrics, (sum, count) for gradient accumulation).
  4. The update's pieces: GRPOStepConfig, the log-prob function and the sum-and-count loss of
     train/step.accumulate_gradients; the sharded update itself is train/grpo_step.py.
Per-token log-probabilities (from logits, or chunked from hidden states) are
losses.token_logps and losses.token_logps_from_hidden.

Shapes: B rollouts (B = number of prompts * G, groups contiguous), T tokens per rollout.
  logps, old_logps, ref_logps  f32[B, T]   log-prob of each sampled token under the current,
                                           the behaviour (rollout) and the reference policy
  mask                         [B, T]      1 on assistant tokens (decision and text), else 0
  advantages                   f32[B]      one per rollout, broadcast over its tokens
All math runs in float32. Shapes are checked at entry (chex); an error names the argument. Masked
positions (mask 0) reach neither the loss nor its gradient, even when their log-probs are NaN.

Static arguments under jax.jit: STATIC_ARGNAMES names them per function (the mode names kl and
aggregation, group_size and ddof of group_advantages); beta, epsilon and eps may be traced.
`grpo_loss_jit` and `group_advantages_jit` are already-jitted entry points.

Presets (GRPO_PRESETS, config grpo.preset): "spec" (this project's defaults: beta 0.04, k3,
sequence-mean-token-mean), "verl" (veRL's GRPO example: KL loss coefficient 0.001 with the k3
"low_var_kl" estimator, token-mean), "verl-no-kl" (KL off, token-mean).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from streampro_jax import _checks, _config, losses

__all__ = ["AGGREGATIONS", "GRPOStepConfig", "GRPO_PRESETS", "KL_ESTIMATORS", "REWARD_KEYS",
           "STATIC_ARGNAMES", "aggregate_sum_and_count", "agreement_from_sums", "agreement_sums",
           "finish_pass_metrics", "group_advantages", "group_advantages_jit", "group_statistics",
           "grpo_loss", "grpo_loss_and_aux", "grpo_loss_jit", "grpo_loss_sum_and_count", "kl_k1",
           "kl_k2", "kl_k3", "logprob_agreement", "make_grpo_loss_fn", "make_logps_fn",
           "per_token_grpo_loss"]

AGGREGATIONS = ("sequence-mean-token-mean", "token-mean", "sequence-sum-token-mean",
                "sequence-mean-token-sum", "nonempty-sequence-mean-token-mean")

GRPO_PRESETS: dict[str, dict[str, object]] = {
    "spec": dict(beta=0.04, kl_estimator="k3", aggregation="sequence-mean-token-mean"),
    "verl": dict(beta=0.001, kl_estimator="k3", aggregation="token-mean"),
    "verl-no-kl": dict(beta=0.0, kl_estimator="k3", aggregation="token-mean"),
}
"""Named settings of (KL coefficient, KL estimator, aggregation); see the module docstring."""


# ----------------------------------------------------------------------------------------------
# 1. KL estimators (per token, samples drawn from the current policy).
# ----------------------------------------------------------------------------------------------


def kl_k1(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
  """k1 = logp - ref_logp (unbiased, can be negative)."""
  return logps - ref_logps


def kl_k2(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
  """k2 = 0.5 * (logp - ref_logp)**2."""
  return 0.5 * jnp.square(logps - ref_logps)


def kl_k3(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
  """k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 (>= 0, unbiased; the GRPO default)."""
  d = ref_logps - logps
  return jnp.expm1(d) - d


KL_ESTIMATORS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "k1": kl_k1, "k2": kl_k2, "k3": kl_k3,
}


# ----------------------------------------------------------------------------------------------
# 2. Group advantages.
# ----------------------------------------------------------------------------------------------


def group_advantages(rewards: jax.Array, group_size: int, *, eps: float = 1e-6,
                     ddof: int = 1) -> jax.Array:
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
    ddof: delta degrees of freedom of the std (1 = sample std, as docs/method.md; 0 = population
    std).

  Returns:
    f32[N].
  """
  if jnp.ndim(rewards) != 1:
    raise _checks.ArgumentError(
        f"group_advantages: rewards has shape {tuple(jnp.shape(rewards))}; expected a 1-D f32[N] "
        f"with the groups contiguous (flatten a [groups, G] array with .reshape(-1))")
  if isinstance(group_size, jax.core.Tracer) or isinstance(ddof, jax.core.Tracer):
    raise _checks.ArgumentError("group_advantages: group_size and ddof must be static ints "
                                "(see grpo.STATIC_ARGNAMES)")
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
# 3. The GRPO objective.
# ----------------------------------------------------------------------------------------------


def per_token_grpo_loss(logps: jax.Array, old_logps: jax.Array, ref_logps: jax.Array | None,
                        advantages: jax.Array, *, epsilon: float = 0.2, beta: float = 0.04,
                        kl: str = "k3") -> tuple[jax.Array, dict[str, jax.Array]]:
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
  _check_grpo_inputs("per_token_grpo_loss", logps, old_logps, ref_logps, advantages, None)
  logps = logps.astype(jnp.float32)
  old_logps = jax.lax.stop_gradient(old_logps.astype(jnp.float32))
  adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[:, None]
  ratio = jnp.exp(logps - old_logps)
  unclipped = ratio * adv
  clipped_ratio = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon)
  clipped = clipped_ratio * adv
  pg = -jnp.minimum(unclipped, clipped)
  is_clipped = clipped < unclipped
  if not (isinstance(beta, (int, float)) and beta == 0.0):  # a traced beta computes the KL
    if ref_logps is None:
      raise ValueError(f"ref_logps is None but the KL coefficient beta is {beta}")
    if kl not in KL_ESTIMATORS:
      raise ValueError(f"unknown KL estimator {kl!r}; expected one of {tuple(KL_ESTIMATORS)}")
    kl_t = KL_ESTIMATORS[kl](logps, jax.lax.stop_gradient(ref_logps.astype(jnp.float32)))
  else:
    kl_t = jnp.zeros_like(logps)
  loss = pg + beta * kl_t
  return loss, {"pg": pg, "kl": kl_t, "ratio": ratio, "clipped": is_clipped.astype(jnp.float32)}


def _check_grpo_inputs(fn, logps, old_logps, ref_logps, advantages, mask) -> None:
  _checks.rank(fn, "logps", logps, 2)
  bt = tuple(jnp.shape(logps))
  _checks.shape(fn, "old_logps", old_logps, bt, "(the shape of logps, [B, T])")
  if ref_logps is not None:
    _checks.shape(fn, "ref_logps", ref_logps, bt, "(the shape of logps, [B, T])")
  _checks.shape(fn, "advantages", advantages, bt[:1], "(one per sequence, [B])")
  if mask is not None:
    _checks.shape(fn, "mask", mask, bt, "(the shape of logps, [B, T]; it is not broadcast)")


def _clean_masked(mask: jax.Array, *xs):
  """Each x with its masked-out positions set to 0 (jnp.where: no NaN reaches the gradient)."""
  keep = jnp.asarray(mask) > 0
  return tuple(None if x is None else jnp.where(keep, x, jnp.zeros((), x.dtype)) for x in xs)


def aggregate_sum_and_count(per_token: jax.Array, mask: jax.Array,
                            aggregation: str = "sequence-mean-token-mean"
                            ) -> tuple[jax.Array, jax.Array]:
  """(numerator, denominator) of an aggregation of a per-token quantity x f32[B, T].

  With m = mask, n_b = sum_t m[b, t], B' = number of sequences with n_b > 0:
    "sequence-mean-token-mean"  (sum_b sum_t m x / max(n_b, 1),      B)      (GRPO paper; TRL's
                                and veRL's "seq-mean-token-mean": every sequence of the batch
                                counts, an empty completion contributes 0; the default)
    "nonempty-sequence-mean-token-mean"
                                (sum_b [n_b > 0] * sum_t m x / n_b,  B')     (the mean over the
                                non-empty sequences only; this project's default before)
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
  _checks.rank("aggregate_sum_and_count", "per_token", per_token, 2)
  _checks.shape("aggregate_sum_and_count", "mask", mask, tuple(jnp.shape(per_token)),
                "(the shape of per_token, [B, T]; it is not broadcast)")
  keep = jnp.asarray(mask) > 0
  mask = jnp.where(keep, jnp.asarray(mask, jnp.float32), 0.0)
  x = jnp.where(keep, per_token, 0.0) * mask
  n_b = jnp.sum(mask, axis=1)
  if aggregation in ("sequence-mean-token-mean", "sequence-sum-token-mean",
                     "nonempty-sequence-mean-token-mean"):
    seq_means = jnp.sum(x, axis=1) / jnp.maximum(n_b, 1.0)
    num = jnp.sum(jnp.where(n_b > 0, seq_means, 0.0))
    if aggregation == "sequence-sum-token-mean":
      return num, jnp.float32(1.0)
    if aggregation == "sequence-mean-token-mean":
      return num, jnp.float32(per_token.shape[0])
    return num, jnp.sum((n_b > 0).astype(jnp.float32))
  if aggregation == "token-mean":
    return jnp.sum(x), jnp.sum(n_b)
  if aggregation == "sequence-mean-token-sum":
    return jnp.sum(x) / per_token.shape[1], jnp.float32(per_token.shape[0])
  raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")


def _aggregate(per_token: jax.Array, mask: jax.Array, aggregation: str) -> jax.Array:
  num, den = aggregate_sum_and_count(per_token, mask, aggregation)
  return num / jnp.maximum(den, 1.0)


def grpo_loss_sum_and_count(logps: jax.Array, old_logps: jax.Array, ref_logps: jax.Array | None,
                            advantages: jax.Array, mask: jax.Array, *, epsilon: float = 0.2,
                            beta: float = 0.04, kl: str = "k3",
                            aggregation: str = "sequence-mean-token-mean"
                            ) -> tuple[jax.Array, jax.Array]:
  """(numerator, denominator) of grpo_loss, for exact gradient accumulation."""
  _check_grpo_inputs("grpo_loss", logps, old_logps, ref_logps, advantages, mask)
  logps, old_logps, ref_logps = _clean_masked(mask, logps, old_logps, ref_logps)
  per_token, _ = per_token_grpo_loss(logps, old_logps, ref_logps, advantages,
                                     epsilon=epsilon, beta=beta, kl=kl)
  return aggregate_sum_and_count(per_token, mask, aggregation)


def grpo_loss(logps: jax.Array, old_logps: jax.Array, ref_logps: jax.Array | None,
              advantages: jax.Array, mask: jax.Array, *, epsilon: float = 0.2, beta: float = 0.04,
              kl: str = "k3", aggregation: str = "sequence-mean-token-mean") -> jax.Array:
  """GRPO objective (to minimise), docs/method.md section 3.

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


def grpo_loss_and_aux(logps: jax.Array, old_logps: jax.Array, ref_logps: jax.Array | None,
                      advantages: jax.Array, mask: jax.Array, *, epsilon: float = 0.2,
                      beta: float = 0.04, kl: str = "k3",
                      aggregation: str = "sequence-mean-token-mean"
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """grpo_loss plus metrics (token means over the mask, all without gradient):

  kl_mean (the chosen estimator), pg_loss (the policy term, aggregated like the loss),
  clip_fraction (tokens whose clipped term was taken), ratio_mean, ratio_max, tokens.
  """
  _check_grpo_inputs("grpo_loss", logps, old_logps, ref_logps, advantages, mask)
  logps, old_logps, ref_logps = _clean_masked(mask, logps, old_logps, ref_logps)
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


STATIC_ARGNAMES: dict[str, tuple[str, ...]] = {
    "group_advantages": ("group_size", "ddof"),
    "grpo_loss": ("kl", "aggregation"),
    "grpo_loss_and_aux": ("kl", "aggregation"),
    "grpo_loss_sum_and_count": ("kl", "aggregation"),
    "per_token_grpo_loss": ("kl",),
    "aggregate_sum_and_count": ("aggregation",),
}
"""What each public GRPO function needs static under jax.jit; beta (unless it is a Python 0,
which skips the reference), epsilon and eps may be traced."""

grpo_loss_jit = jax.jit(grpo_loss, static_argnames=STATIC_ARGNAMES["grpo_loss"])
group_advantages_jit = jax.jit(group_advantages,
                               static_argnames=STATIC_ARGNAMES["group_advantages"])


# ----------------------------------------------------------------------------------------------
# 4. The sharded GRPO update step (training area).
# ----------------------------------------------------------------------------------------------
#
# One call of the jitted step on a batch of N = B * G rollouts (groups contiguous):
#
#   R      = batch.rewards or w_fmt * reward_fmt + w_turn * reward_turn + w_traj * reward_traj
#   A      = group_advantages(R, G, eps, ddof)                  on the global (sharded) array
#   ref    = token_logps(forward(ref_params))                   (skipped when beta == 0)
#   old    = batch.old_logps (the sampler's)  or  token_logps(forward(params)) ("recompute")
#   repeat num_passes times:                                    (mu of the GRPO paper)
#     grads = d/dparams grpo_loss(token_logps(forward(params)), old, ref, A, loss_mask)
#     params, opt_state = optimizer(grads)                       (one optimizer step per pass)
#
# The reference and the behaviour log-probs are computed once, inside the same jit, before the
# passes (no gradient flows through them); each pass is a full optimizer step, so state.step and
# the learning-rate schedule advance num_passes per batch. Gradient accumulation over
# num_microbatches is exact (sum-and-count losses, train/step.accumulate_gradients).

REWARD_KEYS = ("reward_fmt", "reward_turn", "reward_traj")
_OLD_LOGPS_SOURCES = ("rollout", "recompute")


def agreement_sums(logps: jax.Array, old_logps: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Sums over the masked tokens of the trainer's log-probs x = logps and the sampler's
  y = old_logps [N, T] that `agreement_from_sums` turns into their agreement: n, sum |x - y|,
  and the moments sum x, y, x^2, y^2, x y (sums add over micro-batches and devices)."""
  m = mask.astype(jnp.float32)
  x = jnp.where(m > 0, logps, 0.0).astype(jnp.float32)
  y = jnp.where(m > 0, old_logps, 0.0).astype(jnp.float32)
  return {"agree_n": jnp.sum(m), "agree_abs": jnp.sum(jnp.abs(x - y) * m),
          "agree_x": jnp.sum(x * m), "agree_y": jnp.sum(y * m), "agree_xx": jnp.sum(x * x * m),
          "agree_yy": jnp.sum(y * y * m), "agree_xy": jnp.sum(x * y * m)}


def agreement_from_sums(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """mean_abs_diff = sum |x - y| / n and the Pearson correlation of x and y,
  corr = (n Sxy - Sx Sy) / sqrt((n Sxx - Sx^2) (n Syy - Sy^2)) (0 when either side is constant
  or no token is masked in). A drift of the sampler's log-probs from the trainer's (a kernel,
  dtype or temperature mismatch) shows as mean_abs_diff > 0 and corr < 1 on the first pass."""
  n = sums["agree_n"]
  cov = n * sums["agree_xy"] - sums["agree_x"] * sums["agree_y"]
  var_x = n * sums["agree_xx"] - sums["agree_x"] ** 2
  var = var_x * (n * sums["agree_yy"] - sums["agree_y"] ** 2)
  return {"mean_abs_diff": sums["agree_abs"] / jnp.maximum(n, 1.0),
          "corr": jnp.where(var > 0, cov / jnp.sqrt(jnp.maximum(var, 1e-30)), 0.0)}


def logprob_agreement(logps: jax.Array, old_logps: jax.Array, mask: jax.Array
                      ) -> dict[str, jax.Array]:
  """How well the trainer's token log-probs f32[N, T] agree with the sampler's (old_logps) over
  the masked tokens: {"mean_abs_diff", "corr"} (agreement_from_sums)."""
  return agreement_from_sums(agreement_sums(logps, old_logps, mask))


def group_statistics(rewards: jax.Array, group_size: int) -> dict[str, jax.Array]:
  """Per-batch statistics of group rewards r f32[N] (groups contiguous), all f32 scalars.

  reward_mean          = mean_i r_i
  reward_group_std     = mean over groups of std_g (ddof 0)
  zero_variance_groups = fraction of groups whose G rewards are all equal (they get A = 0 and
                         contribute only the KL term)
  """
  r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
  equal = jnp.all(r == r[:, :1], axis=1)
  return {"reward": jnp.mean(r), "reward_group_std": jnp.mean(jnp.std(r, axis=1)),
          "zero_variance_groups": jnp.mean(equal.astype(jnp.float32))}


@dataclasses.dataclass(frozen=True)
class GRPOStepConfig:
  """Hyper-parameters of the GRPO update (docs/method.md section 3 defaults).

  Attributes:
    group_size: G rollouts per sample (rows b * G .. b * G + G - 1 form a group).
    epsilon: clip range of the ratio.
    beta: KL coefficient (0 disables the reference forward).
    kl_estimator: "k1" | "k2" | "k3".
    adv_eps, adv_ddof: group_advantages' eps and ddof.
    aggregation: one of AGGREGATIONS.
    reward_weights: (w_fmt, w_turn, w_traj), used when the batch holds the reward components.
    temperature: the rollouts' sampling temperature (log-probs are of logits / temperature).
    old_logps: "rollout" (the sampler's log-probs, batch.old_logps) or "recompute" (one
      teacher-forced forward of the current params before the first pass).
    num_passes: optimisation passes (optimizer steps) per batch, mu >= 1.
    num_microbatches: exact gradient accumulation inside each pass.
    logps_chunk_size: > 0: log-probs from the final hidden states one vocabulary chunk at a time.
  """
  group_size: int = 8
  epsilon: float = 0.2
  beta: float = 0.04
  kl_estimator: str = "k3"
  adv_eps: float = 1e-6
  adv_ddof: int = 1
  aggregation: str = "sequence-mean-token-mean"
  reward_weights: tuple[float, float, float] = (0.1, 0.45, 0.45)
  temperature: float = 1.0
  old_logps: str = "rollout"
  num_passes: int = 1
  num_microbatches: int = 1
  logps_chunk_size: int = 0

  def __post_init__(self):
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"kl_estimator {self.kl_estimator!r}; expected one of "
                       f"{tuple(KL_ESTIMATORS)}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"aggregation {self.aggregation!r}; expected one of {AGGREGATIONS}")
    if self.old_logps not in _OLD_LOGPS_SOURCES:
      raise ValueError(f"old_logps {self.old_logps!r}; expected one of {_OLD_LOGPS_SOURCES}")
    if self.num_passes < 1 or self.num_microbatches < 1:
      raise ValueError(f"num_passes {self.num_passes} and num_microbatches "
                       f"{self.num_microbatches} must be >= 1")
    if self.group_size - self.adv_ddof <= 0:
      raise ValueError(f"group size {self.group_size} with ddof {self.adv_ddof} leaves no "
                       "degrees of freedom")
    if len(self.reward_weights) != 3:
      raise ValueError(f"reward_weights must hold 3 numbers, got {self.reward_weights}")

  @classmethod
  def from_config(cls, grpo_cfg, reward_cfg=None, **overrides) -> GRPOStepConfig:
    """From the ``config.grpo`` (and ``config.reward``) sections of a GRPO config.

    Each field is the section's key of the same name (reward_weights: ``config.reward.weights``);
    a key left out keeps the field's default, so ``from_config({}) == GRPOStepConfig()``. A
    temperature of 0 (greedy rollouts) reads as 1: log-probs are then of logits / 1. An optional
    ``grpo.preset`` (GRPO_PRESETS: "spec", "verl", "verl-no-kl") sets beta, kl_estimator and
    aggregation, over the section's own values of those three.
    """
    kw = _config.field_values(cls, grpo_cfg, section_name="grpo")
    kw.pop("reward_weights", None)  # config.reward.weights, below.
    if kw.get("temperature") == 0.0:
      kw["temperature"] = 1.0
    preset = str(_config.as_dict(grpo_cfg).get("preset") or "")
    if preset:
      if preset not in GRPO_PRESETS:
        raise ValueError(f"grpo.preset {preset!r}; expected one of {tuple(GRPO_PRESETS)} or ''")
      kw.update(GRPO_PRESETS[preset])  # The preset wins over the section's own values.
    if reward_cfg is not None and "weights" in reward_cfg:
      kw["reward_weights"] = tuple(float(w) for w in reward_cfg["weights"])
    kw.update(overrides)
    return cls(**kw)


def make_logps_fn(forward_fn: Callable, *, temperature: float = 1.0, chunk_size: int = 0,
                  unembed_fn: Callable | None = None) -> Callable:
  """logps_fn(params, batch) -> f32[B, T] = log softmax(logits / temperature)[labels] of a
  data.batch.Batch.

  Args:
    forward_fn: (params, batch, return_hidden) -> logits [B, T, V] or hidden [B, T, D]
      (train/setup.make_forward).
    temperature: the rollouts' temperature.
    chunk_size: > 0 uses token_logps_from_hidden (never builds [B, T, V]); needs unembed_fn.
    unembed_fn: params -> [D, V].
  """
  if chunk_size and unembed_fn is None:
    raise ValueError(f"logps chunk_size = {chunk_size} needs an unembed_fn (params -> [D, V])")

  def logps_fn(params, batch):
    if chunk_size:
      hidden = forward_fn(params, batch, True)
      return losses.token_logps_from_hidden(hidden, unembed_fn(params), batch.labels,
                                            chunk_size=chunk_size, temperature=temperature)
    return losses.token_logps(forward_fn(params, batch, False), batch.labels,
                              temperature=temperature)

  return logps_fn


def make_grpo_loss_fn(logps_fn: Callable, cfg: GRPOStepConfig) -> Callable:
  """GRPO loss in sum-and-count form for train/step.accumulate_gradients.

  loss_fn(params, mb, context) -> (numerator, (denominator, metric sums)), numerator and
  denominator of aggregate_sum_and_count of the per-token loss over mb.loss_mask; the micro-batch
  mb (a data.batch.Batch) holds the model inputs plus advantages f32[b], old_logps f32[b, T] and
  ref_logps f32[b, T] (when beta != 0). Metric sums (over masked tokens): pg (aggregated like
  the loss), kl, clipped, ratio, abs_log_ratio (|logp - old_logp|), tokens, and the
  agreement_sums of logp and old_logp.
  """
  def loss_fn(params, mb, context):
    del context
    mask = mb.loss_mask.astype(jnp.float32)
    logps, old_logps, ref_logps = _clean_masked(mask, logps_fn(params, mb), mb.old_logps,
                                                mb.ref_logps)
    per_token, parts = per_token_grpo_loss(
        logps, old_logps, ref_logps, mb.advantages, epsilon=cfg.epsilon,
        beta=cfg.beta, kl=cfg.kl_estimator)
    num, den = aggregate_sum_and_count(per_token, mask, cfg.aggregation)
    pg_num, _ = aggregate_sum_and_count(parts["pg"], mask, cfg.aggregation)
    if cfg.aggregation == "sequence-sum-token-mean":
      den = jnp.float32(1.0 / cfg.num_microbatches)  # Summed over micro-batches: 1.
    sg = jax.lax.stop_gradient
    log_ratio = sg(logps) - sg(old_logps.astype(jnp.float32))
    sums = {"pg_loss": sg(pg_num),
            "kl": sg(jnp.sum(parts["kl"] * mask)),
            "clip_fraction": sg(jnp.sum(parts["clipped"] * mask)),
            "ratio_mean": sg(jnp.sum(parts["ratio"] * mask)),
            "abs_log_ratio": jnp.sum(jnp.abs(log_ratio) * mask),
            "policy_tokens": jnp.sum(mask),
            **agreement_sums(sg(logps), sg(old_logps), mask)}
    return num, (den, sums)

  return loss_fn


def finish_pass_metrics(sums: dict[str, jax.Array], count: jax.Array) -> dict[str, jax.Array]:
  """Token sums -> token means; pg_loss sum -> aggregate (divided by the loss count)."""
  tokens = jnp.maximum(sums["policy_tokens"], 1.0)
  out = {k: sums[k] / tokens for k in ("kl", "clip_fraction", "ratio_mean", "abs_log_ratio")}
  out["pg_loss"] = sums["pg_loss"] / jnp.maximum(count, 1e-9)
  out["policy_tokens"] = sums["policy_tokens"]
  out["logp_corr"] = agreement_from_sums(sums)["corr"]
  return out
