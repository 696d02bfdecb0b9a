"""Qwen3-VL in Flax against transformers' PyTorch Qwen3VLForConditionalGeneration.

Small random configs (weights drawn large enough that logits are O(1..10)); every HF model is
saved with `save_pretrained` and loaded with our `load_hf_checkpoint`, so the loader is exercised
on the real format. Tolerance: max |logit difference| <= the worst-case float32 rounding bound of
the logits' chain of reductions, on the logit scale (`_assert_close`).
"""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Qwen3VLConfig as HFConfig
from transformers import Qwen3VLForConditionalGeneration as HFModel
from transformers import vision_utils as hf_vision_utils

from streampro_jax import models
from streampro_jax.models import common
from streampro_jax.models import qwen3_vl as q3

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

CONFIGS = {
    # 3 layers, GQA 4/2, DeepStack from vision blocks 0 and 1, 4x4 position grid, untied.
    "base": q3.tiny_config(),
    # Tied embeddings, MHA 2/2, head_dim 32, 6x6 position grid, DeepStack from blocks 1 and 3.
    "tied": q3.tiny_config(
        text=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                  mrope_section=(6, 5, 5), rope_theta=1e6),
        vision=dict(depth=4, hidden_size=24, intermediate_size=40, num_heads=3,
                    num_position_embeddings=36, deepstack_visual_indexes=(1, 3),
                    out_hidden_size=48),
        tie_word_embeddings=True),
}


def _hf_model(config: q3.Qwen3_VLConfig, seed: int) -> HFModel:
  hf = HFModel(HFConfig(**config.to_hf())).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
      elif "embed_tokens" in name or "lm_head" in name:
        p.copy_(0.5 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[-1] if p.ndim > 1 else 16))
  return hf


@functools.cache
def _pair(name: str, tmp_root: str, scan: bool = False):
  config = CONFIGS[name]
  hf = _hf_model(config, seed=len(name))
  path = os.path.join(tmp_root, name)
  hf.save_pretrained(path)
  # dispatch on model_type; the layout the flag asks for
  loaded_config, params = models.load_hf_checkpoint(path, scan_layers=scan)
  assert loaded_config.scan_layers == scan and models.layout_of(params) == (
      "scanned" if scan else "unrolled")
  assert isinstance(loaded_config, q3.Qwen3_VLConfig)
  assert isinstance(models.build(loaded_config), q3.Qwen3_VL)
  return hf, loaded_config, params, path


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("qwen3_vl"))


def _video_prompt(config, grids, rng, *, text_len=(3, 2, 3)):
  """ids with, per temporal patch, '<t seconds>'-like text + vision_start + pads + vision_end."""
  m2 = config.vision.spatial_merge_size ** 2
  ids = list(rng.integers(0, 200, text_len[0]))
  for t, h, w in grids:
    for _ in range(t):
      ids += list(rng.integers(0, 200, text_len[1]))
      ids += [config.vision_start_token_id] + [config.video_token_id] * (h * w // m2)
      ids += [config.vision_end_token_id]
  ids += list(rng.integers(0, 200, text_len[2]))
  return np.asarray(ids, np.int64)


def _hf_logits(hf, **kw) -> np.ndarray:
  with torch.no_grad():
    out = hf(**{k: torch.as_tensor(v) for k, v in kw.items() if v is not None})
  return out.logits.float().numpy()


def _assert_close(mine, ref, config, seq, vision_seq=1, what="qwen3 parity: logits"):
  """Ours vs transformers' logits: two summation orders over the model's chain of reductions
  (tests/helpers/tolerances.py: vision attention over `vision_seq` patches, text over `seq`
  positions), worst case, on the logit scale."""
  mine, ref = np.asarray(mine), np.asarray(ref)
  assert mine.shape == ref.shape
  scale = float(np.abs(ref).max())
  assert scale > 1.0, scale  # the test weights give logits of a meaningful size
  tol.assert_within(float(np.abs(mine - ref).max()),
                    tol.model_rel(config, seq, vision_seq=vision_seq) * scale, what)


def _apply(config, params, **kw):
  """Jitted apply: grids are static (closed over); position_ids computed on the host first."""
  grid = kw.pop("video_grid_thw", None)
  flags = {k: kw.pop(k) for k in ("return_hidden",) if k in kw}
  if grid is not None and kw.get("position_ids") is None:
    ids, am = kw["input_ids"], kw.get("attention_mask")
    if kw["pixel_values_videos"].ndim == 3:  # batched: one row's grids, per row
      kw["position_ids"] = np.concatenate([q3.get_rope_index(
          ids[b:b + 1], grid, None if am is None else am[b:b + 1], config=config,
          mm_token_type_ids=None if kw.get("mm_token_type_ids") is None
          else kw["mm_token_type_ids"][b:b + 1])[0] for b in range(len(ids))], axis=1)
    else:
      kw["position_ids"] = q3.get_rope_index(ids, grid, am, config=config,
                                             mm_token_type_ids=kw.get("mm_token_type_ids"))[0]

  @jax.jit
  def fn(p, kw):
    return q3.Qwen3_VL(config).apply({"params": p}, video_grid_thw=grid, **flags, **kw)

  return fn(params, kw)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_video_parity_flat_layout(name, tmp_root, scan):
  """Two videos (2 temporal patches of 4x6, 1 of 8x4) in one row, HF flat pixel layout; the
  checkpoint loaded into the unrolled and the scanned layouts."""
  hf, config, params, _ = _pair(name, tmp_root, scan)
  rng = np.random.default_rng(1)
  grids = np.array([[2, 4, 6], [1, 8, 4]])
  ids = _video_prompt(config, grids, rng)[None]
  pix = rng.standard_normal((int(np.prod(grids, 1).sum()), config.vision.patch_dim)).astype(
      np.float32)
  mm = np.where(ids == config.video_token_id, 2, 0)
  ref = _hf_logits(hf, input_ids=ids, pixel_values_videos=pix, video_grid_thw=grids,
                   mm_token_type_ids=mm)
  mine = _apply(config, params, input_ids=ids, pixel_values_videos=pix, video_grid_thw=grids,
                mm_token_type_ids=mm)
  _assert_close(mine, ref, config, ids.shape[1], vision_seq=32)  # frames of 4 x 6, 8 x 4


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_video_parity_batched_padded_rows(tmp_root, scan):
  """Two rows of 3 one-patch turns (StreamPro layout), left padding on row 1, attention_mask.

  HF takes the flat layout (all 6 turns concatenated); we take both layouts and the position_ids
  from our get_rope_index.
  """
  hf, config, params, _ = _pair("base", tmp_root, scan)
  rng = np.random.default_rng(2)
  turn = np.array([[1, 4, 4]] * 3)
  rows = [_video_prompt(config, turn, rng), _video_prompt(config, turn, rng, text_len=(1, 2, 2))]
  length = max(len(r) for r in rows)
  ids = np.zeros((2, length), np.int64)
  am = np.zeros((2, length), np.int64)
  for b, r in enumerate(rows):
    ids[b, length - len(r):] = r
    am[b, length - len(r):] = 1
  p = 16
  pix_b = rng.standard_normal((2, 3 * p, config.vision.patch_dim)).astype(np.float32)
  grids_flat = np.array([[1, 4, 4]] * 6)
  mm = np.where(ids == config.video_token_id, 2, 0)
  ref = _hf_logits(hf, input_ids=ids, attention_mask=am, pixel_values_videos=pix_b.reshape(
      6 * p, -1), video_grid_thw=grids_flat, mm_token_type_ids=mm)
  pos, _ = q3.get_rope_index(ids, grids_flat, am, config=config)
  flat = _apply(config, params, input_ids=ids, attention_mask=am,
                pixel_values_videos=pix_b.reshape(6 * p, -1), video_grid_thw=grids_flat,
                position_ids=pos)
  batched = _apply(config, params, input_ids=ids, attention_mask=am, pixel_values_videos=pix_b,
                   video_grid_thw=turn, position_ids=pos)
  real = am.astype(bool)
  _assert_close(np.asarray(flat)[real], ref[real], config, ids.shape[1], vision_seq=16)
  _assert_close(np.asarray(batched)[real], ref[real], config, ids.shape[1], vision_seq=16)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_text_only_parity(name, tmp_root):
  hf, config, params, _ = _pair(name, tmp_root)
  ids = np.random.default_rng(3).integers(0, config.text.vocab_size, (2, 11))
  _assert_close(_apply(config, params, input_ids=ids), _hf_logits(hf, input_ids=ids), config,
                ids.shape[1])


def test_return_hidden_and_unembedding(tmp_root):
  _, config, params, _ = _pair("tied", tmp_root)
  ids = np.random.default_rng(4).integers(0, config.text.vocab_size, (1, 7))
  hidden = _apply(config, params, input_ids=ids, return_hidden=True)
  logits = _apply(config, params, input_ids=ids)
  w = common.unembedding(params, config)
  assert w.shape == (config.text.hidden_size, config.text.vocab_size)
  # The unembedding outside the jit vs inside: the same chain, other orders.
  _assert_close(hidden @ w, logits, config, ids.shape[1], what="qwen3: hidden @ w vs logits")


def test_get_rope_index_matches_transformers(tmp_root):
  hf, config, _, _ = _pair("base", tmp_root)
  rng = np.random.default_rng(5)
  grids = np.array([[2, 4, 6], [1, 8, 4], [3, 4, 4]])
  r0 = _video_prompt(config, grids[:2], rng)
  r1 = _video_prompt(config, grids[2:], rng, text_len=(5, 1, 1))
  length = max(len(r0), len(r1)) + 2
  ids = np.zeros((2, length), np.int64)
  am = np.zeros((2, length), np.int64)
  ids[0, :len(r0)], am[0, :len(r0)] = r0, 1           # right padding
  ids[1, length - len(r1):], am[1, length - len(r1):] = r1, 1  # left padding
  mm = np.where(ids == config.video_token_id, 2, 0)
  ref_pos, ref_delta = hf.model.get_rope_index(
      torch.as_tensor(ids), torch.as_tensor(mm), video_grid_thw=torch.as_tensor(grids),
      attention_mask=torch.as_tensor(am))
  pos, delta = q3.get_rope_index(ids, grids, am, config=config)
  np.testing.assert_array_equal(pos, ref_pos.numpy())
  np.testing.assert_array_equal(delta, ref_delta.numpy())
  # mm_token_type_ids derived from input_ids when absent, and given explicitly: same.
  pos2, _ = q3.get_rope_index(ids, grids, am, config=config, mm_token_type_ids=mm)
  np.testing.assert_array_equal(pos2, pos)


def test_get_rope_index_hand_computed():
  """text(2) + one 1x4x6 block (2x3 merged) + text(1): hand-written positions."""
  config = CONFIGS["base"]
  v = config.video_token_id
  ids = np.array([[7, 8] + [v] * 6 + [9]])
  pos, delta = q3.get_rope_index(ids, np.array([[1, 4, 6]]), config=config)
  np.testing.assert_array_equal(pos[:, 0], [
      [0, 1, 2, 2, 2, 2, 2, 2, 5],
      [0, 1, 2, 2, 2, 3, 3, 3, 5],
      [0, 1, 2, 3, 4, 2, 3, 4, 5]])
  assert delta.tolist() == [[6 - 9]]


def test_chunk_position_ids_concatenate_to_get_rope_index():
  config = CONFIGS["base"]
  rng = np.random.default_rng(6)
  turn = np.array([[1, 4, 4]])
  chunks = [_video_prompt(config, turn, rng, text_len=(2, 1, 1)) for _ in range(3)]
  full, _ = q3.get_rope_index(np.concatenate(chunks)[None], np.repeat(turn, 3, 0), config=config)
  start, got = 0, []
  for ch in chunks:
    pos, nxt = q3.chunk_position_ids(ch[None], [start], config=config, video_grid_thw=turn)
    got.append(pos)
    start = int(nxt[0])
  np.testing.assert_array_equal(np.concatenate(got, axis=2), full)


@pytest.mark.parametrize("grid,side", [([[1, 4, 6], [2, 8, 4]], 4), ([[1, 6, 6]], 6),
                                       ([[3, 2, 10]], 48)])
def test_interpolation_taps_match_transformers(grid, side):
  grid = np.asarray(grid)
  ref_i, ref_w = hf_vision_utils.get_vision_interpolation_indices_and_weights(
      torch.as_tensor(grid), num_grid_per_side=side, mode="bilinear", align_corners=True,
      spatial_merge_size=2)
  idx, w = q3._interpolation_taps(grid, side, 2)
  np.testing.assert_array_equal(idx, ref_i.numpy())
  # Bilinear weights in [0, 1], each a product of two 1-D weights from a few float32 operations
  # (ours NumPy, theirs torch): <= 8 roundings each side on a scale of 1.
  tol.assert_within(tol.max_abs_diff(w, ref_w.numpy()), 2 * tol.rel_ops_bound(8),
                    "qwen3: interpolation weights")


@pytest.mark.parametrize("max_shard_bytes", [None, 20_000])
def test_save_loads_in_transformers(tmp_root, max_shard_bytes):
  """Our save (single file, or sharded with an index) -> HF from_pretrained -> same logits, and
  -> our loader -> identical params."""
  hf, config, params, _ = _pair("base", tmp_root)
  path = os.path.join(tmp_root, f"saved_{max_shard_bytes}")
  kw = {} if max_shard_bytes is None else {"max_shard_bytes": max_shard_bytes}
  q3.save_hf_checkpoint(config, params, path, **kw)
  files = os.listdir(path)
  if max_shard_bytes is None:
    assert "model.safetensors" in files
  else:
    assert "model.safetensors.index.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 2
  reloaded = HFModel.from_pretrained(path).eval()
  ref = hf.state_dict()
  got = reloaded.state_dict()
  assert sorted(got) == sorted(ref)
  for k in ref:
    torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
  _, params2 = q3.load_hf_checkpoint(path)
  jax.tree.map(np.testing.assert_array_equal, params2, jax.tree.map(np.asarray, params))


def test_tied_checkpoint_roundtrip(tmp_root):
  hf, config, params, path = _pair("tied", tmp_root)
  assert config.tie_word_embeddings and "lm_head" not in params
  with open(os.path.join(path, "config.json")) as f:
    assert json.load(f)["model_type"] == "qwen3_vl"
  out = os.path.join(tmp_root, "tied_saved")
  q3.save_hf_checkpoint(config, params, out)
  reloaded = HFModel.from_pretrained(out).eval()
  ids = np.arange(9)[None] % config.text.vocab_size
  np.testing.assert_allclose(_hf_logits(reloaded, input_ids=ids), _hf_logits(hf, input_ids=ids),
                             rtol=0, atol=0)


def test_config_roundtrip_and_4b_parameter_count():
  for config in CONFIGS.values():
    assert q3.Qwen3_VLConfig.from_hf(config.to_hf()) == config
    assert q3.Qwen3_VLConfig.from_hf(json.loads(HFConfig(**config.to_hf()).to_json_string())
                                    ) == config
  big = q3.qwen3_vl_4b_config()
  shapes = jax.eval_shape(functools.partial(q3.init_params, big), jax.random.key(0))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  with torch.device("meta"):
    ref = HFModel(HFConfig(**big.to_hf()))
  theirs = sum(p.numel() for p in ref.parameters())  # tied lm_head counted once
  assert ours == theirs
  assert 4.3e9 < ours < 4.5e9  # "4B": 4.44 B parameters with the tied unembedding


def test_logical_axis_names(tmp_root):
  config = CONFIGS["base"]
  boxed = jax.eval_shape(functools.partial(q3.init_params, config), jax.random.key(0))
  names = jax.tree.map(lambda x: x.names, boxed, is_leaf=lambda x: hasattr(x, "names"))
  flat = {"/".join(k.key for k in kp): v for kp, v in
          jax.tree_util.tree_flatten_with_path(names, is_leaf=lambda x: isinstance(x, tuple))[0]}
  assert flat["embed_tokens/embedding"] == ("vocab", "embed")
  assert flat["layers_0/self_attn/q_proj/kernel"] == ("embed", "q_heads")
  assert flat["layers_0/self_attn/k_proj/kernel"] == ("embed", "kv_heads")
  assert flat["layers_0/self_attn/q_norm/scale"] == ("norm",)
  assert flat["layers_0/mlp/gate_proj/kernel"] == ("embed", "mlp")
  assert flat["visual/blocks_0/attn/qkv/kernel"] == ("vision_embed", "vision_qkv")
  assert flat["visual/blocks_0/mlp/linear_fc1/kernel"] == ("vision_embed", "vision_mlp")
  assert flat["visual/patch_embed/kernel"] == ("vision_patch", "vision_embed")
  assert flat["visual/merger/linear_fc1/kernel"] == ("merger_in", "merger_hidden")
  assert flat["visual/deepstack_merger_list_1/linear_fc2/kernel"] == ("merger_hidden", "embed")
  assert flat["lm_head/kernel"] == ("embed", "vocab")


def test_bfloat16_and_remat_options(tmp_root):
  _, config, params, _ = _pair("base", tmp_root)
  rng = np.random.default_rng(7)
  grids = np.array([[1, 4, 4]])
  ids = _video_prompt(config, grids, rng)[None]
  pix = rng.standard_normal((16, config.vision.patch_dim)).astype(np.float32)
  kw = dict(input_ids=ids, pixel_values_videos=pix, video_grid_thw=grids)
  ref = np.asarray(_apply(config, params, **kw))
  remat = np.asarray(_apply(config.replace(remat=True, attention_impl="xla"), params, **kw))
  _assert_close(remat, ref, config, ids.shape[1], vision_seq=16, what="qwen3: remat vs plain")
  bf = config.replace(dtype="bfloat16", param_dtype="bfloat16")
  pbf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  out = np.asarray(_apply(bf, pbf, **kw))
  assert out.dtype == np.float32
  # bfloat16 params and compute: one bfloat16 rounding (2^-8) of each stage's output on the path.
  path = tol.model_path(config, ids.shape[1], vision_seq=16)
  tol.assert_within(tol.max_abs_diff(out, ref),
                    (tol.chain_bound(path, 1.0) + len(path) * tol.UBF16) * np.abs(ref).max(),
                    "qwen3: bfloat16 vs float32")


def test_paper_configs_and_frozen_projector():
  """configs/qwen3_vl_4b_{sft,grpo}.py: paper numbers; the frozen regex keeps the patch merger
  and the DeepStack mergers trainable and freezes the rest of the vision tower."""
  import re  # pylint: disable=g-import-not-at-top
  from configs import qwen3_vl_4b_grpo, qwen3_vl_4b_sft  # pylint: disable=g-import-not-at-top
  sft, grpo = qwen3_vl_4b_sft.get_config(), qwen3_vl_4b_grpo.get_config()
  assert (sft.optim.lr, sft.global_batch_size, sft.num_epochs) == (1e-5, 512, 1.0)
  assert (sft.loss.kind, sft.loss.beta, sft.loss.text_weight) == ("cb_stream", 0.9999, 2.0)
  assert (grpo.optim.lr, grpo.global_batch_size, grpo.grpo.group_size) == (1e-6, 16, 8)
  assert (grpo.grpo.temperature, tuple(grpo.reward.weights), grpo.reward.tau) == (
      1.0, (0.1, 0.45, 0.45), 8.0)
  assert sft.model.family == grpo.model.family == "qwen3_vl"
  frozen = re.compile(sft.optim.frozen)
  shapes = jax.eval_shape(functools.partial(q3.init_params, CONFIGS["base"]), jax.random.key(0))
  paths = ["/".join(k.key for k in kp) for kp, _ in
           jax.tree_util.tree_flatten_with_path(nn.unbox(shapes))[0]]
  for p in paths:
    trainable_vision = p.startswith(("visual/merger/", "visual/deepstack_merger_list_"))
    assert bool(frozen.search(p)) == (p.startswith("visual/") and not trainable_vision), p
