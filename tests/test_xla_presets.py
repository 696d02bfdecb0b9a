"""XLA flag presets (streampro_jax/xla_presets.py): every flag of every preset is accepted by the
pinned jaxlib's XLA (XLA_FLAGS, checked on CPU: XLA parses every flag, GPU ones included, when its
first client starts) or by libtpu (LIBTPU_INIT_ARGS, checked by compiling for a TPU topology with
libtpu's compile-only client); a made-up flag makes each check fail, so the check can fail; and
the launchers apply a preset from --xla_preset before JAX starts."""

import importlib.util
import os
import subprocess
import sys

import jax
import pytest

from streampro_jax import xla_presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CPU_PROGRAM = ("import jax, jax.numpy as jnp; "
               "print(float(jax.jit(lambda x: x.sum() + 1)(jnp.ones(3))))")
# A jit compiled for a 4-chip v5e slice on this CPU machine (libtpu's compile-only client).
TPU_PROGRAM = """
import numpy as np, jax, jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
topo = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2",
                                    chips_per_host_bounds=(2, 2, 1), num_slices=1)
s = NamedSharding(Mesh(np.array(topo.devices), ("x",)), P("x"))
x = jax.ShapeDtypeStruct((256, 256), jnp.float32, sharding=s)
jax.jit(lambda a: (a @ a.T).sum(0), out_shardings=s).lower(x).compile()
print("compiled")
"""


def _run(program, env):
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LIBTPU_INIT_ARGS")}
  return subprocess.run([sys.executable, "-c", program], env={**base, **env}, cwd=ROOT,
                        capture_output=True, text=True, timeout=240, check=False)


def test_preset_env_adds_flags_and_keeps_the_users():
  env = xla_presets._preset_env("gpu", {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler="
                                                    "false --xla_dump_to=/tmp/d"})
  flags = env["XLA_FLAGS"].split()
  assert flags[:2] == ["--xla_gpu_enable_latency_hiding_scheduler=false", "--xla_dump_to=/tmp/d"]
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" not in flags   # the user's value wins
  assert "--xla_gpu_enable_pipelined_all_gather=true" in flags
  assert "LIBTPU_INIT_ARGS" not in env
  assert xla_presets._preset_env("none", {}) == {}
  tpu = xla_presets._preset_env("tpu", {})
  assert set(tpu) == {"LIBTPU_INIT_ARGS"}
  assert "--xla_tpu_enable_async_collective_fusion=true" in tpu["LIBTPU_INIT_ARGS"].split()
  with pytest.raises(ValueError, match="unknown XLA preset 'cuda'; known: gpu, none, tpu"):
    xla_presets._preset_env("cuda", {})


def test_apply_preset_refuses_a_started_backend(monkeypatch):
  jax.devices()   # this process's backend runs
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  with pytest.raises(RuntimeError, match="before JAX starts its backend"):
    xla_presets.apply_preset("gpu")
  assert xla_presets.apply_preset("none") == {}   # nothing to set: nothing refused


@pytest.mark.slow
def test_gpu_preset_flags_are_known_to_xla():
  env = xla_presets._preset_env("gpu", {"JAX_PLATFORMS": "cpu"})
  ok = _run(CPU_PROGRAM, env)
  assert ok.returncode == 0 and ok.stdout.strip() == "4.0", ok.stderr[-2000:]
  bad = _run(CPU_PROGRAM, {**env, "XLA_FLAGS": env["XLA_FLAGS"] + " --xla_gpu_made_up_flag=true"})
  assert bad.returncode != 0 and "Unknown flag in XLA_FLAGS: --xla_gpu_made_up_flag" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed")
def test_tpu_preset_flags_are_known_to_libtpu():
  # ALLOW_MULTIPLE_LIBTPU_LOAD: libtpu skips its one-process-per-host lock file (another test
  # process on this machine may hold it; the compile-only client uses no chip).
  env = xla_presets._preset_env("tpu", {"JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
  ok = _run(TPU_PROGRAM, env)
  assert ok.returncode == 0 and "compiled" in ok.stdout, ok.stderr[-2000:]
  bad = _run(TPU_PROGRAM, {**env, "LIBTPU_INIT_ARGS": env["LIBTPU_INIT_ARGS"] +
                           " --xla_tpu_made_up_flag=true"})
  assert bad.returncode != 0 and "Unknown command line flag 'xla_tpu_made_up_flag'" in bad.stderr


@pytest.mark.slow
def test_launcher_applies_the_preset_before_jax_starts(tmp_path):
  # A config mistake stops the launcher right after start-up (exit 2): the preset was set and
  # logged before that, and before JAX started (apply_preset raises otherwise).
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LIBTPU_INIT_ARGS")}
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "train_sft.py"),
                      "--config=configs/tiny_synthetic.py", f"--workdir={tmp_path / 'w'}",
                      "--xla_preset=gpu", "--alsologtostderr", "--config.optim.lr_typo=1"],
                     env=env, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
  assert r.returncode == 2 and "config.optim.lr_typo" in r.stderr, r.stderr[-2000:]
  assert "--xla_preset=gpu: XLA_FLAGS=" + " ".join(xla_presets._PRESETS["gpu"].xla_flags) \
      in r.stderr, r.stderr[-2000:]
