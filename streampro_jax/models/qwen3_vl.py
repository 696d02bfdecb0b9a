"""Qwen3-VL (vision tower with DeepStack + interleaved M-RoPE decoder with q/k norm) in Flax Linen.

Reference: transformers 5.23 `models/qwen3_vl/modeling_qwen3_vl.py`; parity is tested tensor for
tensor (tests/test_qwen3_vl_parity.py). The call contract, parameter logical axis names, dtype /
param_dtype, remat, attention implementations, batched / flat pixel layouts, `return_hidden`, the
KV-cache view (`layers.KVInput`) and the checkpoint functions are the same as Qwen2.5-VL's
(`streampro_jax.models.qwen2_5_vl`); the shared pieces live in `layers` (modules, decoder trunk
`VLDecoderModel`) and `common` (config / HF-I/O helpers, M-RoPE row rule).

What differs from Qwen2.5-VL (all as transformers defines it):

- Vision tower: Conv3d patch embedding with bias (patch 16); a learned position table of
  `num_position_embeddings` = s^2 entries, bilinearly interpolated (align_corners=True) from the
  s x s grid to each frame's (gh, gw) grid and added to the patch embeddings; LayerNorm blocks with
  a GELU(tanh) MLP; full attention within each frame (no windows); 2-D axial rope.
- DeepStack: the hidden states after the vision blocks listed in `deepstack_visual_indexes` go
  through their own patch mergers (LayerNorm after the 2x2 shuffle) and are added to the hidden
  states of the visual token positions after decoder layers 0, 1, ... (one feature per layer).
- Decoder: no q/k/v bias; RMSNorm over the head dimension of q and k (q_norm, k_norm) before rope;
  M-RoPE with the interleaved (t, h, w, t, h, w, ...) frequency layout, mrope_section (24, 20, 20).
- M-RoPE positions: each video is split into one (1, gh, gw) block per temporal patch (the
  processor puts a "<t seconds>" text timestamp before every block); a block starting at running
  position p gets (p, p + row, p + col) over its merged grid and advances p by max(gh, gw) / m.
  Token types come from `mm_token_type_ids` (0 text, 1 image, 2 video), derived from input_ids
  when absent.

Public API
----------
- `Qwen3_VLConfig` (frozen): `.from_hf(config_json_dict)`, `.to_hf()`;
  `tiny_config(**overrides)`, `qwen3_vl_4b_config(**overrides)` (Qwen3-VL-4B-Instruct).
- `Qwen3_VL(config).apply({"params": params}, input_ids, pixel_values_videos=...,
  video_grid_thw=..., second_per_grid_ts=None, attention_mask=None, position_ids=None,
  return_hidden=False, pixel_values=None, image_grid_thw=None, mm_token_type_ids=None,
  kv=None) -> logits f32[B, T, V]` (see `qwen2_5_vl` for the layouts; second_per_grid_ts is
  accepted and unused: Qwen3-VL puts time in text timestamps, not in rope).
- `get_rope_index(input_ids, video_grid_thw=None, attention_mask=None, *, config,
  image_grid_thw=None, mm_token_type_ids=None) -> (position_ids i32[3, B, T], deltas i32[B, 1])`.
- `chunk_position_ids(input_ids_chunk, start_positions, *, config, video_grid_thw=None,
  chunk_mask=None, mm_token_type_ids=None) -> (position_ids i32[3, B, C], next_start i32[B])`.
- `init_params`, `hf_key_map`, `load_hf_checkpoint`, `save_hf_checkpoint`.
- Backbone protocol (see `streampro_jax.models.backbone_module`): `MODEL_TYPE`,
  `video_processor_config(config, **overrides)` (processing_qwen3 settings);
  `encode_vision` returns the pytree (merged, deepstack tuple) that `video_embeds` takes back.
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
from streampro_jax.models import layers
from streampro_jax.models import qwen2_5_vl

__all__ = [
    "MODEL_TYPE", "Qwen3_VL", "Qwen3_VLConfig", "TextConfig", "VisionConfig",
    "chunk_position_ids", "get_rope_index", "hf_key_map", "init_params", "load_hf_checkpoint",
    "qwen3_vl_4b_config", "save_hf_checkpoint", "tiny_config", "video_processor_config"
]

_Array = jax.Array

MODEL_TYPE = "qwen3_vl"


# ----------------------------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class VisionConfig(common.VisionConfigMixin):
  """Qwen3-VL vision tower (HF `Qwen3VLVisionConfig`, same defaults)."""
  depth: int = 27
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 16
  spatial_merge_size: int = 2
  temporal_patch_size: int = 2
  out_hidden_size: int = 3584
  num_position_embeddings: int = 2304
  deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)
  hidden_act: str = "gelu_pytorch_tanh"
  rope_theta: float = 10000.0
  layer_norm_eps: float = 1e-6  # hard-coded in HF

  @property
  def num_grid_per_side(self) -> int:
    return int(self.num_position_embeddings ** 0.5)


@dataclasses.dataclass(frozen=True)
class TextConfig(common.FieldTypesMixin):
  """Qwen3-VL language model (HF `Qwen3VLTextConfig`, same defaults)."""
  vocab_size: int = 151936
  hidden_size: int = 4096
  intermediate_size: int = 22016
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: int = 128
  hidden_act: str = "silu"
  max_position_embeddings: int = 128000
  rms_norm_eps: float = 1e-6
  attention_bias: bool = False
  rope_theta: float = 500000.0
  mrope_section: tuple[int, ...] = (24, 20, 20)
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None


_TEXT_KEYS = common.config_keys(TextConfig, ("rope_theta", "mrope_section"))
_VISION_KEYS = common.config_keys(VisionConfig, ("rope_theta", "layer_norm_eps"))


@dataclasses.dataclass(frozen=True)
class Qwen3_VLConfig(common.VLConfig):  # pylint: disable=invalid-name
  """Whole-model config: the fields of common.VLConfig (the same top-level fields and meaning as
  `qwen2_5_vl.Qwen2_5_VLConfig`) with Qwen3-VL's text and vision sections; untied embeddings by
  default."""
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()

  model_type = MODEL_TYPE

  @classmethod
  def from_hf(cls, d: dict[str, Any], **overrides) -> Qwen3_VLConfig:
    """From a HF config.json dict (nested text_config / vision_config, v4 `rope_scaling` or v5
    `rope_parameters`)."""
    common.check_model_type(d, MODEL_TYPE)
    td = dict(d.get("text_config") or {})
    rope = dict(td.get("rope_parameters") or td.get("rope_scaling") or {})
    if rope.get("rope_type", "default") not in ("default", None):
      raise NotImplementedError(f"rope_type {rope.get('rope_type')!r} (only 'default')")
    if rope.get("mrope_interleaved") is False:
      raise NotImplementedError("mrope_interleaved=False (Qwen3-VL always interleaves)")
    theta = rope.get("rope_theta", td.get("rope_theta", TextConfig.rope_theta))
    section = tuple(int(s) for s in rope.get("mrope_section", TextConfig.mrope_section))
    text_kw = common.text_kwargs_from_hf(td, _TEXT_KEYS)
    if text_kw.get("head_dim") is None:
      text_kw["head_dim"] = (text_kw.get("hidden_size", TextConfig.hidden_size)
                             // text_kw.get("num_attention_heads", TextConfig.num_attention_heads))
    if text_kw.get("num_key_value_heads") is None:
      text_kw["num_key_value_heads"] = text_kw.get("num_attention_heads",
                                                   TextConfig.num_attention_heads)
    text = TextConfig(**text_kw, rope_theta=float(theta), mrope_section=section)
    vision_kw, vtheta = common.vision_kwargs_from_hf(
        dict(d.get("vision_config") or {}), _VISION_KEYS,
        tuple_keys=("deepstack_visual_indexes",),
        renames=(("num_attention_heads", "num_heads"), ("num_hidden_layers", "depth")))
    vision = VisionConfig(**vision_kw, rope_theta=vtheta)
    tie = bool(d.get("tie_word_embeddings", td.get("tie_word_embeddings", False)))
    top = common.special_token_ids_from_hf(d)
    return cls(text=text, vision=vision, tie_word_embeddings=tie, **top, **overrides)

  def to_hf(self) -> dict[str, Any]:
    """A transformers-5 config.json dict (nested text_config / vision_config)."""
    t, v = self.text, self.vision
    text = common.hf_fields(t, _TEXT_KEYS)
    text.update(model_type="qwen3_vl_text", attention_dropout=0.0, use_cache=True,
                initializer_range=0.02, tie_word_embeddings=self.tie_word_embeddings,
                rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta,
                                 "mrope_section": list(t.mrope_section),
                                 "mrope_interleaved": True})
    vision = common.hf_fields(v, _VISION_KEYS)
    vision.update(model_type="qwen3_vl_vision", initializer_range=0.02,
                  rope_parameters={"rope_type": "axial", "rope_theta": v.rope_theta})
    return common.hf_config_dict(self, "Qwen3VLForConditionalGeneration", MODEL_TYPE, text,
                                 vision)


def tiny_config(*, text: dict | None = None, vision: dict | None = None, **kw) -> Qwen3_VLConfig:
  """A small random config for tests (vocab 256, 3 decoder layers, GQA 4/2 heads, head_dim 16).

  Special ids: image 250, video 251, vision_start 252, vision_end 253. Vision: patch 4
  (Dp = 96), 3 blocks, DeepStack from blocks 0 and 1, a 4 x 4 learned position grid.
  """
  t = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
           num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
           rope_theta=10000.0, mrope_section=(4, 2, 2))
  t.update(text or {})
  v = dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2, patch_size=4,
           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=t["hidden_size"],
           num_position_embeddings=16, deepstack_visual_indexes=(0, 1))
  v.update(vision or {})
  base = dict(image_token_id=250, video_token_id=251, vision_start_token_id=252,
              vision_end_token_id=253, tie_word_embeddings=False)
  base.update(kw)
  return Qwen3_VLConfig(text=TextConfig(**t), vision=VisionConfig(**v), **base)


def qwen3_vl_4b_config(**overrides) -> Qwen3_VLConfig:
  """The Qwen/Qwen3-VL-4B-Instruct architecture (its config.json, transcribed)."""
  text = TextConfig(vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                    num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                    head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6,
                    rope_theta=5000000.0, mrope_section=(24, 20, 20), bos_token_id=151643,
                    eos_token_id=151645)
  vision = VisionConfig(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                        patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                        out_hidden_size=2560, num_position_embeddings=2304,
                        deepstack_visual_indexes=(5, 11, 17))
  return Qwen3_VLConfig(text=text, vision=vision, tie_word_embeddings=True, **overrides)


# ----------------------------------------------------------------------------------------------
# Host-side index computations (NumPy, from concrete grids).




def _split_video_grids(video_grid_thw) -> np.ndarray | None:
  """(t, h, w) rows -> t rows of (1, h, w) each (one block per temporal patch, as HF does)."""
  if video_grid_thw is None:
    return None
  g = np.asarray(video_grid_thw, np.int64).reshape(-1, 3)
  g = np.repeat(g, g[:, 0], axis=0)
  g[:, 0] = 1
  return g


def _row_positions(types: np.ndarray, start: int, grid_iters: dict, sms: int
                   ) -> tuple[np.ndarray, int]:
  """Qwen3-VL M-RoPE positions [3, n] of one row's (unmasked) tokens, from position `start`.

  Text runs: p = current + arange(len) on all 3 axes, current += len. A run of image (1) or video
  (2) tokens takes the next (t, h, w) grid of its kind (videos pre-split into t = 1 blocks):
  positions (current + i_t, current + i_h, current + i_w) over the merged grid (t, h/m, w/m);
  then current += max(h, w) / m. (transformers 5.23 Qwen3VLModel.get_rope_index.)
  """
  return common.mrope_row_positions(types, start, grid_iters, sms,
                                    lambda key, lt: np.arange(lt), grids_name="grid blocks")


def get_rope_index(input_ids, video_grid_thw=None, attention_mask=None, *,
                   config: Qwen3_VLConfig, image_grid_thw=None, mm_token_type_ids=None,
                   second_per_grid_ts=None) -> tuple[np.ndarray, np.ndarray]:
  """Multimodal (3-D) rope positions, exactly as transformers' Qwen3-VL `get_rope_index`.

  input_ids: int[B, T] (concrete); video_grid_thw: int[n_videos, 3] (split into t = 1 blocks) and
  image_grid_thw: int[n_images, 3], consumed in order across all rows (HF semantics);
  attention_mask: [B, T] (masked tokens get position 0 and are skipped); mm_token_type_ids:
  int[B, T] (0 text, 1 image, 2 video; derived from input_ids when None). second_per_grid_ts is
  accepted (keyword only) so that a call written for qwen2_5_vl works, and unused.
  Returns position_ids i32[3, B, T] and rope_deltas i32[B, 1] = max position + 1 - row length.
  """
  del second_per_grid_ts
  ids = np.asarray(input_ids)
  bsz, seq = ids.shape
  types = (common.token_types(ids, config) if mm_token_type_ids is None
           else np.asarray(mm_token_type_ids, np.int64))
  vgrid = _split_video_grids(video_grid_thw)
  grid_iters = {1: iter(np.asarray(image_grid_thw)) if image_grid_thw is not None else None,
                2: iter(vgrid) if vgrid is not None else None}
  return common.rope_index_rows(
      types, attention_mask,
      lambda row: _row_positions(row, 0, grid_iters, config.vision.spatial_merge_size)[0])


def chunk_position_ids(input_ids_chunk, start_positions, *, config: Qwen3_VLConfig,
                       video_grid_thw=None, chunk_mask=None, mm_token_type_ids=None,
                       second_per_grid_ts=None) -> tuple[np.ndarray, np.ndarray]:
  """Positions of a streaming chunk, continuing the get_rope_index rule from `start_positions`.

  input_ids_chunk: int[B, C]; start_positions: int[B] (running position after the previous
  chunks); video_grid_thw: [n, 3] grids of the videos in ONE row's chunk (same for every row;
  batched layout); chunk_mask: [B, C] 1 for real tokens (padding gets position 0).
  second_per_grid_ts is accepted for signature compatibility with qwen2_5_vl and unused.
  Returns (position_ids i32[3, B, C], next_start i32[B]). Concatenating chunk results equals
  get_rope_index on the whole sequence (Qwen3-VL's rule only depends on the running position).
  """
  del second_per_grid_ts
  ids = np.asarray(input_ids_chunk)
  types = (common.token_types(ids, config) if mm_token_type_ids is None
           else np.asarray(mm_token_type_ids, np.int64))
  vgrid = _split_video_grids(video_grid_thw)
  return common.chunk_rows(
      types, start_positions, chunk_mask,
      lambda row, start: _row_positions(row, start, {2: iter(vgrid) if vgrid is not None else None},
                                        config.vision.spatial_merge_size))


def _interpolation_taps(grid_thw, num_grid_per_side: int, merge: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Bilinear (align_corners=True) resampling of the s x s position table to each frame's grid.

  For a frame of h x w patches, patch (r, c) (in merge-block order, repeated over the t frames)
  reads the table at y = r (s - 1) / max(h - 1, 1), x = c (s - 1) / max(w - 1, 1):
  taps (floor(y) + {0, 1}) x (floor(x) + {0, 1}) clamped to [0, s - 1], weights
  (1 - |y - tap_y|)(1 - |x - tap_x|) clipped at 0 (HF `get_vision_interpolation_indices_and_
  weights`, mode bilinear). Returns idx i32[N, 4] into the flattened table and w f32[N, 4].
  """
  s = num_grid_per_side
  idx_all, w_all = [], []
  for t, h, w in np.asarray(grid_thw, np.int64).reshape(-1, 3).tolist():
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    rows = rows.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)

    def axis_taps(index, size):
      src = index.astype(np.float32) * np.float32(s - 1) / np.float32(max(size - 1, 1))
      floor = np.floor(src)
      offs = np.arange(2)
      taps = np.clip(floor.astype(np.int64)[:, None] + offs, 0, s - 1)
      wts = np.clip(1 - np.abs(src[:, None] - floor[:, None] - offs), 0, None)
      return taps, wts.astype(np.float32)

    ht, hw = axis_taps(rows, h)
    wt, ww = axis_taps(cols, w)
    idx = (ht[:, :, None] * s + wt[:, None, :]).reshape(-1, 4)
    wts = (hw[:, :, None] * ww[:, None, :]).reshape(-1, 4)
    idx_all.append(np.tile(idx, (t, 1)))
    w_all.append(np.tile(wts, (t, 1)))
  return np.concatenate(idx_all).astype(np.int32), np.concatenate(w_all).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _vision_plan_cached(grid_key: tuple, vcfg: VisionConfig):
  grid = np.asarray(grid_key, np.int64).reshape(-1, 3)
  _, full = layers.frame_plan(grid)
  pos_hw = qwen2_5_vl.vision_position_hw(grid, vcfg.spatial_merge_size)
  taps, weights = _interpolation_taps(grid, vcfg.num_grid_per_side, vcfg.spatial_merge_size)
  return pos_hw, full, taps, weights


def _vision_plan(grid_thw, vcfg: VisionConfig):
  """(pos_hw i32[N, 2], per-frame SegmentPlan, taps i32[N, 4], weights f32[N, 4]) of the grids."""
  grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  return _vision_plan_cached(tuple(grid.reshape(-1).tolist()), vcfg)


# ----------------------------------------------------------------------------------------------
# Modules.


def _layer_norm(dim_name: str, eps: float, dtype, param_dtype, name: str) -> nn.LayerNorm:
  """nn.LayerNorm (statistics in float32) with 'norm'-named scale and bias (HF weight, bias)."""
  del dim_name
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
      name=name)


class _VisionMLP(nn.Module):
  """y = fc2(act(fc1(x))) with biases. x: [N, E] -> [N, E]."""
  cfg: VisionConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.dense(c.intermediate_size, ("vision_embed", "vision_mlp"), name="linear_fc1",
                     **kw)(x)
    h = layers.activation(c.hidden_act)(h)
    return layers.dense(c.hidden_size, ("vision_mlp", "vision_embed"), name="linear_fc2",
                        **kw)(h)


class _VisionBlock(nn.Module):
  """x += proj(attn(rope(qkv(ln1(x))))) within frames; x += mlp(ln2(x)). x: [N, E]."""
  cfg: VisionConfig
  dtype: Any
  param_dtype: Any
  impl: str

  @nn.compact
  def __call__(self, x, cos, sin, plan):
    c = self.cfg
    h = _layer_norm("vision_embed", c.layer_norm_eps, self.dtype, self.param_dtype, "norm1")(x)
    with jax.named_scope("vision_attn"):
      q, k, v, proj = layers.VisionQKV(c.hidden_size, self.param_dtype, self.dtype,
                                       name="attn")(h)
      o = layers.vision_rope_attention(q, k, v, cos, sin, plan, num_heads=c.num_heads,
                                       impl=self.impl)
      x = parallel.constrain(x + proj(o), parallel.ACT_ROWS_EMBED)
    h = _layer_norm("vision_embed", c.layer_norm_eps, self.dtype, self.param_dtype, "norm2")(x)
    return parallel.constrain(x + _VisionMLP(c, self.dtype, self.param_dtype, name="mlp")(h),
                              parallel.ACT_ROWS_EMBED)


class _ScannedVisionBlock(_VisionBlock):
  """Scan body: carry (x, kept [n, N, E]); xs = slot (the DeepStack slot that keeps this block's
  output, or -1); broadcast (cos, sin, plan)."""

  def __call__(self, carry, slot, cos, sin, plan):  # pylint: disable=arguments-differ
    x, kept = carry
    x = super().__call__(x, cos, sin, plan)
    j = jnp.maximum(slot, 0)
    kept = kept.at[j].set(jnp.where(slot >= 0, x, kept[j]))
    return (x, kept), None


class _PatchMerger(nn.Module):
  """y = fc2(gelu(fc1(shuffle(x)))) with a LayerNorm before (postshuffle=False, over E) or after
  (postshuffle=True, over 4E) the 2x2 shuffle [N, E] -> [N/4, 4E]. Output [N/4, D_out]."""
  cfg: VisionConfig
  dtype: Any
  param_dtype: Any
  postshuffle: bool = False

  @nn.compact
  def __call__(self, x):
    c = self.cfg
    hid = c.hidden_size * c.spatial_merge_size ** 2
    norm = _layer_norm("merger_in", c.layer_norm_eps, self.dtype, self.param_dtype, "norm")
    x = norm(x.reshape(-1, hid)) if self.postshuffle else norm(x).reshape(-1, hid)
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.dense(hid, ("merger_in", "merger_hidden"), name="linear_fc1", **kw)(x)
    x = jax.nn.gelu(x, approximate=False)
    return layers.dense(c.out_hidden_size, ("merger_hidden", "embed"), name="linear_fc2",
                        **kw)(x)


class _VisionTower(nn.Module):
  """Patch embed + interpolated position table -> blocks -> merger, plus DeepStack mergers.

  pixels [N, Dp] -> (merged [N/4, D_out], tuple of len(deepstack_visual_indexes) [N/4, D_out]).
  """
  cfg: VisionConfig
  dtype: Any
  param_dtype: Any
  impl: str
  remat: bool = False
  remat_policy: str = "full"
  scan: bool = False

  @nn.compact
  def __call__(self, pixels: _Array, grid_thw) -> tuple[_Array, tuple[_Array, ...]]:
    c = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pos_hw, plan, taps, weights = _vision_plan(grid_thw, c)
    layers.check_num_patches(pixels, pos_hw.shape[0], grid_thw)
    x = layers.dense(c.hidden_size, ("vision_patch", "vision_embed"), use_bias=True,
                     name="patch_embed", **kw)(pixels.astype(self.dtype))
    table = _PosEmbed(c.num_position_embeddings, c.hidden_size, self.param_dtype,
                      name="pos_embed")()
    pos = jnp.sum(jnp.take(table, jnp.asarray(taps), axis=0).astype(jnp.float32)
                  * jnp.asarray(weights)[:, :, None], axis=1)
    x = x + pos.astype(x.dtype)
    cos, sin = layers.axial_rope_cos_sin(pos_hw, layers.rope_inv_freq(c.head_dim // 2,
                                                                      c.rope_theta))
    (plan,) = layers.device_plans((plan,))
    ds = c.deepstack_visual_indexes
    if self.scan:
      # The hidden states after the DeepStack blocks are kept in the carry (slot j of block
      # ds[j]; -1 for the other blocks), then merged after the stack.
      slot = np.full((c.depth,), -1, np.int32)
      slot[list(ds)] = np.arange(len(ds))
      body = layers.remat_wrap(_ScannedVisionBlock, self.remat, self.remat_policy, scanned=True)
      keep = jnp.zeros((max(len(ds), 1),) + x.shape, x.dtype)
      (x, keep), _ = layers.scan_stack(body, c.depth, 3)(
          c, self.dtype, self.param_dtype, self.impl, name="blocks")(
              (x, keep), jnp.asarray(slot), cos, sin, plan)
      kept = [keep[j] for j in range(len(ds))]
    else:
      block_cls = layers.remat_wrap(_VisionBlock, self.remat, self.remat_policy)
      kept = []
      for i in range(c.depth):
        x = block_cls(c, self.dtype, self.param_dtype, self.impl, name=f"blocks_{i}")(
            x, cos, sin, plan)
        if i in ds:
          kept.append(x)
    deep = [_PatchMerger(c, self.dtype, self.param_dtype, postshuffle=True,
                        name=f"deepstack_merger_list_{j}")(h) for j, h in enumerate(kept)]
    merged = _PatchMerger(c, self.dtype, self.param_dtype, name="merger")(x)
    return merged, tuple(deep)


class _PosEmbed(nn.Module):
  """Learned vision position table [s*s, E] (HF pos_embed.weight)."""
  num: int
  dim: int
  param_dtype: Any

  @nn.compact
  def __call__(self) -> _Array:
    return self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, "vision_embed")), (self.num, self.dim),
        self.param_dtype)


class _DecoderAttnParams(nn.Module):
  """q/k/v/o projections (bias per config) and the per-head q_norm / k_norm of a decoder layer."""
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
    b, t, _ = h.shape
    q = layers.dense(c.num_attention_heads * hd, ("embed", "q_heads"), use_bias=c.attention_bias,
                     name="q_proj", **pkw)(h)
    k = layers.dense(c.num_key_value_heads * hd, ("embed", "kv_heads"), use_bias=c.attention_bias,
                     name="k_proj", **pkw)(h)
    v = layers.dense(c.num_key_value_heads * hd, ("embed", "kv_heads"), use_bias=c.attention_bias,
                     name="v_proj", **pkw)(h)
    o = layers.dense(c.hidden_size, ("q_heads", "embed"), use_bias=c.attention_bias,
                     name="o_proj", **pkw)
    q = layers.RMSNorm(hd, c.rms_norm_eps, name="q_norm", **kw)(
        q.reshape(b, t, c.num_attention_heads, hd))
    k = layers.RMSNorm(hd, c.rms_norm_eps, name="k_norm", **kw)(
        k.reshape(b, t, c.num_key_value_heads, hd))
    return q, k, v.reshape(b, t, c.num_key_value_heads, hd), o


class _DecoderLayer(nn.Module):
  """x += o(attn(rope(qn(q)), rope(kn(k)), v)); x += swiglu(norm(x)). x: [B, T, D].

  kv: None (causal self-attention, `mask` = padding mask or None) or (k_cache, v_cache, slots)
  (this chunk's k, v are written at `slots` and the queries attend the cache under `mask`).
  """
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
    h = layers.RMSNorm(c.hidden_size, c.rms_norm_eps, name="input_layernorm", **kw)(x)
    q, k, v, o_proj = _DecoderAttnParams(c, **kw, matmul=self.matmul, name="self_attn")(h)
    q = layers.apply_rotary(q, cos.astype(self.dtype), sin.astype(self.dtype))
    k = layers.apply_rotary(k, cos.astype(self.dtype), sin.astype(self.dtype))
    q = parallel.constrain(q, parallel.ACT_Q)
    k, v = parallel.constrain(k, parallel.ACT_KV), parallel.constrain(v, parallel.ACT_KV)
    o, new_kv = layers.decoder_attention(q, k, v, mask=mask, kv=kv, impl=self.impl,
                                         dtype=self.dtype)
    o = parallel.constrain(o, parallel.ACT_Q)
    x = parallel.constrain(x + o_proj(o.reshape(b, t, c.num_attention_heads * c.head_dim)),
                           parallel.ACT_RESIDUAL)
    h = layers.RMSNorm(c.hidden_size, c.rms_norm_eps, name="post_attention_layernorm", **kw)(x)
    x = x + layers.GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, use_bias=False,
                            axes=("embed", "mlp"), matmul=self.matmul, name="mlp", **kw)(h)
    return parallel.constrain(x, parallel.ACT_RESIDUAL), new_kv


def _gather_tokens(ids, token_id, feats, batched: bool):
  """Features for the token_id positions of ids [B, T] in order (garbage elsewhere): [B, T, D].

  Flat: feats [M, D], the k-th such token of the batch (row-major) reads feats[k]; batched:
  feats [B, M, D], the k-th such token of row b reads feats[b, k].
  """
  is_tok = ids == token_id
  m = feats.shape[-2]
  if batched:
    rank = jnp.clip(jnp.cumsum(is_tok, axis=1) - 1, 0, m - 1)
    return jnp.take_along_axis(feats, rank[..., None], axis=1)
  rank = jnp.clip(jnp.cumsum(is_tok.reshape(-1)) - 1, 0, m - 1).reshape(ids.shape)
  return feats[rank]


def _add_at_tokens(x, ids, token_id, feats, batched: bool):
  """x + feats at the token_id positions (in order), x unchanged elsewhere. x: [B, T, D]."""
  g = _gather_tokens(ids, token_id, feats, batched)
  return x + jnp.where((ids == token_id)[..., None], g.astype(x.dtype), 0)


def _add_deepstack(i, x, extra):
  """After decoder layer i: x + the i-th DeepStack features at their tokens, for each
  (token_id, features [n, B, M, D] batched or [n, M, D] flat) of extra = (input_ids, adds); only
  the first n layers add. i: a Python int (unrolled) or a traced int32 (scanned stack)."""
  ids, adds = extra
  for token_id, deep in adds:
    n, batched = deep.shape[0], deep.ndim == 4
    if isinstance(i, int):
      if i < n:
        x = _add_at_tokens(x, ids, token_id, deep[i], batched)
    else:
      y = _add_at_tokens(x, ids, token_id, deep[jnp.minimum(i, n - 1)], batched)
      x = jnp.where(i < n, y, x)
  return x


class Qwen3_VL(layers.VLDecoderModel):  # pylint: disable=invalid-name
  """Qwen3-VL for conditional generation. See the module docstring for the call contract."""
  config: Qwen3_VLConfig

  VISION_TOWER = _VisionTower
  DECODER_LAYER = _DecoderLayer

  # encode_vision (layers.VLDecoderModel): vision tower + mergers. Flat [N, Dp] -> ([N/4, D],
  # deepstack tuple of [N/4, D]); batched [B, N_b, Dp] -> ([B, N_b/4, D], tuple of
  # [B, N_b/4, D]) (grid_thw = one row's grids).

  def vision_features(self, embeds):
    return embeds[0]  # (merged, deepstack) -> merged; the DeepStack part goes to after_layer_fn

  def __call__(self, input_ids, pixel_values_videos=None, video_grid_thw=None,
               second_per_grid_ts=None, attention_mask=None, position_ids=None,
               return_hidden: bool = False, pixel_values=None, image_grid_thw=None,
               mm_token_type_ids=None, video_embeds=None, kv: layers.KVInput | None = None):
    """Returns logits f32[B, T, V] (or hidden [B, T, D] with return_hidden), and the updated
    (k, v) tuples when `kv` is given (then the output is (out, (k_tuple, v_tuple))).

    video_embeds: optional precomputed `encode_vision` output (merged, deepstack tuple) used
    instead of pixel_values_videos.
    """
    del second_per_grid_ts  # Qwen3-VL encodes time as text timestamps, not in rope.
    cfg = self.config
    x, encoded, batched = self.embed_inputs(input_ids, pixel_values, image_grid_thw,
                                            pixel_values_videos, video_grid_thw, video_embeds)
    if position_ids is None:
      position_ids = self._host_position_ids(input_ids, video_grid_thw, attention_mask,
                                             image_grid_thw, mm_token_type_ids, batched)
    t = cfg.text
    cos, sin = layers.mrope_cos_sin(jnp.asarray(position_ids), layers.rope_inv_freq(
        t.head_dim, t.rope_theta), t.mrope_section, interleaved=True)

    extra = (input_ids, tuple((jnp.asarray(tid, jnp.int32), jnp.stack(deep))
                              for tid, (_, deep), _ in encoded if deep))
    return self.decode(x, cos, sin, attention_mask, kv, return_hidden, extra)

  def after_layer_fn(self):
    return _add_deepstack

  def _host_position_ids(self, input_ids, video_grid_thw, attention_mask, image_grid_thw,
                         mm_token_type_ids, batched):
    if video_grid_thw is None and image_grid_thw is None:
      return common.text_position_ids(input_ids)
    common.check_concrete(input_ids, attention_mask, mm_token_type_ids, module="qwen3_vl")
    return jnp.asarray(common.host_rope_index(
        get_rope_index, input_ids, batched=batched,
        per_token=dict(attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids),
        flat_only=dict(image_grid_thw=image_grid_thw), video_grid_thw=video_grid_thw,
        config=self.config))


def video_processor_config(config: Qwen3_VLConfig, **overrides):
  """The Qwen3-VL video processor settings that match `config`'s vision tower.

  Patch, merge and temporal patch sizes come from the config, mean = std = 0.5 (transformers'
  Qwen3-VL defaults); `do_resize=False` by default (StreamPro resizes every frame to a fixed
  size first). Returns processing_qwen3.Qwen3VideoProcessorConfig.
  """
  from streampro_jax.models import processing_qwen3  # pylint: disable=g-import-not-at-top
  return common.video_processor_config(config, processing_qwen3.Qwen3VideoProcessorConfig,
                                       **overrides)


# ----------------------------------------------------------------------------------------------
# Parameters: init, unembedding, HF checkpoints.




def init_params(config: Qwen3_VLConfig, rng: _Array):
  """Random parameters (boxed nn.LogicallyPartitioned leaves; `nn.unbox` to strip). Shapes only:
  `jax.eval_shape(functools.partial(init_params, config), rng)`."""
  return Qwen3_VL(config).init(rng, **common.dummy_inputs(config))["params"]




def _unrolled_hf_key_map(config: Qwen3_VLConfig) -> dict[str, tuple[tuple[str, ...], Any]]:
  """HF safetensors key -> (our param path, transform) for every parameter.

  Keys as transformers 5.23 (and the released Qwen3-VL checkpoints) name them:
  'model.visual.*', 'model.language_model.*', 'lm_head.weight'. Transforms as in hf_io:
  'id', 'T' (Linear [out, in] <-> kernel [in, out]), ('conv', hf_shape) (Conv3d weight
  [E, C, t, p, p] <-> kernel [C*t*p*p, E]; stride = kernel, so it is this matmul exactly).
  LayerNorm scale/bias map to weight/bias.
  """
  return common.unrolled_hf_key_map(
      config, init_params,
      lambda mod: ("model.visual." + common.hf_name(mod[1:]) if mod[0] == "visual"
                   else "model.language_model." + common.hf_name(mod)))


def hf_key_map(config: Qwen3_VLConfig) -> dict:
  """HF safetensors key -> (our param path, transform) in `config`'s layout: in the scanned
  layout a path inside a layer stack ends with the layer index (see common._scanned_path)."""
  return common.stacked_key_map(config, _unrolled_hf_key_map)


def load_hf_checkpoint(path: str, dtype=jnp.float32, shardings=None, **overrides):
  """Reads config.json and (sharded) safetensors from `path` -> (config, params).

  dtype: parameter dtype (also set as config.param_dtype). shardings: optional pytree (same
  structure as params) of jax.sharding.Sharding; each tensor is placed directly, one at a time.
  A tied checkpoint's lm_head.weight, when present, is ignored.
  """
  return common.load_hf_checkpoint(path, Qwen3_VLConfig, init_params, hf_key_map, dtype=dtype,
                                   shardings=shardings, **overrides)


def save_hf_checkpoint(config: Qwen3_VLConfig, params, path: str, *,
                       max_shard_bytes: int = 5 * 2 ** 30) -> None:
  """Writes config.json + safetensors (sharded with model.safetensors.index.json above
  max_shard_bytes), loadable by transformers' Qwen3VLForConditionalGeneration.from_pretrained."""
  common.save_hf_checkpoint(config, params, path, hf_key_map, max_shard_bytes=max_shard_bytes)
