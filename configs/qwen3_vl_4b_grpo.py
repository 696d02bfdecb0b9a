"""StreamPro stage 2 (GRPO, multi-grained rewards) on the Qwen3-VL-4B SFT model: paper settings.

  .venv/bin/python launch/train_grpo.py --config configs/qwen3_vl_4b_grpo.py \
      --config.model.hf_checkpoint=/path/to/sft_export --workdir /path/to/run

Paper (SPEC section 3): G = 8 rollouts per sample at temperature 1.0, lr 1e-6, global batch 16,
1 epoch; R = 0.1 R_fmt + 0.45 R_turn + 0.45 R_traj with tau = 8 s for every task. Not given by the
paper, the defaults of SPEC: clip epsilon 0.2, KL beta 0.04 with the k3 estimator, group
advantage (r - mean) / (std (ddof 1) + 1e-6), loss = mean over sequences of the per-sequence
token mean. Paper result: StreamPro-Bench W-Avg 24.7 (SFT) -> 41.5 (GRPO) for the 4B model.
[choice] Frozen parameters, turn resolution and the 200-turn window as in qwen3_vl_4b_sft.py;
responses up to 64 tokens per turn.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import qwen3_vl_4b_sft  # noqa: E402  pylint: disable=g-import-not-at-top


def get_config():
  c = common.base_config()
  c.seed = 0
  c.global_batch_size = 16      # training samples per step (each with G rollouts)
  c.num_microbatches = 1
  c.num_epochs = 1.0
  c.log_every_steps = 1
  c.tokenizer = ""
  c.model = common.model_config(hf_checkpoint="", dtype="bfloat16", remat=True,
                                attention_impl="jax")
  c.model.family = "qwen3_vl"
  c.model.window_turns = 200
  c.model.processor = qwen3_vl_4b_sft.PROCESSOR
  c.mesh = common.mesh_config(data=-1, fsdp=8, tensor=1)
  c.data = common.data_config(source="jsonl", seq_len=16384, max_turns=200, frame_size=256)
  c.optim = common.optim_config(lr=1e-6, warmup_ratio=0.0, weight_decay=0.0, grad_clip_norm=1.0,
                                frozen=qwen3_vl_4b_sft.FROZEN_VISION_QWEN3)
  c.grpo = ml_collections.ConfigDict(dict(
      group_size=8, temperature=1.0, top_p=1.0, max_response_tokens=64,
      epsilon=0.2, beta_kl=0.04, kl_estimator="k3", adv_eps=1e-6, adv_ddof=1,
      aggregation="sequence-mean-token-mean"))
  c.reward = ml_collections.ConfigDict(dict(
      weights=(0.1, 0.45, 0.45), tau=8.0, judge="exact"))
  c.checkpoint = common.checkpoint_config(every_steps=50, keep=3)
  return c
