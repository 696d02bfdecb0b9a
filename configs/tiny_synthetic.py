"""Tiny SFT run on SynthStream: a random Qwen2.5-VL-architecture model that trains in a few
minutes on a CPU.

  .venv/bin/python launch/train_sft.py --config configs/tiny_synthetic.py --workdir /tmp/tiny
  # overrides: --config.loss.kind=focal --config.total_steps=20 --config.mesh.fsdp=2

Model: 2 decoder layers of width 64 (GQA 4/2 heads), 2 vision blocks of width 32, patch 4,
vocabulary = the SynthStream tokenizer's (rounded up to 64). Data: 128 SynthStream videos of
12 to 16 s at 32 px, each turn resized to 16 x 16 (4 x 4 patches -> 4 visual tokens per turn),
rows of 640 tokens.
"""

from configs import common


def get_config():
  c = common.base_config()
  c.seed = 0
  c.global_batch_size = 8
  c.num_microbatches = 1
  c.num_epochs = 2.0           # 128 trajectories x 2 / 8 = 32 steps
  c.log_every_steps = 4
  c.tokenizer = "synthetic"
  c.model = common.model_config(
      dtype="float32", attention_impl="xla",
      tiny_text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2),
      tiny_vision=dict(depth=2, hidden_size=32, fullatt_block_indexes=(1,)))
  c.mesh = common.mesh_config(data=-1, fsdp=1, tensor=1)
  c.data = common.data_config(
      source="synth", seq_len=768, max_turns=16, frame_size=16, num_threads=2,
      num_videos=128, split="train", synth_seed=0,
      synth=dict(resolution=32, min_duration=12, max_duration=16, difficulty=0))
  c.optim = common.optim_config(lr=3e-3, warmup_ratio=0.1, weight_decay=0.0, grad_clip_norm=1.0)
  c.loss = common.loss_config("cb_stream", beta=0.9999, text_weight=2.0, chunk_size=0)
  c.checkpoint = common.checkpoint_config(every_steps=10, keep=2)
  return c
