"""Rollout throughput against transformers `generate`, per-turn latency, and one GRPO step.

Four measurements on this machine (default: the tiny_synthetic_grpo model, CPU):

1. Decode, same work on both sides (benchmarks/rollout_decode.py): N rows start from the same
   one-turn prefix (`--prefix_len` tokens: text around one frame's visual tokens, with its
   frames) and each samples exactly `--new_tokens` tokens at temperature 1 with a KV cache, on
   the same weights. Ours: a jitted prefill + sampling.decode_message (the sampler's on-device
   message loop). Reference: transformers Qwen2_5_VLForConditionalGeneration.generate(
   do_sample=True, use_cache=True, min_new_tokens = max_new_tokens) on a torch copy of the
   params. Reported: tokens/s each (prefill + decode, median of `--repeats` rounds that run
   the two sides in turn), and their ratio.
2. Streaming rollout: G rollouts of B SynthStream samples, turn by turn (what GRPO runs, the
   sampler's `sample`): sampled tokens/s and all tokens/s.
3. Per-turn latency of one live stream (1 row): each turn = that second's frames and visual
   tokens, the decision (forced </Response>) and a short answer of `--answer_tokens` text
   tokens: median, p95 and max seconds per turn (what a live user waits after each second).
4. One GRPO step (GRPOTrainer.train_step, random init): rollout / judge+rewards / update
   seconds, after a first step that compiles; `--grpo_config demo` uses the demo's GRPO stage
   shapes (4 samples x G 8, 16 turns, 18 text tokens).

  .venv/bin/python benchmarks/rollout.py --rows 8 --new_tokens 32 --grpo_steps 2
  .venv/bin/python benchmarks/rollout.py --skip_decode --skip_stream --grpo_config demo \
      --grpo_steps 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import grpo_step_ab  # noqa: E402  (benchmarks/grpo_step_ab.py)
import rollout_decode  # noqa: E402  (benchmarks/rollout_decode.py)
from configs import tiny_synthetic_grpo  # noqa: E402
from streampro_jax import sampling  # noqa: E402
from streampro_jax.data import chat_format, pipeline, pipeline_config, synthetic  # noqa: E402
from streampro_jax.models import qwen2_5_vl  # noqa: E402
from streampro_jax.train import config_check, grpo_rollouts, grpo_trainer  # noqa: E402
from streampro_jax.train import setup as setup_lib  # noqa: E402


def _setup(config, workdir):
  tok = setup_lib.make_tokenizer(config, workdir)
  mcfg = setup_lib.make_model_config(config.model, tok)
  pcfg = pipeline_config.PipelineConfig.from_config(config.data)
  proc = pipeline.processor_config(pcfg, mcfg)
  _, gh, gw = proc.grid(pcfg.frame_height, pcfg.frame_width)
  chat = chat_format.ChatFormat(tok, tokens_per_turn=gh * gw // 4)
  return tok, mcfg, pcfg, proc, (1, gh, gw), chat


def _params(mcfg, seed=0):
  return nn.unbox(jax.jit(lambda r: qwen2_5_vl.init_params(mcfg, r))(jax.random.key(seed)))


def bench_decode(config, workdir, rows: int, new_tokens: int, prefix_len: int, repeats: int):
  """Ours vs transformers generate, same prefix / weights / new tokens, timed interleaved
  (rollout_decode.compare_throughput)."""
  _, mcfg, _, _, grid, _ = _setup(config, workdir)
  params = _params(mcfg)
  kw = dict(rows=rows, prefix_len=prefix_len, new_tokens=new_tokens, repeats=repeats, grid=grid)
  ours, theirs = rollout_decode.compare_throughput(mcfg, params, device="cpu", **kw)
  return {"rows": rows, "new_tokens": new_tokens, "prefix_tokens": prefix_len,
          "ours_tokens_per_s": ours["tokens_per_s"],
          "ours_decode_only_tokens_per_s": ours["decode_tokens_per_s"],
          "transformers_tokens_per_s": theirs["tokens_per_s"],
          "transformers_decode_only_tokens_per_s": theirs["decode_tokens_per_s"],
          "ours_prefill_s": ours["prefill_seconds"],
          "transformers_prefill_s": theirs["prefill_seconds"],
          "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
          "decode_only_ratio": ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"],
          "torch_threads": theirs["torch_threads"]}


def _stream_prompts(config, proc, pcfg, n, *, max_turns, force_all=False):
  synth_cfg = synthetic.SynthConfig.from_dict(dict(config.data.synth))
  out = []
  for i in range(n):
    rec = synthetic.make_record("train", i, config=synth_cfg)
    p = sampling.prompt_from_record(rec, rec.questions[0], synthetic.render_frames(rec), proc,
                                   max_turns=max_turns,
                                   frame_size=(pcfg.frame_height, pcfg.frame_width))
    if force_all:
      p.force_response_turns = tuple(range(p.num_turns))
    out.append(p)
  return out


def bench_stream(config, workdir, samples: int, group: int, repeats: int):
  """G rollouts of B SynthStream samples (the GRPO config's sampler settings)."""
  _, mcfg, pcfg, proc, grid, chat = _setup(config, workdir)
  params = _params(mcfg)
  prompts = _stream_prompts(config, proc, pcfg, samples, max_turns=int(config.data.max_turns))
  sampler = sampling.StreamingSampler(
      mcfg, chat, grpo_rollouts.sampler_config(config_check.build(config, "grpo")),
      video_grid=grid)
  out = []
  for i in range(repeats + 1):
    t = time.perf_counter()
    rb = sampler.sample(params, prompts, group_size=group, seed=i)
    dt = time.perf_counter() - t
    if i:
      out.append((float((rb.loss_mask + rb.forced_mask).sum()), float(rb.lengths.sum()), dt))
  secs = sum(x[2] for x in out)
  return {"rows": samples * group, "turns": [p.num_turns for p in prompts],
          "sampled_tokens_per_s": sum(x[0] for x in out) / secs,
          "all_tokens_per_s": sum(x[1] for x in out) / secs, "seconds_per_call": secs / repeats}


def bench_turn_latency(config, workdir, answer_tokens: int, turns: int, repeats: int):
  """One live stream: seconds per turn (frames + visual tokens, decision, short answer)."""
  _, mcfg, pcfg, proc, grid, chat = _setup(config, workdir)
  params = _params(mcfg)
  prompt = _stream_prompts(config, proc, pcfg, 1, max_turns=turns, force_all=True)[0]
  sampler = sampling.StreamingSampler(mcfg, chat, sampling.SamplerConfig(
      temperature=1.0, max_text_tokens=answer_tokens), video_grid=grid)
  per_turn, tokens = [], []
  for i in range(repeats + 1):
    stamps = [time.perf_counter()]
    rb = sampler.sample(params, [prompt], seed=i,
                        on_turn=lambda k, n, stamps=stamps: stamps.append(time.perf_counter()))
    if i:
      per_turn += list(np.diff(stamps)[1:])   # turn 0 also holds the system prefix
      tokens.append(float((rb.loss_mask + rb.forced_mask).sum()) / prompt.num_turns)
  return {"turns": prompt.num_turns, "visual_tokens_per_turn": sampler.tokens_per_turn,
          "message_tokens_per_turn": float(np.mean(tokens)),
          "median_turn_s": float(np.median(per_turn)),
          "p95_turn_s": float(np.percentile(per_turn, 95)), "max_turn_s": float(np.max(per_turn))}


def demo_grpo_config():
  """The demo's GRPO stage (grpo_step_ab.demo_grpo_config: 4 samples x G 8, 16 turns, 18 text
  tokens, seq_len 768, its tiny model and system prompt) on SynthStream records generated on the
  fly (no TFDS data dir, no SFT checkpoint: random init), with the rollout sizes this
  benchmark's recorded figures used (user chunks of 96 tokens, a 1,024-slot cache)."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = grpo_step_ab.demo_grpo_config(demo, tiny_synthetic_grpo)
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
  p.add_argument("--prefix_len", type=int, default=275)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--answer_tokens", type=int, default=8)
  p.add_argument("--grpo_steps", type=int, default=2, help="timed steps after the first (0: none)")
  p.add_argument("--grpo_config", choices=("tiny", "demo"), default="tiny",
                 help="tiny: configs/tiny_synthetic_grpo; demo: the demo's GRPO stage shapes")
  p.add_argument("--skip_decode", action="store_true")
  p.add_argument("--skip_stream", action="store_true", help="skip streaming rate and latency")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch.set_num_threads for transformers (0: torch's default)")
  args = p.parse_args()
  if args.torch_threads and not args.skip_decode:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.torch_threads)
  config = tiny_synthetic_grpo.get_config()
  config.tensorboard = False
  print(f"devices: {jax.devices()}  load average {os.getloadavg()}", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    if not args.skip_decode:
      decode = bench_decode(config, tmp, args.rows, args.new_tokens, args.prefix_len,
                            args.repeats)
      print(f"decode: {decode}", flush=True)
    if not args.skip_stream:
      print(f"stream: {bench_stream(config, tmp, 2, 4, args.repeats)}", flush=True)
      latency = bench_turn_latency(config, tmp, args.answer_tokens, 16, args.repeats)
      print(f"turn latency: {latency}", flush=True)
    if args.grpo_steps:
      gcfg = demo_grpo_config() if args.grpo_config == "demo" else config
      gcfg.tensorboard = False
      for i, m in enumerate(bench_grpo(gcfg, os.path.join(tmp, "grpo"), args.grpo_steps)):
        print(f"grpo step {i + 2}: " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()), flush=True)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
  main()
