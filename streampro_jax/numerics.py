"""The same float results on every CPU host of a kind: the settings that pin XLA:CPU's rounding.

The same program, run on two x86-64 machines with the same library versions, gives different
float32 results: a training run then lands elsewhere after a few hundred steps. Measured with
``benchmarks/cpu_numerics.py`` (docs/decisions.md#cpu-numerics), four host properties change
XLA:CPU's bits:

1. the size of its intra-op thread pool, which XLA takes from the cores the process may use
   (``taskset -c 0`` changes the losses from step 4 on): a contraction's work, and with it its
   summation order, is split by thread count. The environment variable ``NPROC`` sets the pool
   size instead (XLA reads it when the CPU client starts);
2. the instruction set XLA generates code for, the best the host has (AVX-512 on some hosts,
   AVX2 on others), and the CPU-specific math it may use ("faster code at the expense of
   consistent results across CPUs", XLA's own help): ``--xla_cpu_max_isa=AVX2`` and
   ``--xla_cpu_enable_platform_dependent_math=false`` cap both;
3. YNNPACK's dot kernels (on by default), chosen by the CPU's features at run time:
   ``--xla_cpu_experimental_ynn_fusion_type=`` turns them off, so dots take Eigen's kernels,
   which are compiled into jaxlib once for all hosts.

``pin_cpu_numerics()`` sets them before JAX starts its backend; the demo calls it. Left
open (known limit): Eigen blocks its matrix products by the L1 data cache it reads from the CPU
(32 KiB on every AMD EPYC and most x86 server CPUs); a host with another L1 size may still round
differently. ``fingerprint()`` records what a run's numbers depend on, so that two result files
can be compared knowingly.
"""

from __future__ import annotations

import os
import platform
import sys

__all__ = [
    "THREADS", "XLA_FLAGS", "backend_started", "fingerprint", "is_pinned", "pin_cpu_numerics"
]

# The pinned values: two intra-op threads (every machine of the CI kind has 2 cores; a host with
# more or fewer still splits the work the same way), code for AVX2 (every x86-64 host this
# project runs on has it) with portable math, and YNNPACK's dots off.
THREADS = 2
XLA_FLAGS = ("--xla_cpu_max_isa=AVX2", "--xla_cpu_enable_platform_dependent_math=false",
             "--xla_cpu_experimental_ynn_fusion_type=")


def _pinned_env(env: dict[str, str] | None = None) -> dict[str, str]:
  """A copy of env (default os.environ) with the pinned NPROC and XLA flags.

  Flags already in env's XLA_FLAGS are kept, except earlier values of the pinned ones, which the
  pinned values replace.
  """
  out = dict(os.environ if env is None else env)
  names = {f.split("=", 1)[0] for f in XLA_FLAGS}
  kept = [f for f in out.get("XLA_FLAGS", "").split() if f.split("=", 1)[0] not in names]
  out["XLA_FLAGS"] = " ".join(kept + list(XLA_FLAGS))
  out["NPROC"] = str(THREADS)
  return out


def backend_started() -> bool:
  """Whether JAX has started a backend in this process (after which XLA flags do not apply)."""
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return bool(xla_bridge.backends_are_initialized())


def pin_cpu_numerics() -> None:
  """Sets the pinned NPROC and XLA flags in os.environ; call before JAX starts its backend.

  Raises:
    RuntimeError: a JAX backend is already running in this process (its flags are fixed).
  """
  if backend_started():
    raise RuntimeError("pin_cpu_numerics() must run before JAX starts its backend (before the "
                       "first jax.devices(), jnp array or jit call in this process)")
  os.environ.update({k: v for k, v in _pinned_env().items() if k in ("XLA_FLAGS", "NPROC")})


def is_pinned(env: dict[str, str] | None = None) -> bool:
  """Whether env (default os.environ) holds the pinned settings."""
  env = os.environ if env is None else env
  flags = env.get("XLA_FLAGS", "").split()
  return env.get("NPROC") == str(THREADS) and all(f in flags for f in XLA_FLAGS)


def _cpu_info() -> tuple[str, set[str]]:
  model, feats = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          feats = set(value.split())
          break
  except OSError:
    pass
  return model, feats


def fingerprint() -> dict:
  """What this process's CPU float results depend on: the CPU model, its vector ISA, the cores
  the process may use, and whether the pinned settings are in force (JSON-ready)."""
  model, feats = _cpu_info()
  isa = [f for f in ("avx512f", "avx2", "fma", "avx") if f in feats]
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count() or 0
  return {"cpu": model, "isa": isa[0] if isa else platform.machine(), "cores": cores,
          "pinned": is_pinned(), "nproc": os.environ.get("NPROC", ""),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
