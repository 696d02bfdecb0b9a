"""Runs a group of cooperating worker processes (jax.distributed on 127.0.0.1) for the
multi-process tests: the worker scripts see only this repository on PYTHONPATH and no fake-device
XLA flag; a worker that hangs kills the whole group."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_workers(argvs: list[list[str]], *, timeout: float,
                envs: list[dict[str, str]] | None = None) -> list[str]:
  """Starts `python <argv...>` for every argv at once, waits for all (timeout seconds each) and
  fails with the tail of the log of the first worker that exited non-zero.

  envs: per worker, variables added to its environment (e.g. a cluster's variables).
  Returns each worker's log (stdout and stderr together)."""
  base = dict(os.environ)
  base.pop("XLA_FLAGS", None)
  base["PYTHONPATH"] = ROOT + os.pathsep + base.get("PYTHONPATH", "")
  procs = [subprocess.Popen([sys.executable, *argv], env={**base, **(envs[i] if envs else {})},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i, argv in enumerate(argvs)]
  logs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    logs.append(out.decode(errors="replace"))
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return logs
