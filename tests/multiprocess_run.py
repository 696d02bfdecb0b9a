"""Runs a group of cooperating worker processes (jax.distributed on 127.0.0.1) for the
multi-process tests: the worker scripts see only this repository on PYTHONPATH and no fake-device
XLA flag; a worker that hangs kills the whole group."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_workers(argvs: list[list[str]], *, timeout: float) -> None:
  """Starts `python <argv...>` for every argv at once, waits for all (timeout seconds each) and
  fails with the tail of the log of the first worker that exited non-zero."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  procs = [subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT) for argv in argvs]
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
