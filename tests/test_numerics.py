"""streampro_jax.numerics: the pinned settings, and that they make XLA:CPU's bits independent of
the cores a process may use (the demo's host-independence; benchmarks/cpu_numerics.py runs the
whole-training version of this check)."""

import os
import shutil
import subprocess
import sys

import pytest

from streampro_jax import numerics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A weight-gradient-shaped contraction (a long reduction over 6144 rows into a small 64 x 192
# result, as x^T g in every dense layer's backward pass): Eigen splits such a reduction over its
# threads, so the bits depend on the thread count unless it is pinned.
_PROGRAM = r"""
import hashlib, numpy as np, jax, jax.numpy as jnp
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((6144, 64), np.float32))
g = jnp.asarray(rng.standard_normal((6144, 192), np.float32))
out = jax.device_get(jax.jit(lambda x, g: (x.T @ g, jnp.tanh(x).T @ g, jnp.exp(x).sum(0)))(x, g))
print(hashlib.sha256(b"".join(np.asarray(o).tobytes() for o in out)).hexdigest())
"""


def test_pinned_env_keeps_other_flags_and_replaces_pinned_ones():
  env = numerics._pinned_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 "
                                          "--xla_cpu_max_isa=AVX512", "NPROC": "7", "A": "b"})
  flags = env["XLA_FLAGS"].split()
  assert flags == ["--xla_force_host_platform_device_count=8", *numerics.XLA_FLAGS]
  assert env["NPROC"] == "2" and env["A"] == "b"
  assert numerics.is_pinned(env) and not numerics.is_pinned({"XLA_FLAGS": flags[0]})
  assert numerics._pinned_env({})["XLA_FLAGS"] == " ".join(numerics.XLA_FLAGS)


def test_pin_after_the_backend_started_is_an_error():
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()
  with pytest.raises(RuntimeError, match="before JAX starts its backend"):
    numerics.pin_cpu_numerics()


def test_start_cpu_process_pins_before_the_backend_starts():
  # A fresh interpreter, as every demo process is: the CPU backend, no hub, the pin, and the
  # backend then starts pinned; pin_numerics=False leaves the flags alone.
  code = ("import os, jax; from streampro_jax import demo, numerics; "
          "demo.start_cpu_process({pin}); jax.devices(); "
          "print(os.environ['JAX_PLATFORMS'], os.environ['HF_HUB_OFFLINE'], numerics.is_pinned(), "
          "jax.default_backend())")
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "NPROC", "JAX_PLATFORMS", "HF_HUB_OFFLINE")}
  for pin, pinned in ((True, "True"), (False, "False")):
    out = subprocess.run([sys.executable, "-c", code.format(pin=pin)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpu", "1", pinned, "cpu"], out


def test_fingerprint_names_the_host():
  fp = numerics.fingerprint()
  assert fp["cpu"] and fp["cores"] >= 1 and isinstance(fp["pinned"], bool)


def _hash(env, prefix=()):
  env = dict(env, JAX_PLATFORMS="cpu")
  proc = subprocess.run([*prefix, sys.executable, "-c", _PROGRAM], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=True)
  return proc.stdout.strip()


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and at least 2 cores")
def test_pinned_bits_do_not_depend_on_the_cores():
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "NPROC")}
  one_core = ("taskset", "-c", str(min(os.sched_getaffinity(0))))
  pinned = numerics._pinned_env(base)
  assert _hash(pinned) == _hash(pinned, one_core)
  # Without NPROC the thread pool follows the cores, and the bits change: the check can fail.
  unpinned = dict(pinned)
  del unpinned["NPROC"]
  assert _hash(unpinned) != _hash(unpinned, one_core)
