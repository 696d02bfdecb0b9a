"""Config, parameter and HF-checkpoint helpers shared by the Qwen2.5-VL and Qwen3-VL backbones.

Backbone-agnostic (everything backbone-specific is passed in):

- `FieldTypesMixin`: a frozen config's list values (a config read back from JSON) become the
  tuples its fields declare, so the config stays hashable.
- `_ConfigMixin`: `compute_dtype`, `params_dtype` and `replace` of a frozen whole-model config;
  `video_processor_config` (the one builder of the per-turn video processor settings); `round_up`.
- HF config.json pieces: `config_keys`, `check_model_type`, `text_kwargs_from_hf`,
  `vision_kwargs_from_hf`, `special_token_ids_from_hf`, `hf_fields`, `hf_config_dict`.
- Host-side M-RoPE: `token_types`, `mrope_row_positions` (the run-by-run rule of get_rope_index).
- Parameters: `dummy_inputs`, `_param_shapes`, `unembedding`.
- HF checkpoints: `hf_name`, `_hf_leaf_entry`, `load_hf_checkpoint`, `save_hf_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from typing import Any
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from streampro_jax.models import hf_io

__all__ = [
    "FieldTypesMixin", "VLConfig", "VisionConfigMixin", "check_concrete", "check_model_type",
    "chunk_rows", "config_keys", "dummy_inputs", "hf_config_dict", "hf_fields", "hf_name",
    "host_rope_index", "layout_of", "load_hf_checkpoint", "mrope_row_positions",
    "rope_index_rows", "round_up", "save_hf_checkpoint", "scan_params",
    "special_token_ids_from_hf", "stacked_key_map", "text_kwargs_from_hf", "text_position_ids",
    "token_types", "unembedding", "unrolled_hf_key_map", "unscan_params",
    "video_processor_config", "vision_kwargs_from_hf"
]

_Array = jax.Array

# Top-level special-token fields of a Qwen-VL config.json (same names in our configs).
_SPECIAL_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id",
                      "vision_end_token_id")


def round_up(n: int, m: int) -> int:
  """The smallest multiple of m that is >= n (ints)."""
  return -(-int(n) // int(m)) * int(m)


# ----------------------------------------------------------------------------------------------
# Configuration.


def _as_tuple(value: Any) -> Any:
  """A list (nested lists too) -> the tuple of the same items; anything else as is."""
  if isinstance(value, list):
    return tuple(_as_tuple(v) for v in value)
  return value


class FieldTypesMixin:
  """A frozen config dataclass whose list values become tuples when it is built.

  JSON has no tuples: a config written to JSON (a workdir's config.json, a ConfigDict's
  to_json) reads back `fullatt_block_indexes`, `mrope_section`, `eos_token_id` ... as lists,
  which would make the config unhashable (it is a static argument of jitted functions). Every
  tuple-typed field of these configs holds ints, so a list value is always the tuple the field
  declares.
  """

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if isinstance(value, list):
        object.__setattr__(self, f.name, _as_tuple(value))


class _ConfigMixin(FieldTypesMixin):
  """Dtype accessors and `replace` for a frozen dataclass with `dtype` / `param_dtype` names
  (list values become tuples: FieldTypesMixin)."""

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw):
    return dataclasses.replace(self, **kw)


def video_processor_config(config, processor_cls, **overrides):
  """``processor_cls`` (a processing / processing_qwen3 video processor config) with the patch,
  merge and temporal patch sizes of ``config``'s vision tower and do_resize=False (StreamPro
  resizes every frame to a fixed size first), then ``overrides``."""
  v = config.vision
  kw = dict(patch_size=v.patch_size, merge_size=v.spatial_merge_size,
            temporal_patch_size=v.temporal_patch_size, do_resize=False)
  kw.update(overrides)
  return processor_cls(**kw)


def config_keys(cls, exclude: tuple[str, ...]) -> tuple[str, ...]:
  """The dataclass field names of `cls` that are not in `exclude` (the ones copied 1:1 to HF)."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in exclude)


def check_model_type(d: dict[str, Any], model_type: str) -> None:
  """Raises ValueError when config.json dict `d` names another model_type (absent is fine)."""
  if d.get("model_type") not in (None, model_type):
    raise ValueError(f"model_type {d.get('model_type')!r} is not {model_type!r}")


def text_kwargs_from_hf(td: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
  """The `keys` present in text-config dict `td`; a list eos_token_id becomes a tuple."""
  text_kw = {k: td[k] for k in keys if k in td}
  if isinstance(text_kw.get("eos_token_id"), list):
    text_kw["eos_token_id"] = tuple(text_kw["eos_token_id"])
  return text_kw


def vision_kwargs_from_hf(vd: dict[str, Any], keys: tuple[str, ...], *,
                          tuple_keys: tuple[str, ...] = (),
                          renames: tuple[tuple[str, str], ...] = ()
                          ) -> tuple[dict[str, Any], float]:
  """(kwargs, rope_theta) of a vision config from HF vision-config dict `vd`.

  kwargs: the `keys` present in `vd`, `tuple_keys` turned into tuples, and for each
  (hf_name, ours) in `renames` vd[hf_name] under `ours` when `ours` is absent from vd.
  rope_theta: vd["rope_parameters"]["rope_theta"], default 10000.
  """
  vrope = dict(vd.get("rope_parameters") or {})
  vision_kw = {k: vd[k] for k in keys if k in vd}
  for k in tuple_keys:
    if k in vision_kw:
      vision_kw[k] = tuple(vision_kw[k])
  for hf_key, ours in renames:
    if hf_key in vd and ours not in vd:
      vision_kw[ours] = vd[hf_key]
  return vision_kw, float(vrope.get("rope_theta", 10000.0))


def special_token_ids_from_hf(d: dict[str, Any]) -> dict[str, int]:
  """The _SPECIAL_TOKEN_KEYS present at the top level of config.json dict `d`."""
  return {k: d[k] for k in _SPECIAL_TOKEN_KEYS if k in d}


def hf_fields(obj, keys: tuple[str, ...]) -> dict[str, Any]:
  """{key: getattr(obj, key)} with tuple values written as lists (JSON form)."""
  out = {}
  for k in keys:
    value = getattr(obj, k)
    out[k] = list(value) if isinstance(value, tuple) else value
  return out


def hf_config_dict(config, architecture: str, model_type: str, text: dict[str, Any],
                   vision: dict[str, Any]) -> dict[str, Any]:
  """A transformers-5 config.json dict: top-level fields of `config` + nested text / vision."""
  return {
      "architectures": [architecture],
      "model_type": model_type,
      "dtype": config.param_dtype,
      **{k: getattr(config, k) for k in _SPECIAL_TOKEN_KEYS},
      "tie_word_embeddings": config.tie_word_embeddings,
      "text_config": text,
      "vision_config": vision,
  }


class VisionConfigMixin(FieldTypesMixin):
  """Derived sizes of a vision-tower config (fields hidden_size, num_heads, in_channels,
  temporal_patch_size, patch_size); list values become tuples (FieldTypesMixin)."""

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    """Dp, the length of one flattened patch (channels x temporal patch x patch x patch)."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2


@dataclasses.dataclass(frozen=True)
class VLConfig(_ConfigMixin):
  """The top-level fields of both whole-model configs (the backbones redeclare `text` and
  `vision` with their own section classes and may change a default, e.g. tie_word_embeddings).

  dtype = compute dtype, param_dtype = parameter dtype (names); attention_impl: 'jax' | 'cudnn' |
  'xla' | 'jax_xla' | 'splash' (see layers.attention; 'jax' is cuDNN flash attention on GPU in
  16-bit, splash attention on TPU, XLA elsewhere); attention_block_q / attention_block_kv: the
  splash kernel's query / key block targets (layers._splash_block). remat: rematerialise each
  decoder layer and vision block in the backward pass, with `remat_policy`
  (layers._REMAT_POLICIES: 'full', 'dots', 'dots_no_batch', 'dots_attn', 'none').
  matmul_dtype: the decoder's projections and MLP multiply in the compute dtype ('default') or
  in FP8 ('fp8': layers._fp8_dot_general, current scaling, e4m3 forward / e5m2 gradients).
  scan_layers: decoder layers and vision blocks run under a scan with parameters stacked on a
  leading 'layers' axis (fast init and compile; `scan_params` / `unscan_params` convert between
  the layouts).
  """
  text: Any = None
  vision: Any = None
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  tie_word_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "jax"
  attention_block_q: int = 512
  attention_block_kv: int = 512
  remat: bool = False
  remat_policy: str = "full"
  scan_layers: bool = False
  matmul_dtype: str = "default"


# ----------------------------------------------------------------------------------------------
# Host-side M-RoPE positions (NumPy).


def token_types(input_ids, config) -> np.ndarray:
  """mm_token_type_ids derived from input_ids: 1 at image_token_id, 2 at video_token_id, else 0."""
  ids = np.asarray(input_ids)
  types = np.zeros(ids.shape, np.int64)
  types[ids == config.image_token_id] = 1
  types[ids == config.video_token_id] = 2
  return types


def mrope_row_positions(types: np.ndarray, start: int, grid_iters: dict, sms: int,
                        temporal: Callable[[int, int], np.ndarray], *, grids_name: str = "grids"
                        ) -> tuple[np.ndarray, int]:
  """M-RoPE positions [3, n] of one row's (unmasked) tokens, starting at `start`.

  types: int[n] (0 text, 1 image, 2 video). Text runs: p = current + arange(len) on all 3 axes,
  current += len. A run of image / video tokens takes the next (t, h, w) of grid_iters[type]:
  positions (current + pt[i_t], current + i_h, current + i_w) over the merged grid
  (t, h / sms, w / sms), pt = temporal(type, t) (int64[t], called once per run, in order);
  then current += max(h, w) / sms. Returns (positions int64[3, n], current).
  """
  out = []
  current = start
  for key, group in itertools.groupby(enumerate(types.tolist()), lambda x: x[1]):
    group = list(group)
    n = group[-1][0] + 1 - group[0][0]
    if key == 0:
      out.append(np.broadcast_to(np.arange(n, dtype=np.int64) + current, (3, n)))
      current += n
      continue
    it = grid_iters.get(key)
    if it is None:
      raise ValueError(f"{'image' if key == 1 else 'video'} tokens present but no grid given")
    try:
      t, h, w = (int(x) for x in next(it))
    except StopIteration:
      raise ValueError(f"more image/video token runs than {grids_name}") from None
    pt = temporal(key, t)
    lh, lw = h // sms, w // sms
    tg, hg, wg = np.meshgrid(pt, np.arange(lh) + current, np.arange(lw) + current, indexing="ij")
    pos = np.stack([tg.reshape(-1) + current, hg.reshape(-1), wg.reshape(-1)]).astype(np.int64)
    if pos.shape[1] != n:
      raise ValueError(f"a run of {n} vision tokens does not match grid {(t, h, w)} "
                       f"({pos.shape[1]} merged tokens)")
    out.append(pos)
    current += max(h, w) // sms
  if not out:
    return np.zeros((3, 0), np.int64), current
  return np.concatenate(out, axis=1), current


def _row_mask(mask, b: int, length: int) -> np.ndarray:
  return (np.asarray(mask)[b].astype(bool) if mask is not None
          else np.ones((length,), bool))


def rope_index_rows(types: np.ndarray, attention_mask, row_positions: Callable
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The row loop of get_rope_index: row_positions(types of a row's unmasked tokens) ->
  int64[3, n] for each row in order (masked tokens get position 0).

  types: int[B, T]; attention_mask: [B, T] or None. Returns position_ids i32[3, B, T] and
  rope_deltas i32[B, 1] = max position + 1 - number of unmasked tokens (0 for an empty row).
  """
  bsz, seq = types.shape
  pos = np.zeros((3, bsz, seq), np.int64)
  deltas = []
  for b in range(bsz):
    sel = _row_mask(attention_mask, b, seq)
    row = row_positions(types[b][sel])
    pos[:, b, sel] = row
    deltas.append(int(row.max()) + 1 - int(sel.sum()) if row.size else 0)
  return pos.astype(np.int32), np.asarray(deltas, np.int32)[:, None]


def chunk_rows(types: np.ndarray, start_positions, chunk_mask, row_positions: Callable
               ) -> tuple[np.ndarray, np.ndarray]:
  """The row loop of chunk_position_ids: row_positions(types of a row's real tokens, start) ->
  (int64[3, n], next running position) for each row from its start position.

  types: int[B, C]; start_positions: int[B] (or one int for all rows); chunk_mask: [B, C] or None
  (padding gets position 0). Returns (position_ids i32[3, B, C], next_start i32[B]).
  """
  bsz, c = types.shape
  starts = np.broadcast_to(np.asarray(start_positions, np.int64).reshape(-1), (bsz,))
  pos = np.zeros((3, bsz, c), np.int64)
  nxt = np.zeros((bsz,), np.int64)
  for b in range(bsz):
    sel = _row_mask(chunk_mask, b, c)
    row, cur = row_positions(types[b][sel], int(starts[b]))
    pos[:, b, sel] = row
    nxt[b] = cur
  return pos.astype(np.int32), nxt.astype(np.int32)


def text_position_ids(input_ids) -> _Array:
  """Positions of a text-only batch (no grids): arange(T) on all 3 axes, as transformers. i32[3,
  B, T]."""
  b, t = input_ids.shape
  return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (3, b, t))


def check_concrete(*args, module: str) -> None:
  """Raises when any of args is traced: get_rope_index runs on the host from concrete ids."""
  if any(isinstance(a, jax.core.Tracer) for a in args):
    raise ValueError("position_ids must be passed under jit (get_rope_index runs on the host "
                     f"from concrete input_ids); compute them with {module}.get_rope_index"
                     + (f" or {module}.host_position_ids" if module == "qwen2_5_vl" else ""))


def host_rope_index(get_rope_index: Callable, input_ids, *, batched: bool, per_token: dict,
                    flat_only: dict, **kw) -> np.ndarray:
  """The position_ids i32[3, B, T] a backbone computes on the host when none are passed:
  get_rope_index(ids, **per_token, **flat_only, **kw)[0] on the whole batch (flat layout: grids
  consumed across rows), or with `batched` row by row, each row with the same per-row grids in
  kw (a row may use fewer of them). per_token: {name: [B, T] array or None} (sliced per row);
  flat_only: arguments given in the flat layout only (e.g. image_grid_thw)."""
  ids = np.asarray(input_ids)
  per_token = {k: None if v is None else np.asarray(v) for k, v in per_token.items()}
  if not batched:
    return get_rope_index(ids, **per_token, **flat_only, **kw)[0]
  rows = [get_rope_index(ids[b:b + 1], **{k: None if v is None else v[b:b + 1]
                                          for k, v in per_token.items()}, **kw)[0]
          for b in range(ids.shape[0])]
  return np.concatenate(rows, axis=1)


# ----------------------------------------------------------------------------------------------
# Parameters.


def dummy_inputs(config, batch: int = 1) -> dict[str, Any]:
  """Smallest inputs that touch every parameter (one 1 x m x m video per row)."""
  m = config.vision.spatial_merge_size
  grid = np.array([[1, m, m]], np.int64)
  ids = np.array([[config.vision_start_token_id, config.video_token_id,
                   config.vision_end_token_id]] * batch, np.int32)
  pix = np.zeros((batch * m * m, config.vision.patch_dim), np.float32)
  return dict(input_ids=ids, pixel_values_videos=pix, video_grid_thw=np.tile(grid, (batch, 1)))


def _param_shapes(init_params: Callable, config, *, boxed: bool = False):
  """`jax.eval_shape` of `init_params(config, rng)` (unboxed unless `boxed`)."""
  shapes = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
  return shapes if boxed else nn.unbox(shapes)


def unembedding(params, config) -> _Array:
  """Output projection [D, V]: the embedding table transposed when tied, else lm_head."""
  p = nn.unbox(params)
  if config.tie_word_embeddings:
    return p["embed_tokens"]["embedding"].T
  return p["lm_head"]["kernel"]


# ----------------------------------------------------------------------------------------------
# Layer-stack layouts: unrolled (layers_0, layers_1, ...) and scanned (one stacked `layers`).

# Where the scanned stacks live in a parameter tree (decoder layers, vision blocks).
_STACKS = (("layers",), ("visual", "blocks"))


def _stack_of(path: tuple[str, ...]) -> tuple[tuple[str, ...], int] | None:
  """(stack path, layer index) when `path` starts inside an unrolled stack member
  (('visual', 'blocks_3', ...) -> (('visual', 'blocks'), 3)), else None."""
  for stack in _STACKS:
    head, last = stack[:-1], stack[-1]
    n = len(stack)
    if len(path) >= n and path[:n - 1] == head:
      name, sep, idx = path[n - 1].rpartition("_")
      if sep and name == last and idx.isdigit():
        return stack, int(idx)
  return None


def _scanned_path(path: tuple[str, ...]) -> tuple:
  """The scanned-layout address of an unrolled parameter path: ('layers_3', 'mlp', 'kernel') ->
  ('layers', 'mlp', 'kernel', 3) (a trailing int = that index of the stacked leading axis);
  paths outside the stacks are returned unchanged."""
  hit = _stack_of(path)
  if hit is None:
    return path
  stack, i = hit
  return stack + path[len(stack):] + (i,)


def scan_params(params) -> dict:
  """Unrolled parameters (layers_i, visual/blocks_i) -> the scanned layout (each stack's leaves
  stacked on a new leading axis). Unboxed trees; arrays are stacked with jnp.stack."""
  flat = {tuple(k.key for k in kp): v
          for kp, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  grouped: dict = {}
  out: dict = {}
  for path, value in flat.items():
    target = _scanned_path(path)
    if target is path:
      _set_path(out, path, value)
    else:
      grouped.setdefault(target[:-1], {})[target[-1]] = value
  for path, members in grouped.items():
    n = len(members)
    if sorted(members) != list(range(n)):
      raise ValueError(f"{'/'.join(path)}: layers {sorted(members)} are not 0..{n - 1}")
    _set_path(out, path, jnp.stack([members[i] for i in range(n)]))
  return out


def unscan_params(params) -> dict:
  """Scanned parameters -> the unrolled layout (inverse of `scan_params`)."""
  out: dict = {}
  for kp, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    path = tuple(k.key for k in kp)
    stack = next((st for st in _STACKS if path[:len(st)] == st), None)
    if stack is None:
      _set_path(out, path, value)
      continue
    rest = path[len(stack):]
    for i in range(value.shape[0]):
      _set_path(out, stack[:-1] + (f"{stack[-1]}_{i}",) + rest, value[i])
  return out


def _set_path(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def layout_of(params) -> str:
  """'scanned' when the tree holds a stacked decoder `layers`, 'unrolled' when it holds
  `layers_0`, else 'unknown'."""
  p = params.get("params", params) if isinstance(params, dict) else params
  if "layers" in p:
    return "scanned"
  if "layers_0" in p:
    return "unrolled"
  return "unknown"


# ----------------------------------------------------------------------------------------------
# HF checkpoints.


def hf_name(path: tuple[str, ...]) -> str:
  """Our param path -> HF module path ('layers_3' -> 'layers.3', 'mlp_0' -> 'mlp.0')."""
  parts = []
  for p in path:
    head, sep, tail = p.rpartition("_")
    parts.append(f"{head}.{tail}" if sep and tail.isdigit() else p)
  return ".".join(parts)


def _hf_leaf_entry(name: str, path: tuple[str, ...], leaf: str) -> tuple[str, tuple[Any, Any]]:
  """(HF key, (path, transform)) of param leaf `leaf` of HF module `name`: kernel -> weight 'T',
  bias -> bias 'id', anything else (scale, embedding) -> weight 'id'."""
  if leaf == "kernel":
    return name + ".weight", (path, "T")
  if leaf == "bias":
    return name + ".bias", (path, "id")
  return name + ".weight", (path, "id")


def unrolled_hf_key_map(config, init_params: Callable, module_name: Callable
                        ) -> dict[str, tuple[tuple[str, ...], Any]]:
  """HF safetensors key -> (our unrolled param path, transform) for every parameter of
  init_params(config): 'lm_head.weight' 'T'; the patch embedding kernel as the Conv3d weight
  ('conv', [E, C, t, p, p]; stride = kernel, so it is exactly this matmul on the flattened patch)
  and its bias ('id', when it has one) of HF module module_name(('visual', 'patch_embed')) +
  '.proj'; every other leaf through _hf_leaf_entry of HF module module_name(module path).
  module_name: our module path (a tuple of names) -> the HF module name (the backbone's prefixes).
  """
  flat = jax.tree_util.tree_flatten_with_path(_param_shapes(init_params, config))[0]
  out = {}
  for kp, _ in flat:
    path = tuple(k.key for k in kp)
    *mod, leaf = path
    if path == ("lm_head", "kernel"):
      out["lm_head.weight"] = (path, "T")
      continue
    if mod == ["visual", "patch_embed"]:
      v = config.vision
      name = module_name(tuple(mod)) + ".proj"
      if leaf == "kernel":
        out[name + ".weight"] = (path, ("conv", (
            v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)))
      else:
        out[name + ".bias"] = (path, "id")
      continue
    key, entry = _hf_leaf_entry(module_name(tuple(mod)), path, leaf)
    out[key] = entry
  return out


def stacked_key_map(config, unrolled_key_map: Callable) -> dict:
  """A backbone's HF key map for `config`'s layout: the unrolled map, with every path inside a
  layer stack moved to its scanned address (`_scanned_path`) when config.scan_layers."""
  key_map = unrolled_key_map(config.replace(scan_layers=False))
  if not config.scan_layers:
    return key_map
  return {k: (_scanned_path(p), t) for k, (p, t) in key_map.items()}


def load_hf_checkpoint(path: str, config_cls, init_params: Callable, hf_key_map: Callable,
                       dtype=jnp.float32, shardings=None, alias: Callable | None = None,
                       **overrides):
  """config.json + (sharded) safetensors from `path` -> (config_cls.from_hf(...), params).

  dtype: parameter dtype (also set as config.param_dtype). shardings: optional pytree (same
  structure as params) of jax.sharding.Sharding. A tied config ignores lm_head.weight.
  overrides: config fields to set (e.g. scan_layers=True loads into the scanned layout).
  Parameter shapes come from jax.eval_shape of the init (nothing runs).
  """
  with open(f"{path}/config.json") as f:
    config = config_cls.from_hf(json.load(f), param_dtype=jnp.dtype(dtype).name, **overrides)
  key_map = hf_key_map(config)
  shape_tree = _param_shapes(init_params, config)
  kw = {} if alias is None else dict(alias=alias)
  params = hf_io.load_params(path, key_map, shape_tree, dtype=dtype, shardings=shardings,
                             ignore=("lm_head.weight",) if config.tie_word_embeddings else (),
                             **kw)
  return config, params


def save_hf_checkpoint(config, params, path: str, hf_key_map: Callable, *,
                       max_shard_bytes: int = 5 * 2 ** 30) -> None:
  """config.json + safetensors (sharded above max_shard_bytes) via hf_io.save_params."""
  hf_io.save_params(path, nn.unbox(params), hf_key_map(config), config.to_hf(),
                    max_shard_bytes=max_shard_bytes)
