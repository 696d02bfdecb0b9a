"""Flags and start-up shared by launch/train_sft.py and launch/train_grpo.py.

Importing this module defines the launchers' flags (--config, --workdir, --coordinator_address,
--num_processes, --process_id, --distributed).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() even when nothing is configured "
    "(auto-detection on Cloud TPU / SLURM / Open MPI).")
ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose config.json differs from --config "
    "(the differences are logged; the old file is kept as config.previous.<n>.json). Without "
    "it such a rerun stops and names every differing key.")
flags.mark_flags_as_required(["config", "workdir"])


def start(trainer: str):
  """Initialises the distributed runtime, logs the devices and the config, checks the config
  (every key read by ``trainer``: "sft" | "grpo"; the workdir's config.json, if any, the same
  unless --allow_config_change) and (process 0) writes ``<workdir>/config.json``. Returns
  (config, workdir); exits with status 2 and the differences on a config error."""
  import jax  # pylint: disable=g-import-not-at-top
  from streampro_jax import parallel  # pylint: disable=g-import-not-at-top

  parallel.initialize_distributed(
      parallel.DistributedConfig(coordinator_address=COORDINATOR.value,
                                 num_processes=NUM_PROCESSES.value,
                                 process_id=PROCESS_ID.value),
      force=DISTRIBUTED.value)
  from streampro_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ckpt_lib.quiet_orbax_info()
  config = CONFIG.value
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  logging.info("config:\n%s", config)
  workdir = WORKDIR.value
  from streampro_jax.train import config_check  # pylint: disable=g-import-not-at-top
  try:
    config_check.check_config(config, trainer)
    config_check.check_workdir_config(workdir, config, allow_change=ALLOW_CONFIG_CHANGE.value,
                                      write=jax.process_index() == 0)
  except config_check.ConfigError as err:
    logging.error("%s", err)
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  return config, workdir


def run(main):
  """``app.run(main)`` with the hub kept offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE default
  to 1)."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  app.run(main)
