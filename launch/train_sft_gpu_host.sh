#!/usr/bin/env bash
# SFT on one host with 8 GPUs: one process drives all of them (no cluster, no addresses); the
# mesh is FSDP over the 8 GPUs. --xla_preset=gpu: latency-hiding scheduler and pipelined FSDP
# collectives (streampro_jax/xla_presets.py).
#
#   bash launch/train_sft_gpu_host.sh /ckpt/Qwen2.5-VL-3B-Instruct /runs/sft3b [overrides]
set -euo pipefail
CKPT="${1:?HF checkpoint folder}"
WORKDIR="${2:?work folder}"
shift 2
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
exec .venv/bin/python launch/train_sft.py \
  --config="configs/qwen2_5_vl_3b_sft.py:${CKPT}" --workdir="${WORKDIR}" \
  --xla_preset=gpu --config.mesh.fsdp=-1 "$@"
