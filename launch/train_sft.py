"""Stage-1 SFT launcher (CB-Stream / CE / focal loss) on one host or a multi-host slice.

  .venv/bin/python launch/train_sft.py --config configs/tiny_synthetic.py --workdir /tmp/tiny \
      --config.loss.kind=ce --config.mesh.fsdp=2

Writes to --workdir: checkpoints/<step>/ (orbax: train state + data iterator state),
metrics.jsonl, tb/ (TensorBoard events) and the console progress (step, loss, steps/s, ETA).
Re-running the same command resumes from the newest checkpoint.

Multi-host: run the same command on every host. The distributed runtime is initialised from
--coordinator_address/--num_processes/--process_id, else JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, else, when the environment shows a cluster (a SLURM step
with more than one task, Open MPI, a Cloud TPU slice, a Kubernetes indexed job;
streampro_jax/cluster.py), by jax.distributed.initialize() with no arguments; else the run is one
process (--distributed forces the call). --xla_preset=gpu|tpu sets the platform's XLA flags.
Recipes: docs/scale-out.md.
"""

from absl import flags

import _common  # launch/_common.py: the flags and the start-up

flags.adopt_module_key_flags(_common)


def main(argv):
  del argv
  from streampro_jax.train import sft  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup  # pylint: disable=g-import-not-at-top

  config, workdir = _common.start("sft")
  with setup.clean_on_early_failure(workdir):
    sft.train(config, workdir, allow_config_change=_common.ALLOW_CONFIG_CHANGE.value)


if __name__ == "__main__":
  _common.run(main)
