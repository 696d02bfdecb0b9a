"""StreamPro stage 1 (SFT, CB-Stream loss) on Qwen3-VL-4B-Instruct: the paper's headline model.

  .venv/bin/python launch/train_sft.py \
      --config configs/qwen3_vl_4b_sft.py:/checkpoints/Qwen3-VL-4B-Instruct --workdir /runs/sft4b

Same settings as configs/qwen2_5_vl_3b_sft.py (paper, docs/method.md section 2: lr 1e-5, global
batch 512, 1 epoch, CB-Stream beta 0.9999, lambda_text 2; vision encoder frozen, projector and LLM
trained), with the Qwen3-VL differences:
- [choice] Qwen3-VL's projector is the patch merger AND the DeepStack mergers
  (visual/deepstack_merger_list_*): both are trained; the vision blocks, the patch embedding and
  the learned position table are frozen.
- [choice] frames of 256 x 256 (16 x 16 patches of 16 px -> 64 visual tokens per turn, as the
  3B config's 224 px with patch 14); the video processor settings (patch 16, mean/std 0.5) come
  from the checkpoint's config through the backbone registry (models.video_processor_config).
- The backbone is chosen from config.json's model_type; model.family must agree with it.
"""

from configs import qwen2_5_vl_3b_sft

# Vision tower frozen; the patch merger and the DeepStack mergers (the projector) are trained.
FROZEN_VISION_QWEN3 = r"^visual/(?!merger/|deepstack_merger_list_\d+/)"


def get_config(hf_checkpoint: str = "/checkpoints/Qwen3-VL-4B-Instruct"):
  c = qwen2_5_vl_3b_sft.get_config(hf_checkpoint)
  c.model.family = "qwen3_vl"
  c.optim.frozen = FROZEN_VISION_QWEN3
  c.data.frame_height = c.data.frame_width = 256
  return c
