"""StreamPro SFT of Qwen2.5-VL-3B with the CB-Stream loss (paper settings,
docs/method.md section 2).

Paper: lr 1e-5, global batch 512, 1 epoch, CB-Stream beta 0.9999, lambda_text 2, vision tower
frozen, projector (patch merger) + LLM trained; 64 H100 for 24 h.

  python launch/train_sft.py --config configs/qwen2_5_vl_3b_sft.py:/ckpt/Qwen2.5-VL-3B-Instruct \
      --workdir /runs/sft3b --config.data.tfds_dir=/data/tfds/jsonl_videos/streampro_sft/1.0.0
  # ablations: --config.loss.kind=ce | focal ; --config.loss.text_weight=1.0
  # annotation JSONL instead of TFDS (videos decoded on demand, paths relative to the file):
  #   --config.data.source=jsonl --config.data.jsonl=/data/streampro_sft.jsonl

data.tfds_dir (required; empty in this file) is the prepared builder directory that
`launch/import_data.py --array_record_dir=/data/tfds --name=streampro_sft` writes
(<array_record_dir>/jsonl_videos/<name>/1.0.0).

The config string after ':' is the Hugging Face checkpoint folder (config.json, safetensors and
tokenizer files; the decision tokens are added to the tokenizer, their embedding rows
re-initialised). [choice] marks settings the paper does not give.
"""

from configs import common


def get_config(hf_checkpoint: str = "/checkpoints/Qwen2.5-VL-3B-Instruct"):
  c = common.base_config()
  c.seed = 0
  c.global_batch_size = 512
  c.num_microbatches = 8       # [choice] 512 rows / 8 = 64 per micro-batch (1 per GPU on 64)
  c.num_epochs = 1.0
  c.log_every_steps = 10
  c.tokenizer = hf_checkpoint
  # Scanned layer stacks, cuDNN attention on GPU; remat keeping the projection/MLP matmul outputs
  # and the attention output and softmax statistics ('dots_attn', the policy of MaxText's best
  # Hopper figure), the GPU XLA preset (latency-hiding scheduler): [choice] pending a GPU
  # measurement (benchmarks/gpu_suite.py; 'dots_no_batch' without the preset measured 0.94 s per
  # paper-shape step on one H200, docs/benchmarks.md#accelerator-training-h200).
  c.xla_preset = "gpu"
  c.model = common.model_config(hf_checkpoint=hf_checkpoint, dtype="bfloat16", remat=True,
                                remat_policy="dots_attn", scan_layers=True,
                                attention_impl="jax")
  # [choice] FSDP over all devices (3B params + Adam states sharded 64 ways).
  c.mesh = common.mesh_config(data=1, fsdp=-1, tensor=1)
  # [choice] 224 x 224 frames (16 x 16 patches -> 64 visual tokens per turn), at most 120 turns
  # (2 minutes) and 12288 tokens per row; longer trajectories are cut by whole turns.
  c.data = common.data_config(
      source="tfds", tfds_dir="", split="train",  # --config.data.tfds_dir=... (required)
      seq_len=12288, max_turns=120, frame_size=224, num_threads=16, prefetch_buffer_size=64)
  c.optim = common.optim_config(lr=1e-5, warmup_ratio=0.03, weight_decay=0.0,
                                grad_clip_norm=1.0)  # [choice] warmup 3%, cosine to 0, clip 1
  c.loss = common.loss_config("cb_stream", beta=0.9999, text_weight=2.0,
                              chunk_size=16384)  # chunked vocabulary (V = 151936)
  c.checkpoint = common.checkpoint_config(every_steps=100, keep=3)
  return c
