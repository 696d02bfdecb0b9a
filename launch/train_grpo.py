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
from the newest checkpoint. See docs/components.md#grpo-update-step-and-trainer.

Multi-host: run the same command on every host. The distributed runtime is initialised from
--coordinator_address/--num_processes/--process_id, else JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, else, when the environment shows a cluster (a SLURM step
with more than one task, Open MPI, a Cloud TPU slice, a Kubernetes indexed job;
streampro_jax/cluster.py), by jax.distributed.initialize() with no arguments; else the run is one
process (--distributed forces the call). --xla_preset=gpu|tpu sets the platform's XLA flags.
Recipes: docs/scale-out.md (GRPO is tested on a single host).
"""

from absl import flags

import _common  # launch/_common.py: the flags and the start-up

flags.adopt_module_key_flags(_common)


def main(argv):
  del argv
  from streampro_jax.train import grpo_trainer  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup  # pylint: disable=g-import-not-at-top

  config, workdir = _common.start("grpo")
  with setup.clean_on_early_failure(workdir):
    grpo_trainer.train(config, workdir,
                       allow_config_change=_common.ALLOW_CONFIG_CHANGE.value)


if __name__ == "__main__":
  _common.run(main)
