"""Work shared inside a group: the G rollouts of a sample see the same frames and the same
system prefix, so the vision tower runs once per sample and turn (B rows of patches, not B * G)
and the prefix is prefilled once, on one row, and copied to the N = B * G rows.

The counts come from the executed programs: the backbone's `encode_vision` and
`kv_cache.extend` are wrapped (before the sampler traces them) with a `jax.debug.callback` that
records the number of rows each call processes, every time the compiled function runs."""

import jax
import numpy as np
import pytest

from streampro_jax import sampling
from streampro_jax.data import chat_format
from streampro_jax.models import kv_cache, qwen2_5_vl

B, G = 2, 4
TURNS = (3, 2)
GRID = (1, 4, 4)   # 16 x 16 frames, patch 4: 16 patches, 4 visual tokens per turn


@pytest.mark.slow
def test_vision_once_per_sample_and_turn_prefix_once(synthetic_tokenizer, tiny_backbone,
                                                     monkeypatch):
  cfg, params = tiny_backbone("qwen2_5_vl")
  vision_rows, prefix_rows, chunk_rows = [], [], []
  encode = qwen2_5_vl.Qwen2_5_VL.encode_vision
  extend = kv_cache.extend

  def counted_encode(self, pixels, grid):
    jax.debug.callback(lambda: vision_rows.append(pixels.shape[0]))
    return encode(self, pixels, grid)

  def counted_extend(params, cache, input_ids, *args, pin=False, **kw):
    rows = input_ids.shape[0]
    jax.debug.callback(lambda: (prefix_rows if pin else chunk_rows).append(rows))
    return extend(params, cache, input_ids, *args, pin=pin, **kw)

  monkeypatch.setattr(qwen2_5_vl.Qwen2_5_VL, "encode_vision", counted_encode)
  monkeypatch.setattr(kv_cache, "extend", counted_extend)
  chat = chat_format.ChatFormat(synthetic_tokenizer, tokens_per_turn=4)
  sampler = sampling.StreamingSampler(
      cfg, chat, sampling.SamplerConfig(temperature=1.0, max_text_tokens=2, user_chunk_len=96,
                                        capacity=512, small_chunk_len=-1), video_grid=GRID)
  rng = np.random.default_rng(0)
  prompts = [sampling.StreamPrompt(rng.normal(size=(k, 16, 96)).astype(np.float32),
                                   question="Which shape moves?", ask_turn=0)
             for k in TURNS]
  out = sampler.sample(params, prompts, group_size=G, seed=0)
  jax.effects_barrier()
  assert out.input_ids.shape[0] == B * G
  # One vision call per turn, on the B samples' patches (not B * G rows).
  assert vision_rows == [B] * max(TURNS)
  # The system prefix: one pinned write of one row for the whole batch.
  assert prefix_rows == [1]
  # The user chunks and the message steps run on all N rows (their tokens differ per row).
  assert chunk_rows and set(chunk_rows) == {B * G}
  # Every row of a group got the same frames: its layout repeats the sample's patches.
  for r in range(B * G):
    k = TURNS[r // G]
    np.testing.assert_array_equal(out.pixel_values_videos[r, :k * 16],
                                  prompts[r // G].pixel_values.reshape(-1, 96))
