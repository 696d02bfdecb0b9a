"""StreamPro stage 2 (GRPO, multi-grained rewards) on the Qwen3-VL-4B SFT model.

  .venv/bin/python launch/train_grpo.py \
      --config configs/qwen3_vl_4b_grpo.py:/checkpoints/Qwen3-VL-4B-Instruct \
      --config.init.sft_workdir=/runs/sft4b --config.data.jsonl=/data/grpo_train.jsonl \
      --config.reward.judge.base_url=http://judge:8000/v1 --workdir /runs/grpo4b

Same settings as configs/qwen2_5_vl_3b_grpo.py (paper, docs/method.md section 3: G 8, temperature
1.0, lr 1e-6, global batch 16, tau 8, reward weights 0.1/0.45/0.45; epsilon 0.2, beta_KL 0.04 k3),
with Qwen3-VL's frozen set and frames as in configs/qwen3_vl_4b_sft.py. Paper: StreamPro-Bench
W-Avg 24.7 (SFT) -> 41.5 (GRPO).
"""

from configs import qwen2_5_vl_3b_grpo, qwen3_vl_4b_sft


def get_config(hf_checkpoint: str = "/checkpoints/Qwen3-VL-4B-Instruct"):
  c = qwen2_5_vl_3b_grpo.get_config(hf_checkpoint)
  c.model.family = "qwen3_vl"
  c.optim.frozen = qwen3_vl_4b_sft.FROZEN_VISION_QWEN3
  c.data.frame_height = c.data.frame_width = 256
  return c
