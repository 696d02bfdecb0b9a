#!/usr/bin/env bash
# Multi-node GPU SFT under SLURM: one process per node, each driving all of its node's GPUs.
# jax.distributed.initialize() (--distributed) reads the coordinator, process count and index
# from SLURM's environment; every process runs the same command.
#
#   sbatch launch/train_sft_slurm.sh /ckpt/Qwen2.5-VL-3B-Instruct /shared/runs/sft3b [overrides]
#
#SBATCH --job-name=streampro-sft
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
set -euo pipefail
CKPT="${1:?HF checkpoint folder}"
WORKDIR="${2:?shared work folder}"
shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Let XLA use most of each GPU's memory; keep NCCL on the fast fabric.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
srun --kill-on-bad-exit=1 .venv/bin/python launch/train_sft.py \
  --config="configs/qwen2_5_vl_3b_sft.py:${CKPT}" --workdir="${WORKDIR}" --distributed "$@"
