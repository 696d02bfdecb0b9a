"""Named sets of XLA compiler flags for each platform, set before JAX starts its backend.

The launchers apply one with ``--xla_preset=gpu|tpu|none`` (``apply_preset``), so that a
recipe names its platform instead of pasting flags by hand. Each flag below is accepted by the
XLA of the pinned jaxlib 0.10.2 / libtpu 0.0.42.1 (tests/test_xla_presets.py starts a process
with every preset: XLA and libtpu stop with "Unknown flag" on a flag they do not know).

* ``gpu`` (``XLA_FLAGS``): the latency-hiding scheduler, which moves collectives so that they
  overlap computation, and the pipelining of the FSDP collectives (all-gather of the next layer's
  parameters, reduce-scatter of the previous layer's gradients, all-reduce) across the scanned
  layer loop, with the loop double-buffered so that the pipelined collective has a buffer to
  write into. Source: NVIDIA JAX-Toolbox, the GPU_performance.md page of its rosetta folder
  ("Enable Latency Hiding Scheduler, and Asynchronous collective communication", "Enable
  Optimizations for FSDP communication"), and JAX's GPU performance tips (gpu_performance_tips).
* ``tpu`` (``LIBTPU_INIT_ARGS``, read by libtpu, not by jaxlib's XLA): asynchronous collective
  fusion (all-gathers fused and run over several steps, overlapped with the TensorCore's
  computation), asynchronous all-gather and all-reduce, and the data-parallel all-reduce
  optimisation: the set MaxText's dense-model TPU recipes export (AI-Hypercomputer/maxtext,
  e.g. its v5p / v6e benchmark recipes and end_to_end/tpu scripts).
* ``none``: nothing.

A flag the environment already sets keeps its value: a user's explicit ``XLA_FLAGS`` /
``LIBTPU_INIT_ARGS`` entry overrides the preset's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from streampro_jax import numerics

__all__ = ["apply_preset"]


@dataclasses.dataclass(frozen=True)
class _Preset:
  """Flags for the two variables XLA reads: ``XLA_FLAGS`` (jaxlib's XLA, CPU and GPU) and
  ``LIBTPU_INIT_ARGS`` (libtpu's XLA)."""
  xla_flags: tuple[str, ...] = ()
  libtpu_args: tuple[str, ...] = ()


_PRESETS: dict[str, _Preset] = {
    "none": _Preset(),
    "gpu": _Preset(xla_flags=(
        "--xla_gpu_enable_latency_hiding_scheduler=true",
        "--xla_gpu_enable_highest_priority_async_stream=true",
        "--xla_gpu_enable_pipelined_all_gather=true",
        "--xla_gpu_enable_pipelined_reduce_scatter=true",
        "--xla_gpu_enable_pipelined_all_reduce=true",
        "--xla_gpu_enable_while_loop_double_buffering=true",
    )),
    "tpu": _Preset(libtpu_args=(
        "--xla_tpu_enable_async_collective_fusion=true",
        "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
        "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
        "--xla_tpu_overlap_compute_collective_tc=true",
        "--xla_enable_async_all_gather=true",
        "--xla_enable_async_all_reduce=true",
        "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
        "--xla_tpu_data_parallel_opt_different_sized_ops=true",
    )),
}


def _merge(existing: str, flags: tuple[str, ...]) -> str:
  """existing's flags, then each of flags whose name existing does not set."""
  have = {f.split("=", 1)[0] for f in existing.split()}
  return " ".join(existing.split() + [f for f in flags if f.split("=", 1)[0] not in have])


def _preset_env(name: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
  """A copy of env (default os.environ) with preset ``name``'s flags added to ``XLA_FLAGS`` and
  ``LIBTPU_INIT_ARGS`` (a variable the preset has no flags for is left as it is).

  Raises:
    ValueError: an unknown preset name (the known ones listed).
  """
  if name not in _PRESETS:
    raise ValueError(f"unknown XLA preset {name!r}; known: {', '.join(sorted(_PRESETS))}")
  preset = _PRESETS[name]
  out = dict(os.environ if env is None else env)
  for var, flags in (("XLA_FLAGS", preset.xla_flags), ("LIBTPU_INIT_ARGS", preset.libtpu_args)):
    if flags:
      out[var] = _merge(out.get(var, ""), flags)
  return out


def apply_preset(name: str) -> dict[str, str]:
  """Sets preset ``name``'s flags in os.environ; call before JAX starts its backend.

  Returns:
    {variable: value} of the variables it set (for the log).

  Raises:
    ValueError: an unknown preset name.
    RuntimeError: a JAX backend already runs in this process (its flags are fixed).
  """
  new = _preset_env(name)
  changed = {k: v for k, v in new.items() if os.environ.get(k) != v}
  if changed and numerics.backend_started():
    raise RuntimeError(f"XLA preset {name!r} must be applied before JAX starts its backend "
                       "(before the first jax.devices(), jnp array or jit call in this process)")
  os.environ.update(changed)
  return changed
