#!/usr/bin/env bash
# Multi-node GPU SFT under SLURM: one process per GPU (8 tasks on each 8-GPU node).
#
#   sbatch launch/train_sft_slurm.sh /ckpt/Qwen2.5-VL-3B-Instruct /shared/runs/sft3b [overrides]
#
# No address flags: srun starts every task with SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID and SLURM_STEP_NODELIST, from which the launcher detects the job
# (streampro_jax/cluster.py) and jax.distributed.initialize() finds the coordinator (the step's
# first node, port 61440 + SLURM_JOB_ID % 4096; set JAX_COORDINATOR_PORT to choose another) and
# gives each process the GPU numbered SLURM_LOCALID. So every task must see all 8 GPUs of its
# node: ask for --gpus-per-node, not --gpus-per-task (which would hide the others).
# --xla_preset=gpu: latency-hiding scheduler and pipelined FSDP collectives (xla_presets.py).
#
#SBATCH --job-name=streampro-sft
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --exclusive
set -euo pipefail
CKPT="${1:?HF checkpoint folder}"
WORKDIR="${2:?shared work folder}"
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Let XLA use most of each GPU's memory.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
srun --kill-on-bad-exit=1 .venv/bin/python launch/train_sft.py \
  --config="configs/qwen2_5_vl_3b_sft.py:${CKPT}" --workdir="${WORKDIR}" \
  --xla_preset=gpu --config.mesh.fsdp=-1 "$@"
