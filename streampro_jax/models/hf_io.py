"""Hugging Face checkpoint I/O: config.json + (sharded) safetensors <-> a Flax param tree.

Model-agnostic: a backbone supplies `key_map`, a dict HF key -> (param path, transform), where a
path ending in an int i addresses layer i of a stacked (scanned) leaf, with transform one of
  'id'                   same array,
  'T'                    Linear weight [out, in] <-> kernel [in, out],
  ('conv', hf_shape)     weight of shape hf_shape [out, ...] <-> kernel [prod(...), out].
Loading reads one tensor at a time (memory-mapped by safetensors), converts it to our layout and
dtype, and places it (optionally directly with its target sharding through
jax.make_array_from_callback), so the host never holds two copies of the model. Saving gathers
one parameter at a time and writes shards of at most `max_shard_bytes` with
model.safetensors.index.json, as transformers does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

__all__ = ["get_path", "load_params", "numpy_dtype", "save_params", "set_path", "to_hf", "to_ours"]

_INDEX_NAME = "model.safetensors.index.json"
_SINGLE_NAME = "model.safetensors"


def numpy_dtype(dtype) -> np.dtype:
  """The NumPy dtype of a dtype or array (ml_dtypes.bfloat16 for bfloat16)."""
  name = np.dtype(dtype).name if not hasattr(dtype, "dtype") else np.dtype(dtype.dtype).name
  return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def to_ours(arr: np.ndarray, transform) -> np.ndarray:
  """HF tensor -> our layout (see module docstring)."""
  if transform == "id":
    return arr
  if transform == "T":
    return arr.T
  if isinstance(transform, tuple) and transform[0] == "conv":
    return arr.reshape(arr.shape[0], -1).T
  raise ValueError(f"unknown transform {transform!r}")


def to_hf(arr: np.ndarray, transform) -> np.ndarray:
  """Our layout -> HF tensor (inverse of to_ours)."""
  if transform == "id":
    return arr
  if transform == "T":
    return arr.T
  if isinstance(transform, tuple) and transform[0] == "conv":
    return arr.T.reshape(transform[1])
  raise ValueError(f"unknown transform {transform!r}")


def _checkpoint_files(path: str) -> dict[str, str]:
  """HF key -> safetensors file name (from the index, or the single model.safetensors)."""
  index = os.path.join(path, _INDEX_NAME)
  if os.path.exists(index):
    with open(index) as f:
      return dict(json.load(f)["weight_map"])
  single = os.path.join(path, _SINGLE_NAME)
  if not os.path.exists(single):
    raise FileNotFoundError(f"neither {_INDEX_NAME} nor {_SINGLE_NAME} in {path}")
  with safe_open(single, framework="np") as f:
    return {k: _SINGLE_NAME for k in f.keys()}


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  """tree[path[0]][path[1]]... = value, creating the dicts on the way."""
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def get_path(tree, path: tuple[str, ...]):
  """tree[path[0]][path[1]]..."""
  for p in path:
    tree = tree[p]
  return tree


def load_params(path: str, key_map: dict[str, tuple[tuple[str, ...], Any]], shape_tree, *,
                dtype, shardings=None, alias: Callable[[str], str] = lambda k: k,
                ignore: tuple[str, ...] = ()) -> dict:
  """Reads every tensor of `key_map` from the checkpoint at `path` into a nested param dict.

  shape_tree: pytree of ShapeDtypeStruct (for shape checks); shardings: same-structure pytree of
  Shardings or None (then jax.device_put to the default device). Raises on missing, unexpected
  or mis-shaped tensors, naming them.
  """
  files = _checkpoint_files(path)
  by_file: dict[str, list[tuple[str, str]]] = {}
  seen = set()
  for key, fname in files.items():
    ours = alias(key)
    if ours in ignore:
      continue
    if ours not in key_map:
      raise ValueError(f"unexpected tensor {key!r} in {path}")
    seen.add(ours)
    by_file.setdefault(fname, []).append((key, ours))
  missing = sorted(set(key_map) - seen)
  if missing:
    raise ValueError(f"{len(missing)} tensors missing from {path}: {missing[:5]}")
  np_dtype = numpy_dtype(dtype)
  params: dict = {}
  # Stacked leaves (a path ending in a layer index): filled slice by slice on the host, placed
  # once their last layer is read.
  stacked: dict[tuple, list] = {}
  for ppath, _ in key_map.values():
    if isinstance(ppath[-1], int):
      stacked.setdefault(ppath[:-1], [None, 0])[1] += 1

  def place(ppath, arr):
    if shardings is not None:
      sharding = get_path(shardings, ppath)
      value = jax.make_array_from_callback(arr.shape, sharding, lambda idx, a=arr: a[idx])
    else:
      value = jax.device_put(arr)
    set_path(params, ppath, value)

  for fname, keys in by_file.items():
    with safe_open(os.path.join(path, fname), framework="np") as f:
      for key, ours in keys:
        ppath, transform = key_map[ours]
        arr = to_ours(f.get_tensor(key), transform).astype(np_dtype)
        layer = None
        if isinstance(ppath[-1], int):
          ppath, layer = ppath[:-1], ppath[-1]
        want = tuple(get_path(shape_tree, ppath).shape)
        if layer is not None:
          want = want[1:]
        if arr.shape != want:
          raise ValueError(f"{key}: shape {arr.shape} (our layout) but the config needs {want}")
        if layer is None:
          place(ppath, arr)
        else:
          entry = stacked[ppath]
          if entry[0] is None:
            entry[0] = np.empty((entry[1],) + want, np_dtype)
          entry[0][layer] = arr
          entry[1] -= 1
          if entry[1] == 0:
            place(ppath, entry[0])
            entry[0] = None
        del arr
  return params


def _readable_like_open(path: str) -> None:
  """Gives `path` the mode open() would (0666 less the umask): safetensors writes through a
  private temporary file and leaves mode 0600, unreadable to the other users of a shared
  checkpoint folder."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)


def save_params(path: str, params, key_map: dict[str, tuple[tuple[str, ...], Any]],
                config_json: dict, *, max_shard_bytes: int = 5 * 2 ** 30) -> None:
  """Writes config.json and the params as HF safetensors (sharded above max_shard_bytes)."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_json, f, indent=2, sort_keys=True)
  keys = sorted(key_map)
  sizes = {}
  for k in keys:
    ppath = key_map[k][0]
    leaf = get_path(params, ppath[:-1] if isinstance(ppath[-1], int) else ppath)
    shape = leaf.shape[1:] if isinstance(ppath[-1], int) else leaf.shape
    sizes[k] = int(np.prod(shape)) * numpy_dtype(leaf.dtype).itemsize
  shards, cur, cur_size = [], [], 0
  for k in keys:
    if cur and cur_size + sizes[k] > max_shard_bytes:
      shards.append(cur)
      cur, cur_size = [], 0
    cur.append(k)
    cur_size += sizes[k]
  if cur:
    shards.append(cur)
  for name in os.listdir(path):  # stale shards of an earlier save
    if name.endswith(".safetensors") or name == _INDEX_NAME:
      os.remove(os.path.join(path, name))
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = (_SINGLE_NAME if len(shards) == 1
             else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
    tensors = {}
    for k in shard:
      ppath, transform = key_map[k]
      if isinstance(ppath[-1], int):  # one layer of a stacked leaf
        host = np.asarray(jax.device_get(get_path(params, ppath[:-1])[ppath[-1]]))
      else:
        host = np.asarray(jax.device_get(get_path(params, ppath)))
      tensors[k] = np.ascontiguousarray(to_hf(host, transform))
      weight_map[k] = fname
    save_file(tensors, os.path.join(path, fname), metadata={"format": "pt"})
    _readable_like_open(os.path.join(path, fname))
    del tensors
  if len(shards) > 1:
    with open(os.path.join(path, _INDEX_NAME), "w") as f:
      json.dump({"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}, f,
                indent=2, sort_keys=True)
