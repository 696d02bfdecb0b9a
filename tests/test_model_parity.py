"""Qwen2.5-VL parity with transformers (PyTorch) on small random configs.

The torch model is built from our config's `to_hf()` dict with a fixed seed, its weights are
re-drawn at unit scale (so the logits are O(1..10), not ~0), exported through our HF key mapping
(`params_from_hf_state_dict`), and the logits compared. float32: max |diff| <= the worst-case
rounding bound of the logits' chain of reductions on the logit scale (`bound`).
"""

import numpy as np
import pytest
import torch
import transformers

import jax
import jax.numpy as jnp

from streampro_jax.models import common
from streampro_jax.models import qwen2_5_vl as q

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order


def bound(cfg, ref, grids=(), dtype="float32"):
  """Relative bound of our logits against torch's (tests/helpers/tolerances.py): float32, two
  summation orders over the model's chain of reductions (vision attention over at most one
  frame's h x w patches, text over ref's positions); bfloat16 compute (float32 accumulation, as
  XLA:CPU dots do), plus one bfloat16 rounding (2^-8) of each stage's output on its scale."""
  vision_seq = max([h * w for _, h, w in grids] or [1])
  path = tol.model_path(cfg, ref.shape[1], vision_seq=vision_seq)
  rel = tol.chain_bound(path, 1.0)
  return rel + len(path) * tol.UBF16 if dtype == "bfloat16" else rel


def torch_model(cfg, seed=0):
  hf = transformers.Qwen2_5_VLConfig(**cfg.to_hf())
  hf._attn_implementation = "eager"
  torch.manual_seed(seed)
  m = transformers.Qwen2_5_VLForConditionalGeneration(hf).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in m.named_parameters():
      if "norm" in name or "ln_q" in name:
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
      elif p.ndim == 1:
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
      else:
        fan_in = int(np.prod(p.shape[1:])) if "embed_tokens" not in name else 1
        p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
    if cfg.tie_word_embeddings:
      m.lm_head.weight = m.model.language_model.embed_tokens.weight
  return m


def export(cfg, m):
  sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
  return q.params_from_hf_state_dict(cfg, sd)


def torch_logits(m, cfg, inp, attention_mask=None, image=None):
  ids = inp["input_ids"]
  types = np.zeros_like(ids)
  types[ids == cfg.image_token_id] = 1
  types[ids == cfg.video_token_id] = 2
  kw = dict(input_ids=torch.tensor(ids, dtype=torch.long),
            mm_token_type_ids=torch.tensor(types))
  if inp.get("pixel_values_videos") is not None:
    kw.update(pixel_values_videos=torch.tensor(inp["pixel_values_videos"]),
              video_grid_thw=torch.tensor(inp["video_grid_thw"]),
              second_per_grid_ts=torch.tensor(inp["second_per_grid_ts"]))
  if image is not None:
    kw.update(pixel_values=torch.tensor(image[0]), image_grid_thw=torch.tensor(image[1]))
  if attention_mask is not None:
    kw["attention_mask"] = torch.tensor(attention_mask)
  with torch.no_grad():
    return m(**kw).logits.numpy()


def apply(cfg, params, input_ids, *, attention_mask=None, **kw):
  """Jitted forward (grids closed over as static NumPy; positions computed on the host)."""
  batched = kw.get("pixel_values_videos") is not None and kw["pixel_values_videos"].ndim == 3
  pos = q.host_position_ids(cfg, input_ids, kw.get("video_grid_thw"),
                            kw.get("second_per_grid_ts"), attention_mask,
                            image_grid_thw=kw.get("image_grid_thw"), batched=batched)
  static = {k: kw.pop(k) for k in ("video_grid_thw", "image_grid_thw", "return_hidden")
            if k in kw}
  kw.pop("second_per_grid_ts", None)
  model = q.Qwen2_5_VL(cfg)
  fn = jax.jit(lambda p, i, am, ps, kw: model.apply({"params": p}, i, attention_mask=am,
                                                    position_ids=ps, **static, **kw))
  return fn(params, input_ids, attention_mask, pos, kw)


def check(ours, ref, rel, mask=None):
  ours = np.asarray(ours, np.float32)
  if mask is not None:
    ours, ref = ours[mask.astype(bool)], ref[mask.astype(bool)]
  err = np.abs(ours - ref).max()
  scale = np.abs(ref).max()
  assert scale > 1.0, scale  # the comparison is not vacuous
  tol.assert_within(err, rel * scale, "parity: logits vs transformers")
  return err / scale


CASES = {
    # name: (config overrides, grids, batch)
    "gqa_untied_two_videos_odd_grid": (dict(), [(2, 6, 10), (1, 4, 4)], 2),
    "mha_tied_one_video": (dict(text=dict(num_key_value_heads=4), tie_word_embeddings=True),
                           [(1, 10, 6)], 1),
    "gqa_tied_three_layers_window3": (
        dict(text=dict(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                       hidden_size=64, mrope_section=(1, 1, 2)),
             vision=dict(depth=3, window_size=24, fullatt_block_indexes=(0, 2), num_heads=4),
             tie_word_embeddings=True),
        [(3, 14, 8)], 1),
}


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers_float32(name, scan):
  overrides, grids, batch = CASES[name]
  cfg = q.tiny_config(**overrides, scan_layers=scan)
  m = torch_model(cfg)
  params = export(cfg, m)
  assert ("layers" in params) == scan and ("layers_0" in params) != scan
  inp = q.synthetic_inputs(cfg, grids, batch=batch, seed=3)
  n = len(inp["second_per_grid_ts"])
  inp["second_per_grid_ts"] = np.linspace(0.5, 2.25, n).astype(np.float32)
  ref = torch_logits(m, cfg, inp)
  ours = apply(cfg, params, **inp)
  assert ours.shape == ref.shape and ours.dtype == jnp.float32
  check(ours, ref, bound(cfg, ref, grids))


def test_text_only_and_padding_mask_match_transformers():
  cfg = q.tiny_config()
  m = torch_model(cfg, seed=5)
  params = export(cfg, m)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 240, (2, 9)).astype(np.int32)
  inp = dict(input_ids=ids)
  ref = torch_logits(m, cfg, inp)
  check(apply(cfg, params, ids), ref, bound(cfg, ref))
  # A video batch with right padding in row 1: masked positions get position 0 on both sides.
  inp = q.synthetic_inputs(cfg, [(1, 4, 6)], batch=2, seed=1)
  mask = np.ones_like(inp["input_ids"])
  mask[1, -3:] = 0
  ref = torch_logits(m, cfg, inp, attention_mask=mask)
  ours = apply(cfg, params, **inp, attention_mask=mask)
  check(ours, ref, bound(cfg, ref, [(1, 4, 6)]), mask=mask)


def test_image_and_video_match_transformers():
  cfg = q.tiny_config()
  m = torch_model(cfg, seed=2)
  params = export(cfg, m)
  inp = q.synthetic_inputs(cfg, [(2, 4, 4)], batch=1, seed=2)
  img_grid = np.array([[1, 6, 4]])
  img = np.random.default_rng(1).standard_normal((24, cfg.vision.patch_dim)).astype(np.float32)
  ids = np.concatenate([inp["input_ids"][:, :3], [[cfg.vision_start_token_id]],
                        np.full((1, 6), cfg.image_token_id), [[cfg.vision_end_token_id]],
                        inp["input_ids"][:, 3:]], axis=1).astype(np.int32)
  inp["input_ids"] = ids
  ref = torch_logits(m, cfg, inp, image=(img, img_grid))
  ours = apply(cfg, params, **inp, pixel_values=img,
                                 image_grid_thw=img_grid)
  check(ours, ref, bound(cfg, ref, [(2, 4, 4), (1, 6, 4)]))


def test_bfloat16_within_documented_tolerance():
  cfg = q.tiny_config(dtype="bfloat16")
  m = torch_model(cfg.replace(dtype="float32"))
  params = export(cfg, m)
  inp = q.synthetic_inputs(cfg, [(2, 6, 10), (1, 4, 4)], batch=1, seed=4)
  ref = torch_logits(m, cfg, inp)
  ours = apply(cfg, params, **inp)
  rel = check(ours, ref, bound(cfg, ref, [(2, 6, 10), (1, 4, 4)], dtype="bfloat16"))
  assert rel > bound(cfg, ref, [(2, 6, 10), (1, 4, 4)])  # beyond float32's noise: bfloat16


def test_get_rope_index_matches_transformers():
  cfg = q.tiny_config(vision=dict(tokens_per_second=25))
  m = torch_model(cfg)
  inp = q.synthetic_inputs(cfg, [(3, 4, 6), (1, 8, 4)], batch=2, seed=7)
  ids = inp["input_ids"]
  spgt = np.array([0.5, 1.3, 0.04, 2.0], np.float32)
  mask = np.ones_like(ids)
  mask[0, :2] = 0  # left padding
  types = np.zeros_like(ids)
  types[ids == cfg.video_token_id] = 2
  for am in (None, mask):
    ref_pos, ref_d = m.model.get_rope_index(
        torch.tensor(ids, dtype=torch.long), mm_token_type_ids=torch.tensor(types),
        video_grid_thw=torch.tensor(inp["video_grid_thw"]),
        second_per_grid_ts=torch.tensor(spgt),
        attention_mask=None if am is None else torch.tensor(am))
    pos, d = q.get_rope_index(ids, inp["video_grid_thw"], spgt, am, config=cfg)
    np.testing.assert_array_equal(pos, ref_pos.numpy())
    np.testing.assert_array_equal(d, ref_d.numpy())
  # Hand-computed: text 0..4, then a 3x(2x3) video at start 6 (after <vision_start> at 5), with
  # interval 25 * 0.5 = 12.5 -> temporal 6, 18, 31 (trunc), rows 6..7, columns 6..8.
  pos, _ = q.get_rope_index(ids[:1], inp["video_grid_thw"][:2], spgt[:2], config=cfg)
  assert pos[0, 0, :6].tolist() == [0, 1, 2, 3, 4, 5]
  assert sorted(set(pos[0, 0, 6:24].tolist())) == [6, 18, 31]
  assert sorted(set(pos[1, 0, 6:24].tolist())) == [6, 7]
  assert sorted(set(pos[2, 0, 6:24].tolist())) == [6, 7, 8]
  assert pos[0, 0, 24] == 6 + 3  # <vision_end>: start + max(h, w) / 2


def test_batched_layout_equals_flat_and_xla_equals_jax():
  cfg = q.tiny_config()
  params = export(cfg, torch_model(cfg))
  grids = [(1, 4, 4), (1, 4, 4)]
  inp = q.synthetic_inputs(cfg, grids, batch=2, seed=9)
  model = q.Qwen2_5_VL(cfg)
  flat = apply(cfg, params, **inp)
  # Batched: [B, N_b, Dp]; row 1 drops its second video (a padding turn): fewer pad tokens.
  pix_b = inp["pixel_values_videos"].reshape(2, 32, -1)
  ids = inp["input_ids"].copy()
  batched = apply(cfg, params, ids, pixel_values_videos=pix_b,
                        video_grid_thw=np.array(grids), second_per_grid_ts=np.ones(2))
  # Each pair sums in other orders (batched vs flat layout, xla vs jax_xla attention, eager vs
  # jit, hidden @ unembedding outside the model): the logits' chain bound on their scale.
  b = bound(cfg, flat, grids) * float(np.abs(flat).max())
  tol.assert_within(tol.max_abs_diff(batched, flat), b, "parity: batched vs flat")
  short = ids[1:, :12]  # row with only its first video
  out_short = apply(cfg, params, short, pixel_values_videos=pix_b[1:],
                          video_grid_thw=np.array(grids))
  tol.assert_within(tol.max_abs_diff(out_short[0], flat[1, :12]), b, "parity: short row vs flat")
  xla = apply(cfg.replace(attention_impl="jax_xla"), params, **inp)
  tol.assert_within(tol.max_abs_diff(xla, flat), b, "parity: xla vs jax_xla attention")
  # Eager call, positions computed inside the model from concrete ids.
  eager = model.apply({"params": params}, **inp)
  tol.assert_within(tol.max_abs_diff(eager, flat), b, "parity: eager vs jit")
  hidden = apply(cfg, params, **inp, return_hidden=True)
  tol.assert_within(tol.max_abs_diff(hidden @ common.unembedding(params, cfg), flat), b,
                    "parity: hidden @ unembedding vs logits")
