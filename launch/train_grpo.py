"""Stage-2 GRPO launcher (multi-grained rewards) from an SFT checkpoint.

  .venv/bin/python launch/train_sft.py --config configs/tiny_synthetic.py --workdir /tmp/tiny
  .venv/bin/python launch/train_grpo.py --config configs/tiny_synthetic_grpo.py \
      --workdir /tmp/tiny_grpo --config.init.sft_workdir=/tmp/tiny

  # Qwen2.5-VL-3B, paper settings, from an SFT run or an exported HF checkpoint folder:
  .venv/bin/python launch/train_grpo.py --config configs/qwen2_5_vl_3b_grpo.py \
      --workdir /path/to/run --config.init.sft_workdir=/path/to/sft_run
      # or --config.model.hf_checkpoint=/path/to/hf_export --config.tokenizer=/path/to/hf_export

The initial policy (also the frozen KL reference) is the newest checkpoint of --config.init.
sft_workdir (a launch/train_sft.py workdir; --config.init.sft_step picks another), else
config.model.hf_checkpoint. Writes to --workdir: checkpoints/<step>/ (orbax: train state + prompt
position), metrics.jsonl, tb/ (TensorBoard events) and the console progress (rewards, KL, clip
fraction, response rate, rollout / reward / update seconds). Re-running the same command resumes
from the newest checkpoint. See notes/grpo.md.

Multi-host: run the same command on every host. The distributed runtime is initialised from
--coordinator_address/--num_processes/--process_id, else JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, else (with --distributed) jax.distributed's auto-detection
(Cloud TPU, SLURM, Open MPI). See notes/sft.md (single host tested for GRPO; see notes/grpo.md).
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() even when nothing is configured "
    "(auto-detection on Cloud TPU / SLURM / Open MPI).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import grpo_trainer  # pylint: disable=g-import-not-at-top

  parallel.initialize_distributed(
      parallel.DistributedConfig(coordinator_address=_COORDINATOR.value,
                                 num_processes=_NUM_PROCESSES.value,
                                 process_id=_PROCESS_ID.value),
      force=_DISTRIBUTED.value)
  config = _CONFIG.value
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  logging.info("config:\n%s", config)
  workdir = _WORKDIR.value
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  grpo_trainer.train(config, workdir)


if __name__ == "__main__":
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  app.run(main)
