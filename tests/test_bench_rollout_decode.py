"""benchmarks/rollout_decode.py: the GPU-callable decode benchmark functions, on a tiny model."""

import dataclasses
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import rollout_decode  # noqa: E402  pylint: disable=g-import-not-at-top

from streampro_jax import models  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope="module")
def tiny():
  return rollout_decode.tiny_model()


@pytest.mark.parametrize("tie", [False, True])
def test_torch_copy_has_the_same_logits(tiny, tie):
  """The transformers model built from our params computes our logits on the shared prefix."""
  torch = pytest.importorskip("torch")
  cfg, params = tiny
  if tie:
    cfg = dataclasses.replace(cfg, tie_word_embeddings=True)
    params = {k: v for k, v in params.items() if k != "lm_head"}
  model = rollout_decode.torch_model(cfg, params, device="cpu")
  pre = rollout_decode.one_turn_prefix(cfg, rows=2, prefix_len=40)
  assert pre["input_ids"].shape == (40,)
  assert (pre["input_ids"] == cfg.video_token_id).sum() == 16
  ids = np.tile(pre["input_ids"][None], (2, 1))
  pix = np.tile(pre["pixel_values"], (2, 1))
  grid = np.tile(pre["video_grid_thw"], (2, 1))
  ours = models.build(cfg).apply({"params": params}, jnp.asarray(ids),
                                 pixel_values_videos=jnp.asarray(pix), video_grid_thw=grid)
  t = torch.tensor(ids.astype(np.int64))
  with torch.no_grad():
    theirs = model(input_ids=t, attention_mask=torch.ones_like(t),
                   mm_token_type_ids=torch.where(t == cfg.video_token_id, 2, 0),
                   pixel_values_videos=torch.tensor(pix), video_grid_thw=torch.tensor(grid),
                   second_per_grid_ts=torch.ones(2)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5)


def test_decode_step_bytes_by_hand(tiny):
  """The bandwidth bound counts what a decode step reads, computed here from the tiny config by
  hand (hidden 64, 2 layers, 4 heads of 16, 2 kv heads, MLP 192, vocab 320, float32)."""
  cfg, params = tiny
  layer = (64 * 64 + 64) + 2 * (64 * 32 + 32) + 64 * 64 + 3 * 64 * 192 + 2 * 64   # 49,408
  w_dec = (2 * layer + 64) * 4                   # two layers and the final norm: 395,520 bytes
  w_head = 64 * 320 * 4                          # untied lm_head: 81,920 (vision tower: none)
  emb_rows = 2 * 64 * 4                          # the two fed tokens' embedding rows
  kv = 2 * 2 * 2 * 2 * 16 * 33 * 4               # K and V, layers, rows, kv heads, D, L = 33, f32
  assert rollout_decode.decode_step_bytes(cfg, params, rows=2, cache_len=33) == (
      w_dec + w_head + emb_rows + kv) == 511_744
  # Averaged over the steps: new_tokens 5 -> steps 1..4 attend to prefix 32 + s tokens.
  mean, bound = rollout_decode.bandwidth_bound(cfg, params, rows=2, prefix_len=32, new_tokens=5,
                                               hbm_bytes_per_s=1e9)
  per_token = 2 * 2 * 2 * 2 * 16 * 4
  assert mean == w_dec + w_head + emb_rows + per_token * 34.5 and bound == mean / 1e9


@pytest.mark.slow
def test_decode_and_generate_throughput_run(tiny):
  cfg, params = tiny
  ours = rollout_decode.decode_throughput(cfg, params, rows=2, prefix_len=32, new_tokens=5,
                                          repeats=1, hbm_bytes_per_s=1e12)
  assert ours["rows"] == 2 and ours["new_tokens"] == 5   # every row made exactly 5 (checked)
  assert ours["tokens_per_s"] > 0 and ours["seconds"] >= ours["decode_seconds"] > 0
  assert ours["param_bytes"] == sum(x.size * 4 for x in __import__("jax").tree.leaves(params))
  assert 0 < ours["bandwidth_fraction"]
  assert ours["decode_step_bytes"] == rollout_decode.bandwidth_bound(
      cfg, params, rows=2, prefix_len=32, new_tokens=5, hbm_bytes_per_s=1e12)[0]
  pytest.importorskip("torch")
  theirs = rollout_decode.hf_generate_throughput(cfg, params, rows=2, prefix_len=32,
                                                 new_tokens=5, repeats=1, device="cpu")
  assert theirs["tokens_per_s"] > 0 and theirs["new_tokens"] == 5
  # transformers as its docs advise for speed: a static cache and compiled decode steps.
  tuned = rollout_decode.hf_generate_throughput(cfg, params, rows=2, prefix_len=32,
                                                new_tokens=5, repeats=1, device="cpu",
                                                hf_mode="static_compiled")
  assert tuned["tokens_per_s"] > 0 and tuned["hf_mode"] == "static_compiled"


def test_compare_throughput_times_both_sides_interleaved(tiny):
  """The interleaved comparison returns both sides' figures for the same work."""
  pytest.importorskip("torch")
  cfg, params = tiny
  ours, theirs = rollout_decode.compare_throughput(cfg, params, rows=2, prefix_len=32,
                                                   new_tokens=5, repeats=2, device="cpu")
  for side in (ours, theirs):
    assert side["rows"] == 2 and side["new_tokens"] == 5 and side["prefix_len"] == 32
    assert side["seconds"] > 0 and side["prefill_seconds"] > 0
    assert side["tokens_per_s"] == pytest.approx(2 * 5 / side["seconds"])
  # Ours times prefill and decode of the same call (median of their sums, two repeats: the
  # mean). Transformers' prefill is a separate generate call, so its median may exceed the
  # whole generate's on a noisy machine: only ours must hold seconds > prefill_seconds.
  assert ours["seconds"] > ours["prefill_seconds"]
  assert theirs["device"] == "cpu" and "torch_threads" in theirs


def test_imports_only_the_allowed_libraries():
  """A GPU script can import the module without grain, tfds, av, ml_collections, tensorboardX."""
  code = ("import sys; sys.path.insert(0, 'benchmarks'); import rollout_decode; "
          "bad = sorted({m.split('.')[0] for m in sys.modules} & {'grain', 'tensorflow_datasets', "
          "'tensorflow', 'av', 'ml_collections', 'tensorboardX', 'configs'}); print(bad)")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, check=True)
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
