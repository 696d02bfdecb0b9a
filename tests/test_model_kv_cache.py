"""Streaming KV cache: turn-by-turn equals a full forward; sliding window; compiles once."""

import numpy as np

import flax.linen as nn
import jax
import jax.numpy as jnp

from streampro_jax import models
from streampro_jax.models import kv_cache as kc
from streampro_jax.models import layers
from streampro_jax.models import qwen2_5_vl as q

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

GRID = np.array([[1, 4, 4]])  # one turn = one video of 4 merged tokens (16 patches)
PATCHES = 16
USER_BUCKET, ASST_BUCKET, PREFIX_BUCKET = 16, 4, 8
# One capacity for the short streams (shared compilations). With a window of 2 turns (at most
# 2 x 15 real tokens) the 72-slot ring wraps around during a 5-turn stream.
CAP = 72


def logits_bound(cfg, ref):
  """Two summation orders of the tiny model's logits (stream vs full forward, fresh vs masked):
  the chain of reductions a video token's logits pass (tol.model_path: vision, the text layers
  over at most CAP keys), worst case, on the logits' scale (tests/helpers/tolerances.py)."""
  return tol.model_rel(cfg, CAP) * tol.max_abs(ref)


def check_logits(cfg, got, ref, what):
  tol.assert_within(tol.max_abs_diff(got, ref), logits_bound(cfg, ref), what)


def scaled_params(cfg, seed=1):
  params = nn.unbox(q.init_params(cfg, jax.random.key(seed)))
  # Unit-scale weights so the logits are O(1) and the comparison is not vacuous.
  return jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim == 2 else x, params)


class Stream:
  """A synthetic 2-row trajectory: a system prefix, then K turns of (user + frames, assistant)."""

  def __init__(self, cfg, num_turns, seed=0):
    rng = np.random.default_rng(seed)
    self.cfg, self.k = cfg, num_turns
    vs, ve, vp = cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.video_token_id
    self.prefix = [list(rng.integers(0, 240, 6)), list(rng.integers(0, 240, 5))]
    self.turns = []  # [row][turn] = (user ids, assistant ids)
    for r in range(2):
      row = []
      for k in range(num_turns):
        user = (list(rng.integers(0, 240, 2 + (k + r) % 3)) + [vs] + [vp] * 4 + [ve]
                + list(rng.integers(0, 240, 2)))
        row.append((user, list(rng.integers(0, 240, 1 + (k + r) % 3))))
      self.turns.append(row)
    self.pix = rng.standard_normal((2, num_turns, PATCHES, cfg.vision.patch_dim)).astype(
        np.float32)

  def full(self, r, keep=None):
    """(input_ids [1, T], pixels [K' * P, Dp], n_videos, index of each kept token in the full
    sequence) over the prefix and the turns in `keep` (default all)."""
    keep = range(self.k) if keep is None else keep
    ids, pix, sel, off = list(self.prefix[r]), [], list(range(len(self.prefix[r]))), 0
    off = len(self.prefix[r])
    for k in range(self.k):
      u, a = self.turns[r][k]
      if k in keep:
        ids += u + a
        pix.append(self.pix[r, k])
        sel += list(range(off, off + len(u) + len(a)))
      off += len(u) + len(a)
    return np.array([ids], np.int32), np.concatenate(pix), len(pix), np.array(sel)


def forward(cfg, params, ids, pix, n, position_ids=None, kv=None):
  """Jitted full forward over one row (positions from get_rope_index unless given)."""
  grid = np.tile(GRID, (n, 1))
  if position_ids is None:
    position_ids, _ = q.get_rope_index(ids, grid, config=cfg)
  model = q.Qwen2_5_VL(cfg)
  fn = jax.jit(lambda p, i, x, ps, kv: model.apply(
      {"params": p}, i, pixel_values_videos=x, video_grid_thw=grid, position_ids=ps, kv=kv))
  out = fn(params, ids, pix, position_ids, kv)
  return np.asarray(out[0] if kv is not None else out)[0]


def pad(rows, n):
  ids = np.zeros((len(rows), n), np.int32)
  mask = np.zeros((len(rows), n), np.int32)
  for i, x in enumerate(rows):
    ids[i, :len(x)], mask[i, :len(x)] = x, 1
  return ids, mask


def run_stream(cfg, params, s, extend_fn, cache, turns=None):
  """Feeds the stream chunk by chunk; returns per-row lists of per-chunk real-token logits."""
  ids, m = pad(s.prefix, PREFIX_BUCKET)
  pos, nxt = q.chunk_position_ids(ids, 0, config=cfg, chunk_mask=m)
  _, cache = extend_fn(params, cache, ids, pos, 0, m, pin=True)
  np.testing.assert_array_equal(np.asarray(cache.next_position), nxt)
  outs = [[], []]
  for k in range(s.k if turns is None else turns):
    for part, bucket in ((0, USER_BUCKET), (1, ASST_BUCKET)):
      ids, m = pad([s.turns[r][k % s.k][part] for r in range(2)], bucket)
      grid = GRID if part == 0 else None
      pos, nxt = q.chunk_position_ids(ids, np.asarray(cache.next_position), config=cfg,
                                      chunk_mask=m, video_grid_thw=grid)
      logits, cache = extend_fn(params, cache, ids, pos, k, m,
                                pixel_values=s.pix[:, k % s.k] if part == 0 else None,
                                video_grid_thw=grid)
      if turns is None:
        np.testing.assert_array_equal(np.asarray(cache.next_position), nxt)
        for r in range(2):
          outs[r].append(np.asarray(logits[r, :m[r].sum()]))
  return outs, cache


def test_chunked_positions_equal_full_get_rope_index():
  cfg = q.tiny_config()
  s = Stream(cfg, 3)
  for r in range(2):
    ids, _, n, _ = s.full(r)
    full, _ = q.get_rope_index(ids, np.tile(GRID, (n, 1)), config=cfg)
    parts, start = [], 0
    chunks = [s.prefix[r]] + [c for k in range(3) for c in s.turns[r][k]]
    for c in chunks:
      has_video = cfg.video_token_id in c
      p, start = q.chunk_position_ids(np.array([c]), [start], config=cfg,
                                      video_grid_thw=GRID if has_video else None)
      parts.append(p)
    np.testing.assert_array_equal(np.concatenate(parts, axis=2), full)


def test_turn_by_turn_equals_full_forward():
  cfg = q.tiny_config()
  params = scaled_params(cfg)
  s = Stream(cfg, 3)
  ext = kc.make_extend(cfg)
  cache = kc.init_cache(cfg, 2, CAP)
  outs, cache = run_stream(cfg, params, s, ext, cache)
  assert not np.asarray(cache.overflow).any()
  for r in range(2):
    ids, pix, n, _ = s.full(r)
    ref = forward(cfg, params, ids, pix, n)
    got = np.concatenate(outs[r])
    ref = ref[len(s.prefix[r]):]
    assert np.abs(ref).max() > 1.0
    check_logits(cfg, got, ref, "kv: turn by turn vs full forward")
  # "last" output = logits at each row's last real token.
  last_fn = kc.make_extend(cfg, output="last")
  cache2 = kc.init_cache(cfg, 2, CAP)
  ids, m = pad(s.prefix, PREFIX_BUCKET)
  pos, _ = q.chunk_position_ids(ids, 0, config=cfg, chunk_mask=m)
  last, _ = last_fn(params, cache2, ids, pos, 0, m, pin=True)
  full_fn = kc.make_extend(cfg)
  logits, _ = full_fn(params, kc.init_cache(cfg, 2, CAP), ids, pos, 0, m, pin=True)
  for r in range(2):
    check_logits(cfg, last[r], logits[r, m[r].sum() - 1], "kv: last vs full")


def test_sliding_window_one_layer_equals_full_forward_over_kept_turns():
  # With one decoder layer the cached keys/values of a token depend only on the token and its
  # position, so after eviction the logits equal a full forward over [prefix, kept turns] at the
  # original position ids. The ring is small enough to wrap around several times.
  cfg = q.tiny_config(text=dict(num_hidden_layers=1))
  params = scaled_params(cfg)
  s = Stream(cfg, 7)
  window = 2
  cache = kc.init_cache(cfg, 2, CAP, window_turns=window)
  outs, cache = run_stream(cfg, params, s, kc.make_extend(cfg), cache)
  assert not np.asarray(cache.overflow).any()
  kept = list(range(s.k - window, s.k))
  for r in range(2):
    ids_all, _, n_all, _ = s.full(r)
    pos_all, _ = q.get_rope_index(ids_all, np.tile(GRID, (n_all, 1)), config=cfg)
    ids, pix, n, sel = s.full(r, kept)
    ref = forward(cfg, params, ids, pix, n, position_ids=pos_all[:, :, sel])
    got = np.concatenate(outs[r][-2:])  # the last turn sees exactly the kept turns
    ref = ref[-len(got):]
    check_logits(cfg, got, ref, "kv: one-layer window vs full forward over kept turns")
    # and it differs from the unwindowed stream (eviction really happened)
    full = forward(cfg, params, ids_all, s.full(r)[1], n_all)
    assert np.abs(full[-len(got):] - got).max() > 1e-3


def test_sliding_window_equals_turn_banded_full_forward():
  # With several layers, the cached k/v of turn j were computed while turns (j - N, j] were
  # visible; the stream therefore equals one forward pass where a token of turn j attends to the
  # prefix and to turns j - N + 1 .. j (causally). Checked through the model's KVInput path with
  # an explicit banded mask over the whole sequence.
  cfg = q.tiny_config()
  params = scaled_params(cfg)
  s = Stream(cfg, 6)
  window = 2
  outs, cache = run_stream(cfg, params, s, kc.make_extend(cfg),
                           kc.init_cache(cfg, 2, CAP, window_turns=window))
  assert (np.asarray(cache.count) > CAP).all()  # the ring [pin_len, CAP) wrapped around
  assert not np.asarray(cache.overflow).any()
  t = cfg.text
  for r in range(2):
    ids, pix, n, _ = s.full(r)
    pos, _ = q.get_rope_index(ids, np.tile(GRID, (n, 1)), config=cfg)
    turn = [-1] * len(s.prefix[r])
    for k in range(s.k):
      turn += [k] * (len(s.turns[r][k][0]) + len(s.turns[r][k][1]))
    turn = np.array(turn)
    length = len(turn)
    causal = np.tril(np.ones((length, length), bool))
    visible = (turn[None, :] < 0) | (turn[None, :] > turn[:, None] - window)
    mask = jnp.asarray((causal & visible)[None, None])
    shape = (1, t.num_key_value_heads, length, t.head_dim)   # head-major cache layout
    kv = layers.KVInput(tuple(jnp.zeros(shape) for _ in range(t.num_hidden_layers)),
                   tuple(jnp.zeros(shape) for _ in range(t.num_hidden_layers)),
                   jnp.arange(length)[None], mask)
    ref = forward(cfg, params, ids, pix, n, position_ids=pos, kv=kv)[len(s.prefix[r]):]
    got = np.concatenate(outs[r])
    check_logits(cfg, got, ref, "kv: window vs turn-banded forward")


def test_300_turn_stream_compiles_once_per_chunk_shape():
  cfg = q.tiny_config(text=dict(num_hidden_layers=1, vocab_size=256),
                      vision=dict(depth=1, fullatt_block_indexes=(0,)))
  params = scaled_params(cfg)
  s = Stream(cfg, 5, seed=3)
  ext = kc.make_extend(cfg)
  before = ext.compiled_count()
  # Window 200 turns of at most 14 + 3 real tokens, plus the prefix and one bucket of slack.
  cap = PREFIX_BUCKET + 200 * 17 + USER_BUCKET
  cache = kc.init_cache(cfg, 2, cap, window_turns=200)
  _, cache = run_stream(cfg, params, s, ext, cache, turns=300)
  # prefix, user chunk (with frames) and assistant chunk: three programs for 601 calls.
  assert ext.compiled_count() - before == 3
  assert not np.asarray(cache.overflow).any()
  turn = np.asarray(cache.slot_turn)
  valid = np.asarray(cache.slot_valid)
  pinned = np.arange(cap)[None] < np.asarray(cache.pin_len)[:, None]
  live_turns = [sorted(set(turn[r][valid[r] & ~pinned[r]].tolist())) for r in range(2)]
  assert all(lt == list(range(100, 300)) for lt in live_turns)
  assert (valid & pinned).sum(axis=1).tolist() == [6, 5]  # the prefix survived
  assert (np.asarray(cache.next_position) > 300 * 10).all()  # positions kept increasing


def _valid_kv(cache):
  """Per-layer k, v at the live slots only (padding slots hold don't-care values)."""
  valid = np.asarray(cache.slot_valid)
  ks = [np.asarray(x) for x in (cache.k if isinstance(cache.k, tuple) else list(cache.k))]
  vs = [np.asarray(x) for x in (cache.v if isinstance(cache.v, tuple) else list(cache.v))]
  return [np.where(valid[:, None, :, None], x, 0.0) for x in ks + vs]


def test_fresh_first_chunk_equals_masked_extend():
  """extend(fresh=True) on an empty cache (causal [C, C] attention over the chunk only) gives
  the same real-token logits and the same live cache as the masked [C, cap] path, pinned or
  not, unrolled or scanned; the next chunk's logits then agree too."""
  for scan in (False, True):
    cfg = q.tiny_config(scan_layers=scan)
    params = scaled_params(q.tiny_config())
    if scan:
      params = models.scan_params(params)
    s = Stream(cfg, 2, seed=5)
    ext = kc.make_extend(cfg)
    for pin in (True, False):
      if pin:
        ids, m = pad(s.prefix, PREFIX_BUCKET)
        pix, grid = None, None
      else:
        ids, m = pad([s.turns[r][0][0] for r in range(2)], USER_BUCKET)
        pix, grid = s.pix[:, 0], GRID
      pos, _ = q.chunk_position_ids(ids, 0, config=cfg, chunk_mask=m, video_grid_thw=grid)
      outs = []
      for fresh in (False, True):
        logits, cache = ext(params, kc.init_cache(cfg, 2, CAP), ids, pos, 0, m,
                            pixel_values=pix, video_grid_thw=grid, pin=pin, fresh=fresh)
        nids, nm = pad([s.turns[r][1][1] for r in range(2)], ASST_BUCKET)
        npos, _ = q.chunk_position_ids(nids, np.asarray(cache.next_position), config=cfg,
                                       chunk_mask=nm)
        kv_live = _valid_kv(cache)
        meta = [np.asarray(x) for x in (cache.slot_turn, cache.slot_seq, cache.slot_valid,
                                        cache.count, cache.pin_len, cache.ring_ptr,
                                        cache.next_position, cache.overflow)]
        nxt, _ = ext(params, cache, nids, npos, 1, nm)
        outs.append((np.asarray(logits), kv_live, meta, np.asarray(nxt)))
      (l0, kv0, m0, n0), (l1, kv1, m1, n1) = outs
      real = np.asarray(m, bool)
      assert np.abs(l0[real]).max() > 1.0
      check_logits(cfg, l1[real], l0[real], "kv: fresh vs masked chunk logits")
      # Keys / values pass at most every layer but the last's attention output: within the
      # logits' chain, on their own scale.
      for a, b in zip(kv1, kv0):
        tol.assert_within(tol.max_abs_diff(a, b), logits_bound(cfg, b), "kv: fresh vs masked k/v")
      for a, b in zip(m1, m0):
        np.testing.assert_array_equal(a, b)
      nreal = np.asarray(nm, bool)
      check_logits(cfg, n1[nreal], n0[nreal], "kv: next chunk after fresh vs masked")
