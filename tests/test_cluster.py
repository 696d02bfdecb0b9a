"""Cluster detection (streampro_jax/cluster.py) and the launchers' start-up with it: the rules on
hand-written environments, a single-process run without cluster variables, and launch/train_sft.py
started twice with the variables of a two-task SLURM job step on this host and no address flags:
both processes join through jax's SLURM detection and train a step together."""

import importlib.util
import os
import random

import jax
import numpy as np
import portpicker
import pytest

from streampro_jax import cluster, parallel
from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import metrics as metrics_lib

import multiprocess_run  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every variable any rule reads: cleared for the single-process checks.
CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                "SLURM_LOCALID", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                "OMPI_MCA_orte_hnp_uri", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                "TPU_WORKER_ID", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID",
                "KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX", "JAX_COORDINATOR_ADDRESS",
                "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _slurm_env(ntasks=2, procid=1, **extra):
  env = dict(SLURM_JOB_ID="123456", SLURM_STEP_NODELIST="node[007-008]",
             SLURM_NTASKS=str(ntasks), SLURM_PROCID=str(procid), SLURM_LOCALID="1")
  env.update(extra)
  return env


def test_slurm_step_with_two_tasks_is_a_cluster():
  found = cluster.detect_cluster(_slurm_env(), tpu_chips=0)
  assert (found.kind, found.num_processes, found.process_id, found.error) == ("slurm", 2, 1, "")
  assert "SLURM_NTASKS=2" in found.describe() and "process 1 of 2" in found.describe()
  # One task, or a batch script outside srun (no step node list): one process.
  assert cluster.detect_cluster(_slurm_env(ntasks=1, procid=0), tpu_chips=0) is None
  no_step = _slurm_env()
  del no_step["SLURM_STEP_NODELIST"]
  assert cluster.detect_cluster(no_step, tpu_chips=0) is None
  # The port jax derives: 61440 + 123456 mod 4096 = 61440 + 576 (123456 = 30 * 4096 + 576).
  assert cluster._slurm_coordinator_port(123456) == 62016


def test_open_mpi_world():
  env = dict(OMPI_COMM_WORLD_SIZE="4", OMPI_COMM_WORLD_RANK="3",
             OMPI_MCA_orte_hnp_uri="1531576320.0;tcp://10.96.0.1:34911")
  found = cluster.detect_cluster(env, tpu_chips=0)
  assert (found.kind, found.num_processes, found.process_id, found.error) == ("ompi", 4, 3, "")
  del env["OMPI_MCA_orte_hnp_uri"]       # Open MPI 5: jax cannot find the coordinator
  assert "OMPI_MCA_orte_hnp_uri" in cluster.detect_cluster(env, tpu_chips=0).error
  assert cluster.detect_cluster(dict(OMPI_COMM_WORLD_SIZE="1", OMPI_COMM_WORLD_RANK="0"),
                                tpu_chips=0) is None
  # Open MPI comes first, as in jax's order (an mpirun inside a SLURM allocation).
  assert cluster.detect_cluster({**_slurm_env(), **env}, tpu_chips=0).kind == "ompi"


def test_cloud_tpu_slice_needs_chips_and_workers():
  env = dict(TPU_WORKER_HOSTNAMES="t-0,t-1,t-2,t-3", TPU_WORKER_ID="2")
  found = cluster.detect_cluster(env, tpu_chips=4)
  assert (found.kind, found.num_processes, found.process_id) == ("tpu", 4, 2)
  assert cluster.detect_cluster(env, tpu_chips=0) is None    # no TPU on this host
  assert cluster.detect_cluster(dict(TPU_WORKER_HOSTNAMES="t-0", TPU_WORKER_ID="0"),
                                tpu_chips=4) is None         # one host: one process
  # Multislice: 2 slices of 4 hosts, host 2 of slice 1 is process 4 + 2.
  multi = dict(env, MEGASCALE_NUM_SLICES="2", MEGASCALE_SLICE_ID="1")
  found = cluster.detect_cluster(multi, tpu_chips=4)
  assert (found.num_processes, found.process_id) == (8, 6)
  # TPU_SKIP_MDS_QUERY (set by jax where it finds no TPU): no metadata query, one process.
  assert cluster.detect_cluster(dict(TPU_SKIP_MDS_QUERY="1"), tpu_chips=4) is None


def test_kubernetes_indexed_job():
  env = dict(KUBERNETES_SERVICE_HOST="10.0.0.1", JOB_COMPLETION_INDEX="5")
  found = cluster.detect_cluster(env, tpu_chips=0)
  assert (found.kind, found.num_processes, found.process_id) == ("k8s", None, 5)
  has_client = importlib.util.find_spec("kubernetes") is not None
  assert (found.error == "") == has_client
  # A pod that is not an indexed job's: one process.
  assert cluster.detect_cluster(dict(KUBERNETES_SERVICE_HOST="10.0.0.1"), tpu_chips=0) is None


def test_without_cluster_variables_a_run_stays_single_process(monkeypatch, caplog):
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  assert cluster.detect_cluster(tpu_chips=0) is None
  # This host has no TPU chips, so the Cloud TPU rule asks no metadata server.
  assert cluster._tpu_chip_count() == 0
  with caplog.at_level("INFO"):
    assert parallel.initialize_distributed() is False
  assert "no cluster detected" in caplog.text
  assert not jax.distributed.is_initialized() and jax.process_count() == 1


def test_a_cluster_jax_cannot_join_is_named(monkeypatch):
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
  monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
  with pytest.raises(cluster.ClusterError, match="ompi cluster, process 0 of 2.*"
                     "OMPI_MCA_orte_hnp_uri"):
    parallel.initialize_distributed()
  assert not jax.distributed.is_initialized()


def _free_slurm_job_id() -> tuple[int, int]:
  """A job id whose derived coordinator port (61440 + id mod 4096) is free here."""
  rng = random.Random()
  for _ in range(200):
    job = rng.randrange(10_000, 10_000_000)
    port = cluster._slurm_coordinator_port(job)
    if portpicker.is_port_free(port):
      return job, port
  raise RuntimeError("no free port in 61440..65535")


# The tiny config, one decoder layer and one vision block, 1 step of 2 rows (one per process).
OVERRIDES = [
    "--config.total_steps=1", "--config.global_batch_size=2", "--config.log_every_steps=1",
    "--config.mesh.data=-1", "--config.data.num_videos=4", "--config.data.seq_len=384",
    "--config.data.max_turns=6", "--config.data.synth.min_duration=12",
    "--config.data.synth.max_duration=12", "--config.tensorboard=False",
    "--config.model.tiny_text.num_hidden_layers=1", "--config.model.tiny_vision.depth=1",
    "--config.model.tiny_vision.fullatt_block_indexes=(0,)",
]


@pytest.mark.slow
def test_two_process_slurm_step_joins_without_addresses_and_trains(tmp_path):
  job, port = _free_slurm_job_id()
  workdir = str(tmp_path / "run")
  argv = [os.path.join(ROOT, "launch", "train_sft.py"),
          f"--config={os.path.join(ROOT, 'configs', 'tiny_synthetic.py')}",
          f"--workdir={workdir}", "--alsologtostderr", *OVERRIDES]
  # What srun sets for a 2-task step on one node (no JAX_* variables, no address flags).
  envs = [dict(SLURM_JOB_ID=str(job), SLURM_NTASKS="2", SLURM_PROCID=str(i),
               SLURM_LOCALID=str(i), SLURM_NODEID="0", SLURM_STEP_NODELIST="localhost",
               SLURM_STEP_NUM_NODES="1", SLURM_NTASKS_PER_NODE="2", JAX_PLATFORMS="cpu")
          for i in range(2)]
  logs = multiprocess_run.run_workers([argv, argv], timeout=400, envs=envs)
  for i, log in enumerate(logs):
    assert f"distributed: detected a slurm cluster, process {i} of 2" in log, log[-3000:]
    assert f"SLURM_JOB_ID={job}" in log
    assert f"process {i}/2, 1 local / 2 global devices" in log, log[-3000:]
  # jax's SLURM rule put the coordinator on the step's first node, port from the job id.
  assert f"localhost:{port}" in logs[0] or f"localhost:{port}" in logs[1], logs[0][-3000:]
  # Process 0 wrote the step's metrics; both wrote the checkpoint of step 1 together.
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert sorted(rows) == [1]
  assert np.isfinite(rows[1]["loss"]) and rows[1]["supervised_tokens"] > 0
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert ckpt_lib.complete_steps(ckpt_dir) == ([1], [])
  data = os.path.join(ckpt_dir, "1", "data")
  assert sorted(f for f in os.listdir(data) if f.startswith("process_")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
