"""Splash attention (layers.attention impl='splash'): the TPU Pallas kernel, in Pallas interpret
mode on this CPU, against the XLA path: the decoder's causal GQA self-attention with padded rows,
the vision tower's window and full segments, a whole tiny model; and the Mosaic kernel compiled
for a v5e topology (libtpu's compile-only backend)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streampro_jax.models import layers, qwen2_5_vl

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order


def _grad_bound(q, k, v, w, keys):
  """As tests/test_attention.py: the backward's reductions, twice the two-sided forward bound on
  the scale |w| x max(|q|, |k|, |v|, 1)."""
  scale = float(np.abs(np.asarray(w)).max()) * max(
      1.0, *(float(np.abs(np.asarray(x)).max()) for x in (q, k, v)))
  return 2 * tol.attention_bound(q, k, v, keys, two_sided=True) * scale


def test_splash_block_and_path_choice():
  assert layers._splash_block(7680, 512) == 512
  assert layers._splash_block(768, 512) == 384       # the largest multiple of 128 dividing 768
  assert layers._splash_block(128, 512) == 128
  assert layers._splash_block(100, 512) == 0          # not a multiple of 128: the XLA path
  assert not layers._splash_fits(1, 4096)             # a decode step
  assert layers._splash_fits(256, 256)
  assert layers._resolve_impl("splash", jnp.float32) == "splash"
  assert layers._resolve_impl(layers._AttentionImpl("splash", 256, 256), jnp.float32) == "splash"
  # 'jax' is splash on a TPU only; on this CPU it is the XLA path.
  assert layers._resolve_impl("jax", jnp.float32) == "xla"


@pytest.mark.slow
def test_splash_decoder_causal_gqa_padded_rows_forward_and_gradients():
  """Causal self-attention, 4 query heads on 2 kv heads, row 1 right-padded (40 pad tokens):
  values and the gradients of q, k, v on the real rows equal the XLA path's."""
  rng = np.random.default_rng(0)
  b, t, n, kh, h = 2, 128, 4, 2, 8
  q = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, t, kh, h)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, t, kh, h)), jnp.float32)
  lengths = np.array([t, t - 40])
  real = np.arange(t)[None, :] < lengths[:, None]                       # [B, T]
  mask = jnp.asarray(real[:, None, None, :])
  w = jnp.asarray(rng.normal(size=q.shape) * real[:, :, None, None], jnp.float32)

  def run(impl, q, k, v):
    return layers.attention(q, k, v, mask=mask, impl=impl, is_causal=True)

  got, want = run("splash", q, k, v), run("xla", q, k, v)
  diff = np.abs(np.asarray(got) - np.asarray(want))[real].max()  # padded queries: unspecified
  tol.assert_within(diff, tol.attention_bound(q, k, v, t, two_sided=True),
                    "splash vs xla: decoder forward")
  g_s = jax.grad(lambda *a: (run("splash", *a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
  g_x = jax.grad(lambda *a: (run("xla", *a) * w).sum(), argnums=(0, 1, 2))(q, k, v)
  for a, e, name in zip(g_s, g_x, "qkv"):
    tol.assert_within(tol.max_abs_diff(a, e), _grad_bound(q, k, v, w, t),
                      f"splash vs xla: decoder d{name}")


@pytest.mark.slow
def test_splash_vision_window_and_full_segments_forward_and_gradients():
  """segment_attention over a frame of 64 patches: 4 windows of 16 (window blocks) and the whole
  frame (full blocks), both padded to 128 for the kernel: values and gradients equal XLA's."""
  rng = np.random.default_rng(1)
  n, heads, h = 64, 2, 16
  order = rng.permutation(n)
  window = layers.segment_plan([order[i:i + 16] for i in range(0, n, 16)], n)
  full = layers.segment_plan([np.arange(n)], n)
  q, k, v = (jnp.asarray(rng.normal(size=(n, heads, h)), jnp.float32) for _ in range(3))
  w = jnp.asarray(rng.normal(size=(n, heads, h)), jnp.float32)
  for plan, keys, name in ((window, 16, "window"), (full, n, "full")):
    def loss(impl, q, k, v, plan=plan):
      return jnp.sum(layers._segment_attention(q, k, v, plan, impl=impl) * w)

    got = layers._segment_attention(q, k, v, plan, impl="splash")
    want = layers._segment_attention(q, k, v, plan, impl="xla")
    tol.assert_within(tol.max_abs_diff(got, want),
                      tol.attention_bound(q, k, v, keys, two_sided=True),
                      f"splash vs xla: vision {name} forward")
    g_s = jax.grad(lambda *a: loss("splash", *a), argnums=(0, 1, 2))(q, k, v)
    g_x = jax.grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(q, k, v)
    for a, e in zip(g_s, g_x):
      tol.assert_within(tol.max_abs_diff(a, e), _grad_bound(q, k, v, w, keys),
                        f"splash vs xla: vision {name} gradients")


@pytest.mark.slow
def test_splash_tiny_model_logits_and_loss_gradients_match_xla():
  """The whole tiny Qwen2.5-VL (2 vision blocks: window + full; 2 GQA decoder layers) on two
  rows of 128 tokens, row 1 right-padded: logits and the gradients of a token cross-entropy
  w.r.t. every parameter, splash (interpret mode) vs the XLA path, within 1e-5 (float32)."""
  cfg_x = qwen2_5_vl.tiny_config(attention_impl="xla")
  cfg_s = cfg_x.replace(attention_impl="splash")
  # grid (2, 8, 8): 32 video tokens + 2 markers; 2 x 47 text tokens -> T = 128.
  inp = qwen2_5_vl.synthetic_inputs(cfg_x, [(2, 8, 8)], batch=2, text_len=47)
  ids = inp["input_ids"]
  assert ids.shape == (2, 128)
  am = np.ones_like(ids)
  am[1, -30:] = 0
  params = qwen2_5_vl.init_params(cfg_x, jax.random.key(0))
  params = jax.tree.map(lambda p: p.value if hasattr(p, "value") else p, params,
                        is_leaf=lambda p: hasattr(p, "value"))
  real = am.astype(bool)

  def logits(cfg, params):
    return qwen2_5_vl.Qwen2_5_VL(cfg).apply(
        {"params": params}, ids, pixel_values_videos=inp["pixel_values_videos"],
        video_grid_thw=inp["video_grid_thw"], second_per_grid_ts=inp["second_per_grid_ts"],
        attention_mask=am)

  def loss(cfg, params):
    lp = jax.nn.log_softmax(logits(cfg, params)[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(lp, jnp.asarray(ids[:, 1:])[..., None], axis=-1)[..., 0]
    m = jnp.asarray(real[:, 1:], jnp.float32)
    return jnp.sum(nll * m) / jnp.sum(m)

  ls, lx = logits(cfg_s, params), logits(cfg_x, params)
  # The target (1e-5); the derived two-order bound of these logits
  # (tolerances.model_rel x max |logits|) is larger, so 1e-5 is the stricter of the two.
  diff = np.abs(np.asarray(ls) - np.asarray(lx))[real].max()
  tol.assert_within(diff, 1e-5, "splash vs xla: tiny model logits")
  gs = jax.grad(lambda p: loss(cfg_s, p))(params)
  gx = jax.grad(lambda p: loss(cfg_x, p))(params)
  worst = max(tol.max_abs_diff(a, e) for a, e in zip(jax.tree.leaves(gs), jax.tree.leaves(gx)))
  tol.assert_within(worst, 1e-5, "splash vs xla: tiny model loss gradients")


@pytest.mark.slow
def test_splash_compiles_mosaic_for_v5e():
  """The tiny model's SFT step with attention_impl='splash' compiled for a v5e:2x2 slice: the
  executable holds the Mosaic kernel (tpu_custom_call), not interpret mode."""
  pytest.importorskip("libtpu", reason="libtpu gives the compile-only TPU backend")
  from configs import tiny_synthetic  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import aot  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  config = tiny_synthetic.get_config()
  config.model.attention_impl = "splash"
  config.data.max_turns = 4
  config.data.seq_len = 256
  s = aot._build_setup(config, aot._topology_devices("v5e:2x2"))
  low = aot._sft_lowerable(s)
  with state_lib.sharding_context(s.mesh, s.rules):
    compiled = low.jitted.lower(*low.args).compile()
  text = compiled.as_text()
  # Forward, dq and dkv kernels of the decoder layers and of the vision blocks.
  assert text.count('custom_call_target="tpu_custom_call"') >= 3
  assert compiled.memory_analysis().temp_size_in_bytes > 0
