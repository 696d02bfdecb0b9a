"""Which cluster this process was started in, read from its environment (no flags).

``detect_cluster()`` answers whether the environment shows a multi-process job of one of the
kinds ``jax.distributed.initialize()`` can join by itself, with no addresses given (the
detection of jax 0.10.2's ``jax/_src/clusters/``, each rule below names the variables that
module reads):

* ``slurm``: a SLURM job step with more than one task: ``SLURM_JOB_ID``,
  ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS`` > 1, ``SLURM_PROCID``, ``SLURM_LOCALID``
  (``slurm_cluster.py``; the coordinator is the first node of the step on port
  ``61440 + SLURM_JOB_ID % 4096``, or ``JAX_COORDINATOR_PORT``). A batch script outside
  ``srun`` has no step node list and stays single-process;
* ``ompi``: an Open MPI world of more than one process: ``OMPI_COMM_WORLD_SIZE`` > 1,
  ``OMPI_COMM_WORLD_RANK`` and ``OMPI_MCA_orte_hnp_uri`` (``ompi_cluster.py``; the coordinator
  is the launcher's address from that URI). Open MPI 5 (PRRTE) no longer sets the URI: such a
  world is reported with ``error`` set, since jax cannot find the coordinator there;
* ``tpu``: a Cloud TPU slice of more than one host, on a VM that has TPU chips:
  ``TPU_WORKER_HOSTNAMES`` or ``TPU_PROCESS_ADDRESSES`` listing more than one worker (GKE and
  xpk), or ``MEGASCALE_NUM_SLICES`` > 1 (multislice); on a plain Cloud TPU VM (``gcloud compute
  tpus tpu-vm ssh --worker=all``) the worker list is the metadata server's
  ``worker-network-endpoints`` (``cloud_tpu_cluster.py``; asked only where TPU chips exist);
* ``k8s``: a Kubernetes indexed job: ``KUBERNETES_SERVICE_HOST`` and ``JOB_COMPLETION_INDEX``
  (``k8s_cluster.py``; jax reads the process count from the Kubernetes API with the
  ``kubernetes`` package, ``pip install "jax[k8s]"``; without it ``error`` says so).

Anything else is a single-process run (``None``).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import urllib.request
from collections.abc import Mapping

__all__ = ["ClusterError", "detect_cluster", "Cluster"]

# The ephemeral port range jax's SLURM detection maps a job id into (slurm_cluster.py).
_SLURM_PORT_BASE = 65535 - 2**12 + 1
_TPU_METADATA_URL = ("http://metadata.google.internal/computeMetadata/v1/instance/attributes/"
                    "worker-network-endpoints")


class ClusterError(RuntimeError):
  """A cluster is detected that jax.distributed cannot join by itself (the reason named)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
  """A multi-process job seen in the environment.

  Attributes:
    kind: "slurm" | "ompi" | "tpu" | "k8s".
    num_processes: the job's process count where the environment states it (None for k8s, whose
      count jax reads from the Kubernetes API).
    process_id: this process's index where the environment states it.
    evidence: the variables (name=value) that showed the cluster, for the log.
    error: why jax's own detection cannot join this cluster (a missing package or variable);
      "" when it can.
  """
  kind: str
  num_processes: int | None
  process_id: int | None
  evidence: str
  error: str = ""

  def describe(self) -> str:
    n = "?" if self.num_processes is None else self.num_processes
    i = "?" if self.process_id is None else self.process_id
    return f"{self.kind} cluster, process {i} of {n} ({self.evidence})"


def _int(env: Mapping[str, str], name: str) -> int | None:
  try:
    return int(env[name])
  except (KeyError, ValueError):
    return None


def _evidence(env: Mapping[str, str], names) -> str:
  return ", ".join(f"{n}={env[n]}" for n in names if n in env)


def _tpu_chip_count() -> int:
  """TPU chips on this host: the accel (v4 and older) or vfio (v5e and newer) device files that
  jax's hardware_utils counts."""
  return len(glob.glob("/dev/accel[0-9]*")) + len(glob.glob("/dev/vfio/[0-9]*"))


def _gce_tpu_workers(timeout_s: float = 2.0) -> list[str]:
  """The worker list of this Cloud TPU VM's slice from the metadata server ([] if unreachable)."""
  request = urllib.request.Request(_TPU_METADATA_URL, headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
      text = response.read().decode()
  except OSError:
    return []
  return [w for w in text.split(",") if w]


def _slurm(env: Mapping[str, str]) -> Cluster | None:
  names = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
           "SLURM_LOCALID")
  if not all(n in env for n in names) or (_int(env, "SLURM_NTASKS") or 0) <= 1:
    return None
  return Cluster("slurm", _int(env, "SLURM_NTASKS"), _int(env, "SLURM_PROCID"),
                 _evidence(env, names + ("JAX_COORDINATOR_PORT",)))


def _ompi(env: Mapping[str, str]) -> Cluster | None:
  size = _int(env, "OMPI_COMM_WORLD_SIZE") or 0
  if size <= 1:
    return None
  error = "" if "OMPI_MCA_orte_hnp_uri" in env else (
      "Open MPI sets no OMPI_MCA_orte_hnp_uri (Open MPI 5 / PRRTE), from which jax reads the "
      "coordinator: give --coordinator_address (or JAX_COORDINATOR_ADDRESS) as well")
  return Cluster("ompi", size, _int(env, "OMPI_COMM_WORLD_RANK"),
                 _evidence(env, ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                                 "OMPI_MCA_orte_hnp_uri")), error)


def _tpu(env: Mapping[str, str], tpu_chips: int) -> Cluster | None:
  if tpu_chips == 0:
    return None
  listed = env.get("TPU_PROCESS_ADDRESSES", env.get("TPU_WORKER_HOSTNAMES"))
  slices = _int(env, "MEGASCALE_NUM_SLICES") or 1
  names = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID",
           "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID")
  if listed is not None:
    workers = [w for w in listed.split(",") if w]
    evidence = _evidence(env, names)
  elif "TPU_SKIP_MDS_QUERY" in env:
    return None
  else:
    workers = _gce_tpu_workers()
    evidence = f"metadata worker-network-endpoints lists {len(workers)} worker(s)"
  per_slice = max(len(workers), 1)
  if per_slice * slices <= 1:
    return None
  in_slice = _int(env, "TPU_WORKER_ID")
  pid = None if in_slice is None else in_slice + (_int(env, "MEGASCALE_SLICE_ID") or 0) * per_slice
  return Cluster("tpu", per_slice * slices, pid, f"{tpu_chips} TPU chip(s); {evidence}")


def _k8s(env: Mapping[str, str]) -> Cluster | None:
  if "KUBERNETES_SERVICE_HOST" not in env or "JOB_COMPLETION_INDEX" not in env:
    return None
  error = "" if importlib.util.find_spec("kubernetes") is not None else (
      "jax reads a Kubernetes job's process count from its API with the `kubernetes` package, "
      "which is not installed (pip install \"jax[k8s]\")")
  return Cluster("k8s", None, _int(env, "JOB_COMPLETION_INDEX"),
                 _evidence(env, ("KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX")), error)


def detect_cluster(environ: Mapping[str, str] | None = None, *,
                   tpu_chips: int | None = None) -> Cluster | None:
  """The multi-process job this process belongs to, or None for a single-process run.

  Args:
    environ: the environment to read (default os.environ).
    tpu_chips: TPU chips on this host (default: counted by _tpu_chip_count()); the Cloud TPU rule
      applies only where there are some, as jax's does.

  Returns:
    A Cluster (the first match in jax's order: Open MPI, SLURM, Cloud TPU, Kubernetes), or None.
  """
  env = os.environ if environ is None else environ
  chips = _tpu_chip_count() if tpu_chips is None else tpu_chips
  for rule in (_ompi, _slurm, lambda e: _tpu(e, chips), _k8s):
    found = rule(env)
    if found is not None:
      return found
  return None


def _slurm_coordinator_port(job_id: int) -> int:
  """The coordinator port jax derives from a SLURM job id (slurm_cluster.py)."""
  return _SLURM_PORT_BASE + int(job_id) % 2**12
