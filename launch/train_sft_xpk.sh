#!/usr/bin/env bash
# SFT on a TPU slice of a GKE cluster with xpk (https://github.com/AI-Hypercomputer/xpk): the
# workload runs one pod per TPU host as a JobSet, whose pods carry TPU_WORKER_HOSTNAMES and
# TPU_WORKER_ID; the launcher detects the slice from them (streampro_jax/cluster.py) and joins it
# with jax.distributed.initialize(); no address flags. --xla_preset=tpu as in train_sft_tpu_pod.sh.
#
#   CLUSTER=my-gke TPU_TYPE=v5p-64 BASE_IMAGE=... bash launch/train_sft_xpk.sh \
#       /mnt/ckpt/Qwen2.5-VL-3B-Instruct /mnt/runs/sft3b [overrides]
#
# xpk builds the workload's image from this folder on top of BASE_IMAGE, an image whose python3
# has this project's dependencies with jax[tpu] (setup.cfg's install_requires); the checkpoint
# and work folders must be one shared file system in every pod (a GCSFuse or Filestore volume).
set -euo pipefail
: "${CLUSTER:?GKE cluster made by xpk cluster create}" "${TPU_TYPE:?e.g. v5p-64}"
: "${BASE_IMAGE:?image with python3 and the dependencies}"
CKPT="${1:?HF checkpoint folder (in every pod)}"
WORKDIR="${2:?shared work folder}"
shift 2
EXTRA=""   # the overrides, quoted for the remote shell
if (($#)); then EXTRA="$(printf ' %q' "$@")"; fi
xpk workload create --cluster "${CLUSTER}" --workload "streampro-sft-$(date +%m%d-%H%M)" \
  --tpu-type="${TPU_TYPE}" --num-slices="${NUM_SLICES:-1}" \
  --base-docker-image="${BASE_IMAGE}" --command \
  "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python3 launch/train_sft.py \
   --config=configs/qwen2_5_vl_3b_sft.py:${CKPT} --workdir=${WORKDIR} \
   --xla_preset=tpu --config.mesh.fsdp=-1${EXTRA}"
