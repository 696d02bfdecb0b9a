"""Device mesh, logical-axis sharding rules, batch sharding and multi-host start-up (joining
the cluster streampro_jax/cluster.py detects).

One mesh with the named axes ``data``, ``fsdp`` and ``tensor``. Parameters carry logical axis names
(``nn.with_logical_partitioning``); :data:`DEFAULT_RULES` maps each logical name to mesh axes.
Helpers turn a pytree of logical annotations (or of boxed ``nn.Partitioned`` values) into
``NamedSharding``s, dropping a mesh axis from any dimension it does not divide so that tiny configs
stay legal on any mesh.

The rules are data: a config's ``mesh.rules`` ([logical name, mesh axes] pairs; configs/common.py
copies :data:`DEFAULT_RULES` there), read by the trainers with :func:`rules_from_config`.

Typical use (born-sharded state, as big_vision does)::

  mesh = parallel.make_mesh(config.mesh)             # {"data": 2, "fsdp": -1, "rules": ...}
  rules = parallel.rules_from_config(config.mesh)
  abstract = jax.eval_shape(init_fn, rng)            # boxed nn.Partitioned leaves
  shardings = parallel.logical_shardings(abstract, mesh, rules=rules)
  state = jax.jit(init_fn, out_shardings=shardings)(rng)
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from streampro_jax import cluster as cluster_lib

__all__ = [
    "ACT_KV", "ACT_LOGITS", "ACT_Q", "ACT_RESIDUAL", "ACT_ROWS_EMBED", "ACT_ROWS_MLP",
    "CACHE_KV", "DEFAULT_RULES", "DistributedConfig", "MESH_AXES", "batch_sharding",
    "constrain", "describe_batch", "initialize_distributed", "logical_shardings", "make_mesh",
    "process_max", "row_spec", "rows_to_global", "rows_to_local", "rules_from_config",
    "shard_batch"
]

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None for replicated): the default of a
# config's ``mesh.rules`` (configs/common.mesh_config copies it there; rules_from_config reads it).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # Language model parameters: FSDP over the model dimension, tensor parallel over the rest.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("norm", None),
    # The leading axis of scanned layer stacks (decoder layers, vision blocks): never sharded.
    ("layers", None),
    # Vision tower and merger.
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_qkv", "tensor"),
    ("vision_heads", "tensor"),
    ("vision_patch", None),
    ("merger_in", "fsdp"),
    ("merger_hidden", "tensor"),
    # Activations and the KV cache (parallel.constrain; the ``act_`` names are the brief's
    # batch / length / embed / heads / kv_heads / mlp / vocab, prefixed because the parameters
    # own the bare names): rows over the batch axes, heads and hidden units over tensor, the
    # model dimension and the sequence whole on every device.
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_residual_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

# Named rule sets (configs/common.mesh_config(rules=name) stores the set's table; a config's
# mesh.rules may also hold the name itself, parallel.rules_from_config reads both).
# "tensor_in_host_fsdp_across": for a mesh whose tensor axis spans the devices of one host (fast
# links: NVLink, ICI) and whose fsdp (and data) axes span the hosts. The parameters and the
# activations' heads / mlp / vocab are as DEFAULT_RULES; between the tensor-parallel blocks the
# residual stream is also split over tensor along the sequence (act_residual_length -> tensor,
# Megatron's sequence parallelism; q / k / v stay split by heads), so the norms, residual adds
# and the stored activations of a layer cost 1 / tensor per device, and the collectives of the
# tensor axis stay inside the host.
# docs/scale-out.md#activation-layouts says when to pick it.
_RULE_SETS: dict[str, tuple[tuple[str, Any], ...]] = {
    "default": DEFAULT_RULES,
    "tensor_in_host_fsdp_across": tuple(
        (name, "tensor") if name == "act_residual_length" else (name, axes)
        for name, axes in DEFAULT_RULES),
}

# The logical names of the constrained activations (parallel.constrain).
ACT_RESIDUAL = ("act_batch", "act_residual_length", "act_embed")   # [B, T, D]
ACT_Q = ("act_batch", "act_length", "act_heads", None)         # [B, T, Nh, Dh]
ACT_KV = ("act_batch", "act_length", "act_kv_heads", None)     # [B, T, Nk, Dh]
ACT_ROWS_MLP = ("act_batch", "act_mlp")                        # [rows, F]
ACT_ROWS_EMBED = ("act_batch", "act_embed")                    # [rows, D]
ACT_LOGITS = ("act_batch", "act_length", "act_vocab")          # [B, T, V chunk]
# KV cache k / v: [L, B, Nk, cap, Dh] scanned stacks, [B, Nk, cap, Dh] per layer.
CACHE_KV = ("act_batch", "act_kv_heads", None, None)

_MESH_CONFIG_KEYS = (*MESH_AXES, "rules")
"""The keys of a config's ``mesh`` section: the axis sizes and the logical-axis rules."""


class _MeshError(ValueError):
  """A mesh shape that does not fit the available devices."""


def _resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves the mesh axis sizes, one of which may be -1 ("fill the rest").

  Args:
    sizes: {"data": d, "fsdp": f, "tensor": t}; missing axes count as 1, at most one may be -1.
      A config's whole ``mesh`` section may be passed: its ``rules`` key is not a size and is
      left out.
    num_devices: total number of devices the mesh must cover exactly.

  Returns:
    {"data": d, "fsdp": f, "tensor": t} with product == num_devices.
  """
  sizes = {k: v for k, v in sizes.items() if k != "rules"}
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise _MeshError(f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}")
  shape = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
  fill = [axis for axis, size in shape.items() if size == -1]
  if len(fill) > 1:
    raise _MeshError(f"at most one mesh axis may be -1, got {fill} in {shape}")
  bad = {axis: size for axis, size in shape.items() if size == 0 or size < -1}
  if bad:
    raise _MeshError(f"mesh axis sizes must be positive or -1, got {bad}")
  known = math.prod(size for size in shape.values() if size != -1)
  if fill:
    if num_devices % known:
      raise _MeshError(
          f"mesh {shape}: the fixed axes multiply to {known}, which does not divide the "
          f"{num_devices} devices, so '{fill[0]}' = -1 cannot fill the rest")
    shape[fill[0]] = num_devices // known
  elif known != num_devices:
    raise _MeshError(
        f"mesh {shape} has {known} devices but {num_devices} devices are available "
        f"(the product of data x fsdp x tensor must equal the device count; use -1 on one axis)")
  return shape


def make_mesh(sizes: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ``('data', 'fsdp', 'tensor')`` mesh.

  Args:
    sizes: axis sizes (see :func:`_resolve_mesh_shape`); default ``{"data": -1}`` (pure DP).
    devices: devices to use; default ``jax.devices()`` (all hosts).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = _resolve_mesh_shape(dict(sizes or {"data": -1}), len(devices))
  dims = tuple(shape[axis] for axis in MESH_AXES)
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    device_array = mesh_utils.create_device_mesh(dims, devices=devices)
  except (ValueError, AssertionError, NotImplementedError):
    device_array = np.asarray(devices, dtype=object).reshape(dims)
  return Mesh(device_array, MESH_AXES)


def _rules_dict(rules) -> dict[str, Any]:
  return dict(DEFAULT_RULES if rules is None else rules)


def rules_from_config(mesh_cfg: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
  """The logical-axis rules of a config's ``mesh.rules``: (logical name, mesh axes) pairs, the mesh
  axes None (replicated), one of MESH_AXES or a sequence of them; or the name of a _RULE_SETS
  entry. No ``rules`` key (or None): DEFAULT_RULES. Raises ValueError naming
  ``config.mesh.rules[i]`` for a malformed pair, an unknown mesh axis or a logical name given
  twice, and ``config.mesh.rules`` for an unknown set name.
  """
  rules = None if mesh_cfg is None else dict(mesh_cfg).get("rules")
  if rules is None:
    return DEFAULT_RULES
  if isinstance(rules, str):
    if rules not in _RULE_SETS:
      raise ValueError(f"config.mesh.rules = {rules!r}: not a rule set; known: "
                       f"{sorted(_RULE_SETS)}")
    return _RULE_SETS[rules]
  out, seen = [], set()
  for i, pair in enumerate(rules):
    where = f"config.mesh.rules[{i}] = {pair!r}"
    if isinstance(pair, (str, bytes)) or len(pair) != 2 or not isinstance(pair[0], str):
      raise ValueError(f"{where}: expected a [logical name, mesh axes] pair")
    name, axes = pair
    if name in seen:
      raise ValueError(f"{where}: logical axis {name!r} has a rule already")
    seen.add(name)
    if axes is not None and not isinstance(axes, str):
      axes = tuple(axes)
    for axis in (() if axes is None else (axes,) if isinstance(axes, str) else axes):
      if axis not in MESH_AXES:
        raise ValueError(f"{where}: mesh axis {axis!r} is not one of {MESH_AXES}")
    out.append((name, axes))
  return tuple(out)


def _logical_to_spec(logical_axes: Sequence[str | None], *, rules=None,
                    mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
  """Maps logical axis names to a ``PartitionSpec``.

  Args:
    logical_axes: one logical name (or None) per array dimension.
    rules: (logical, mesh axes) pairs; default :data:`DEFAULT_RULES`.
    mesh: when given with ``shape``, mesh axes that do not divide a dimension (or that are already
      used by an earlier dimension) are dropped from that dimension, which is then replicated along
      them.
    shape: the array shape, same length as ``logical_axes``.
  """
  table = _rules_dict(rules)
  if shape is not None and len(shape) != len(logical_axes):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_axes):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis '{name}' has no sharding rule; known: {sorted(table)}")
    target = table[name]
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    kept = []
    for axis in axes:
      if axis in used:
        continue
      if mesh is not None and shape is not None:
        size = mesh.shape[axis]
        divisor = size * math.prod(mesh.shape[a] for a in kept)
        if shape[dim] % divisor:
          continue
      kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
  return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """x constrained (jax.lax.with_sharding_constraint) to the layout its logical axis names get
  from the rules in scope (flax nn.logical_axis_rules; DEFAULT_RULES when none) on the mesh in
  scope (jax.set_mesh; train/state.sharding_context sets both while a step traces). x unchanged
  without a mesh or on a one-device mesh (CPU single-device users, the live page). Per dimension:
  a name without a rule leaves the dimension to XLA (PartitionSpec.UNCONSTRAINED), a rule of
  None keeps it whole on every device, and mesh axes of size 1, already used by an earlier
  dimension, or whose product does not divide the dimension leave it to XLA as well (never an
  error for a tiny head count or an odd row count)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size == 1:
    return x
  if len(logical_axes) != x.ndim:
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {x.shape}")
  table = dict(nn.get_logical_axis_rules() or DEFAULT_RULES)
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(logical_axes):
    if name is None or name not in table:
      spec.append(None if name is None else PartitionSpec.UNCONSTRAINED)
      continue
    target = table[name]
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
    if not axes and target is not None:
      spec.append(PartitionSpec.UNCONSTRAINED)
      continue
    if x.shape[dim] % math.prod(mesh.shape[a] for a in axes):
      spec.append(PartitionSpec.UNCONSTRAINED)
      continue
    used.update(axes)
    spec.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def _is_partitioned(x) -> bool:
  return isinstance(x, nn.Partitioned)


def logical_shardings(tree, mesh: Mesh, *, rules=None):
  """Shardings for a pytree whose leaves are ``nn.Partitioned`` boxes (or plain arrays).

  Accepts the output of ``jax.eval_shape(model.init, ...)`` (boxed ``ShapeDtypeStruct``s) or real
  arrays. Unboxed leaves are replicated. The result has the *unboxed* tree structure, ready for
  ``jax.jit(..., out_shardings=...)`` of a function that returns ``nn.unbox(variables)``.
  """
  def one(leaf):
    if _is_partitioned(leaf):
      value = leaf.value
      spec = _logical_to_spec(leaf.names, rules=rules, mesh=mesh, shape=value.shape)
      return NamedSharding(mesh, spec)
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(one, tree, is_leaf=_is_partitioned)


def _shardings_from_axes(axes_tree, shapes_tree, mesh: Mesh, *, rules=None):
  """Shardings from a pytree of logical-axis tuples and a matching pytree of shapes.

  Args:
    axes_tree: pytree whose leaves are tuples of logical names (``None`` leaves are replicated).
    shapes_tree: same structure; leaves have ``.shape`` (arrays or ``ShapeDtypeStruct``s).
  """
  is_axes = lambda x: x is None or (isinstance(x, tuple) and all(
      isinstance(a, (str, type(None))) for a in x))
  flat_axes, treedef = jax.tree.flatten(axes_tree, is_leaf=is_axes)
  flat_shapes = treedef.flatten_up_to(shapes_tree)
  out = []
  for axes, leaf in zip(flat_axes, flat_shapes):
    if axes is None:
      out.append(NamedSharding(mesh, PartitionSpec()))
    else:
      out.append(NamedSharding(mesh, _logical_to_spec(axes, rules=rules, mesh=mesh,
                                                       shape=leaf.shape)))
  return treedef.unflatten(out)


def batch_sharding(mesh: Mesh, ndim: int, *, batch_dim: int = 0) -> NamedSharding:
  """Sharding of a batch array: ``batch_dim`` over (``data``, ``fsdp``), the rest replicated."""
  spec = [None] * ndim
  spec[batch_dim] = ("data", "fsdp")
  return NamedSharding(mesh, PartitionSpec(*spec))


def shard_batch(local_batch, mesh: Mesh, *, batch_dims=None):
  """Assembles host-local batch arrays into global arrays sharded over (``data``, ``fsdp``).

  Every host passes its own slice of the global batch (``global = local * process_count``); the
  global array is built with ``jax.make_array_from_process_local_data``.

  Args:
    local_batch: pytree of host-local NumPy arrays.
    mesh: the mesh.
    batch_dims: the batch dimension of each leaf: an int for all, a dict of key -> int (keys as
      ``jax.tree_util.keystr(path, simple=True, separator="/")``; absent keys 0), or a pytree of
      ints with the structure of ``local_batch`` (e.g. ``data.batch.Batch.batch_dims()``);
      default 0 (use 1 for ``position_ids`` laid out [3, B, T]).
  """
  data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
  n_proc = jax.process_count()

  def one(path, x, dim=None):
    x = np.asarray(x)
    if dim is None:
      dim = 0
      if isinstance(batch_dims, Mapping):
        dim = batch_dims.get(jax.tree_util.keystr(path, simple=True, separator="/"), 0)
      elif batch_dims is not None:
        dim = batch_dims
    global_size = x.shape[dim] * n_proc
    if global_size % data_parallel:
      raise ValueError(
          f"batch array '{jax.tree_util.keystr(path)}' has global batch {global_size} "
          f"({x.shape[dim]} per host x {n_proc} hosts), not divisible by the "
          f"{data_parallel} data-parallel shards (data {mesh.shape['data']} x fsdp "
          f"{mesh.shape['fsdp']})")
    sharding = batch_sharding(mesh, x.ndim, batch_dim=dim)
    global_shape = x.shape[:dim] + (global_size,) + x.shape[dim + 1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  if batch_dims is None or isinstance(batch_dims, (int, Mapping)):
    return jax.tree_util.tree_map_with_path(one, local_batch)
  return jax.tree_util.tree_map_with_path(one, local_batch, batch_dims)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How to join a multi-host run. Empty fields are read from the environment.

  Environment variables (the ones JAX reads): ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``. With none of them, a cluster that :func:`cluster.detect_cluster` sees
  (SLURM, Open MPI, Cloud TPU, Kubernetes) is joined by ``jax.distributed.initialize()`` with no
  arguments, JAX's own auto-detection.
  """
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: Sequence[int] | None = None


def initialize_distributed(config: DistributedConfig | None = None, *, force: bool = False
                           ) -> bool:
  """Joins the multi-process run this process belongs to, if any; idempotent.

  In order: an address or process count given (``config`` or the ``JAX_*`` variables) calls
  ``jax.distributed.initialize`` with them; else a cluster seen in the environment
  (:func:`cluster.detect_cluster`), or ``force``, calls ``jax.distributed.initialize()`` with no
  arguments (JAX's auto-detection); else the run stays single-process. The log says which.

  Args:
    config: explicit addresses (launch flags).
    force: initialise even when no cluster is detected (``--distributed``).

  Returns:
    True when the distributed runtime is initialised, False for a single-process run.

  Raises:
    cluster.ClusterError: a cluster is detected that JAX cannot join by itself (the reason
      named).
  """
  config = config or DistributedConfig()
  env = os.environ
  address = config.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  num = config.num_processes or (int(env["JAX_NUM_PROCESSES"])
                                 if env.get("JAX_NUM_PROCESSES") else None)
  pid = config.process_id if config.process_id is not None else (
      int(env["JAX_PROCESS_ID"]) if env.get("JAX_PROCESS_ID") else None)
  if jax.distributed.is_initialized():
    return True
  kwargs = {k: v for k, v in (("coordinator_address", address), ("num_processes", num),
                              ("process_id", pid)) if v is not None}
  if address or num:
    logging.info("distributed: addresses given, jax.distributed.initialize(%s)", kwargs)
  else:
    found = cluster_lib.detect_cluster(env)
    if found is None and not force:
      logging.info("distributed: no cluster detected (SLURM with > 1 task, Open MPI, Cloud TPU "
                   "slice, Kubernetes indexed job) and no addresses given: single process")
      return False
    if found is None:
      logging.info("distributed: no cluster detected; --distributed: "
                   "jax.distributed.initialize() with JAX's own auto-detection")
    elif found.error:
      raise cluster_lib.ClusterError(
          f"detected a {found.describe()}, but jax cannot join it by itself: {found.error}")
    else:
      logging.info("distributed: detected a %s; jax.distributed.initialize()", found.describe())
  if config.local_device_ids is not None:
    kwargs["local_device_ids"] = list(config.local_device_ids)
  jax.distributed.initialize(**kwargs)
  logging.info("distributed: process %d of %d, %d local devices, %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def describe_batch(global_batch: int, mesh: Mesh) -> str:
  """One line of batch arithmetic (global, per host, per device), logged at the start of a run."""
  n_proc = jax.process_count()
  data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % data_parallel:
    raise ValueError(f"global batch {global_batch} is not divisible by the {data_parallel} "
                     f"data-parallel shards (data {mesh.shape['data']} x fsdp "
                     f"{mesh.shape['fsdp']})")
  if global_batch % n_proc:
    raise ValueError(f"global batch {global_batch} is not divisible by {n_proc} hosts")
  return (f"global batch {global_batch} = {n_proc} host(s) x {global_batch // n_proc} per host; "
          f"{global_batch // data_parallel} per data-parallel shard over {data_parallel} shards "
          f"(mesh data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']} x tensor "
          f"{mesh.shape['tensor']} on {mesh.devices.size} devices)")


# ------------------------------------------------------------------------------------------------
# Rows split over processes (the streaming sampler across hosts).

_ROW_AXES = ("data", "fsdp")


def row_spec(ndim: int, row_dim: int = 0) -> PartitionSpec:
  """PartitionSpec of an array whose `row_dim` is split over (``data``, ``fsdp``)."""
  spec = [None] * ndim
  spec[row_dim] = _ROW_AXES
  return PartitionSpec(*spec)


def rows_to_global(local_tree, mesh: Mesh, row_dims=0):
  """Host-local row arrays of every process -> global arrays with the rows over (data, fsdp).

  Process p passes its rows [n_p, ...] (the same n on every process); the global array holds
  process 0's rows first, then process 1's, ... (global row = p * n + local row), the order of
  the mesh's devices. row_dims: an int or a pytree of ints (same structure) giving each leaf's
  row dimension. jax.experimental.multihost_utils.host_local_array_to_global_array does the
  work; with one process it is a device_put with the row sharding.
  """
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree.flatten(local_tree)
  dims = ([row_dims] * len(leaves) if isinstance(row_dims, int)
          else jax.tree.leaves(row_dims))
  specs = [row_spec(np.ndim(x), d) for x, d in zip(leaves, dims)]
  out = multihost_utils.host_local_array_to_global_array(
      [np.asarray(x) for x in leaves], mesh, specs)
  return jax.tree.unflatten(treedef, out)


def rows_to_local(global_tree, mesh: Mesh, row_dims=0):
  """The inverse of `rows_to_global`: this process's rows of each global array, as NumPy."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  leaves, treedef = jax.tree.flatten(global_tree)
  dims = ([row_dims] * len(leaves) if isinstance(row_dims, int)
          else jax.tree.leaves(row_dims))
  specs = [row_spec(x.ndim, d) for x, d in zip(leaves, dims)]
  out = multihost_utils.global_array_to_host_local_array(leaves, mesh, specs)
  return jax.tree.unflatten(treedef, [np.asarray(x) for x in out])


def process_max(values) -> np.ndarray:
  """The elementwise maximum of int `values` over all processes (the values themselves with
  one process): sizes every process must agree on (turn count, buckets, cache capacity)."""
  values = np.asarray(values, np.int64)
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(values)).max(axis=0)
