"""Compile a training config's steps for a TPU slice on this machine (no TPU needed).

  .venv/bin/python launch/aot_compile.py --config=configs/qwen2_5_vl_3b_sft.py \
      --topology=v5e:2x4 --stage=sft --config.global_batch_size=8 --config.num_microbatches=1 \
      --config.data.seq_len=7680 --config.data.max_turns=96 --config.model.remat_policy=full \
      --json=/tmp/aot.jsonl
  # other slices: --topology=v5p:2x2x1 | v6e:4x4 | v5e:16x16 [--num_slices=2]
  # --stage=sft | grpo | decode (the sampler's prefill and decode steps) | all

Builds the abstract TrainState, batch and KV cache of the config (jax.eval_shape: no weights, no
data files), places them with the config's mesh and sharding rules on the slice's devices
(libtpu's compile-only backend), compiles the real jitted steps (streampro_jax/train/aot.py) and
prints, per stage: the mesh, per-chip bytes (arguments, outputs, temporaries, generated code,
total) against the chip's HBM, model FLOPs per step and per chip, the compiler's FLOPs per chip
and the compile time. --json appends one JSON line per stage (with the commit, date, machine,
load average, versions and this command). Exit status 1 when a stage does not fit, with by how
much and what to change. These are compile-time figures, not step times (docs/scale.md).

Needs libtpu (the test extra of setup.cfg, or pip install "jax[tpu]==<the pinned jax>"). A
model section with an hf_checkpoint folder that is absent here compiles the published
architecture of its family (Qwen2.5-VL-3B-Instruct, Qwen3-VL-4B-Instruct).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

import _cli  # launch/_cli.py: one-line usage errors

CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                         lock_config=False)
TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:2x2, v5p:2x2x1, v6e:4x4.")
NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices (multi-slice over DCN).")
STAGE = flags.DEFINE_enum("stage", "all", ["sft", "grpo", "decode", "all"],
                          "sft: the SFT update; grpo: the GRPO update (policy + reference); "
                          "decode: the sampler's prefill and decode steps; all: every one.")
JSON = flags.DEFINE_string("json", "", "Append one JSON line per stage to this file.")
flags.mark_flags_as_required(["config", "topology"])


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)),
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def _print(report) -> None:
  g = 2 ** 30
  b = report.per_chip_bytes
  parts = ", ".join(f"{k} {v / g:.2f}" for k, v in b.items())
  comp = report.compiler_flops_per_chip
  print(f"[{report.stage}] {report.topology} x{report.num_slices}: {report.chips} chips, mesh "
        f"{report.mesh}; per chip (GiB): {parts}; HBM {report.hbm_bytes / g:.2f} GiB -> "
        f"{'fits' if report.fits else 'DOES NOT FIT'}; model FLOPs {report.model_flops:.3e} "
        f"({report.flops_per_chip:.3e} per chip), compiler FLOPs per chip "
        f"{'n/a' if comp is None else f'{comp:.3e}'}; compile {report.compile_s:.1f} s; "
        f"shapes {report.shapes}", flush=True)


def main(argv):
  del argv
  from streampro_jax.train import aot  # pylint: disable=g-import-not-at-top
  aot.quiet_libtpu_env()
  import jax  # pylint: disable=g-import-not-at-top

  config = CONFIG.value
  try:
    aot.generation(TOPOLOGY.value)
  except ValueError as err:
    _cli.fail(f"--topology: {err}")
  load_before = os.getloadavg()
  reports = aot.compile_config(config, TOPOLOGY.value, aot.STAGE_GROUPS[STAGE.value],
                               NUM_SLICES.value)
  load_after = os.getloadavg()
  versions = dict(jax=jax.__version__, python=sys.version.split()[0])
  meta = dict(commit=_commit(), date=datetime.datetime.now(datetime.UTC).isoformat(),
              machine=f"{platform.node()} ({os.cpu_count()} CPUs)", load_before=load_before,
              load_after=load_after, versions=versions, command=" ".join(sys.argv),
              hbm_source=aot.HBM_SOURCE)
  for r in reports:
    _print(r)
    if JSON.value:
      with open(JSON.value, "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(r.as_dict(), **meta)) + "\n")
  bad = [r for r in reports if not r.fits]
  for r in bad:
    print(f"error: {r.advice()}", file=sys.stderr, flush=True)
  if bad:
    sys.exit(1)


if __name__ == "__main__":
  _cli.run(main)
