"""launch/train_sft.py on the tiny Qwen2.5-VL + SynthStream: SIGKILL between checkpoints, or
during an asynchronous checkpoint write, resume, and end with the same parameters and losses as an
uninterrupted run.

The subprocesses share one uninterrupted reference run (a module fixture) and a JAX persistent
compilation cache so only the first one compiles. Each runs on the 8 fake CPU devices of
conftest.py with a (data 2, fsdp 2, tensor 2) mesh.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import metrics as metrics_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
OVERRIDES = [
    f"--config.total_steps={STEPS}", "--config.global_batch_size=4", "--config.log_every_steps=1",
    "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
    "--config.data.num_videos=16", "--config.data.seq_len=384", "--config.data.max_turns=6",
    "--config.data.synth.min_duration=12", "--config.data.synth.max_duration=12",
    "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=5",
    "--config.tensorboard=False", "--config.model.tiny_text.num_hidden_layers=1",
    "--config.model.tiny_vision.depth=1", "--config.model.tiny_vision.fullatt_block_indexes=(0,)",
]


def _launch(workdir, cache_dir, *extra):
  env = dict(os.environ)
  env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.join(ROOT, "launch", "train_sft.py"),
         f"--config={os.path.join(ROOT, 'configs', 'tiny_synthetic.py')}",
         f"--workdir={workdir}", "--alsologtostderr", *OVERRIDES, *extra]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


def _final_params(workdir):
  path = os.path.join(workdir, "checkpoints", str(STEPS), "state")
  restored = ocp.StandardCheckpointer().restore(path)
  flat = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f"{prefix}/{k}", v)
    else:
      flat[prefix] = np.asarray(node)

  walk("", restored["params"])
  return flat, int(np.asarray(restored["step"]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """(workdir, compilation cache) of a run of all STEPS steps, shared by the tests."""
  tmp = tmp_path_factory.mktemp("resume")
  cache, ref_dir = str(tmp / "jax_cache"), str(tmp / "uninterrupted")
  ref = _launch(ref_dir, cache)
  assert ref.returncode == 0, ref.stderr[-3000:]
  # No cluster variables and no addresses: one process (streampro_jax/cluster.py).
  assert "distributed: no cluster detected" in ref.stderr
  # The final save completed before the process exited: the last step's checkpoint is complete
  # and no temporary folder of an unfinished write is left.
  ckpt_dir = os.path.join(ref_dir, "checkpoints")
  assert ckpt_lib.complete_steps(ckpt_dir)[0][-1] == STEPS
  assert all(name.isdigit() for name in os.listdir(ckpt_dir)), os.listdir(ckpt_dir)
  return ref_dir, cache


@pytest.mark.slow
def test_sigkill_between_checkpoints_resumes_to_same_parameters(tmp_path, uninterrupted):
  ref_dir, cache = uninterrupted
  run_dir = str(tmp_path / "killed")

  killed = _launch(run_dir, cache, "--config.debug_kill_after_step=5")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  done_before = metrics_lib.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  assert max(done_before) == 5  # it really ran past the checkpoint at step 4 ...
  assert not os.path.exists(os.path.join(run_dir, "checkpoints", str(STEPS)))  # ... not to the end

  resumed = _launch(run_dir, cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step" in resumed.stderr
  resumed_from = int(resumed.stderr.split("resumed from step ")[1].split()[0])
  assert resumed_from in (2, 4)

  want = metrics_lib.read_jsonl(os.path.join(ref_dir, "metrics.jsonl"))
  got = metrics_lib.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  assert sorted(want) == sorted(got) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    # The same programs on the same inputs (the resumed run restores the state and the data
    # position exactly): bit for bit.
    assert got[step]["loss"] == want[step]["loss"], step
    assert got[step]["supervised_tokens"] == want[step]["supervised_tokens"], step
  assert want[1]["loss"] != want[STEPS]["loss"]

  p_ref, step_ref = _final_params(ref_dir)
  p_run, step_run = _final_params(run_dir)
  assert step_ref == step_run == STEPS
  assert sorted(p_ref) == sorted(p_run)
  for key in p_ref:
    np.testing.assert_array_equal(p_run[key], p_ref[key], err_msg=key)


@pytest.mark.slow
def test_sigkill_during_an_async_save_resumes_from_the_previous_checkpoint(tmp_path,
                                                                          uninterrupted):
  """Killed while checkpoint 4 is written (keep=1: the only other checkpoint is 2): checkpoint 2
  is intact, the rerun resumes from it, and steps 3.. repeat the uninterrupted run's losses
  exactly (same program, same restored bits, same data position)."""
  ref_dir, cache = uninterrupted
  run_dir = str(tmp_path / "killed_mid_save")
  killed = _launch(run_dir, cache, "--config.debug_kill_after_step=4",
                   "--config.debug_kill_mid_save=True", "--config.checkpoint.keep=1")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert "sending SIGKILL to myself while checkpoint 4 is written" in killed.stderr
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  # The kill landed mid-write: 4 is not a complete checkpoint (orbax's temporary folder, or a
  # step folder without its commit markers), and keep=1 did not remove 2, since orbax removes
  # old checkpoints only once a new one is finalised.
  good, _ = ckpt_lib.complete_steps(ckpt_dir)
  assert good == [2], os.listdir(ckpt_dir)
  assert any(name.startswith("4") for name in os.listdir(ckpt_dir)), os.listdir(ckpt_dir)

  resumed = _launch(run_dir, cache, "--config.checkpoint.keep=1")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 2" in resumed.stderr, resumed.stderr[-3000:]
  want = metrics_lib.read_jsonl(os.path.join(ref_dir, "metrics.jsonl"))
  got = metrics_lib.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  assert sorted(got) == list(range(1, STEPS + 1))
  for step in range(1, STEPS + 1):
    # Bit-identical: the resumed steps run the same compiled program (the shared cache) on the
    # restored state, which is the saved one to the bit, and the same batches.
    assert got[step]["loss"] == want[step]["loss"], step
  p_ref, _ = _final_params(ref_dir)
  p_run, step_run = _final_params(run_dir)
  assert step_run == STEPS
  for key in p_ref:
    np.testing.assert_array_equal(p_run[key], p_ref[key], err_msg=key)
  assert ckpt_lib.complete_steps(ckpt_dir)[0] == [STEPS]   # keep=1, the final save complete
