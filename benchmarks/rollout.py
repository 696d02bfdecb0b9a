"""Rollout throughput against transformers `generate`, and the time split of one GRPO step.

Three measurements on this machine (default: the tiny_synthetic_grpo model, CPU):

1. Decode, same work on both sides: N rows start from the same prefix (system prompt + turn 0
   with its frames + assistant header) and sample `--new_tokens` tokens each at temperature 1
   with a KV cache. Ours: rollout.StreamingSampler on a one-turn prompt with max_text_tokens =
   new_tokens (rows that sample <|im_end|> early stop; the count is what was sampled). Reference:
   transformers Qwen2_5_VLForConditionalGeneration.generate(do_sample=True, use_cache=True,
   min_new_tokens = max_new_tokens) with the SAME weights (a torch model of our config, exported
   with params_from_hf_state_dict). Reported: sampled tokens/s each, and their ratio.
2. Streaming rollout: G rollouts of B SynthStream samples, turn by turn (what GRPO runs):
   sampled tokens/s and all-tokens/s.
3. One GRPO step (GRPOTrainer.train_step, random init, tiny config): rollout / judge+rewards /
   update seconds, after a first step that compiles.

  .venv/bin/python benchmarks/rollout.py --rows 8 --new_tokens 32 --grpo_steps 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import tiny_synthetic_grpo  # noqa: E402
from streampro_jax import rollout  # noqa: E402
from streampro_jax.data import chat_format, pipeline, synthetic  # noqa: E402
from streampro_jax.models import qwen2_5_vl  # noqa: E402
from streampro_jax.train import grpo_trainer, sft  # noqa: E402


def _setup(config, workdir):
  tok = sft.make_tokenizer(config, workdir)
  mcfg = sft.make_model_config(config.model, tok)
  pcfg = pipeline.PipelineConfig.from_config(config.data)
  proc = pipeline.processor_config(pcfg, mcfg)
  _, gh, gw = proc.grid(pcfg.frame_height, pcfg.frame_width)
  chat = chat_format.ChatFormat(tok, tokens_per_turn=gh * gw // 4)
  return tok, mcfg, pcfg, proc, (1, gh, gw), chat


def _torch_model(mcfg, seed=0):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  hf = transformers.Qwen2_5_VLConfig(**mcfg.to_hf())
  hf._attn_implementation = "sdpa"  # pylint: disable=protected-access
  torch.manual_seed(seed)
  m = transformers.Qwen2_5_VLForConditionalGeneration(hf).eval()
  sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
  return m, qwen2_5_vl.params_from_hf_state_dict(mcfg, sd)


def bench_decode(config, workdir, rows: int, new_tokens: int, repeats: int = 2):
  import torch  # pylint: disable=g-import-not-at-top
  tok, mcfg, pcfg, proc, grid, chat = _setup(config, workdir)
  model, params = _torch_model(mcfg)
  synth_cfg = synthetic.SynthConfig.from_dict(dict(config.data.synth))
  rec = next(r for r in (synthetic.make_record("train", i, config=synth_cfg) for i in range(50))
             if r.questions[0].ask_time < 1.0)  # asked on turn 0
  prompt = rollout.prompt_from_record(rec, rec.questions[0], synthetic.render_frames(rec), proc,
                                      max_turns=1, frame_size=(pcfg.frame_height,
                                                               pcfg.frame_width))
  sampler = rollout.StreamingSampler(mcfg, chat, rollout.SamplerConfig(
      temperature=1.0, max_text_tokens=new_tokens - 1, pad_multiple=64), video_grid=grid)
  ours = []
  for i in range(repeats + 1):
    t = time.perf_counter()
    out = sampler.sample(params, [prompt], group_size=rows, seed=i)
    dt = time.perf_counter() - t
    if i:  # the first call compiles
      ours.append(((out.loss_mask + out.forced_mask).sum(), dt))
  # The same prefix for transformers: system + turn 0 (question, frames) + assistant header.
  ids = np.concatenate([chat.system_ids(), chat.user_turn_ids(0, prompt.question),
                        chat.assistant_header_ids()]).astype(np.int64)
  types = np.zeros_like(ids)
  types[ids == mcfg.video_token_id] = 2
  kw = dict(input_ids=torch.tensor(np.tile(ids, (rows, 1))),
            attention_mask=torch.ones((rows, len(ids)), dtype=torch.long),
            mm_token_type_ids=torch.tensor(np.tile(types, (rows, 1))),
            pixel_values_videos=torch.tensor(np.tile(prompt.pixel_values[0], (rows, 1))),
            video_grid_thw=torch.tensor(np.tile(np.asarray([grid]), (rows, 1))),
            second_per_grid_ts=torch.ones(rows))
  theirs = []
  for i in range(repeats + 1):
    torch.manual_seed(i)
    t = time.perf_counter()
    with torch.no_grad():
      gen = model.generate(**kw, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           use_cache=True, eos_token_id=None, pad_token_id=0)
    dt = time.perf_counter() - t
    if i:
      theirs.append((rows * (gen.shape[1] - len(ids)), dt))
  ours_tps = sum(n for n, _ in ours) / sum(t for _, t in ours)
  theirs_tps = sum(n for n, _ in theirs) / sum(t for _, t in theirs)
  return {"rows": rows, "new_tokens": new_tokens, "prefix_tokens": len(ids),
          "ours_tokens_per_s": ours_tps, "transformers_tokens_per_s": theirs_tps,
          "ratio": ours_tps / theirs_tps, "torch_threads": torch.get_num_threads()}


def demo_grpo_config():
  """The demo's GRPO stage shapes (configs/demo.py "default": 4 samples x G 8, 16 turns, T 0.7,
  18 text tokens, seq_len 768, its tiny model and system prompt) on SynthStream records generated
  on the fly (no TFDS data dir, no SFT checkpoint: random init)."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  d = demo.get_config("default")
  c = tiny_synthetic_grpo.get_config()
  c.model = d.model
  c.global_batch_size = int(d.grpo.batch_size)
  c.grpo.group_size = int(d.grpo.group_size)
  c.grpo.temperature = float(d.grpo.temperature)
  c.grpo.max_response_tokens = int(d.grpo.max_response_tokens)
  c.data.seq_len = int(d.grpo.seq_len)
  c.data.max_turns = int(d.max_turns)
  c.data.frame_size = int(d.frame_size)
  c.data.synth = dict(d.data.synth)
  c.data.system_prompt = str(d.system_prompt)
  c.rollout.constrain_decision = bool(d.grpo.constrain_decision)
  c.rollout.user_chunk_len = 96
  c.rollout.capacity = 1024
  return c


def bench_grpo(config, workdir, steps: int):
  trainer = grpo_trainer.GRPOTrainer(config, workdir)
  out = []
  for s in range(1, steps + 2):
    m = trainer.train_step(s)
    if s > 1:
      out.append({k: m[k] for k in ("rollout_s", "reward_s", "update_s", "step_s",
                                    "sampled_tokens", "rollout_tokens_per_s", "mean_length",
                                    "rows")})
  trainer.ckpt.close()
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=8)
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--grpo_steps", type=int, default=2, help="timed steps after the first")
  p.add_argument("--grpo_config", choices=("tiny", "demo"), default="tiny",
                 help="tiny: configs/tiny_synthetic_grpo; demo: the demo's GRPO stage shapes")
  p.add_argument("--skip_decode", action="store_true")
  args = p.parse_args()
  config = tiny_synthetic_grpo.get_config()
  config.tensorboard = False
  print(f"devices: {jax.devices()}")
  with tempfile.TemporaryDirectory() as tmp:
    if not args.skip_decode:
      d = bench_decode(config, tmp, args.rows, args.new_tokens)
      print(f"decode: {d}")
    gcfg = demo_grpo_config() if args.grpo_config == "demo" else config
    gcfg.tensorboard = False
    for i, m in enumerate(bench_grpo(gcfg, os.path.join(tmp, "grpo"), args.grpo_steps)):
      print(f"grpo step {i + 2}: " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()))


if __name__ == "__main__":
  main()
