#!/usr/bin/env bash
# SFT on a Cloud TPU pod slice (a multi-host TPU VM, e.g. v5p-64), started from a workstation
# with gcloud: the same command on every worker (--worker=all). Each worker's launcher detects
# the slice (TPU chips + the metadata server's worker list, streampro_jax/cluster.py) and joins
# it with jax.distributed.initialize(); no address flags. --xla_preset=tpu: asynchronous
# collective fusion in LIBTPU_INIT_ARGS (streampro_jax/xla_presets.py).
#
#   TPU=my-v5p-64 ZONE=us-east5-a bash launch/train_sft_tpu_pod.sh \
#       /mnt/ckpt/Qwen2.5-VL-3B-Instruct /mnt/runs/sft3b [overrides]
#
# The repository is at ~/streampro on every worker (launch/setup_env.sh run there; e.g.
# `gcloud compute tpus tpu-vm scp --worker=all --recurse . $TPU:streampro`). The checkpoint and
# work folders must be one shared file system on all workers (Filestore or a GCSFuse mount):
# checkpoints are written by all hosts together.
set -euo pipefail
: "${TPU:?name of the TPU VM}" "${ZONE:?its zone}"
CKPT="${1:?HF checkpoint folder (on every worker)}"
WORKDIR="${2:?shared work folder}"
shift 2
EXTRA=""   # the overrides, quoted for the remote shell
if (($#)); then EXTRA="$(printf ' %q' "$@")"; fi
gcloud compute tpus tpu-vm ssh "${TPU}" --zone "${ZONE}" --worker=all --command \
  "cd ~/streampro && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python launch/train_sft.py \
   --config=configs/qwen2_5_vl_3b_sft.py:${CKPT} --workdir=${WORKDIR} \
   --xla_preset=tpu --config.mesh.fsdp=-1${EXTRA}"
