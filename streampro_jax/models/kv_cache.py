"""Streaming KV cache for the Qwen decoders: prefill, then extend turn by turn.

Backbone-agnostic: works for any backbone of `streampro_jax.models` (Qwen2.5-VL, Qwen3-VL) whose
decoder takes `kv=qwen2_5_vl.KVInput(...)`; `config.text` gives the cache shapes. With Qwen3-VL,
frames passed as `pixel_values` also get their DeepStack features; precomputed visual features
(`model_kwargs={"video_embeds": ...}`) are the backbone's `encode_vision` pytree.

A stream is fed as chunks: a pinned prefix (system prompt, never evicted), then per turn k a user
chunk (time label + that second's <|video_pad|> tokens + its frames) and one or more assistant
chunks (sampled tokens). Every chunk is padded to a fixed bucket length C (right padding,
`chunk_mask` marks real tokens), so a whole stream compiles once per bucket shape.

Layout (fixed shapes, donated in place under jit):
  k[i], v[i]          [B, K, cap, H] per decoder layer i, head-major (rotary already applied to
                      k; attention reads it in place); with a scan_layers config k, v are
                      stacks [L, B, K, cap, H] (k[i] is layer i)
  slot_turn  i32[B, cap]  turn id of the token in the slot
  slot_seq   i32[B, cap]  order in which tokens were written (the causal order)
  slot_valid bool[B, cap] slot holds a live token
  count      i32[B]   tokens written so far;  pin_len i32[B] slots [0, pin_len) are pinned
  ring_ptr   i32[B]   next write offset inside the ring [pin_len, cap)
  next_position i32[B]  1 + the largest M-RoPE position written (the start for the next chunk)
  overflow   bool[B]  set when a write had to overwrite a live slot (capacity too small)
  window_turns (static) sliding window in turns (default 200).

Rules: before a chunk of turn t is written, every unpinned slot whose turn <= t - window_turns
is evicted, so the chunk attends to the pinned prefix, the last `window_turns` turns (t included)
and, causally, itself. Positions are never reused: they keep increasing after eviction, so the
logits of a chunk equal a full forward over [prefix, kept turns, chunk] at the original
position ids. The ring must hold the window: cap >= prefix + window_turns * (real tokens per
turn) + C; otherwise `overflow` turns True (check it after a run).

API
---
  cache = init_cache(config, batch, capacity, window_turns=200, dtype=None)
  logits, cache = extend(params, cache, input_ids, position_ids, config=config, turn_id=t,
                         chunk_mask=None, pixel_values=None, video_grid_thw=None, pin=False,
                         output="logits", fresh=False)
    input_ids i32[B, C]; position_ids i32[3, B, C] (host: the backbone's chunk_position_ids(ids,
    start=np.asarray(cache.next_position), ...), e.g. models.backbone_module(config));
    turn_id int or i32[B]; chunk_mask [B, C]
    (1 = real; real tokens first); pixel_values f32[B, P, Dp] frames of this chunk in the batched
    layout with video_grid_thw [n, 3] = one row's grids (NumPy or tuple; static); pin=True
    writes the pinned prefix (before any other chunk). output: "logits" -> f32[B, C, V],
    "last" -> f32[B, V] at each row's last real token, "hidden" -> [B, C, D] (final-normed).
    fresh=True (static) promises that the cache holds no live slot (the first chunk of an empty
    cache): the chunk then attends causally to itself only ([C, C] attention in query blocks, as
    a forward without cache) instead of to all `cap` slots under a mask; same outputs, same cache.
  extend_fn = make_extend(config, output="logits")   # jitted, cache donated, compile-once
    logits, cache = extend_fn(params, cache, input_ids, position_ids, turn_id, chunk_mask,
                              pixel_values=None, video_grid_thw=None, pin=False)

A rollout loop (sampler) therefore looks like
  cache = init_cache(cfg, B, cap); pos0 = 0
  ids, mask = pad(system_prompt); pos, nxt = chunk_position_ids(ids, 0, config=cfg, chunk_mask=mask)
  _, cache = extend_fn(params, cache, ids, pos, 0, mask, pin=True)
  for turn k: user chunk (with frames) -> extend_fn(..., turn_id=k); sample from output "last";
              feed sampled tokens as assistant chunks with the same turn_id, starting at
              np.asarray(cache.next_position) (or the host-side `nxt` returned by
              chunk_position_ids).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from streampro_jax import parallel
from streampro_jax.models import common, layers

__all__ = ["KVCache", "extend", "init_cache", "make_extend"]

_Array = jax.Array


@flax.struct.dataclass
class KVCache:
  """Fixed-capacity turn-aware ring buffer (see module docstring for the fields)."""
  k: Any
  v: Any
  slot_turn: _Array
  slot_seq: _Array
  slot_valid: _Array
  count: _Array
  pin_len: _Array
  ring_ptr: _Array
  next_position: _Array
  overflow: _Array
  window_turns: int = flax.struct.field(pytree_node=False, default=200)

  @property
  def capacity(self) -> int:
    return self.slot_valid.shape[1]

  @property
  def batch(self) -> int:
    return self.slot_valid.shape[0]


def _text_config(config):
  return config.text


def init_cache(config, batch: int, capacity: int, *, window_turns: int = 200, dtype=None
               ) -> KVCache:
  """An empty cache for `batch` streams of `capacity` slots (dtype default: compute dtype)."""
  t = _text_config(config)
  dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
  shape = (batch, t.num_key_value_heads, capacity, t.head_dim)   # head-major
  if config.scan_layers:  # one stack [L, B, K, cap, H] per k and v
    layers_k = jnp.zeros((t.num_hidden_layers,) + shape, dtype)
    layers_v = jnp.zeros((t.num_hidden_layers,) + shape, dtype)
  else:
    layers_k = tuple(jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers))
    layers_v = tuple(jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers))
  zi = lambda: jnp.zeros((batch,), jnp.int32)  # distinct buffers (all are donated)
  return KVCache(
      k=layers_k, v=layers_v,
      slot_turn=jnp.full((batch, capacity), -1, jnp.int32),
      slot_seq=jnp.zeros((batch, capacity), jnp.int32),
      slot_valid=jnp.zeros((batch, capacity), bool),
      count=zi(), pin_len=zi(), ring_ptr=zi(), next_position=zi(),
      overflow=jnp.zeros((batch,), bool), window_turns=int(window_turns))


def _model_for(config):
  """The Flax module of `config`'s backbone (models.build)."""
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  return models.build(config)


def extend(params, cache: KVCache, input_ids: _Array, position_ids: _Array, *, config,
           turn_id, chunk_mask: _Array | None = None, pixel_values: _Array | None = None,
           video_grid_thw=None, pin: bool = False, output: str = "logits",
           model_kwargs: dict[str, Any] | None = None, fresh: bool = False
           ) -> tuple[_Array, KVCache]:
  """Writes one chunk into the cache and returns its outputs (see module docstring).

  Steps: evict turns <= turn_id - window_turns (pinned slots stay); pick slots (pinned region
  [pin_len, pin_len + C) when pin, else the ring from ring_ptr); write k/v of every chunk token
  (padding slots are marked invalid and reused by the next chunk); attend with mask
  valid[slot] & seq[slot] <= seq[query]; advance count / pin_len / ring_ptr by the number of
  real tokens; next_position = max(next_position, max real position + 1).
  fresh=True: the cache must be empty (nothing this chunk may see; not checked, the cache is on
  device); the chunk's real tokens lead each row and attend causally to each other only.
  """
  b, c = input_ids.shape
  cap = cache.capacity
  valid_new = (jnp.ones((b, c), bool) if chunk_mask is None
               else jnp.asarray(chunk_mask).astype(bool))
  n_new = valid_new.sum(axis=1).astype(jnp.int32)
  turn = jnp.broadcast_to(jnp.asarray(turn_id, jnp.int32), (b,))
  bidx = jnp.arange(b)[:, None]
  ar = jnp.arange(c, dtype=jnp.int32)[None, :]
  slot_ids = jnp.arange(cap, dtype=jnp.int32)[None, :]

  pinned = slot_ids < cache.pin_len[:, None]
  keep = pinned | (cache.slot_turn > (turn - cache.window_turns)[:, None])
  slot_valid = cache.slot_valid & keep
  if pin:
    slots = cache.pin_len[:, None] + ar
    overflow = (cache.pin_len + c > cap) | (cache.count != cache.pin_len)
    slots = jnp.minimum(slots, cap - 1)
  else:
    ring_len = cap - cache.pin_len
    slots = cache.pin_len[:, None] + (cache.ring_ptr[:, None] + ar) % ring_len[:, None]
    overflow = ring_len < c
  overflow = cache.overflow | overflow | jnp.any(
      jnp.take_along_axis(slot_valid, slots, axis=1), axis=1)

  seq_new = cache.count[:, None] + ar
  slot_seq = cache.slot_seq.at[bidx, slots].set(seq_new)
  slot_valid = slot_valid.at[bidx, slots].set(valid_new)
  slot_turn = cache.slot_turn.at[bidx, slots].set(jnp.broadcast_to(turn[:, None], (b, c)))
  mask = slot_valid[:, None, None, :] & (slot_seq[:, None, None, :] <= seq_new[:, None, :, None])

  model = _model_for(config)
  kv = layers.KVInput(cache.k, cache.v, slots, None if fresh else mask)
  grid = None if video_grid_thw is None else np.asarray(video_grid_thw)
  out, (new_k, new_v) = model.apply(
      {"params": params}, input_ids, pixel_values_videos=pixel_values, video_grid_thw=grid,
      position_ids=position_ids, return_hidden=output in ("hidden", "last"), kv=kv,
      **(model_kwargs or {}))
  if output == "last":
    last = jnp.take_along_axis(out, jnp.maximum(n_new - 1, 0)[:, None, None], axis=1)[:, 0]
    w = _unembedding_for(params, config).astype(config.compute_dtype)
    out = jnp.dot(last.astype(config.compute_dtype), w,
                  preferred_element_type=jnp.float32).astype(jnp.float32)
  elif output not in ("logits", "hidden"):
    raise ValueError(f"output must be 'logits', 'last' or 'hidden', not {output!r}")

  pos_max = jnp.max(jnp.where(valid_new[None], jnp.asarray(position_ids), -1), axis=(0, 2))
  if pin:
    pin_len, ring_ptr = cache.pin_len + n_new, cache.ring_ptr
  else:
    pin_len = cache.pin_len
    ring_ptr = (cache.ring_ptr + n_new) % (cap - cache.pin_len)
  # Rows (and kv heads) where the rules put the cache (parallel.CACHE_KV; the scanned stacks
  # [L, B, ...] carry the layer axis first, whole).
  new_k, new_v = (jax.tree.map(lambda a: parallel.constrain(
      a, (None,) * (a.ndim - 4) + parallel.CACHE_KV), t) for t in (new_k, new_v))
  new_cache = cache.replace(
      k=new_k, v=new_v, slot_turn=slot_turn, slot_seq=slot_seq,
      slot_valid=slot_valid, count=cache.count + n_new, pin_len=pin_len, ring_ptr=ring_ptr,
      next_position=jnp.maximum(cache.next_position, pos_max + 1), overflow=overflow)
  return out, new_cache


def _unembedding_for(params, config) -> _Array:
  """[D, V] output projection of `config`'s backbone."""
  return common.unembedding(params, config)


# Traces of _extend_jit's body: jit traces a function exactly when it compiles a new variant
# (a new shape / static-argument key), so this counts the compiled variants without reading
# jit's private cache.
_EXTEND_TRACES = [0]


@functools.partial(jax.jit, static_argnames=("config", "video_grid_thw", "pin", "output",
                                             "fresh"),
                   donate_argnames=("cache",))
def _extend_jit(params, cache, input_ids, position_ids, turn_id, chunk_mask, pixel_values,
                *, config, video_grid_thw, pin, output, fresh=False):
  _EXTEND_TRACES[0] += 1
  return extend(params, cache, input_ids, position_ids, config=config, turn_id=turn_id,
                chunk_mask=chunk_mask, pixel_values=pixel_values, video_grid_thw=video_grid_thw,
                pin=pin, output=output, fresh=fresh)


def make_extend(config, *, output: str = "logits"):
  """Jitted `extend` with the cache donated; compiles once per (chunk shape, grid, pin, fresh).

  Returns fn(params, cache, input_ids, position_ids, turn_id, chunk_mask=None,
  pixel_values=None, video_grid_thw=None, pin=False, fresh=False) -> (out, cache).
  `compiled_count()` (attribute of the returned fn) is the number of variants compiled so far
  by every extend function of the process (a count of traces; compare two readings).
  """

  def fn(params, cache, input_ids, position_ids, turn_id, chunk_mask=None, pixel_values=None,
         video_grid_thw=None, pin=False, fresh=False):
    grid = (None if video_grid_thw is None
            else tuple(tuple(int(x) for x in g) for g in np.asarray(video_grid_thw)))
    if chunk_mask is None:
      chunk_mask = np.ones(np.shape(input_ids), np.int32)
    return _extend_jit(params, cache, input_ids, position_ids,
                       jnp.asarray(turn_id, jnp.int32), chunk_mask, pixel_values,
                       config=config, video_grid_thw=grid, pin=pin, output=output,
                       fresh=fresh)

  fn.compiled_count = lambda: _EXTEND_TRACES[0]
  return fn
