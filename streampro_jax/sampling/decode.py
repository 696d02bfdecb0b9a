"""Token sampling and the on-device message loop of the streaming sampler (pure, jittable).

`sample_tokens` draws one token per row (temperature, top-p nucleus, forced tokens, an optional
restriction to the decision tokens, banned vision placeholders); `decode_message` generates the
rest of one assistant message of every row inside one `lax.while_loop` through the KV cache;
`row_keys` gives the PRNG keys of one draw. streampro_jax/sampling/sampler.py drives them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from streampro_jax.models import kv_cache

__all__ = ["Message", "decode_message", "row_keys", "sample_tokens", "top_p_filter"]


def top_p_filter(logits_nv: jax.Array, top_p: float) -> jax.Array:
  """Sets logits outside the top-p nucleus to -inf.

  With p = softmax(logits) sorted descending, token i (rank r) is kept when
  sum_{r' < r} p_(r') < top_p, i.e. the smallest prefix whose mass reaches top_p; the top token
  is always kept; ties with the last kept logit are kept. logits_nv: f32[N, V].
  """
  if top_p >= 1.0:
    return logits_nv
  sorted_desc = -jnp.sort(-logits_nv, axis=-1)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep_sorted = mass_before < top_p
  n_keep = jnp.maximum(keep_sorted.sum(axis=-1), 1)
  cutoff = jnp.take_along_axis(sorted_desc, (n_keep - 1)[:, None], axis=-1)
  return jnp.where(logits_nv >= cutoff, logits_nv, -jnp.inf)


def sample_tokens(logits_nv: jax.Array, keys_n: jax.Array, force_n: jax.Array,
                  restrict_n: jax.Array, *, temperature: float, top_p: float,
                  allowed_ids: tuple[int, ...], banned_ids: tuple[int, ...] = ()
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One token per row.

  logits_nv f32[N, V]; keys_n: N PRNG keys; force_n i32[N] (>= 0: this token is taken instead of
  a draw); restrict_n bool[N] (draw only among allowed_ids); banned_ids are never drawn (the
  vision placeholders: a sampled <|video_pad|> would be replaced by visual features when the
  trajectory is teacher-forced, so its log-prob could not be reproduced).
  Returns (token i32[N], old_logp f32[N] = log softmax(logits / T')[token] with T' = temperature
  or 1 when greedy, sampling_logp f32[N] = log-prob under the distribution drawn from, 0 when
  greedy or forced).
  """
  logits = logits_nv.astype(jnp.float32)
  t_eff = temperature if temperature > 0 else 1.0
  lp_policy = jax.nn.log_softmax(logits / t_eff, axis=-1)
  if banned_ids:
    logits = logits.at[:, jnp.asarray(banned_ids)].set(-jnp.inf)
  if allowed_ids:
    allowed = jnp.zeros((logits.shape[-1],), bool).at[jnp.asarray(allowed_ids)].set(True)
    logits = jnp.where(restrict_n[:, None] & ~allowed[None, :], -jnp.inf, logits)
  if temperature == 0:
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    slp = jnp.zeros(tok.shape, jnp.float32)
  else:
    scaled = top_p_filter(logits / temperature, top_p)
    tok = jax.vmap(jax.random.categorical)(keys_n, scaled).astype(jnp.int32)
    slp = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tok[:, None], axis=-1)[:, 0]
  forced = force_n >= 0
  tok = jnp.where(forced, force_n, tok)
  slp = jnp.where(forced, 0.0, slp)
  old = jnp.take_along_axis(lp_policy, tok[:, None], axis=-1)[:, 0]
  return tok, old, slp

def row_keys(key: jax.Array, turn, step, n: int) -> jax.Array:
  """The N PRNG keys of draw `step` of turn `turn`: fold_in(fold_in(fold_in(key, turn), step), r)
  for rows r = 0 .. N-1 (step 0 is the message's first token, drawn from the user chunk)."""
  k = jax.random.fold_in(jax.random.fold_in(key, turn), step)
  return jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(n))


class Message(NamedTuple):
  """One assistant message of every row (device or host arrays), M = max_sampled + 1.

  tokens i32[N, M] (entries past `length` are 0); old_logps / sampling_logps f32[N, M] (see the
  module docstring); forced bool[N, M] the token was forced; length i32[N] tokens of the message,
  the final <|im_end|> included (0 for rows without this turn).
  """
  tokens: Any
  old_logps: Any
  sampling_logps: Any
  forced: Any
  length: Any


def decode_message(params, cache: kv_cache.KVCache, first: tuple, active: jax.Array,
                   next_position: jax.Array, turn: jax.Array, key: jax.Array, *, model_config,
                   sampling: Callable, end_id: int, max_sampled: int, silence_id: int = -1
                   ) -> tuple[Message, kv_cache.KVCache]:
  """Generates the rest of one assistant message of every row on device (one lax.while_loop).

  Args:
    params, cache: the model parameters and the KV cache after the turn's user chunk.
    first: (token i32[N], old_logp f32[N], sampling_logp f32[N], forced bool[N]) the message's
      first token, drawn from the user chunk's last logits.
    active: bool[N] rows that have this turn (the others feed nothing and get length 0).
    next_position: i32[N] the M-RoPE position of the first token; text token i of the message
      sits at next_position + i on all three axes.
    turn: i32[] the turn id (cache turn of the fed tokens and PRNG fold-in).
    key: the rollout's PRNG key.
    model_config: the backbone config (static); sampling: fn(logits f32[N, V], keys, force i32[N],
      restrict bool[N]) -> (token, old_logp, sampling_logp), e.g. a partial of `sample_tokens`.
    end_id: <|im_end|>; max_sampled: tokens after which <|im_end|> is forced; silence_id >= 0:
      <|im_end|> is also forced right after a first token equal to it (constrained decision).

  Step s = 1, 2, ...: every row that is not done feeds its token s - 1 through the cache
  ([N, 1] extend, chunk_mask = not done, position next_position + s - 1) and draws token s with
  `row_keys(key, turn, s, N)`; a row is done once it holds <|im_end|>. The loop stops when all
  rows are done (at most max_sampled steps). The final <|im_end|> is not fed (module docstring).

  Returns (Message, cache).
  """
  tok0, old0, slp0, forced0 = first
  n = tok0.shape[0]
  m = max_sampled + 1
  col = jnp.arange(m, dtype=jnp.int32)[None, :]

  def put(buf, value, where):   # buf[r, length[r]] = value[r] where where[r]
    return jnp.where(where, value[:, None].astype(buf.dtype), buf)

  at0 = (col == 0) & active[:, None]
  msg = Message(tokens=put(jnp.zeros((n, m), jnp.int32), tok0, at0),
                old_logps=put(jnp.zeros((n, m), jnp.float32), old0, at0),
                sampling_logps=put(jnp.zeros((n, m), jnp.float32), slp0, at0),
                forced=put(jnp.zeros((n, m), bool), forced0, at0),
                length=active.astype(jnp.int32))
  done = ~active | (tok0 == end_id)
  no_restrict = jnp.zeros((n,), bool)
  # Every step's row keys up front (the same keys as row_keys inside the loop): no key
  # derivation (three threefry hashes) per decoded token. keys[s]: the N keys of step s.
  keys = jax.vmap(lambda s: row_keys(key, turn, s, n))(jnp.arange(m, dtype=jnp.int32))

  def cond(carry):
    step, _, _, done = carry
    return (step <= max_sampled) & ~jnp.all(done)

  def body(carry):
    step, cache, msg, done = carry
    feed = ~done
    last = jnp.take_along_axis(msg.tokens, jnp.maximum(msg.length - 1, 0)[:, None], axis=1)
    pos = jnp.broadcast_to((next_position + msg.length - 1)[None, :, None], (3, n, 1))
    end_now = msg.length >= max_sampled
    if silence_id >= 0:
      end_now |= (msg.length == 1) & (msg.tokens[:, 0] == silence_id)
    force = jnp.where(feed & end_now, end_id, -1).astype(jnp.int32)
    logits, cache = kv_cache.extend(params, cache, last, pos.astype(jnp.int32),
                                    config=model_config, turn_id=turn,
                                    chunk_mask=feed[:, None].astype(jnp.int32), output="last")
    tok, old, slp = sampling(logits, keys[step], force, no_restrict)
    at = (col == msg.length[:, None]) & feed[:, None]
    msg = Message(tokens=put(msg.tokens, tok, at), old_logps=put(msg.old_logps, old, at),
                  sampling_logps=put(msg.sampling_logps, slp, at),
                  forced=put(msg.forced, force >= 0, at), length=msg.length + feed)
    return step + 1, cache, msg, done | (feed & (tok == end_id))

  _, cache, msg, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, msg, done))
  return msg, cache

