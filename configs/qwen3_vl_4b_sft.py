"""StreamPro stage 1 (SFT, CB-Stream loss) on Qwen3-VL-4B-Instruct: the paper's settings.

  .venv/bin/python launch/train_sft.py --config configs/qwen3_vl_4b_sft.py \
      --config.model.hf_checkpoint=/path/to/Qwen3-VL-4B-Instruct --workdir /path/to/run

Paper (SPEC section 2): lr 1e-5, global batch 512, 1 epoch, CB-Stream loss with beta = 0.9999
and lambda_text = 2.0; vision encoder frozen, projector and LLM trained; 64 H100.
[choice] Qwen3-VL's projector is the patch merger AND the DeepStack mergers
(visual/deepstack_merger_list_*): both are trained, the vision blocks, patch embedding and
position table are frozen. [choice] Each turn is 2 frames resized to 256 x 256 (16 x 16 patches of
16 px -> 64 visual tokens per turn), rows of 16384 tokens covering up to 200 turns (the sliding
window of SPEC section 1); bf16 compute, fp32 master weights, remat, FSDP over 8 devices per
model replica.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # noqa: E402  pylint: disable=g-import-not-at-top

# Vision tower frozen; the patch merger and the DeepStack mergers (the projector) are trained.
FROZEN_VISION_QWEN3 = r"^visual/(?!merger/|deepstack_merger_list_\d+/)"

# Qwen3-VL video processor settings for one streaming turn (processing_qwen3).
PROCESSOR = dict(patch_size=16, temporal_patch_size=2, merge_size=2,
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                 min_pixels=2 * 64 * 32 * 32, max_pixels=2 * 64 * 32 * 32)


def get_config():
  c = common.base_config()
  c.seed = 0
  c.global_batch_size = 512
  c.num_microbatches = 8
  c.num_epochs = 1.0
  c.log_every_steps = 10
  c.tokenizer = ""  # the checkpoint folder's tokenizer; set with --config.tokenizer=
  c.model = common.model_config(hf_checkpoint="", dtype="bfloat16", remat=True,
                                attention_impl="jax")
  c.model.family = "qwen3_vl"
  c.model.window_turns = 200
  c.model.processor = PROCESSOR
  c.mesh = common.mesh_config(data=-1, fsdp=8, tensor=1)
  c.data = common.data_config(source="jsonl", seq_len=16384, max_turns=200, frame_size=256)
  c.optim = common.optim_config(lr=1e-5, warmup_ratio=0.03, weight_decay=0.0,
                                grad_clip_norm=1.0, frozen=FROZEN_VISION_QWEN3)
  c.loss = common.loss_config("cb_stream", beta=0.9999, text_weight=2.0, chunk_size=8192)
  c.checkpoint = common.checkpoint_config(every_steps=200, keep=3)
  return c
