"""Tests of the streaming sampler (streampro_jax/sampling/) on a random tiny Qwen2.5-VL."""

import contextlib
import dataclasses

import jax
import numpy as np
import pytest

from streampro_jax import sampling
from streampro_jax.data import chat_format, synthetic
from streampro_jax.models import processing, qwen2_5_vl

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

FRAME = 16          # 16 x 16 frames, patch 4 -> grid (1, 4, 4), 4 visual tokens per turn
GRID = (1, 4, 4)


@pytest.fixture(scope="module")
def setup(synthetic_tokenizer, tiny_backbone):
  tok = synthetic_tokenizer
  cfg, params = tiny_backbone("qwen2_5_vl")
  chat = chat_format.ChatFormat(tok, tokens_per_turn=4)
  proc = processing.VideoProcessorConfig(patch_size=4, merge_size=2, temporal_patch_size=2,
                                         do_resize=False)
  sc = synthetic.SynthConfig(resolution=32, min_duration=12, max_duration=14)
  prompts = []
  for i, k in enumerate((5, 4, 6)):
    rec = synthetic.make_record("test", i, config=sc)
    prompts.append(sampling.prompt_from_record(rec, rec.questions[0], synthetic.render_frames(rec),
                                              proc, max_turns=k, frame_size=(FRAME, FRAME)))
  return dict(tok=tok, cfg=cfg, params=params, chat=chat, prompts=prompts)


def _logp_bound(setup, out, sampler):
  """tol.logp_bound of a rollout against another summation order of the same log-probs: the
  attention sums run over the KV cache (capacity slots) or the row (T), the longer."""
  seq = max(out.input_ids.shape[1], sampler.cfg.capacity or 0)
  return tol.logp_bound(setup["cfg"], seq, tol.logit_scale(setup["params"], setup["cfg"], out))


@pytest.fixture(scope="module")
def sampler_t1(setup):
  scfg = sampling.SamplerConfig(temperature=1.0, max_text_tokens=5, user_chunk_len=96,
                               capacity=1024)
  return sampling.StreamingSampler(setup["cfg"], setup["chat"], scfg, video_grid=GRID)


def test_top_p_filter_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 11)).astype(np.float32)
  for top_p in (0.3, 0.75, 0.95):
    got = np.asarray(sampling.top_p_filter(logits, top_p))
    for row, out in zip(logits, got):
      p = np.exp(row - row.max())
      p /= p.sum()
      order = np.argsort(-p)
      keep, mass = [], 0.0
      for i in order:        # smallest prefix whose mass reaches top_p
        keep.append(i)
        mass += p[i]
        if mass >= top_p:
          break
      assert set(np.nonzero(np.isfinite(out))[0]) == set(keep)


def _lsm_tol(logits, temperature=1.0):
  """|error| of a float32 log-softmax entry of these logits against an exact (or another
  order's) value: a division by the temperature, the max subtraction, v exponentials, their
  v - 1 additions, a log and a subtraction (2 v + 3 roundings, twice: either side), on the
  scale of the largest |logit / temperature| plus log v."""
  z = np.abs(np.asarray(logits, np.float64)).max() / temperature
  v = np.asarray(logits).shape[-1]
  return 2 * tol.rel_ops_bound(2 * v + 3) * (2 * z + np.log(v))


def test_sample_tokens_force_restrict_greedy():
  logits = np.log(np.asarray([[0.1, 0.6, 0.2, 0.1], [0.5, 0.1, 0.1, 0.3],
                              [0.25, 0.25, 0.4, 0.1]], np.float32))
  keys = jax.random.split(jax.random.key(0), 3)
  tok, old, slp = sampling.sample_tokens(
      logits, keys, np.asarray([-1, 3, -1]), np.asarray([False, False, True]),
      temperature=0.0, top_p=1.0, allowed_ids=(0, 3))
  np.testing.assert_array_equal(np.asarray(tok), [1, 3, 0])    # argmax; forced; restricted
  np.testing.assert_allclose(np.asarray(old), np.log([0.6, 0.3, 0.25]), rtol=0,
                             atol=_lsm_tol(logits))
  np.testing.assert_array_equal(np.asarray(slp), [0, 0, 0])
  # Temperature 2: old logp is under softmax(logits / 2); the restricted row's sampling logp is
  # renormalised over the allowed ids.
  tok, old, slp = sampling.sample_tokens(
      logits, keys, np.asarray([-1, -1, -1]), np.asarray([False, False, True]),
      temperature=2.0, top_p=1.0, allowed_ids=(0, 3))
  tok = np.asarray(tok)
  assert tok[2] in (0, 3)
  q = np.sqrt(np.exp(logits))
  q /= q.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(old), np.log(q[np.arange(3), tok]), rtol=0,
                             atol=_lsm_tol(logits, 2.0))
  allowed = q[2, [0, 3]] / q[2, [0, 3]].sum()
  np.testing.assert_allclose(float(slp[2]), np.log(allowed[[0, 3].index(tok[2])]), rtol=0,
                             atol=_lsm_tol(logits, 2.0))


@pytest.mark.slow
def test_logps_match_teacher_forcing_and_layout(setup, sampler_t1):
  prompts = setup["prompts"]
  out = sampler_t1.sample(setup["params"], prompts, group_size=2, seed=3)
  n = 6
  assert out.input_ids.shape[0] == n and out.position_ids.shape[:2] == (3, n)
  assert out.pixel_values_videos.shape == (n, 6 * 16, 96)
  assert not out.overflow.any()
  np.testing.assert_array_equal(out.num_turns, [5, 5, 4, 4, 6, 6])
  np.testing.assert_array_equal(out.sample_index, [0, 0, 1, 1, 2, 2])
  # Full forward over the returned layout at temperature 1 = the sampling log-probs.
  ref = sampling.teacher_forced_logps(setup["params"], setup["cfg"], out)
  sampled = out.loss_mask > 0
  assert sampled.sum() > 3 * n
  lp = _logp_bound(setup, out, sampler_t1)
  tol.assert_within(tol.max_abs_diff(out.old_logps[sampled], ref[sampled]), lp,
                    "rollout: sampled log-probs vs teacher forcing")
  forced = out.forced_mask > 0
  tol.assert_within(tol.max_abs_diff(out.old_logps[forced], ref[forced]), lp,
                    "rollout: forced log-probs vs teacher forcing")
  # temperature 1, top_p 1: the sampling distribution is the policy with the vision placeholders
  # removed and renormalised: sampling_logp = old_logp - log(1 - P(placeholders)).
  cfg = setup["cfg"]
  ids = sorted({cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id,
                cfg.vision_end_token_id})
  p_banned = sum(np.exp(sampling.teacher_forced_logps(
      setup["params"], cfg, dataclasses.replace(out, labels=np.full_like(out.labels, i))))
      for i in ids)
  # Both sides' log-probs are within lp of the exact ones; P = p_banned moves by at most
  # P (e^lp - 1) ~ P lp, so log1p(-P) by P lp / (1 - P).
  p_max = float(p_banned[sampled].max())
  tol.assert_within(tol.max_abs_diff(out.sampling_logps[sampled],
                                     out.old_logps[sampled] - np.log1p(-p_banned[sampled])),
                    2 * lp + 2 * lp * p_max / (1 - p_max), "rollout: sampling log-probs")
  # Positions used while streaming = get_rope_index of the whole row.
  for r in range(n):
    k = int(out.num_turns[r])
    pos, _ = qwen2_5_vl.get_rope_index(
        out.input_ids[r:r + 1], video_grid_thw=out.video_grid_thw[:k],
        attention_mask=out.attention_mask[r:r + 1], config=setup["cfg"])
    np.testing.assert_array_equal(pos[:, 0], out.position_ids[:, r])
  # The layout parses back into the same turns; one message per turn, each ends with <|im_end|>.
  chat = setup["chat"]
  for r in range(n):
    m = int(out.lengths[r])
    turns = chat.decode_turns(out.input_ids[r, :m])
    assert [t.index for t in turns] == list(range(int(out.num_turns[r])))
    q_turns = [t.index for t in turns if t.question is not None]
    assert q_turns == [prompts[r // 2].ask_turn]
    for t, turn in enumerate(turns):
      assert turn.num_video_pads == 4
      assert turn.decision == sampling.DECISION_NAMES[int(out.decisions[r, t])]
    assert (out.decisions[r, int(out.num_turns[r]):] == sampling.NO_TURN).all()
    # Ends with <|im_end|> "\n"; every supervised message ends with a sampled or forced im_end.
    np.testing.assert_array_equal(out.input_ids[r, m - 2:m], [chat.im_end_id] + chat.newline_ids)
  n_end = ((out.labels == chat.im_end_id) & ((out.loss_mask + out.forced_mask) > 0)).sum(1)
  np.testing.assert_array_equal(n_end, out.num_turns)
  # Length limit: at most 1 + max_text_tokens sampled tokens before <|im_end|> per message.
  per_turn = [np.bincount(out.turn_index[r][out.loss_mask[r] > 0] + 0, minlength=8)
              for r in range(n)]
  assert max(int(x.max()) for x in per_turn) <= 1 + 5 + 1


def test_deterministic_and_compiles_once(setup, sampler_t1):
  prompts = setup["prompts"]
  a = sampler_t1.sample(setup["params"], prompts, group_size=2, seed=7)
  b = sampler_t1.sample(setup["params"], prompts, group_size=2, seed=7)
  np.testing.assert_array_equal(a.input_ids, b.input_ids)
  np.testing.assert_array_equal(a.old_logps, b.old_logps)
  assert a.messages == b.messages
  c = sampler_t1.sample(setup["params"], prompts, group_size=2, seed=8)
  assert not np.array_equal(a.input_ids, c.input_ids)
  # The G rollouts of a sample differ (same frames, different draws).
  assert a.messages[0] != a.messages[1]
  # Other samples, questions and turn counts: still one compilation per function and bucket
  # (the user chunk: C_user = 96 on each sample's question turn, C_small = 32 on the others).
  d = sampler_t1.sample(setup["params"], prompts[::-1], group_size=2, seed=1)
  assert d.input_ids.shape[0] == 6
  assert sampler_t1.small_chunk_len_for(prompts, 96) == 32
  assert sampler_t1.compile_counts() == {"prefix": 1, "user": 2, "decode": 1}


def test_small_chunk_bucket_gives_the_same_rollouts(setup, sampler_t1):
  """Padding the question-free turns to C_small = 32 instead of C_user = 96 changes no token and
  no log-prob (padding is masked and never takes a cache slot); off (< 0): one user bucket."""
  prompts = setup["prompts"]
  off = sampling.StreamingSampler(
      setup["cfg"], setup["chat"], dataclasses.replace(sampler_t1.cfg, small_chunk_len=-1),
      video_grid=GRID)
  a = sampler_t1.sample(setup["params"], prompts, group_size=2, seed=3)
  b = off.sample(setup["params"], prompts, group_size=2, seed=3)
  assert off.compile_counts()["user"] == 1
  np.testing.assert_array_equal(a.input_ids, b.input_ids)
  np.testing.assert_array_equal(a.position_ids, b.position_ids)
  tol.assert_within(tol.max_abs_diff(a.old_logps, b.old_logps), _logp_bound(setup, a, sampler_t1),
                    "rollout: one user bucket vs two")
  assert a.messages == b.messages


def test_capacity_for_prompts_is_tight_and_enough(setup, sampler_t1):
  """The exact capacity (real tokens of the longest stream + one chunk) never overflows, gives
  the same rollout as a roomy cache, and is below the bucket-per-turn bound of capacity_for."""
  prompts = setup["prompts"]
  scfg = dataclasses.replace(sampler_t1.cfg, capacity=0, capacity_multiple=1)
  s = sampling.StreamingSampler(setup["cfg"], setup["chat"], scfg, video_grid=GRID)
  c_user = s.user_chunk_len_for(prompts)
  cap = s.capacity_for_prompts(prompts, c_user)
  p = prompts[2]   # the longest (6 turns)
  by_hand = len(s.system_ids) + c_user + sum(
      1 + len(s.newline_ids) + len(s.fmt.user_ids(k, p.question if k == p.ask_turn else None))
      + len(s.header_ids) + scfg.max_message_tokens for k in range(p.num_turns))
  assert cap == by_hand < s.capacity_for(6, c_user)
  tight = s.sample(setup["params"], prompts, group_size=2, seed=7)
  roomy = sampler_t1.sample(setup["params"], prompts, group_size=2, seed=7)
  assert not tight.overflow.any()
  assert tight.messages == roomy.messages
  tol.assert_within(tol.max_abs_diff(tight.old_logps, roomy.old_logps),
                    _logp_bound(setup, roomy, sampler_t1), "rollout: tight vs roomy cache")
  # A sliding window of 2 turns needs only the two longest consecutive turns.
  s2 = sampling.StreamingSampler(setup["cfg"], setup["chat"],
                                dataclasses.replace(scfg, window_turns=2), video_grid=GRID)
  assert s2.capacity_for_prompts(prompts, c_user) < cap


@pytest.mark.slow
def test_greedy_constrained_with_sliding_window(setup):
  scfg = sampling.SamplerConfig(temperature=0.0, max_text_tokens=3, window_turns=2,
                               constrain_decision=True)
  s = sampling.StreamingSampler(setup["cfg"], setup["chat"], scfg, video_grid=GRID)
  prompts = setup["prompts"][:2]
  out = s.sample(setup["params"], prompts, group_size=2, seed=0)
  assert not out.overflow.any()
  # Greedy: the G rollouts of a sample are identical; no sampling log-probs.
  np.testing.assert_array_equal(out.input_ids[0], out.input_ids[1])
  assert (out.sampling_logps == 0).all()
  chat = setup["chat"]
  # Constrained: every message starts with a decision token; </Silence> is followed by a forced
  # <|im_end|>, so no message is invalid unless a </Response> has empty text.
  for r in range(4):
    for t, msg in enumerate(out.messages[r]):
      assert msg.startswith(("</Silence>", "</Response>")), msg
      if msg.startswith("</Silence>"):
        assert msg == "</Silence>" and out.decisions[r, t] == sampling.TURN_SILENCE
  silence_targets = (out.labels == chat.silence_id) & (out.loss_mask > 0)
  nxt = np.roll(silence_targets, 1, axis=1)
  assert (out.forced_mask[nxt] == 1).all() and (out.labels[nxt] == chat.im_end_id).all()
  # Sliding window of 2 turns: tokens of turns 0 and 1 were sampled before any eviction and
  # match a full forward; later turns attend to fewer tokens than the full forward and differ.
  ref = sampling.teacher_forced_logps(setup["params"], setup["cfg"], out)
  label_turn = np.concatenate([out.turn_index[:, 1:], out.turn_index[:, -1:]], axis=1)
  scored = (out.loss_mask + out.forced_mask) > 0
  early, late = scored & (label_turn < 2), scored & (label_turn >= 2)
  lp = _logp_bound(setup, out, s)
  tol.assert_within(tol.max_abs_diff(out.old_logps[early], ref[early]), lp,
                    "rollout: window, turns before any eviction vs teacher forcing")
  assert tol.max_abs_diff(out.old_logps[late], ref[late]) > lp   # beyond rounding


def test_sample_tokens_never_draws_banned_vision_ids():
  """A placeholder with by far the largest logit is still never drawn (nor chosen greedily),
  while old_logp stays the unconstrained policy's log-prob (what teacher forcing reproduces)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n, v = 64, 10
  logits = jnp.zeros((n, v)).at[:, 7].set(20.0).at[:, 3].set(1.0)
  keys = jax.random.split(jax.random.key(0), n)
  force = -jnp.ones((n,), jnp.int32)
  restrict = jnp.zeros((n,), bool)
  for temperature in (1.0, 0.0):
    tok, old, _ = sampling.sample_tokens(logits, keys, force, restrict, temperature=temperature,
                                        top_p=1.0, allowed_ids=(), banned_ids=(7, 8))
    tok = np.asarray(tok)
    assert not np.isin(tok, [7, 8]).any()
    if temperature == 0.0:
      assert (tok == 3).all()
    ref = jax.nn.log_softmax(logits, axis=-1)[jnp.arange(n), tok]
    np.testing.assert_allclose(np.asarray(old), np.asarray(ref), rtol=0, atol=_lsm_tol(logits))


# ------------------------------------------------------------------------------------------------
# The message decode runs on device: no host transfer inside it.


@contextlib.contextmanager
def no_host_transfers():
  """Fails any host<->device transfer inside the block.

  jax.transfer_guard("disallow_explicit") rejects every host-to-device transfer (and, on GPU /
  TPU, every device-to-host one, explicit jax.device_get included). On CPU, device-to-host reads
  are not guarded by JAX, so `jax.Array._value` (the path of jax.device_get, float(), int(),
  bool(), .tolist(), .item()) is made to raise as well. (NumPy's buffer-protocol read,
  np.asarray(x), of a CPU array escapes both; on an accelerator the guard catches it.)
  """
  from jax._src import array as array_lib  # pylint: disable=g-import-not-at-top

  def read(self):
    raise RuntimeError(f"device-to-host transfer of {self.aval} inside a message decode")

  orig = array_lib.ArrayImpl._value
  array_lib.ArrayImpl._value = property(read)
  try:
    with jax.transfer_guard("disallow_explicit"):
      yield
  finally:
    array_lib.ArrayImpl._value = orig


def per_token_decode(sampler, params, cache, first, active, next_position, turn, key):
  """Reference: the message decode as a host loop (the sampler before the on-device loop): one
  jitted [N, 1] step per token, the host reads every token to force and stop. Same Message
  (samplers with constrain_decision off)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import kv_cache  # pylint: disable=g-import-not-at-top
  cfg = sampler.cfg
  if not hasattr(sampler, "_ref_step"):
    def step(params, cache, ids, pos, turn, s, mask, key, force):
      logits, cache = kv_cache.extend(params, cache, ids, pos, config=sampler.model_config,
                                      turn_id=turn, chunk_mask=mask, output="last")
      n = ids.shape[0]
      return sampling.sample_tokens(
          logits, sampling.row_keys(key, turn, s, n), force, jnp.zeros((n,), bool),
          temperature=cfg.temperature, top_p=cfg.top_p, allowed_ids=(),
          banned_ids=sampler.vision_token_ids), cache
    sampler._ref_step = jax.jit(step, donate_argnums=(1,))  # pylint: disable=protected-access
  tok, old, slp, forced = (np.asarray(jax.device_get(x)) for x in first)
  active, pos0 = np.asarray(jax.device_get(active)), np.asarray(jax.device_get(next_position))
  n, m = tok.shape[0], cfg.max_text_tokens + 2
  msg = sampling.Message(*(np.zeros((n, m), d) for d in (np.int32, np.float32, np.float32, bool)),
                        length=active.astype(np.int32))
  for buf, x in zip(msg[:4], (tok, old, slp, forced)):
    buf[active, 0] = x[active]
  done = ~active | (tok == sampler.im_end_id)
  s = 0
  while not done.all():
    s += 1
    feed, length = ~done, msg.length.copy()
    ids = msg.tokens[np.arange(n), np.maximum(length - 1, 0)][:, None]
    pos = np.broadcast_to((pos0 + length - 1)[None, :, None], (3, n, 1)).astype(np.int32)
    force = np.where(feed & (length >= m - 1), sampler.im_end_id, -1).astype(np.int32)
    (t, o, p), cache = sampler._ref_step(  # pylint: disable=protected-access
        params, cache, ids, pos, turn, np.int32(s), feed[:, None].astype(np.int32), key, force)
    t, o, p = (np.asarray(jax.device_get(x)) for x in (t, o, p))
    r = np.nonzero(feed)[0]
    for buf, x in zip(msg[:4], (t, o, p, force >= 0)):
      buf[r, length[r]] = x[r]
    msg.length[r] += 1
    done |= feed & (t == sampler.im_end_id)
  return msg, cache


def test_message_decode_on_device_without_host_transfers(setup, sampler_t1, monkeypatch):
  """The sampler's message decode runs under no_host_transfers and reproduces the per-token
  host loop exactly; the per-token host loop itself trips the guard."""
  params, prompts = setup["params"], setup["prompts"]
  decode = sampling.StreamingSampler._decode_message
  ref_path = lambda self, *a: per_token_decode(self, *a)

  def guarded(fn):
    def run(self, *a):
      with no_host_transfers():
        return fn(self, *a)
    return run

  monkeypatch.setattr(sampling.StreamingSampler, "_decode_message", ref_path)
  want = sampler_t1.sample(params, prompts, group_size=2, seed=5)
  monkeypatch.setattr(sampling.StreamingSampler, "_decode_message", guarded(decode))
  got = sampler_t1.sample(params, prompts, group_size=2, seed=5)
  assert got.messages == want.messages
  for name in ("input_ids", "position_ids", "loss_mask", "forced_mask", "old_logps",
               "sampling_logps", "turn_index", "decisions"):
    np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
  assert (got.forced_mask > 0).any()   # the length limit was hit (max_text_tokens 5)
  monkeypatch.setattr(sampling.StreamingSampler, "_decode_message", guarded(ref_path))
  with pytest.raises(Exception, match="transfer"):
    sampler_t1.sample(params, prompts, group_size=2, seed=5)
