"""Generic transformer building blocks shared by the Qwen2.5-VL and Qwen3-VL backbones.

Everything here is backbone-agnostic Flax Linen / pure JAX:

- `dense`: an `nn.Dense` whose kernel and bias carry logical axis names.
- `RMSNorm`: y = w * (x / sqrt(mean(x^2) + eps)), statistics in float32.
- `GatedMLP`: y = down(act(gate(x)) * up(x)) (SwiGLU when act = silu).
- Rotary helpers: `_rotate_half`, `apply_rotary`, `rope_inv_freq`, `mrope_cos_sin` (multimodal
  rope with a per-axis section split, contiguous as in Qwen2/2.5-VL or interleaved as in Qwen3-VL),
  `axial_rope_cos_sin` (2-D rope of the vision towers).
- `attention`: grouped-query scaled dot-product attention, through `jax.nn.dot_product_attention`
  ("jax" = let JAX pick, "cudnn" = force the cuDNN flash kernel) or an explicit einsum-softmax
  XLA fallback ("xla"), selected by a string.
- Packed variable-length attention for vision towers (`segment_plan`, `_segment_attention`):
  tokens are gathered into padded segments [S, L] with host-computed indices, attended
  block-diagonally, and scattered back; cost O(S * L^2) instead of O(N^2).
- `decoder_attention` (causal or through a KV cache), `_decoder_mask`, `_logits_from_hidden`:
  the decoder plumbing both backbones share.
- `vision_rope_attention`: rope + packed attention of a vision block.
- `VisionQKV`: the fused qkv + proj parameters of a vision attention block (both towers).
- `_fill_tokens`: puts visual features at the placeholder-token positions of an embedding sequence.
- `_Embedding`, `_Unembed`, `KVInput` and `VLDecoderModel` (the trunk of both VL models: setup of
  embeddings / decoder layers / norm / lm_head and the decoder pass).

Shapes use B batch, T query length, S key length, N query heads, K kv heads, H head dim.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from streampro_jax import parallel

__all__ = ["CAUSAL_BLOCK", "GatedMLP", "KVInput", "RMSNorm", "VLDecoderModel", "VisionQKV",
           "activation", "apply_rotary", "attention", "axial_rope_cos_sin", "check_num_patches",
           "cu_seqlens_segments", "decoder_attention", "dense", "device_plans", "frame_plan",
           "mrope_cos_sin", "remat_wrap", "rope_inv_freq", "scan_stack", "scanned_block",
           "segment_plan", "vision_rope_attention", "SegmentPlan"]

_Dtype = Any
_Array = jax.Array

_ATTENTION_IMPLS = ("jax", "cudnn", "xla", "jax_xla", "splash")
# Splash attention (TPU Pallas kernel): the sequence lengths it takes are multiples of
# _SPLASH_ALIGN (the TPU lane width); its query / key blocks are the largest multiple of
# _SPLASH_ALIGN that divides the length and is at most the configured block (_AttentionImpl).
_SPLASH_ALIGN = 128
_DEFAULT_SPLASH_BLOCK = 512
# Query block of the 'xla' causal self-attention (see attention): blocks skip the logits above
# the diagonal; 64 is the size chosen by benchmarks/attention.py --causal_block (figures in
# docs/benchmarks.md: smaller blocks are no faster and compile longer). At most
# _MAX_CAUSAL_BLOCKS blocks per call (longer rows get longer blocks), which bounds the compiled
# graph and still skips (n - 1) / 2n of the square's logits.
CAUSAL_BLOCK = 64
_MAX_CAUSAL_BLOCKS = 16


def activation(name: str) -> Callable[[_Array], _Array]:
  """HF activation names -> JAX functions ('silu', 'gelu' (exact erf), 'gelu_pytorch_tanh')."""
  table = {
      "silu": jax.nn.silu,
      "swish": jax.nn.silu,
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),
      "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
      "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
      "relu": jax.nn.relu,
  }
  if name not in table:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(table)}")
  return table[name]


# Matmul precisions of the decoder's projections and MLP (config `matmul_dtype`): "default"
# multiplies in the compute dtype; "fp8" runs `_fp8_dot_general` (FP8 GEMMs on Hopper).
_MATMUL_DTYPES = ("default", "fp8")


def _fp8_qdq(x: _Array, fp8_dtype) -> _Array:
  """x rounded to `fp8_dtype` under current per-tensor scaling, returned in x.dtype.

  scale = amax(|x|) / max(fp8_dtype) (1 for an all-zero x), y = fp8(x / scale) * scale: the
  largest entry maps to the format's largest finite value, so nothing overflows; a normal entry
  is off by at most 2^-(m+1) relative (m mantissa bits: 3 for e4m3, 2 for e5m2), a subnormal
  one by at most scale * 2^-(m+1) * min_normal absolute. The amax and scale are float32.
  The dequantisation (convert, then multiply by the scale) right before a dot is the pattern
  XLA:GPU rewrites to an FP8 GEMM on Hopper; elsewhere the product runs emulated in x.dtype.
  """
  x32 = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(x32))
  scale = jnp.where(amax > 0, amax / float(jnp.finfo(fp8_dtype).max), 1.0)
  return (x32 / scale).astype(fp8_dtype).astype(x.dtype) * scale.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fp8_dot_general(lhs: _Array, rhs: _Array, dimension_numbers, precision=None,
                    preferred_element_type=None) -> _Array:
  """lax.dot_general on FP8-rounded operands: both in float8_e4m3fn (forward), the incoming
  gradient in float8_e5m2 (backward: the wider range gradients need), each with current scaling
  (`_fp8_qdq`); the gradients go straight through the rounding (d qdq(x) / dx taken as 1).
  Stateless (no amax history to carry in the train state). Same shapes and dtypes as
  lax.dot_general."""
  return jax.lax.dot_general(_fp8_qdq(lhs, jnp.float8_e4m3fn), _fp8_qdq(rhs, jnp.float8_e4m3fn),
                             dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)


def _fp8_dot_fwd(lhs, rhs, dimension_numbers, precision, preferred_element_type):
  lq, rq = _fp8_qdq(lhs, jnp.float8_e4m3fn), _fp8_qdq(rhs, jnp.float8_e4m3fn)
  out = jax.lax.dot_general(lq, rq, dimension_numbers, precision=precision,
                            preferred_element_type=preferred_element_type)
  return out, (lq, rq)


def _fp8_dot_bwd(dimension_numbers, precision, preferred_element_type, res, g):
  lq, rq = res
  _, vjp = jax.vjp(lambda a, b: jax.lax.dot_general(
      a, b, dimension_numbers, precision=precision,
      preferred_element_type=preferred_element_type), lq, rq)
  return vjp(_fp8_qdq(g, jnp.float8_e5m2))


_fp8_dot_general.defvjp(_fp8_dot_fwd, _fp8_dot_bwd)


def dense(features: int, axes: tuple[str, str], *, use_bias: bool, name: str,
          dtype: _Dtype = jnp.float32, param_dtype: _Dtype = jnp.float32,
          init_std: float = 0.02, matmul: str = "default") -> nn.Dense:
  """nn.Dense with kernel [in, out] named `axes` and bias [out] named `axes[1]`; `matmul`
  (_MATMUL_DTYPES): 'fp8' multiplies with `_fp8_dot_general` (the bias is added in `dtype`)."""
  if matmul not in _MATMUL_DTYPES:
    raise ValueError(f"unknown matmul_dtype {matmul!r}; known: {_MATMUL_DTYPES}")
  return nn.Dense(
      features,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      dot_general=_fp8_dot_general if matmul == "fp8" else None,
      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(init_std), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
      name=name,
  )


class RMSNorm(nn.Module):
  """Root-mean-square norm: y = scale * cast(x / sqrt(mean(x^2, -1) + eps)).

  The statistics are computed in float32; the normalised value is cast to `dtype` before the
  (learned, ones-initialised) scale multiplies it, as the HF Qwen RMSNorm does.
  x: [..., D] -> [..., D] in `dtype`.
  """
  dim: int
  eps: float = 1e-6
  dtype: _Dtype = jnp.float32
  param_dtype: _Dtype = jnp.float32
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x: _Array) -> _Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
        (self.dim,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(self.dtype)
    return scale.astype(self.dtype) * y


class GatedMLP(nn.Module):
  """Gated MLP: y = down(act(gate(x)) * up(x)). x: [..., D] -> [..., D].

  `axes` = (model axis, hidden axis) logical names, e.g. ('embed', 'mlp').
  """
  hidden: int
  intermediate: int
  act: str = "silu"
  use_bias: bool = False
  axes: tuple[str, str] = ("embed", "mlp")
  dtype: _Dtype = jnp.float32
  param_dtype: _Dtype = jnp.float32
  matmul: str = "default"   # _MATMUL_DTYPES

  @nn.compact
  def __call__(self, x: _Array) -> _Array:
    kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
              matmul=self.matmul)
    lead = x.shape[:-1]
    # Rows flattened to 2-D: the backward's weight gradients then need only 2-D transposes, which
    # XLA:CPU emits fast; a transpose over [B, T, F] fused into the activation's backward is
    # slow there (docs/benchmarks.md has the measurement).
    x = x.reshape(-1, x.shape[-1])
    gate = dense(self.intermediate, self.axes, name="gate_proj", **kw)(x)
    up = dense(self.intermediate, self.axes, name="up_proj", **kw)(x)
    h = parallel.constrain(activation(self.act)(gate) * up, parallel.ACT_ROWS_MLP)
    y = dense(self.hidden, (self.axes[1], self.axes[0]), name="down_proj", **kw)(h)
    return y.reshape(*lead, self.hidden)


# ----------------------------------------------------------------------------------------------
# Rotary embeddings.


def rope_inv_freq(dim: int, theta: float) -> np.ndarray:
  """inv_freq[i] = 1 / theta^(2i / dim), i = 0 .. dim/2 - 1, float32 (as HF computes it)."""
  exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
  return (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)


def _rotate_half(x: _Array) -> _Array:
  """[x1, x2] -> [-x2, x1] on the last axis (halves)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: _Array, cos: _Array, sin: _Array, *, compute_dtype: _Dtype | None = None
                 ) -> _Array:
  """y = x * cos + _rotate_half(x) * sin, computed in `compute_dtype` (default x.dtype).

  x: [..., T, heads, H]; cos, sin: [..., T, H] (broadcast over heads). Returns x.dtype.
  """
  cd = x.dtype if compute_dtype is None else compute_dtype
  xc = x.astype(cd)
  c = cos[..., None, :].astype(cd)
  s = sin[..., None, :].astype(cd)
  return (xc * c + _rotate_half(xc) * s).astype(x.dtype)


def mrope_cos_sin(position_ids_3bt: _Array, inv_freq: np.ndarray, mrope_section: Sequence[int],
                  *, interleaved: bool = False) -> tuple[_Array, _Array]:
  """Multimodal rope tables.

  freqs[a, b, t, i] = position_ids[a, b, t] * inv_freq[i] for the 3 axes a = (t, h, w).
  Contiguous (Qwen2/2.5-VL): frequency band i takes axis a where the bands are split into
  consecutive sections of sizes mrope_section (section j uses axis j % 3).
  Interleaved (Qwen3-VL): band i takes axis h when i % 3 == 1 and i < 3 * section[1], axis w when
  i % 3 == 2 and i < 3 * section[2], else axis t.
  The half table f[b, t, :F] is duplicated: cos = cos([f, f]), sin = sin([f, f]).

  position_ids_3bt: i32[3, B, T]; inv_freq: f32[F] with F = sum(mrope_section) = H / 2.
  Returns cos, sin: f32[B, T, 2F].
  """
  inv = jnp.asarray(inv_freq, jnp.float32)
  if sum(mrope_section) != inv.shape[0]:
    raise ValueError(f"sum(mrope_section)={sum(mrope_section)} must equal head_dim/2="
                     f"{inv.shape[0]}")
  freqs = position_ids_3bt.astype(jnp.float32)[..., None] * inv  # [3, B, T, F]
  num = inv.shape[0]
  if interleaved:
    axis_of = np.zeros((num,), np.int32)
    for a, off in ((1, 1), (2, 2)):
      idx = np.arange(off, 3 * mrope_section[a], 3)
      axis_of[idx[idx < num]] = a  # transformers clips bands that run past head_dim / 2
  else:
    axis_of = np.concatenate([np.full((s,), j % 3, np.int32)
                              for j, s in enumerate(mrope_section)])
  onehot = jnp.asarray(np.eye(3, dtype=np.float32)[axis_of].T)  # [3, F]
  f = jnp.sum(freqs * onehot[:, None, None, :], axis=0)  # exact: one nonzero term per band
  f = jnp.concatenate([f, f], axis=-1)
  return jnp.cos(f), jnp.sin(f)


def axial_rope_cos_sin(pos_hw: _Array, inv_freq: np.ndarray) -> tuple[_Array, _Array]:
  """2-D (axial) rope of the Qwen vision towers.

  f[n] = [h_n * inv_freq, w_n * inv_freq]; cos = cos([f, f]), sin = sin([f, f]).
  pos_hw: i32[N, 2] (row, column of each patch); inv_freq: f32[F] (F = head_dim / 4).
  Returns f32[N, 4F].
  """
  p = jnp.asarray(pos_hw).astype(jnp.float32)
  inv = jnp.asarray(inv_freq, jnp.float32)
  f = jnp.concatenate([p[:, 0:1] * inv, p[:, 1:2] * inv], axis=-1)
  f = jnp.concatenate([f, f], axis=-1)
  return jnp.cos(f), jnp.sin(f)


# ----------------------------------------------------------------------------------------------
# Attention.


class _AttentionImpl(NamedTuple):
  """An attention path with its kernel settings (what the model modules pass as `impl`; a plain
  string is the same path with the default blocks).

  name: one of _ATTENTION_IMPLS; block_q, block_kv: the splash kernel's query / key block
  targets (config `attention_block_q` / `attention_block_kv`).
  """
  name: str = "jax"
  block_q: int = _DEFAULT_SPLASH_BLOCK
  block_kv: int = _DEFAULT_SPLASH_BLOCK


def _as_attention_impl(impl) -> _AttentionImpl:
  """_AttentionImpl of a name or an _AttentionImpl (raises for an unknown name)."""
  spec = impl if isinstance(impl, _AttentionImpl) else _AttentionImpl(str(impl))
  if spec.name not in _ATTENTION_IMPLS:
    raise ValueError(f"unknown attention impl {spec.name!r}; known: {_ATTENTION_IMPLS}")
  return spec


def _resolve_impl(impl, dtype) -> str:
  """The attention path `impl` (a name or an _AttentionImpl) runs on this backend for `dtype`.

  'jax' (the default) is cuDNN flash attention on GPU for 16-bit inputs, splash attention on
  TPU, and the 'xla' path everywhere else (CPU, float32 on GPU); 'cudnn', 'xla', 'splash' and
  'jax_xla' (jax.nn.dot_product_attention's own XLA implementation, a reference for tests) are
  taken as given. Whether a splash call runs the kernel or the XLA path depends on its lengths
  (`_splash_fits`), decided per call by `attention`.
  """
  name = _as_attention_impl(impl).name
  if name != "jax":
    return name
  backend = jax.default_backend()
  if backend == "tpu":
    return "splash"
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if half and backend == "gpu" else "xla"


def _splash_block(length: int, target: int) -> int:
  """The splash block for a sequence of `length`: the largest multiple of _SPLASH_ALIGN that
  divides it and is at most max(target, _SPLASH_ALIGN); 0 when length is not a multiple of
  _SPLASH_ALIGN (the kernel's blocks do not fit: the call takes the XLA path)."""
  if length <= 0 or length % _SPLASH_ALIGN:
    return 0
  best = _SPLASH_ALIGN
  for b in range(_SPLASH_ALIGN, min(max(target, _SPLASH_ALIGN), length) + 1, _SPLASH_ALIGN):
    if length % b == 0:
      best = b
  return best


def _splash_fits(t: int, s: int) -> bool:
  """Whether splash attention takes queries of length t against keys of length s (both
  multiples of _SPLASH_ALIGN); a decode step (t = 1) or a short or odd chunk does not."""
  return _splash_block(t, _SPLASH_ALIGN) > 0 and _splash_block(s, _SPLASH_ALIGN) > 0


def _shard_rows(x: _Array) -> _Array:
  """Constrains dim 0 of x to the row axes ('data', 'fsdp') of the mesh in scope (jax.set_mesh)
  when their product divides it; x unchanged without a mesh or when it does not divide. The
  vision tower's tokens [N, ...] and segments [S, ...] go through gathers by host-built indices,
  which XLA's sharding propagation does not see through: without this, every chip computed the
  whole global batch's vision tower (per-chip temporaries grew with the number of chips)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size == 1:
    return x
  axes = _row_axes_of(mesh, x.shape[0])
  if axes is None:
    return x
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))


def _row_axes_of(mesh, rows: int) -> tuple[str, ...] | None:
  """The mesh axes ('data', 'fsdp') present in `mesh` whose product divides `rows` (None: the
  rows are not split; every device then computes all of them)."""
  axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape and mesh.shape[a] > 1)
  size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  if not axes or rows % size:
    return None
  return axes


def _splash_attention(q_btnh: _Array, k_bskh: _Array, v_bskh: _Array, *, scale: float,
                     is_causal: bool, q_segment: _Array | None, kv_segment: _Array | None,
                     block_q: int, block_kv: int, interpret: bool | None = None) -> _Array:
  """Grouped-query attention through jax.experimental.pallas.ops.tpu.splash_attention.

  q: [B, T, N, H]; k, v: [B, S, K, H] (N % K == 0; the kv heads are not repeated: each of the K
  kv heads runs the kernel's multi-query form over its G = N / K query heads); q_segment i32[B, T]
  and kv_segment i32[B, S] or None: query t may attend key s only when their segment ids are
  equal (padding as its own segment); is_causal adds s <= t. T and S must be multiples of
  _SPLASH_ALIGN (see _splash_block). interpret: True / False forces Pallas interpret mode or the
  Mosaic kernel; None (default) takes Mosaic when the call is lowered for a TPU and interpret
  mode otherwise (never another attention path). Under a mesh (jax.set_mesh) the kernel runs in a
  shard_map with the rows split over ('data', 'fsdp') when they divide, the heads over 'tensor'
  when K divides. Returns [B, T, N, H] in q.dtype.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as sk, splash_attention_mask as sm)
  b, t, n_heads, h = q_btnh.shape
  s, k_heads = k_bskh.shape[1], k_bskh.shape[2]
  g = n_heads // k_heads
  bq, bkv = _splash_block(t, block_q), _splash_block(s, block_kv)
  if not bq or not bkv:
    raise ValueError(f"splash attention needs lengths that are multiples of {_SPLASH_ALIGN}; "
                     f"got {t} queries and {s} keys")
  blocks = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                         block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                         block_kv_dq=bkv)
  base = sm.CausalMask((t, s)) if is_causal else sm.FullMask((t, s))
  make = functools.partial(sk.make_splash_mqa_single_device, sm.MultiHeadMask([base] * g),
                           block_sizes=blocks)
  if interpret is None:
    # The platform the call is lowered for decides (lax.platform_dependent lowers only the
    # matching branch): the Mosaic kernel for a TPU (also when compiling for a TPU topology from
    # a CPU process), interpret mode for every other backend.
    mosaic, interpreted = make(interpret=False), make(interpret=True)
    kernel = lambda *a, **kw: jax.lax.platform_dependent(  # noqa: E731
        *a, tpu=lambda *x: mosaic(*x, **kw), default=lambda *x: interpreted(*x, **kw))
  else:
    kernel = make(interpret=bool(interpret))
  q = (q_btnh.astype(jnp.float32) * scale).astype(q_btnh.dtype)
  q = q.reshape(b, t, k_heads, g, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
  k = k_bskh.astype(q.dtype).transpose(0, 2, 1, 3)  # [B, K, S, H]
  v = v_bskh.astype(q.dtype).transpose(0, 2, 1, 3)
  if q_segment is None:
    q_segment = jnp.zeros((b, t), jnp.int32)
  if kv_segment is None:
    kv_segment = jnp.zeros((b, s), jnp.int32)

  def run(q, k, v, qs, ks):
    def one_row(q_kgth, k_ksh, v_ksh, qs_t, ks_s):
      seg = sk.SegmentIds(q=qs_t, kv=ks_s)
      return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=seg))(
          q_kgth, k_ksh, v_ksh)
    return jax.vmap(one_row)(q, k, v, qs, ks)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh is not None and not mesh.empty and mesh.size > 1:
    from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
    rows = _row_axes_of(mesh, b)
    heads = "tensor" if mesh.shape.get("tensor", 1) > 1 and k_heads % mesh.shape["tensor"] == 0 \
        else None
    qkv = P(rows, heads, None, None, None), P(rows, heads, None, None)
    seg = P(rows, None)
    run = jax.shard_map(run, in_specs=(qkv[0], qkv[1], qkv[1], seg, seg), out_specs=qkv[0],
                        check_vma=False)
  out = run(q, k, v, q_segment.astype(jnp.int32), kv_segment.astype(jnp.int32))
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n_heads, h).astype(q_btnh.dtype)


def attention(q_btnh: _Array, k_bskh: _Array, v_bskh: _Array, *, mask: _Array | None = None,
              scale: float | None = None, impl="jax", is_causal: bool = False,
              lengths: _Array | None = None) -> _Array:
  """Grouped-query attention: o = softmax(scale * q k^T + mask) v.

  q: [B, T, N, H]; k, v: [B, S, K, H] with N % K == 0 (query head n uses kv head n // (N/K));
  mask: bool broadcastable to [B, N, T, S] (True = attend) or None; is_causal additionally
  restricts query t to keys s <= t (aligned at the start: T == S); lengths: i32[B] or None,
  the number of real (leading) keys and queries of each row (right padding: key s is allowed
  only when s < lengths[b]), the form the cuDNN kernel takes instead of a dense mask.
  Softmax in float32.
  impl (see _resolve_impl): 'jax' (cuDNN on GPU for 16-bit inputs, else 'xla'), 'cudnn' (forces
  the cuDNN flash kernel; GPU only; masks must come as `lengths`), 'xla' (explicit
  einsum/softmax, runs anywhere; causal self-attention in query blocks of CAUSAL_BLOCK rows, at
  most _MAX_CAUSAL_BLOCKS of them, that skip the keys after the block), 'jax_xla'
  (jax.nn.dot_product_attention's XLA implementation), 'splash' (`_splash_attention`: the TPU
  Pallas kernel, in interpret mode off TPU; masks must come as `lengths` or as a key-padding
  mask [B, 1, 1, S]; a call whose lengths are not multiples of _SPLASH_ALIGN, e.g. a decode step,
  takes the 'xla' path). `impl` may be an _AttentionImpl (the splash block sizes).
  Returns [B, T, N, H] in q.dtype. A query row with no allowed key returns a finite (unspecified)
  value, never NaN; padded query rows (t >= lengths[b]) are unspecified.
  """
  n_heads, k_heads = q_btnh.shape[2], k_bskh.shape[2]
  if n_heads % k_heads:
    raise ValueError(f"{n_heads} query heads are not a multiple of {k_heads} kv heads")
  head_dim = q_btnh.shape[-1]
  scale = head_dim ** -0.5 if scale is None else scale
  spec = _as_attention_impl(impl)
  impl = _resolve_impl(spec, q_btnh.dtype)
  if impl == "splash" and _splash_fits(q_btnh.shape[1], k_bskh.shape[1]):
    return _splash_from_masks(q_btnh, k_bskh, v_bskh, mask, lengths, scale, is_causal, spec)
  if impl == "splash":
    impl = "xla"
  if impl == "cudnn":
    if mask is not None:
      raise ValueError("the cuDNN path takes padding as `lengths`, not a dense mask")
    lens = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    return jax.nn.dot_product_attention(
        q_btnh, k_bskh.astype(q_btnh.dtype), v_bskh.astype(q_btnh.dtype), scale=scale,
        is_causal=is_causal, query_seq_lengths=lens, key_value_seq_lengths=lens,
        implementation="cudnn")
  if lengths is not None:
    keep = jnp.arange(k_bskh.shape[1])[None, :] < jnp.asarray(lengths)[:, None]  # [B, S]
    keep = keep[:, None, None, :]
    mask = keep if mask is None else jnp.logical_and(mask, keep)
  if impl == "jax_xla":
    return jax.nn.dot_product_attention(
        q_btnh, k_bskh.astype(q_btnh.dtype), v_bskh.astype(q_btnh.dtype), mask=mask,
        scale=scale, is_causal=is_causal, implementation="xla")
  # Head-major layout [B, K, G, T, H] (cheap transposes of q, k, v): both einsums are then plain
  # batched matmuls over (B, K) and XLA:CPU never transposes the [.., T, S] logits or
  # probabilities (with q as [B, T, K, G, H] it computed them transposed and copied them back).
  k = k_bskh.astype(q_btnh.dtype).transpose(0, 2, 1, 3)  # [B, K, S, H]
  v = v_bskh.transpose(0, 2, 1, 3)  # [B, K, S, H]
  return _xla_attention(q_btnh, k, v, mask, scale, is_causal)


def _splash_from_masks(q_btnh, k_bskh, v_bskh, mask, lengths, scale, is_causal,
                       spec: _AttentionImpl) -> _Array:
  """`attention`'s splash path: padding (per-row `lengths`, or a key mask [B|1, 1, 1, S]) as
  segment ids (1 for real tokens, 0 for padding: a padded query attends padding only, so no
  softmax row is empty; padded query rows are unspecified, as on the other paths)."""
  b, t, s = q_btnh.shape[0], q_btnh.shape[1], k_bskh.shape[1]
  keep = None
  if lengths is not None:
    keep = jnp.arange(s)[None, :] < jnp.asarray(lengths)[:, None]  # [B, S]
  if mask is not None:
    m = jnp.asarray(mask)
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[2] != 1:
      raise ValueError(f"the splash path takes a key-padding mask [B, 1, 1, S]; got a mask of "
                       f"shape {m.shape}")
    m = jnp.broadcast_to(m[:, 0, 0, :], (b, s))
    keep = m if keep is None else jnp.logical_and(keep, m)
  if keep is None:
    q_seg = kv_seg = None
  else:
    kv_seg = keep.astype(jnp.int32)
    if t != s:
      raise ValueError("splash attention with padding needs as many queries as keys "
                       f"({t} != {s})")
    q_seg = kv_seg
  return _splash_attention(q_btnh, k_bskh, v_bskh, scale=scale, is_causal=is_causal,
                          q_segment=q_seg, kv_segment=kv_seg, block_q=spec.block_q,
                          block_kv=spec.block_kv)


def _head_major_attention(q_btnh: _Array, k_bksh: _Array, v_bksh: _Array, *, mask: _Array | None,
                         scale: float | None = None) -> _Array:
  """`attention(..., impl='xla')` (not causal) on keys and values stored head-major.

  q: [B, T, N, H]; k, v: [B, K, S, H] (the KV cache's layout) with N % K == 0; mask: bool
  broadcastable to [B, N, T, S] or None. Returns [B, T, N, H] in q.dtype. The keys and values
  are read in place (a single-token decode step moves only q and the output between layouts).
  """
  n_heads, k_heads = q_btnh.shape[2], k_bksh.shape[1]
  if n_heads % k_heads:
    raise ValueError(f"{n_heads} query heads are not a multiple of {k_heads} kv heads")
  scale = q_btnh.shape[-1] ** -0.5 if scale is None else scale
  return _xla_attention(q_btnh, k_bksh.astype(q_btnh.dtype), v_bksh, mask, scale, False)


def _xla_attention(q_btnh: _Array, k: _Array, v: _Array, mask: _Array | None, scale: float,
                   is_causal: bool) -> _Array:
  """The 'xla' path of `attention` with k, v already head-major [B, K, S, H]."""
  b, t, n_heads, h = q_btnh.shape
  k_heads, s = k.shape[1], k.shape[2]
  g = n_heads // k_heads
  q = q_btnh.reshape(b, t, k_heads, g, h).transpose(0, 2, 3, 1, 4)
  m = None
  if mask is not None:
    m = jnp.asarray(mask)
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)  # [B|1, N|1, T|1, S]
    if m.shape[1] == 1:
      m = m[:, :, None]  # [B, 1, 1, T|1, S]
    else:
      m = m.reshape(m.shape[0], k_heads, g, *m.shape[2:])  # [B|1, K, G, T|1, S]
  if not is_causal:
    out = _attend(q, k, v, m, scale)
  elif t != s:
    causal = jnp.tril(jnp.ones((t, s), bool))
    out = _attend(q, k, v, causal if m is None else jnp.logical_and(m, causal), scale)
  else:
    # Block-causal: query block [i, j) only needs keys [0, j), so the upper triangle of the
    # [T, S] logits (about half at T >> block) is never computed. Every query's softmax
    # runs over the same unmasked keys as with the full [T, S] logits.
    block = max(CAUSAL_BLOCK, -(-t // _MAX_CAUSAL_BLOCKS))
    outs = []
    for i in range(0, t, block):
      j = min(i + block, t)
      causal = jnp.arange(i, j)[:, None] >= jnp.arange(j)[None, :]  # [j - i, j]
      mi = causal if m is None else jnp.logical_and(
          m[..., i:j, :j] if m.shape[3] > 1 else m[..., :j], causal)
      outs.append(_attend(q[:, :, :, i:j], k[:, :, :j], v[:, :, :j], mi, scale))
    out = jnp.concatenate(outs, axis=3) if len(outs) > 1 else outs[0]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n_heads, h).astype(q_btnh.dtype)


def _attend(q: _Array, k: _Array, v: _Array, m: _Array | None, scale: float) -> _Array:
  """softmax(scale * q k^T, masked by m) v for q [B, K, G, T, H], k, v [B, K, S, H], m bool
  broadcastable to [B, K, G, T, S] or None; softmax in float32. Returns [B, K, G, T, H]."""
  b, kh, g, t, h = q.shape
  s = k.shape[2]
  logits = jnp.einsum("bkmh,bksh->bkms", q.reshape(b, kh, g * t, h), k,
                      preferred_element_type=jnp.float32) * scale
  logits = logits.reshape(b, kh, g, t, s)
  if m is not None:
    logits = jnp.where(m, logits, jnp.finfo(jnp.float32).min)
  # jax.nn.softmax's forward written out, so that its statistics (row max and sum, [.., T, 1])
  # carry the checkpoint name _ATTN_STATS that the 'dots_attn' remat policy saves.
  x_max = checkpoint_name(jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)),
                          _ATTN_STATS)
  unnormalized = jnp.exp(logits - x_max)
  denom = checkpoint_name(jnp.sum(unnormalized, axis=-1, keepdims=True), _ATTN_STATS)
  probs = (unnormalized / denom).astype(v.dtype).reshape(b, kh, g * t, s)
  return jnp.einsum("bkms,bksh->bkmh", probs, v).reshape(b, kh, g, t, h)


def decoder_attention(q_btnh: _Array, k_btkh: _Array, v_btkh: _Array, *, mask: _Array | None,
                      kv: tuple | None, impl: str, dtype: _Dtype
                      ) -> tuple[_Array, tuple[_Array, _Array] | None]:
  """A decoder layer's attention, without or with a KV cache.

  kv None: causal self-attention of q, k, v [B, T, ., H] under the padding `mask` (bool
  [B, 1, 1, T], right padding, or None); returns (o [B, T, N, H], None). On the cuDNN path the
  mask is given to the kernel as per-row lengths (the real tokens lead each row, as the data
  pipeline and the sampler lay them out).
  kv = (k_cache, v_cache, slots) with head-major caches [B, K, cap, H] and slots i32[B, T]: k, v
  are written at `slots` (cast to the cache dtype), then q attends to the whole cache (cast to
  `dtype`) under `mask` (bool [B, 1, T, cap]); returns (o, (k_cache, v_cache)) with the updated
  caches. The cache is read in its own layout (`_head_major_attention`): a decode step never
  copies it. With kv and mask None (a chunk written into a cache that holds nothing it may see,
  e.g. the first chunk; real tokens lead each row), q attends causally to the chunk's own k, v
  only, as without a cache ([T, T] logits in query blocks instead of [T, cap]).
  kv = (k_stack, v_stack, slots, i) with stacks [L, B, K, cap, H] (scanned layers): the same on
  layer i of the stacks, written in place; returns (o, (k_stack, v_stack)).
  """
  if kv is None:
    if _resolve_impl(impl, q_btnh.dtype) == "cudnn" and mask is not None:
      lengths = jnp.sum(mask.reshape(mask.shape[0], -1).astype(jnp.int32), axis=-1)
      o = attention(q_btnh, k_btkh, v_btkh, lengths=lengths, impl="cudnn", is_causal=True)
    else:
      o = attention(q_btnh, k_btkh, v_btkh, mask=mask, impl=impl, is_causal=True)
    return checkpoint_name(o, _ATTN_OUT), None
  # Cached attention runs a [T, cap] mask of slots (no kernel takes that): the XLA path.
  impl_in, impl = impl, _resolve_impl(impl, q_btnh.dtype)
  impl = "xla" if impl in ("cudnn", "splash") else impl
  # The write indexes (row, kv head, slot) and moves one head's [H] vector per index: the
  # scatter's window is the minor dim alone. With the kv heads in the window instead ([K, H]
  # around the slot dim), XLA:TPU gives a scatter operand carried through a loop (the layer scan,
  # the decode while loop) a slot-major layout and copies the whole donated cache into it and
  # back: a second cache in temporaries (docs/scale.md, "Decode").
  b, _, k_heads = k_btkh.shape[:3]
  bidx = jnp.arange(b)[:, None, None]
  kidx = jnp.arange(k_heads)[None, None, :]
  if len(kv) == 4:
    k_stack, v_stack, slots, i = kv
    sidx = slots[:, :, None]
    k_stack = k_stack.at[i, bidx, kidx, sidx].set(k_btkh.astype(k_stack.dtype))
    v_stack = v_stack.at[i, bidx, kidx, sidx].set(v_btkh.astype(v_stack.dtype))
    k_cache, v_cache = k_stack[i], v_stack[i]
    new = (k_stack, v_stack)
  else:
    k_cache, v_cache, slots = kv
    sidx = slots[:, :, None]
    k_cache = k_cache.at[bidx, kidx, sidx].set(k_btkh.astype(k_cache.dtype))
    v_cache = v_cache.at[bidx, kidx, sidx].set(v_btkh.astype(v_cache.dtype))
    new = (k_cache, v_cache)
  if mask is None:  # a fresh chunk: causal self-attention, as without a cache
    o = attention(q_btnh, k_btkh.astype(dtype), v_btkh.astype(dtype), impl=impl_in,
                  is_causal=True)
  elif impl == "xla":
    o = _head_major_attention(q_btnh, k_cache.astype(dtype), v_cache.astype(dtype), mask=mask)
  else:  # 'jax_xla' (a reference): its own layout
    o = attention(q_btnh, k_cache.astype(dtype).transpose(0, 2, 1, 3),
                  v_cache.astype(dtype).transpose(0, 2, 1, 3), mask=mask, impl=impl)
  return o, new


def _decoder_mask(attention_mask: _Array | None, kv_mask: _Array | None) -> _Array | None:
  """The mask the decoder layers get: the cache's `kv_mask` when given (KV-cache call), else the
  padding mask attention_mask [B, S] as bool [B, 1, 1, S], else None."""
  if kv_mask is not None:
    return kv_mask
  if attention_mask is None:
    return None
  return jnp.asarray(attention_mask).astype(bool)[:, None, None, :]


def _logits_from_hidden(x_btd: _Array, w_dv: _Array, dtype: _Dtype) -> _Array:
  """logits f32[B, T, V] = x [B, T, D] @ w [D, V], both in `dtype`, accumulated in float32."""
  return jnp.dot(x_btd, w_dv.astype(dtype),
                 preferred_element_type=jnp.float32).astype(jnp.float32)


class SegmentPlan(NamedTuple):
  """Host-side indices for packed block-diagonal attention over N tokens in S segments (a
  pytree, so that plans can enter scanned and rematerialised blocks).

  gather: i32[S, L] token index of each padded slot (N for padding, pointing at a zero row);
  valid: bool[S, L] (the real tokens lead each segment); scatter: i32[N] flat slot (s * L + l)
  of each token.
  """
  gather: Any
  valid: Any
  scatter: Any


def segment_plan(segments: Sequence[np.ndarray], num_tokens: int) -> SegmentPlan:
  """Builds a SegmentPlan from a list of token-index arrays (a partition of range(num_tokens))."""
  segs = [np.asarray(s, np.int64) for s in segments if len(s)]
  if sum(len(s) for s in segs) != num_tokens:
    raise ValueError(f"segments hold {sum(len(s) for s in segs)} token slots for {num_tokens} "
                     "tokens (they must partition the tokens)")
  max_len = max(len(s) for s in segs)
  gather = np.full((len(segs), max_len), num_tokens, np.int32)
  scatter = np.full((num_tokens,), -1, np.int64)
  for i, s in enumerate(segs):
    gather[i, :len(s)] = s
    scatter[s] = i * max_len + np.arange(len(s))
  if (scatter < 0).any():
    raise ValueError(f"segments cover {int((scatter >= 0).sum())} of {num_tokens} tokens")
  return SegmentPlan(gather, gather < num_tokens, scatter.astype(np.int32))


def cu_seqlens_segments(cu_seqlens: np.ndarray, order: np.ndarray | None = None
                        ) -> list[np.ndarray]:
  """Segments [cu[i], cu[i+1]) of a (possibly permuted by `order`) token sequence."""
  cu = np.asarray(cu_seqlens, np.int64)
  idx = np.arange(cu[-1]) if order is None else np.asarray(order, np.int64)
  return [idx[cu[i]:cu[i + 1]] for i in range(len(cu) - 1) if cu[i + 1] > cu[i]]


def _pad_gather(x: _Array, gather: _Array) -> _Array:
  """x [N, ...] -> [S, L, ...]: row gather[s, l] of x, zeros where gather == N (padding)."""
  return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)], axis=0)[gather]


# The two index maps of a SegmentPlan are inverse to each other (the segments partition the
# tokens), so each one's gradient is a gather through the other: no scatter-add in the backward
# pass (fewer, cheaper kernels to compile and run; the same values, as every token has exactly
# one slot).
@jax.custom_vjp
def _to_segments(x: _Array, gather: _Array, scatter: _Array) -> _Array:
  """x [N, ...] -> padded segments [S, L, ...] (see _pad_gather)."""
  del scatter
  return _pad_gather(x, gather)


def _to_segments_fwd(x, gather, scatter):
  return _pad_gather(x, gather), (gather, scatter)


def _to_segments_bwd(res, g):
  gather, scatter = res
  return g.reshape((-1,) + g.shape[2:])[scatter], None, None


_to_segments.defvjp(_to_segments_fwd, _to_segments_bwd)


@jax.custom_vjp
def _from_segments(o: _Array, gather: _Array, scatter: _Array) -> _Array:
  """Padded segments o [S, L, ...] -> tokens [N, ...] (each token's slot)."""
  del gather
  return o.reshape((-1,) + o.shape[2:])[scatter]


def _from_segments_fwd(o, gather, scatter):
  return _from_segments(o, gather, scatter), (gather, scatter)


def _from_segments_bwd(res, g):
  gather, _ = res
  return _pad_gather(g, gather), None, None  # padding slots get a zero gradient


_from_segments.defvjp(_from_segments_fwd, _from_segments_bwd)


def _segment_attention(q_nhd: _Array, k_nhd: _Array, v_nhd: _Array, plan: SegmentPlan, *,
                      scale: float | None = None, impl="jax") -> _Array:
  """Block-diagonal attention over packed tokens: token n attends to tokens of its segment only.

  On the splash path the padded segments [S, L] are padded further to a multiple of
  _SPLASH_ALIGN, so that every vision call (window and full blocks) runs the kernel.

  q, k, v: [N, heads, H]. Returns [N, heads, H]. Reverse-mode differentiable (custom VJP: the
  gradients of the gather into segments and back are gathers through the inverse index map).
  """
  gather, scatter = jnp.asarray(plan.gather), jnp.asarray(plan.scatter)
  # Real tokens lead each padded segment: the padding is given as lengths (cuDNN takes no
  # dense mask; the XLA paths turn lengths back into one; splash takes them as segment ids).
  lengths = jnp.sum(jnp.asarray(plan.valid).astype(jnp.int32), axis=-1)  # [S]
  qs, ks, vs = (_shard_rows(_to_segments(x, gather, scatter)) for x in (q_nhd, k_nhd, v_nhd))
  seg_len = qs.shape[1]
  if _resolve_impl(impl, q_nhd.dtype) == "splash" and seg_len % _SPLASH_ALIGN:
    # The kernel takes lengths in multiples of _SPLASH_ALIGN: segments are padded up to one
    # (e.g. Qwen2.5-VL's 64-token windows to 128), the padding masked by the lengths.
    pad = ((0, 0), (0, -seg_len % _SPLASH_ALIGN), (0, 0), (0, 0))
    qs, ks, vs = (jnp.pad(x, pad) for x in (qs, ks, vs))
  out = _shard_rows(attention(qs, ks, vs, lengths=lengths, scale=scale, impl=impl)[:, :seg_len])
  return _shard_rows(_from_segments(out, gather, scatter))


def vision_rope_attention(q_ne: _Array, k_ne: _Array, v_ne: _Array, cos: _Array, sin: _Array,
                          plan, *, num_heads: int, impl: str, which=0) -> _Array:
  """Self-attention of a vision block: o = _segment_attention(rope(q), rope(k), v) per head.

  q, k, v: [N, E] with E = num_heads * H (split into heads); cos, sin: [N, H] (rope applied in
  float32). plan: a SegmentPlan, or a tuple of them with `which` selecting one (a Python int, or
  a traced int32 under a scanned layer stack: then every plan's attention is computed and the
  selected one kept with `where`). Returns o [N, E].

  The traced case computes all plans' attention (the window and the full one in a Qwen2.5-VL
  block: +3 % of a block's FLOPs at 224 x 224 frames, +13 % at 448 x 448) instead of a
  lax.switch: a switch compiles each branch on its own, with its own residuals under remat, and
  made the scanned loss-gradient compile 0.33x of the unrolled one instead of 0.26x
  (benchmarks/scan_compile.py, docs/benchmarks.md).
  """
  n, e = q_ne.shape
  shape = (n, num_heads, e // num_heads)
  q_ne, k_ne, v_ne = _shard_rows(q_ne), _shard_rows(k_ne), _shard_rows(v_ne)
  q = apply_rotary(q_ne.reshape(shape), cos, sin, compute_dtype=jnp.float32)
  k = apply_rotary(k_ne.reshape(shape), cos, sin, compute_dtype=jnp.float32)
  v = v_ne.reshape(shape)
  plans = (plan,) if isinstance(plan, SegmentPlan) else tuple(plan)
  if isinstance(which, (int, np.integer)) or len(plans) == 1:
    o = _segment_attention(q, k, v, plans[int(which) if len(plans) > 1 else 0], impl=impl)
  else:
    o = _segment_attention(q, k, v, plans[0], impl=impl)
    for i, p in enumerate(plans[1:], 1):
      o = jnp.where(which == i, _segment_attention(q, k, v, p, impl=impl), o)
  return _shard_rows(o.reshape(n, e))


def frame_plan(grid: np.ndarray) -> tuple[int, SegmentPlan]:
  """(N, the SegmentPlan with one segment per frame) of patch grids int[n, 3] (t, h, w): the full
  attention of the vision towers (HF cu_seqlens over frames of h * w patches)."""
  grid = np.asarray(grid, np.int64).reshape(-1, 3)
  n = int(np.prod(grid, axis=1).sum())
  frames = np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])
  return n, segment_plan(cu_seqlens_segments(np.concatenate([[0], np.cumsum(frames)])), n)


def check_num_patches(pixels: _Array, n: int, grid_thw) -> None:
  """Raises unless pixels [N, Dp] holds the n patches of the grids."""
  if pixels.shape[0] != n:
    raise ValueError(f"{pixels.shape[0]} patches given but the grids {np.asarray(grid_thw)} "
                     f"hold {n}")


def device_plans(plans) -> tuple[SegmentPlan, ...]:
  """SegmentPlans with their index arrays as jnp arrays (to pass into a scanned stack)."""
  return tuple(SegmentPlan(jnp.asarray(p.gather), jnp.asarray(p.valid), jnp.asarray(p.scatter))
               for p in plans)


def scanned_block(block_cls):
  """The scan body around a vision block class (its __call__ (x, cos, sin, plans, which) -> x):
  carry x, xs = `which` (the plan index of each block), broadcast (cos, sin, plans)."""

  class ScannedBlock(block_cls):

    def __call__(self, x, which, cos, sin, plans):  # pylint: disable=arguments-differ
      return super().__call__(x, cos, sin, plans, which), None

  ScannedBlock.__name__ = block_cls.__name__
  return ScannedBlock


class VisionQKV(nn.Module):
  """Vision attention params: fused qkv [E, 3E] ('vision_embed', 'vision_qkv') and proj [E, E]
  ('vision_heads', 'vision_embed'), both with bias (HF `attn.qkv`, `attn.proj`).

  h [N, E] -> (q [N, E], k [N, E], v [N, E], proj module); qkv = h W + b split in 3 along E.
  """
  dim: int
  param_dtype: Any
  dtype: Any

  @nn.compact
  def __call__(self, h):
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    qkv = dense(3 * self.dim, ("vision_embed", "vision_qkv"), name="qkv", **kw)(h)
    qkv = qkv.reshape(h.shape[0], 3, -1)
    proj = dense(self.dim, ("vision_heads", "vision_embed"), name="proj", **kw)
    return qkv[:, 0], qkv[:, 1], qkv[:, 2], proj


def _fill_tokens(embeds: _Array, ids: _Array, token_id: int, feats: _Array,
                 batched: bool) -> _Array:
  """Replaces the token_id positions of embeds [B, T, D] by feats, in order.

  Flat (HF layout): feats [M, D]; the k-th token_id position of the whole batch (row-major)
  gets feats[k] (M must equal the number of such positions when ids are concrete).
  Batched: feats [B, M, D]; the k-th token_id position of row b gets feats[b, k] (a row may hold
  fewer than M such positions, never more).
  """
  is_tok = ids == token_id
  m = feats.shape[-2]
  if not isinstance(is_tok, jax.core.Tracer):  # (concrete ids closed over by a jit are traced)
    counts = np.asarray(is_tok).sum(axis=1)
    if batched and (counts > m).any():
      raise ValueError(f"rows hold {counts.tolist()} vision tokens but only {m} visual tokens "
                       "per row were given")
    if not batched and counts.sum() != m:
      raise ValueError(f"{int(counts.sum())} vision tokens in input_ids but {m} visual tokens")
  if batched:
    rank = jnp.clip(jnp.cumsum(is_tok, axis=1) - 1, 0, m - 1)
    g = jnp.take_along_axis(feats, rank[..., None], axis=1)
  else:
    rank = jnp.clip(jnp.cumsum(is_tok.reshape(-1)) - 1, 0, m - 1).reshape(ids.shape)
    g = feats[rank]
  return jnp.where(is_tok[..., None], g.astype(embeds.dtype), embeds)


# ----------------------------------------------------------------------------------------------
# Model trunk shared by the VL backbones.


class _Embedding(nn.Module):
  """Token embedding table [V, D] ('vocab', 'embed'); also exposes the table for tied logits."""
  vocab: int
  dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                  ("vocab", "embed")),
        (self.vocab, self.dim), self.param_dtype)

  def __call__(self, ids: _Array) -> _Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def table(self) -> _Array:
    return self.embedding


class _Unembed(nn.Module):
  """Untied output projection kernel [D, V] ('embed', 'vocab')."""
  dim: int
  vocab: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> _Array:
    return self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                             ("embed", "vocab")),
                      (self.dim, self.vocab), self.param_dtype)


class KVInput(NamedTuple):
  """Per-call view of a KV cache given to the decoder (see kv_cache.py).

  k, v: tuples (one per layer) of [B, K, cap, H], or stacks [L, B, K, cap, H] for a scanned
  decoder; slots: i32[B, C] cache slots written by this chunk; mask: bool[B, 1, C, cap] (query i
  may attend to slot s), or None: the chunk attends causally to itself only (`decoder_attention`).
  """
  k: Any
  v: Any
  slots: _Array
  mask: _Array


# Rematerialisation policies by name (config `remat_policy`, used when `remat` is on): "full"
# saves nothing inside a layer, "dots" every matmul output, "dots_no_batch" the matmuls without
# batch dimensions (the projections and MLP on [B*T, D] rows; attention is recomputed),
# "dots_attn" those plus the decoder's attention output (_ATTN_OUT, [B, T, N, H]) and softmax
# statistics (_ATTN_STATS, row max and sum [B, K, G, T, 1] on the XLA paths), as MaxText's
# policy that saves the attention output does: the backward then re-runs no attention forward
# for the output projection's gradient; "none" turns remat off.
_REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "dots_attn")
_ATTN_OUT = "attn_out"
_ATTN_STATS = "attn_stats"


def remat_wrap(cls, remat: bool, policy: str = "full", *, scanned: bool = False):
  """`cls` under nn.remat with the named policy (see _REMAT_POLICIES), or `cls` itself."""
  if policy not in _REMAT_POLICIES:
    raise ValueError(f"unknown remat_policy {policy!r}; known: {_REMAT_POLICIES}")
  if not remat or policy == "none":
    return cls
  table = {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots,
           "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
           "dots_attn": jax.checkpoint_policies.save_from_both_policies(
               jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
               jax.checkpoint_policies.save_only_these_names(_ATTN_OUT, _ATTN_STATS))}
  # Under scan, CSE across iterations is impossible, so the barrier that prevents it is not needed.
  return nn.remat(cls, policy=table[policy], prevent_cse=not scanned)


def scan_stack(body_cls, length: int, num_broadcast: int):
  """nn.scan of `body_cls` over `length` layers: parameters stacked on a leading axis with the
  logical name 'layers' (never sharded), one rng per layer; the call is
  (carry, xs, *broadcast) -> (carry, ys) with `num_broadcast` broadcast arguments."""
  return nn.scan(body_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                 in_axes=(0,) + (nn.broadcast,) * num_broadcast, length=length,
                 metadata_params={nn.PARTITION_NAME: "layers"})


def _scanned_decoder_layer(layer_cls):
  """The scan body around a decoder layer class (its __call__ (x, cos, sin, mask, kv) ->
  (x, new_kv)): carry (x, kv stacks or None), xs = the layer index i, broadcast
  (cos, sin, mask, slots, extra); `after_layer(i, x, extra)` (a static field) runs after it."""

  class ScannedDecoderLayer(layer_cls):
    after_layer: Callable | None = None

    def __call__(self, carry, i, cos, sin, mask, slots, extra):  # pylint: disable=arguments-differ
      x, kv = carry
      x, new_kv = super().__call__(x, cos, sin, mask, None if kv is None else (*kv, slots, i))
      if self.after_layer is not None:
        x = self.after_layer(i, x, extra)
      return (x, new_kv), None

  ScannedDecoderLayer.__name__ = layer_cls.__name__
  return ScannedDecoderLayer


class VLDecoderModel(nn.Module):
  """The trunk both VL backbones share: vision tower `visual`, `embed_tokens`, decoder layers,
  final `norm` and (untied) `lm_head`, and the decoder pass over them (`decode`).

  Decoder layers are `layers_i` (unrolled) or, with `config.scan_layers`, one scanned stack
  `layers` whose parameters carry a leading axis of length num_hidden_layers (logical name
  'layers'); the KV cache then holds stacks [L, B, K, cap, H] instead of per-layer tuples.

  Subclasses declare the field `config` (a whole-model config with text / vision sections) and
  set the class attributes VISION_TOWER (called as (vision_cfg, dtype, param_dtype, impl,
  remat, remat_policy, scan)) and DECODER_LAYER (called as (text_cfg, dtype, param_dtype,
  impl); its __call__ takes (x, cos, sin, mask, kv) and returns (x, new_kv)).
  """
  VISION_TOWER = None
  DECODER_LAYER = None

  def setup(self):
    cfg = self.config
    t = cfg.text
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
    impl = _AttentionImpl(cfg.attention_impl, cfg.attention_block_q, cfg.attention_block_kv)
    self.visual = self.VISION_TOWER(cfg.vision, cfg.compute_dtype, cfg.params_dtype, impl,
                                    cfg.remat, cfg.remat_policy, cfg.scan_layers)
    self.embed_tokens = _Embedding(t.vocab_size, t.hidden_size, **kw)
    args = (t, cfg.compute_dtype, cfg.params_dtype, impl)
    if cfg.scan_layers:
      body = remat_wrap(_scanned_decoder_layer(self.DECODER_LAYER), cfg.remat, cfg.remat_policy,
                        scanned=True)
      self.layers = scan_stack(body, t.num_hidden_layers, 5)(
          *args, matmul=cfg.matmul_dtype, after_layer=self.after_layer_fn())
    else:
      layer_cls = remat_wrap(self.DECODER_LAYER, cfg.remat, cfg.remat_policy)
      self.layers = [layer_cls(*args, matmul=cfg.matmul_dtype, name=f"layers_{i}")
                     for i in range(t.num_hidden_layers)]
    self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, **kw)
    if not cfg.tie_word_embeddings:
      self.lm_head = _Unembed(t.hidden_size, t.vocab_size, cfg.params_dtype)

  def after_layer_fn(self) -> Callable | None:
    """A static (i, x, extra) -> x run after decoder layer i (i a traced int32 under scan), with
    `extra` the pytree passed to `decode`; None for none (Qwen3-VL adds DeepStack features)."""
    return None

  def vision_features(self, embeds) -> _Array:
    """The features an `encode_vision` output puts at the vision tokens: the output itself
    (Qwen2.5-VL); a backbone whose encoder returns more overrides it (Qwen3-VL: (merged,
    deepstack) -> merged)."""
    return embeds

  def encode_vision(self, pixel_values: _Array, grid_thw):
    """Vision tower. Flat pixel_values [N, Dp] -> the tower's output for grid_thw; batched
    [B, N_b, Dp] (grid_thw = one row's grids) -> the same pytree with every leaf [B, N_b/4, D]."""
    grid = np.asarray(grid_thw).reshape(-1, 3)
    if pixel_values.ndim == 3:
      b = pixel_values.shape[0]
      out = self.visual(_shard_rows(pixel_values.reshape(-1, pixel_values.shape[-1])),
                        np.tile(grid, (b, 1)))
      return jax.tree_util.tree_map(lambda f: _shard_rows(f.reshape(b, -1, f.shape[-1])), out)
    return self.visual(pixel_values, grid)

  def embed_inputs(self, input_ids, pixel_values, image_grid_thw, pixel_values_videos,
                   video_grid_thw, video_embeds):
    """Token embeddings [B, T, D] with the visual features (`vision_features` of the
    encode_vision outputs) at the image / video tokens. video_embeds: a precomputed
    encode_vision output used instead of pixel_values_videos. Returns (x, encoded, batched):
    encoded = [(token_id, encode_vision output, batched)] of the images and videos in order,
    batched whether the videos come in the batched layout."""
    cfg = self.config
    batched = pixel_values_videos is not None and pixel_values_videos.ndim == 3
    if video_embeds is not None:
      batched = jax.tree_util.tree_leaves(video_embeds)[0].ndim == 3
    x = self.embed_tokens(input_ids)
    encoded = []
    if pixel_values is not None:
      if image_grid_thw is None:
        raise ValueError("pixel_values given without image_grid_thw")
      images = self.encode_vision(pixel_values, image_grid_thw)
      x = _fill_tokens(x, input_ids, cfg.image_token_id, self.vision_features(images),
                      batched=False)
      encoded.append((cfg.image_token_id, images, False))
    if pixel_values_videos is not None and video_embeds is None:
      if video_grid_thw is None:
        raise ValueError("pixel_values_videos given without video_grid_thw")
      video_embeds = self.encode_vision(pixel_values_videos, video_grid_thw)
    if video_embeds is not None:
      x = _fill_tokens(x, input_ids, cfg.video_token_id, self.vision_features(video_embeds),
                      batched=batched)
      encoded.append((cfg.video_token_id, video_embeds, batched))
    if self.is_initializing() and not cfg.tie_word_embeddings:
      self.lm_head()
    return parallel.constrain(x, parallel.ACT_RESIDUAL), encoded, batched

  def unembedding_matrix(self) -> _Array:
    if self.config.tie_word_embeddings:
      return self.embed_tokens.table().T
    return self.lm_head()

  def decode(self, x: _Array, cos: _Array, sin: _Array, attention_mask, kv: KVInput | None,
             return_hidden: bool, extra: Any = None):
    """Decoder layers (each followed by `after_layer_fn()(i, x, extra)` when defined), final
    norm, and logits f32[B, T, V] (or the normed hidden [B, T, D] with return_hidden).
    x: [B, T, D] embeddings. With `kv`, returns (out, (k, v)) of the updated caches (per-layer
    tuples, or stacks [L, B, K, cap, H] with scan_layers)."""
    mask = _decoder_mask(attention_mask, None if kv is None else kv.mask)
    if self.config.scan_layers:
      stacks = None if kv is None else (kv.k, kv.v)
      slots = None if kv is None else kv.slots
      num = self.config.text.num_hidden_layers
      (x, stacks), _ = self.layers((x, stacks), jnp.arange(num, dtype=jnp.int32), cos, sin,
                                   mask, slots, extra)
      new_kv = stacks
    else:
      after = self.after_layer_fn()
      new_k, new_v = [], []
      for i, layer in enumerate(self.layers):
        layer_kv = None if kv is None else (kv.k[i], kv.v[i], kv.slots)
        x, lkv = layer(x, cos, sin, mask, layer_kv)
        if lkv is not None:
          new_k.append(lkv[0])
          new_v.append(lkv[1])
        if after is not None:
          x = after(i, x, extra)
      new_kv = None if kv is None else (tuple(new_k), tuple(new_v))
    x = self.norm(x)
    if return_hidden:
      out = x
    else:
      out = _logits_from_hidden(x, self.unembedding_matrix(), self.config.compute_dtype)
    if kv is not None:
      return out, new_kv
    return out
