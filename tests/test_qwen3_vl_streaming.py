"""Qwen3-VL turn-by-turn through the streaming KV cache (models/kv_cache.py) equals full forwards.

The stream is a pinned system prefix, then per turn a user chunk (time label text, one (1, 4, 4)
video block, text) and an assistant chunk, each right-padded to a fixed bucket. Without eviction
the logits of every real chunk token equal the full forward over the whole trajectory. With a
sliding window of W turns they equal one full forward (original position ids: positions keep
increasing after eviction) under the banded causal mask "key is in the prefix or in a turn
> t - W" for a query of turn t: cached keys/values keep the context they were computed with, so
this (not a forward over the kept turns alone) is what a windowed cache computes.
"""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from streampro_jax.models import kv_cache, layers
from streampro_jax.models import qwen3_vl as q3

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

CONFIG = q3.tiny_config()
TURN_GRID = np.array([[1, 4, 4]])
P = 16  # patches per turn
BUCKET = 12


def _stream(seed, turns):
  rng = np.random.default_rng(seed)
  c = CONFIG
  prefix = rng.integers(0, 200, 5)
  users, assists = [], []
  for _ in range(turns):
    users.append(np.concatenate([rng.integers(0, 200, 2), [c.vision_start_token_id],
                                 [c.video_token_id] * (P // 4), [c.vision_end_token_id],
                                 rng.integers(0, 200, 1)]))
    assists.append(rng.integers(0, 200, rng.integers(2, 4)))
  pix = rng.standard_normal((turns, P, c.vision.patch_dim)).astype(np.float32)
  return prefix, users, assists, pix


def _pad(chunk):
  ids = np.zeros((1, BUCKET), np.int32)
  mask = np.zeros((1, BUCKET), np.int32)
  ids[0, :len(chunk)] = chunk
  mask[0, :len(chunk)] = 1
  return ids, mask


@pytest.fixture(scope="module")
def params():
  p = nn.unbox(jax.jit(functools.partial(q3.init_params, CONFIG))(jax.random.key(0)))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(
      np.float32), p)


def _full_forward(params, pieces, pix_turns, positions=None):
  """pieces: list of token arrays (concatenated); pix_turns [k, P, D] for the videos in order."""
  ids = np.concatenate(pieces)[None].astype(np.int32)
  k = pix_turns.shape[0]
  if positions is None:
    positions, _ = q3.get_rope_index(ids, np.repeat(TURN_GRID, k, 0), config=CONFIG)
  fn = jax.jit(lambda p, i, x, pos: q3.Qwen3_VL(CONFIG).apply(
      {"params": p}, i, pixel_values_videos=x, video_grid_thw=np.repeat(TURN_GRID, k, 0),
      position_ids=pos))
  return np.asarray(fn(params, ids, pix_turns.reshape(1, k * P, -1), positions)), positions


def _run_stream(params, prefix, users, assists, pix, window):
  cache = kv_cache.init_cache(CONFIG, 1, 160, window_turns=window)
  extend = kv_cache.make_extend(CONFIG)
  ids, mask = _pad(prefix)
  pos, nxt = q3.chunk_position_ids(ids, [0], config=CONFIG, chunk_mask=mask)
  out, cache = extend(params, cache, ids, pos, 0, mask, pin=True)
  outs = [np.asarray(out)[0, :len(prefix)]]
  start = int(nxt[0])
  for k, (u, a) in enumerate(zip(users, assists)):
    ids, mask = _pad(u)
    pos, nxt = q3.chunk_position_ids(ids, [start], config=CONFIG, chunk_mask=mask,
                                     video_grid_thw=TURN_GRID)
    assert int(np.asarray(cache.next_position)[0]) == start
    out, cache = extend(params, cache, ids, pos, k, mask, pixel_values=pix[k][None],
                        video_grid_thw=TURN_GRID)
    outs.append(np.asarray(out)[0, :len(u)])
    start = int(nxt[0])
    ids, mask = _pad(a)
    pos, nxt = q3.chunk_position_ids(ids, [start], config=CONFIG, chunk_mask=mask)
    out, cache = extend(params, cache, ids, pos, k, mask)
    outs.append(np.asarray(out)[0, :len(a)])
    start = int(nxt[0])
  assert not bool(np.asarray(cache.overflow).any())
  return outs


def _close(a, b):
  """Stream vs full forward: two summation orders over the logits' chain of reductions
  (tests/helpers/tolerances.py; text over the stream's positions, vision over a turn's 16
  patches), worst case, on the logit scale."""
  bound = tol.model_rel(CONFIG, len(b), vision_seq=P) * np.abs(b).max()
  tol.assert_within(np.abs(a - b).max(), bound, "qwen3 streaming: stream vs full")


def test_turn_by_turn_equals_full_forward(params):
  prefix, users, assists, pix = _stream(0, turns=4)
  outs = _run_stream(params, prefix, users, assists, pix, window=200)
  pieces = [prefix] + [x for pair in zip(users, assists) for x in pair]
  full, _ = _full_forward(params, pieces, pix)
  _close(np.concatenate(outs), full[0])


def test_sliding_window_equals_banded_full_forward(params):
  """Window W: a token of turn t attends to the prefix and to earlier tokens of turns > t - W.

  Cached keys/values keep what they were computed with, so the reference is one full forward
  with that banded causal mask (built here from the turn ids, independently of the cache's slot
  bookkeeping), fed through the model's explicit-mask path.
  """
  turns, window = 4, 2
  prefix, users, assists, pix = _stream(1, turns=turns)
  outs = _run_stream(params, prefix, users, assists, pix, window=window)
  pieces = [prefix] + [x for pair in zip(users, assists) for x in pair]
  full, pos = _full_forward(params, pieces, pix)
  turn_of = np.concatenate([np.full(len(prefix), -1)] + [
      np.full(len(p), j // 2) for j, p in enumerate(pieces[1:])])
  n = len(turn_of)
  causal = np.tril(np.ones((n, n), bool))
  visible = (turn_of[None, :] < 0) | (turn_of[None, :] > turn_of[:, None] - window)
  mask = (causal & visible)[None, None]
  t = CONFIG.text
  zeros = tuple(np.zeros((1, t.num_key_value_heads, n, t.head_dim), np.float32)  # head-major
                for _ in range(t.num_hidden_layers))
  kv = layers.KVInput(zeros, zeros, np.arange(n)[None], mask)
  ids = np.concatenate(pieces)[None].astype(np.int32)
  fn = jax.jit(lambda p, i, x, ps, kv: q3.Qwen3_VL(CONFIG).apply(
      {"params": p}, i, pixel_values_videos=x, video_grid_thw=np.repeat(TURN_GRID, turns, 0),
      position_ids=ps, kv=kv)[0])
  ref = np.asarray(fn(params, ids, pix.reshape(1, turns * P, -1), pos, kv))
  _close(np.concatenate(outs), ref[0])
  # The window really evicted something: from turn `window` on, logits differ from full history.
  start = len(prefix) + sum(len(p) for p in pieces[1:1 + 2 * window])
  assert np.abs(np.concatenate(outs)[start:] - full[0, start:]).max() > 1e-3
