"""Tiny SFT run on SynthStream with a random Qwen3-VL-architecture model (see tiny_synthetic.py).

  .venv/bin/python launch/train_sft.py --config configs/tiny_synthetic_qwen3.py --workdir /tmp/t3

Same data, budget and loss as configs/tiny_synthetic.py; the model is Qwen3-VL (patch 16 in the
real model, here the tiny vision tower with one DeepStack level feeding the first decoder layer).
"""

from configs import tiny_synthetic

QWEN3_TINY_VISION = dict(depth=2, hidden_size=32, deepstack_visual_indexes=(0,))
FROZEN_VISION_QWEN3 = r"^visual/(?!merger/|deepstack_merger_list_\d+/)"


def to_qwen3(c):
  """Turns a tiny Qwen2.5-VL config (SFT or GRPO) into its Qwen3-VL twin, in place."""
  c.model.family = "qwen3_vl"
  c.model.tiny_vision = dict(QWEN3_TINY_VISION)
  c.optim.frozen = FROZEN_VISION_QWEN3
  return c


def get_config():
  return to_qwen3(tiny_synthetic.get_config())
