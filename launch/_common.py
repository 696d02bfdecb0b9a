"""Flags and start-up shared by launch/train_sft.py and launch/train_grpo.py.

Importing this module defines the launchers' flags (--config, --workdir, --coordinator_address,
--num_processes, --process_id, --distributed, --xla_preset).

Start-up joins the cluster the process was started in: addresses given (flags or JAX_*
variables) are passed to jax.distributed.initialize; with none, a SLURM job step with more than
one task, an Open MPI world, a Cloud TPU slice or a Kubernetes indexed job
(streampro_jax/cluster.py) is joined by jax.distributed.initialize() with no arguments; anything
else runs as one process. The log says which (lines starting "distributed:").
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

import _cli  # launch/_cli.py: one-line usage errors

# accept_new_attributes: a key given on the command line that the config file does not hold
# (--config.optim.lr_typo=1, --config.grpo.beta_kl) reaches train/config_check, which
# names it in one line (ml_collections would stop with a traceback instead).
CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                         lock_config=False, accept_new_attributes=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() even when no cluster is detected "
    "(a cluster that streampro_jax/cluster.py detects is joined without this flag).")
XLA_PRESET = flags.DEFINE_enum(
    "xla_preset", "none", ["none", "gpu", "tpu"], "Named XLA compiler flags for the platform "
    "(when not given: the config's `xla_preset`) "
    "(streampro_jax/xla_presets.py: gpu = latency-hiding scheduler and pipelined FSDP "
    "collectives in XLA_FLAGS; tpu = async collective fusion in LIBTPU_INIT_ARGS), set before "
    "JAX starts; a flag already in the environment keeps its value.")
ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir whose config.json differs from --config "
    "(the differences are logged; the old file is kept as config.previous.<n>.json). Without "
    "it such a rerun stops and names every differing key.")
flags.mark_flags_as_required(["config", "workdir"])


def start(trainer: str):
  """Initialises the distributed runtime, logs the devices and the config, and checks before
  anything is built or written: every key read by ``trainer`` ("sft" | "grpo"), every file and
  folder the config names (config_check.check_inputs), and the workdir's config.json, if any
  (the same unless --allow_config_change). Returns (config, workdir); a problem is one line
  ``error: ...`` and exit status 2. The trainer writes ``<workdir>/config.json`` once its data
  and model are built (pass it ALLOW_CONFIG_CHANGE.value)."""
  from streampro_jax import xla_presets  # pylint: disable=g-import-not-at-top
  preset = (XLA_PRESET.value if flags.FLAGS["xla_preset"].present
            else CONFIG.value.get("xla_preset", "none"))
  preset_vars = xla_presets.apply_preset(preset)   # before JAX starts its backend
  import jax  # pylint: disable=g-import-not-at-top
  from streampro_jax import cluster, parallel  # pylint: disable=g-import-not-at-top

  if preset_vars:
    logging.info("--xla_preset=%s: %s", preset,
                 "; ".join(f"{k}={v}" for k, v in sorted(preset_vars.items())))
  config = CONFIG.value
  config.lock()   # parsed unlocked (accept_new_attributes); read-only from here
  workdir = WORKDIR.value
  from streampro_jax.train import config_check  # pylint: disable=g-import-not-at-top
  try:
    config_check.build(config, trainer)
    config_check.check_inputs(config, trainer)
    config_check.check_workdir_config(workdir, config, allow_change=ALLOW_CONFIG_CHANGE.value,
                                      write=False)
  except config_check.ConfigError as err:
    _cli.fail(str(err))
  try:
    parallel.initialize_distributed(
        parallel.DistributedConfig(coordinator_address=COORDINATOR.value,
                                   num_processes=NUM_PROCESSES.value,
                                   process_id=PROCESS_ID.value),
        force=DISTRIBUTED.value)
  except cluster.ClusterError as err:
    _cli.fail(str(err))
  from streampro_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ckpt_lib.quiet_orbax_info()
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  logging.info("config:\n%s", config)
  return config, workdir


def run(main):
  """``_cli.run(main)``: app.run with one-line usage errors (exit 2) and the hub kept offline."""
  _cli.run(main)
