"""Qwen2.5-VL (vision tower + patch merger + M-RoPE decoder) in functional Flax Linen.

Reference: transformers 5.23 `models/qwen2_5_vl/modeling_qwen2_5_vl.py`; parity is tested
tensor for tensor (tests/test_model_parity.py).

Public API
----------
- `Qwen2_5_VLConfig` (frozen, hashable): `.from_hf(config_json_dict)`, `.to_hf()`;
  `tiny_config(**overrides)` gives a small random-test config.
- `Qwen2_5_VL(config).apply({"params": params}, input_ids, pixel_values_videos=...,
  video_grid_thw=..., second_per_grid_ts=..., attention_mask=None, position_ids=None,
  return_hidden=False) -> logits f32[B, T, V]` (or final-normed hidden [B, T, D] with
  `return_hidden=True`).
  * `pixel_values_videos` in the HF flat layout [N_patches, Dp] (all videos of the batch
    concatenated, `video_grid_thw` i64[n_videos, 3]) or the batched layout [B, N_b, Dp]
    (`video_grid_thw` [n, 3] = the grids of ONE row, identical for every row; each row's visual
    tokens fill that row's <|video_pad|> positions in order; a row may have fewer pad tokens than
    visual tokens, e.g. padding turns). Dp = in_channels * temporal_patch * patch^2.
  * `video_grid_thw` (and `image_grid_thw`) must be concrete NumPy at trace time: all window and
    segment indices are computed on the host from it.
  * `position_ids` i32[3, B, T]: required under jit (get_rope_index needs concrete ids); when
    absent they are computed on the host with `get_rope_index`.
  * images: `pixel_values` [N, Dp] + `image_grid_thw` (HF flat layout) are also accepted.
- `get_rope_index(input_ids, video_grid_thw=None, second_per_grid_ts=None, attention_mask=None,
  *, config, image_grid_thw=None) -> (position_ids i32[3, B, T], rope_deltas i32[B, 1])`, NumPy,
  identical to transformers.
- `chunk_position_ids(input_ids_chunk, start_positions, *, config, video_grid_thw=None,
  second_per_grid_ts=None, chunk_mask=None) -> (position_ids i32[3, B, C], next_start i32[B])`:
  the same rule continued from `start_positions` (streaming, see kv_cache.py).
- `init_params(config, rng)` (boxed with logical axis names), `load_hf_checkpoint(path, dtype,
  shardings=None)`, `save_hf_checkpoint(config, params, path, max_shard_bytes=...)`.
- Backbone protocol (see `streampro_jax.models.backbone_module`): `MODEL_TYPE`,
  `video_processor_config(config, **overrides)`; `encode_vision` returns one array
  [B, N_b/4, D] (batched) that `video_embeds` takes back.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from streampro_jax import parallel
from streampro_jax.models import common
from streampro_jax.models import hf_io
from streampro_jax.models import layers

__all__ = [
    "MODEL_TYPE", "Qwen2_5_VL", "Qwen2_5_VLConfig", "TextConfig", "VisionConfig",
    "chunk_position_ids", "get_rope_index", "hf_key_map", "host_position_ids", "init_params",
    "load_hf_checkpoint", "params_from_hf_state_dict", "save_hf_checkpoint", "synthetic_inputs",
    "tiny_config", "video_processor_config", "vision_position_hw"
]

_Array = jax.Array

MODEL_TYPE = "qwen2_5_vl"


# ----------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class VisionConfig(common.VisionConfigMixin):
  """Qwen2.5-VL vision tower (HF `Qwen2_5_VLVisionConfig`)."""
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  spatial_merge_size: int = 2
  temporal_patch_size: int = 2
  tokens_per_second: int = 2
  window_size: int = 112
  out_hidden_size: int = 2048
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  hidden_act: str = "silu"
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6  # hard-coded in HF


@dataclasses.dataclass(frozen=True)
class TextConfig(common.FieldTypesMixin):
  """Qwen2.5-VL language model (HF `Qwen2_5_VLTextConfig`)."""
  vocab_size: int = 151936
  hidden_size: int = 2048
  intermediate_size: int = 11008
  num_hidden_layers: int = 36
  num_attention_heads: int = 16
  num_key_value_heads: int = 2
  hidden_act: str = "silu"
  max_position_embeddings: int = 128000
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1000000.0
  mrope_section: tuple[int, ...] = (16, 24, 24)
  bos_token_id: int | None = 151643
  eos_token_id: int | tuple[int, ...] | None = 151645
  pad_token_id: int | None = None

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


_TEXT_KEYS = common.config_keys(TextConfig, ("rope_theta", "mrope_section"))
_VISION_KEYS = common.config_keys(VisionConfig, ("rope_theta", "rms_norm_eps"))


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig(common.VLConfig):
  """Whole-model config: the fields of common.VLConfig (special token ids, dtypes, attention
  impl, remat, scan_layers) with Qwen2.5-VL's text and vision sections; tied embeddings by
  default."""
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  tie_word_embeddings: bool = True

  model_type = MODEL_TYPE

  @classmethod
  def from_hf(cls, d: dict[str, Any], **overrides) -> Qwen2_5_VLConfig:
    """From a HF config.json dict: v5 nested (`text_config`) or hub flat layout."""
    common.check_model_type(d, MODEL_TYPE)
    td = dict(d.get("text_config") or {})
    for k in _TEXT_KEYS + ("rope_scaling", "rope_theta", "rope_parameters",
                           "use_sliding_window", "tie_word_embeddings"):
      if k not in td and k in d:
        td[k] = d[k]
    if td.get("use_sliding_window"):
      raise NotImplementedError("use_sliding_window=True (sliding-window decoder layers)")
    rope = dict(td.get("rope_parameters") or td.get("rope_scaling") or {})
    theta = rope.get("rope_theta", td.get("rope_theta", 1000000.0))
    section = tuple(rope.get("mrope_section", (16, 24, 24)))
    text_kw = common.text_kwargs_from_hf(td, _TEXT_KEYS)
    text = TextConfig(**text_kw, rope_theta=float(theta), mrope_section=section)
    vision_kw, vtheta = common.vision_kwargs_from_hf(
        dict(d.get("vision_config") or {}), _VISION_KEYS, tuple_keys=("fullatt_block_indexes",),
        renames=(("num_attention_heads", "num_heads"),))
    vision = VisionConfig(**vision_kw, rope_theta=vtheta)
    tie = d.get("tie_word_embeddings", td.get("tie_word_embeddings", False))
    if not tie and td.get("tie_word_embeddings"):
      tie = True
    top = common.special_token_ids_from_hf(d)
    return cls(text=text, vision=vision, tie_word_embeddings=bool(tie), **top, **overrides)

  def to_hf(self) -> dict[str, Any]:
    """A transformers-5 config.json dict (nested text_config / vision_config)."""
    t, v = self.text, self.vision
    text = common.hf_fields(t, _TEXT_KEYS)
    text.update(model_type="qwen2_5_vl_text", use_sliding_window=False, sliding_window=None,
                attention_dropout=0.0, use_cache=True, initializer_range=0.02,
                layer_types=["full_attention"] * t.num_hidden_layers,
                max_window_layers=t.num_hidden_layers,
                rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta,
                                 "mrope_section": list(t.mrope_section)})
    vision = common.hf_fields(v, _VISION_KEYS)
    vision.update(model_type="qwen2_5_vl_vision", initializer_range=0.02,
                  rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta})
    return common.hf_config_dict(self, "Qwen2_5_VLForConditionalGeneration", MODEL_TYPE, text,
                                 vision)


def tiny_config(*, text: dict | None = None, vision: dict | None = None, **kw
                ) -> Qwen2_5_VLConfig:
  """A small random config for tests and the demo (vocab 256, 2+2 layers, GQA 4/2 heads).

  Special ids: image 250, video 251, vision_start 252, vision_end 253. Patch 4 (Dp = 96),
  window 16 (2x2 merged tokens per window), full attention in vision block 1.
  """
  t = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
           mrope_section=(2, 3, 3), bos_token_id=None, eos_token_id=None)
  t.update(text or {})
  v = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, patch_size=4,
           spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2, window_size=16,
           out_hidden_size=t["hidden_size"], fullatt_block_indexes=(1,))
  v.update(vision or {})
  base = dict(image_token_id=250, video_token_id=251, vision_start_token_id=252,
              vision_end_token_id=253, tie_word_embeddings=False)
  base.update(kw)
  return Qwen2_5_VLConfig(text=TextConfig(**t), vision=VisionConfig(**v), **base)


# ----------------------------------------------------------------------------------------------
# Host-side index computations (NumPy, from concrete grids).


def _time_interval(tokens_per_second: int, second_per_grid_t) -> Any:
  """tokens_per_second * second_per_grid_t with torch's dtype rules (float32 unless float64)."""
  if second_per_grid_t is None:
    return tokens_per_second
  s = np.asarray(second_per_grid_t)
  if s.dtype == np.float64 and not isinstance(second_per_grid_t, float):
    return np.float64(tokens_per_second) * s
  if np.issubdtype(s.dtype, np.integer):
    return tokens_per_second * int(s)
  return np.float32(tokens_per_second) * np.float32(s)


def _row_positions(types: np.ndarray, start: int, grid_iters: dict, spgt_iter, config
                   ) -> tuple[np.ndarray, int]:
  """M-RoPE positions [3, n] of one row's (unmasked) tokens, starting at `start`.

  Text runs: p = current + arange(len) on all 3 axes, current += len. A run of image (1) or
  video (2) tokens takes the next grid (t, h, w): positions
  (current + trunc(i_t * interval), current + i_h, current + i_w) over the merged grid
  (t, h / m, w / m), interval = tokens_per_second * second_per_grid_t for videos, 1 for images;
  then current += max(h, w) / m. (transformers 5.23 `get_rope_index`.)
  """
  tps = config.vision.tokens_per_second

  def temporal(key: int, lt: int) -> np.ndarray:
    interval = _time_interval(tps, next(spgt_iter)) if key == 2 else 1
    if isinstance(interval, (int, np.integer)):
      return np.arange(lt, dtype=np.int64) * int(interval)
    ar = np.arange(lt).astype(np.asarray(interval).dtype)
    return (ar * interval).astype(np.int64)

  return common.mrope_row_positions(types, start, grid_iters, config.vision.spatial_merge_size,
                                    temporal)


def get_rope_index(input_ids, video_grid_thw=None, second_per_grid_ts=None, attention_mask=None,
                   *, config: Qwen2_5_VLConfig, image_grid_thw=None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Multimodal (3-D) rope positions, exactly as transformers' Qwen2.5-VL `get_rope_index`.

  input_ids: int[B, T] (NumPy-convertible, concrete); video_grid_thw: int[n_videos, 3] and
  image_grid_thw: int[n_images, 3], consumed in order across all rows (HF semantics);
  second_per_grid_ts: float[n_videos] (default 1 per video); attention_mask: [B, T] (masked
  tokens get position 0 and are skipped). Token types come from input_ids (image_token_id -> 1,
  video_token_id -> 2, text 0). See `_row_positions` for the rule.
  Returns position_ids i32[3, B, T] and rope_deltas i32[B, 1] = max position + 1 - row length.
  """
  ids = np.asarray(input_ids)
  bsz, seq = ids.shape
  grid_iters = {1: iter(np.asarray(image_grid_thw)) if image_grid_thw is not None else None,
                2: iter(np.asarray(video_grid_thw)) if video_grid_thw is not None else None}
  spgt = iter(list(second_per_grid_ts) if second_per_grid_ts is not None else [None] * seq * bsz)
  return common.rope_index_rows(
      common.token_types(ids, config), attention_mask,
      lambda types: _row_positions(types, 0, grid_iters, spgt, config)[0])


def chunk_position_ids(input_ids_chunk, start_positions, *, config: Qwen2_5_VLConfig,
                       video_grid_thw=None, second_per_grid_ts=None, chunk_mask=None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Positions of a streaming chunk, continuing the get_rope_index rule from `start_positions`.

  input_ids_chunk: int[B, C]; start_positions: int[B] (the rule's running position after the
  previous chunks, e.g. `KVCache.next_position`); video_grid_thw: [n, 3] grids of the videos in
  ONE row's chunk (same for every row; batched layout); chunk_mask: [B, C] 1 for real tokens
  (padding gets position 0). Returns (position_ids i32[3, B, C], next_start i32[B]).
  Concatenating chunk results equals get_rope_index on the whole sequence (for videos whose
  temporal positions stay below the running position, i.e. t = 1 grids as in StreamPro turns).
  """
  ids = np.asarray(input_ids_chunk)

  def row_positions(types, start):  # fresh grid and interval iterators for every row
    grid_iters = {2: iter(np.asarray(video_grid_thw)) if video_grid_thw is not None else None}
    spgt = iter(list(second_per_grid_ts) if second_per_grid_ts is not None
                else [None] * ids.shape[1])
    return _row_positions(types, start, grid_iters, spgt, config)

  return common.chunk_rows(common.token_types(ids, config), start_positions, chunk_mask,
                           row_positions)


def _vision_window_index(grid_thw: np.ndarray, vcfg: VisionConfig
                        ) -> tuple[np.ndarray, np.ndarray]:
  """HF `get_vision_window_index`: merged-token order of the windows and cumulative window
  lengths in patches (after unique_consecutive). grid_thw: int[n, 3]."""
  sms = vcfg.spatial_merge_size
  vmws = vcfg.window_size // sms // vcfg.patch_size
  unit = sms * sms
  window_index, cu, offset = [], [0], 0
  for t, h, w in np.asarray(grid_thw).tolist():
    lh, lw = h // sms, w // sms
    index = np.arange(t * lh * lw).reshape(t, lh, lw)
    pad_h, pad_w = vmws - lh % vmws, vmws - lw % vmws
    nwh, nww = (lh + pad_h) // vmws, (lw + pad_w) // vmws
    ip = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-100)
    ip = ip.reshape(t, nwh, vmws, nww, vmws).transpose(0, 1, 3, 2, 4)
    ip = ip.reshape(t, nwh * nww, vmws, vmws)
    seqlens = (ip != -100).sum(axis=(2, 3)).reshape(-1)
    flat = ip.reshape(-1)
    window_index.append(flat[flat != -100] + offset)
    cu.extend((np.cumsum(seqlens) * unit + cu[-1]).tolist())
    offset += t * lh * lw
  cu = np.asarray(cu, np.int64)
  keep = np.concatenate([[True], cu[1:] != cu[:-1]])
  return np.concatenate(window_index), cu[keep]


def vision_position_hw(grid_thw: np.ndarray, sms: int) -> np.ndarray:
  """HF `get_vision_position_ids`: (row, col) of every patch in merge-block order. i32[N, 2]."""
  out = []
  for t, h, w in np.asarray(grid_thw).tolist():
    hp, wp = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // sms, sms, w // sms, sms)
    hp = hp.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    wp = wp.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    out.append(np.tile(np.stack([hp, wp], -1), (t, 1)))
  return np.concatenate(out).astype(np.int32)


@functools.lru_cache(maxsize=64)
def _vision_plan_cached(grid_key: tuple, vcfg: VisionConfig):
  grid = np.asarray(grid_key, np.int64).reshape(-1, 3)
  unit = vcfg.spatial_merge_size ** 2
  # Full attention: one segment per frame (HF cu_seqlens; the window permutation keeps frames).
  n, full = layers.frame_plan(grid)
  widx, cu_w = _vision_window_index(grid, vcfg)
  order = (widx[:, None] * unit + np.arange(unit)).reshape(-1)
  window = layers.segment_plan(layers.cu_seqlens_segments(cu_w, order), n)
  return vision_position_hw(grid, vcfg.spatial_merge_size), full, window


def _vision_plan(grid_thw, vcfg: VisionConfig):
  """(pos_hw i32[N, 2], full-attention SegmentPlan, window-attention SegmentPlan).

  Window attention is computed in the original (un-permuted) token order: the same windows as
  HF's permuted `cu_window_seqlens`, mapped back through `window_index`; the outputs are
  identical because attention is permutation-equivariant within a window and every other op is
  per token (the merger's 2x2 groups are consecutive in both orders).
  """
  grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  return _vision_plan_cached(tuple(grid.reshape(-1).tolist()), vcfg)


# ----------------------------------------------------------------------------------------------
# Modules.


class _VisionBlock(nn.Module):
  """x += proj(attn(rope(qkv(norm1(x))))) within segments; x += mlp(norm2(x)). x: [N, E]."""
  cfg: VisionConfig
  dtype: Any
  param_dtype: Any
  impl: str

  @nn.compact
  def __call__(self, x, cos, sin, plans, which):
    """plans: (window plan, full plan) SegmentPlans; which: 0 (window) or 1 (full), a Python
    int or a traced int32 (scanned stack)."""
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.RMSNorm(c.hidden_size, 1e-6, name="norm1", **kw)(x)
    with jax.named_scope("vision_attn"):
      qkv = layers.VisionQKV(c.hidden_size, self.param_dtype, self.dtype, name="attn")
      q, k, v, proj = qkv(h)
      o = layers.vision_rope_attention(q, k, v, cos, sin, plans, num_heads=c.num_heads,
                                       impl=self.impl, which=which)
      x = parallel.constrain(x + proj(o), parallel.ACT_ROWS_EMBED)
    h = layers.RMSNorm(c.hidden_size, 1e-6, name="norm2", **kw)(x)
    mlp = layers.GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, use_bias=True,
                          axes=("vision_embed", "vision_mlp"), name="mlp", **kw)
    return parallel.constrain(x + mlp(h), parallel.ACT_ROWS_EMBED)


class _VisionTower(nn.Module):
  """Patch embed -> blocks (window / full attention) -> 2x2 merger. [N, Dp] -> [N/4, D_out]."""
  cfg: VisionConfig
  dtype: Any
  param_dtype: Any
  impl: str
  remat: bool = False
  remat_policy: str = "full"
  scan: bool = False

  @nn.compact
  def __call__(self, pixels: _Array, grid_thw) -> _Array:
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pos_hw, full, window = _vision_plan(grid_thw, c)
    layers.check_num_patches(pixels, pos_hw.shape[0], grid_thw)
    x = layers.dense(c.hidden_size, ("vision_patch", "vision_embed"), use_bias=False,
                     name="patch_embed", **kw)(pixels.astype(self.dtype))
    cos, sin = layers.axial_rope_cos_sin(pos_hw, layers.rope_inv_freq(c.head_dim // 2,
                                                                      c.rope_theta))
    plans = layers.device_plans((window, full))
    which = [int(i in c.fullatt_block_indexes) for i in range(c.depth)]
    if self.scan:
      body = layers.remat_wrap(layers.scanned_block(_VisionBlock), self.remat, self.remat_policy,
                               scanned=True)
      x, _ = layers.scan_stack(body, c.depth, 3)(c, self.dtype, self.param_dtype, self.impl,
                                                 name="blocks")(
          x, jnp.asarray(which, jnp.int32), cos, sin, plans)
    else:
      block_cls = layers.remat_wrap(_VisionBlock, self.remat, self.remat_policy)
      for i in range(c.depth):
        x = block_cls(c, self.dtype, self.param_dtype, self.impl, name=f"blocks_{i}")(
            x, cos, sin, (plans[which[i]],), 0)
    return _PatchMerger(c, self.dtype, self.param_dtype, name="merger")(x)


class _PatchMerger(nn.Module):
  """y = mlp_2(gelu(mlp_0(reshape(ln_q(x), [N/4, 4E])))). x: [N, E] -> [N/4, D_out]."""
  cfg: VisionConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hid = c.hidden_size * c.spatial_merge_size ** 2
    x = layers.RMSNorm(c.hidden_size, 1e-6, name="ln_q", **kw)(x).reshape(-1, hid)
    x = layers.dense(hid, ("merger_in", "merger_hidden"), use_bias=True, name="mlp_0", **kw)(x)
    x = jax.nn.gelu(x, approximate=False)
    return layers.dense(c.out_hidden_size, ("merger_hidden", "embed"), use_bias=True,
                        name="mlp_2", **kw)(x)


class _DecoderLayer(nn.Module):
  """Pre-norm decoder layer: x += o(attn(rope(q, k), v)); x += swiglu(norm(x)). x: [B, T, D]."""
  cfg: TextConfig
  dtype: Any
  param_dtype: Any
  impl: str
  matmul: str = "default"   # layers._MATMUL_DTYPES: the projections and MLP

  @nn.compact
  def __call__(self, x, cos, sin, mask, kv):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, t, _ = x.shape
    hd, nh, nk = c.head_dim, c.num_attention_heads, c.num_key_value_heads
    h = layers.RMSNorm(c.hidden_size, c.rms_norm_eps, name="input_layernorm", **kw)(x)
    attn = _DecoderAttnParams(c, **kw, matmul=self.matmul, name="self_attn")
    # Projections on [B*T, D] rows (2-D weight-gradient transposes are fast on XLA:CPU).
    q, k, v, o_proj = attn(h.reshape(b * t, -1))
    q = layers.apply_rotary(q.reshape(b, t, nh, hd), cos.astype(self.dtype),
                            sin.astype(self.dtype))
    k = layers.apply_rotary(k.reshape(b, t, nk, hd), cos.astype(self.dtype),
                            sin.astype(self.dtype))
    v = v.reshape(b, t, nk, hd)
    q = parallel.constrain(q, parallel.ACT_Q)
    k, v = parallel.constrain(k, parallel.ACT_KV), parallel.constrain(v, parallel.ACT_KV)
    o, new_kv = layers.decoder_attention(q, k, v, mask=mask, kv=kv, impl=self.impl,
                                         dtype=self.dtype)
    o = parallel.constrain(o, parallel.ACT_Q)
    x = parallel.constrain(x + o_proj(o.reshape(b * t, nh * hd)).reshape(b, t, -1),
                           parallel.ACT_RESIDUAL)
    h = layers.RMSNorm(c.hidden_size, c.rms_norm_eps, name="post_attention_layernorm", **kw)(x)
    x = x + layers.GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, use_bias=False,
                            axes=("embed", "mlp"), matmul=self.matmul, name="mlp", **kw)(h)
    return parallel.constrain(x, parallel.ACT_RESIDUAL), new_kv


class _DecoderAttnParams(nn.Module):
  """q/k/v (with bias) and o (no bias) projections of a decoder layer."""
  cfg: TextConfig
  dtype: Any
  param_dtype: Any
  matmul: str = "default"

  @nn.compact
  def __call__(self, h):
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pkw = dict(kw, matmul=self.matmul)
    hd = c.head_dim
    q = layers.dense(c.num_attention_heads * hd, ("embed", "q_heads"), use_bias=True,
                     name="q_proj", **pkw)(h)
    k = layers.dense(c.num_key_value_heads * hd, ("embed", "kv_heads"), use_bias=True,
                     name="k_proj", **pkw)(h)
    v = layers.dense(c.num_key_value_heads * hd, ("embed", "kv_heads"), use_bias=True,
                     name="v_proj", **pkw)(h)
    o = layers.dense(c.hidden_size, ("q_heads", "embed"), use_bias=False, name="o_proj", **pkw)
    return q, k, v, o


class Qwen2_5_VL(layers.VLDecoderModel):
  """Qwen2.5-VL for conditional generation. See the module docstring for the call contract."""
  config: Qwen2_5_VLConfig

  VISION_TOWER = _VisionTower
  DECODER_LAYER = _DecoderLayer

  # encode_vision (layers.VLDecoderModel): vision tower + merger. Flat [N, Dp] -> [N/4, D];
  # batched [B, N_b, Dp] -> [B, N_b/4, D] (grid_thw = one row's grids).

  def __call__(self, input_ids, pixel_values_videos=None, video_grid_thw=None,
               second_per_grid_ts=None, attention_mask=None, position_ids=None,
               return_hidden: bool = False, pixel_values=None, image_grid_thw=None,
               video_embeds=None, kv: layers.KVInput | None = None):
    """Returns logits f32[B, T, V] (or hidden [B, T, D] with return_hidden), and the updated
    (k, v) tuples when `kv` is given (then the output is (out, (k_tuple, v_tuple)))."""
    x, _, batched = self.embed_inputs(input_ids, pixel_values, image_grid_thw,
                                      pixel_values_videos, video_grid_thw, video_embeds)
    if position_ids is None:
      position_ids = self._host_position_ids(input_ids, video_grid_thw, second_per_grid_ts,
                                             attention_mask, image_grid_thw, batched)
    t = self.config.text
    cos, sin = layers.mrope_cos_sin(jnp.asarray(position_ids), layers.rope_inv_freq(
        t.head_dim, t.rope_theta), t.mrope_section)
    return self.decode(x, cos, sin, attention_mask, kv, return_hidden)

  def _host_position_ids(self, input_ids, video_grid_thw, second_per_grid_ts, attention_mask,
                         image_grid_thw, batched):
    if video_grid_thw is None and image_grid_thw is None:
      return common.text_position_ids(input_ids)
    common.check_concrete(input_ids, attention_mask, second_per_grid_ts, module="qwen2_5_vl")
    return jnp.asarray(host_position_ids(
        self.config, input_ids, video_grid_thw, second_per_grid_ts, attention_mask,
        image_grid_thw=image_grid_thw, batched=batched))


def video_processor_config(config: Qwen2_5_VLConfig, **overrides):
  """The Qwen2-VL video processor settings that match `config`'s vision tower.

  Patch, merge and temporal patch sizes come from the config, CLIP mean/std (transformers'
  defaults); `do_resize=False` by default (StreamPro resizes every frame to a fixed size first).
  Returns processing.VideoProcessorConfig.
  """
  from streampro_jax.models import processing  # pylint: disable=g-import-not-at-top
  return common.video_processor_config(config, processing.VideoProcessorConfig, **overrides)


def host_position_ids(config: Qwen2_5_VLConfig, input_ids, video_grid_thw=None,
                      second_per_grid_ts=None, attention_mask=None, *, image_grid_thw=None,
                      batched: bool = False) -> np.ndarray:
  """The position_ids i32[3, B, T] the model computes when none are passed.

  Text only (no grids): arange(T) on every row (as transformers does). Flat layout: get_rope_index
  (grids consumed across rows). Batched layout (`batched=True`): get_rope_index per row with the
  same per-row grid list `video_grid_thw` / `second_per_grid_ts` (a row may use fewer grids).
  """
  ids = np.asarray(input_ids)
  if video_grid_thw is None and image_grid_thw is None:
    return np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), (3,) + ids.shape).copy()
  return common.host_rope_index(
      get_rope_index, ids, batched=batched, per_token=dict(attention_mask=attention_mask),
      flat_only=dict(image_grid_thw=image_grid_thw), video_grid_thw=video_grid_thw,
      second_per_grid_ts=second_per_grid_ts, config=config)


# ----------------------------------------------------------------------------------------------
# Parameters: init, unembedding, HF checkpoints.




def init_params(config: Qwen2_5_VLConfig, rng: _Array):
  """Random parameters (boxed nn.LogicallyPartitioned leaves; `nn.unbox` to strip). Shapes only:
  `jax.eval_shape(functools.partial(init_params, config), rng)`."""
  d = common.dummy_inputs(config)  # NumPy constants closed over (concrete inside jit)
  return jax.jit(lambda r: Qwen2_5_VL(config).init(r, **d))(rng)["params"]




def _unrolled_hf_key_map(config: Qwen2_5_VLConfig) -> dict[str, tuple[tuple[str, ...], str]]:
  """HF safetensors key -> (our param path, transform) for every parameter.

  Keys are the ones transformers 5.23 writes for Qwen2_5_VLForConditionalGeneration
  ('model.layers.*', 'model.embed_tokens', 'model.norm', 'visual.*', 'lm_head.weight').
  Transforms: 'id' (same array), 'T' (Linear weight [out, in] <-> kernel [in, out]),
  ('conv', hf_shape) (Conv3d weight [E, C, t, p, p] <-> kernel [C*t*p*p, E]; the conv has
  stride = kernel, so it is exactly this matmul on the flattened patch).
  """
  return common.unrolled_hf_key_map(
      config, init_params,
      lambda mod: ("" if mod[0] == "visual" else "model.") + common.hf_name(mod))


def _alias_hf_key(key: str) -> str:
  """Accepts transformers' in-memory names too ('model.language_model.*', 'model.visual.*')."""
  if key.startswith("model.language_model."):
    return "model." + key[len("model.language_model."):]
  if key.startswith("model.visual."):
    return key[len("model."):]
  return key


def hf_key_map(config: Qwen2_5_VLConfig) -> dict:
  """HF safetensors key -> (our param path, transform) in `config`'s layout: in the scanned
  layout a path inside a layer stack ends with the layer index (see common._scanned_path)."""
  return common.stacked_key_map(config, _unrolled_hf_key_map)


def load_hf_checkpoint(path: str, dtype=jnp.float32, shardings=None, **overrides):
  """Reads config.json and (sharded) safetensors from `path` -> (config, params).

  dtype: parameter dtype (also set as config.param_dtype; compute dtype stays as in the default
  config unless replaced). shardings: optional pytree (same structure as params) of
  jax.sharding.Sharding; each tensor is placed directly with jax.make_array_from_callback, one
  tensor at a time on the host.
  """
  return common.load_hf_checkpoint(path, Qwen2_5_VLConfig, init_params, hf_key_map, dtype=dtype,
                                   shardings=shardings, **overrides, alias=_alias_hf_key)


def save_hf_checkpoint(config: Qwen2_5_VLConfig, params, path: str, *,
                       max_shard_bytes: int = 5 * 2 ** 30) -> None:
  """Writes config.json + safetensors (sharded with model.safetensors.index.json when larger
  than max_shard_bytes) loadable by transformers' from_pretrained. One tensor is gathered to the
  host at a time."""
  common.save_hf_checkpoint(config, params, path, hf_key_map, max_shard_bytes=max_shard_bytes)


def params_from_hf_state_dict(config: Qwen2_5_VLConfig, state_dict: dict[str, Any],
                              dtype=jnp.float32) -> dict:
  """Our params from a HF state dict {key: array-like} (e.g. a torch model's state_dict() with
  tensors converted to NumPy). Accepts saved and in-memory key names. Returns the layout of
  `config` (scanned stacks when config.scan_layers)."""
  key_map = _unrolled_hf_key_map(config.replace(scan_layers=False))
  np_dtype = hf_io.numpy_dtype(dtype)
  params: dict = {}
  for key, value in state_dict.items():
    ours = _alias_hf_key(key)
    if ours == "lm_head.weight" and config.tie_word_embeddings:
      continue
    if ours not in key_map:
      raise ValueError(f"unexpected tensor {key!r}")
    ppath, transform = key_map[ours]
    hf_io.set_path(params, ppath, jnp.asarray(hf_io.to_ours(np.asarray(value), transform)
                                          .astype(np_dtype)))
  missing = sorted(set(key_map) - {_alias_hf_key(k) for k in state_dict})
  if missing:
    raise ValueError(f"{len(missing)} tensors missing: {missing[:5]}")
  return common.scan_params(params) if config.scan_layers else params


def synthetic_inputs(config: Qwen2_5_VLConfig, grids, *, batch: int = 1, text_len: int = 5,
                     seed: int = 0) -> dict[str, np.ndarray]:
  """Random HF-layout inputs: each row = text, then per grid <vision_start> pads <vision_end>
  text. Every row holds all the videos (flat layout: grids tiled over rows). For tests and
  benchmarks. Returns input_ids i32[B, T], pixel_values_videos f32[N, Dp], video_grid_thw
  i64[B * n, 3], second_per_grid_ts f32[B * n] (1.0)."""
  rng = np.random.default_rng(seed)
  grids = np.asarray(grids, np.int64).reshape(-1, 3)
  m = config.vision.spatial_merge_size ** 2
  low = min(config.image_token_id, config.video_token_id, config.vision_start_token_id,
            config.vision_end_token_id, config.text.vocab_size)
  rows = []
  for _ in range(batch):
    ids = list(rng.integers(0, low, text_len))
    for t, h, w in grids.tolist():
      ids += [config.vision_start_token_id] + [config.video_token_id] * (t * h * w // m)
      ids += [config.vision_end_token_id] + list(rng.integers(0, low, text_len))
    rows.append(ids)
  n = int(np.prod(grids, axis=1).sum()) * batch
  pix = rng.standard_normal((n, config.vision.patch_dim)).astype(np.float32)
  return dict(input_ids=np.asarray(rows, np.int32), pixel_values_videos=pix,
              video_grid_thw=np.tile(grids, (batch, 1)),
              second_per_grid_ts=np.ones((batch * len(grids),), np.float32))
