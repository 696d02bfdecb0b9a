"""Forward-pass benchmark of the Qwen3-VL backbone: streampro_jax (jit) against transformers.

  .venv/bin/python benchmarks/model_forward_qwen3.py            # small config, CPU friendly
  .venv/bin/python benchmarks/model_forward_qwen3.py --preset=medium --turns=16 --repeats=5

Both models get the same random weights (the HF model is saved with save_pretrained and loaded
with qwen3_vl.load_hf_checkpoint) and the same StreamPro-shaped input: one row of `turns` turns,
each "<text> <|vision_start|> (1, g, g) video block <|vision_end|> <text>", float32. Reported:
median wall time of a forward over `repeats` runs after one warm-up (the JAX time excludes
compilation, which is reported separately), tokens per second, and max |logit difference| /
max |logit|. Prints one JSON line.

With --rounds N --out FILE, the CPU method (benchmarks/cpu_rounds.py) for the torch / JAX ratio
instead: N (at least 5) rounds alternating the two forwards (each turn the median of `repeats`
calls), the same input on both sides (tokens and patches recorded and checked), the load average
around every turn, one raw JSON-lines file.

  .venv/bin/python benchmarks/model_forward_qwen3.py --threads 1 --rounds 5 \
      --out benchmarks/results/cpu_qwen3_forward_small_1thread.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import numpy as np
import torch

from streampro_jax.models import qwen3_vl as q3

PRESETS = {
    # ~ 9 M parameters.
    "small": dict(text=dict(vocab_size=4096, hidden_size=256, intermediate_size=768,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=64, mrope_section=(12, 10, 10)),
                  vision=dict(depth=4, hidden_size=128, intermediate_size=384, num_heads=4,
                              patch_size=16, num_position_embeddings=256,
                              deepstack_visual_indexes=(0, 1, 2), out_hidden_size=256)),
    # ~ 90 M parameters.
    "medium": dict(text=dict(vocab_size=16384, hidden_size=768, intermediate_size=2048,
                             num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4,
                             head_dim=64, mrope_section=(12, 10, 10)),
                   vision=dict(depth=8, hidden_size=384, intermediate_size=1536, num_heads=6,
                               patch_size=16, num_position_embeddings=2304,
                               deepstack_visual_indexes=(1, 3, 5), out_hidden_size=768)),
}


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
  ap.add_argument("--turns", type=int, default=8)
  ap.add_argument("--grid", type=int, default=16, help="patches per side of one turn's frame")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
  ap.add_argument("--rounds", type=int, default=0,
                  help="the CPU method: this many interleaved rounds, written to --out")
  ap.add_argument("--out", default="", help="with --rounds: the raw JSON-lines file")
  args = ap.parse_args(argv)
  if args.rounds and not args.out:
    ap.error("--rounds needs --out")
  if args.threads:
    torch.set_num_threads(args.threads)

  from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration  # pylint: disable=g-import-not-at-top

  config = q3.tiny_config(**PRESETS[args.preset], tie_word_embeddings=True)
  torch.manual_seed(0)
  hf = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**config.to_hf())).eval()
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    config, params = q3.load_hf_checkpoint(d)

  rng = np.random.default_rng(0)
  g = args.grid
  turn = np.array([[1, g, g]])
  grids = np.repeat(turn, args.turns, 0)
  ids = []
  for _ in range(args.turns):
    ids += list(rng.integers(0, 200, 4)) + [config.vision_start_token_id]
    ids += [config.video_token_id] * (g * g // 4) + [config.vision_end_token_id]
    ids += list(rng.integers(0, 200, 3))
  ids = np.asarray([ids], np.int32)
  pix = rng.standard_normal((args.turns * g * g, config.vision.patch_dim)).astype(np.float32)
  pos, _ = q3.get_rope_index(ids, grids, config=config)
  mm = np.where(ids == config.video_token_id, 2, 0)

  module = q3.Qwen3_VL(config)
  fwd = jax.jit(lambda p, i, x, ps: module.apply({"params": p}, i, pixel_values_videos=x,
                                                   video_grid_thw=grids, position_ids=ps))
  t0 = time.perf_counter()
  out = jax.block_until_ready(fwd(params, ids, pix, pos))
  compile_s = time.perf_counter() - t0
  jax_s = _median_time(lambda: jax.block_until_ready(fwd(params, ids, pix, pos)), args.repeats)

  t_ids, t_pix, t_grid, t_mm = (torch.as_tensor(ids).long(), torch.as_tensor(pix),
                                torch.as_tensor(grids), torch.as_tensor(mm))

  def hf_forward():
    with torch.no_grad():
      return hf(input_ids=t_ids, pixel_values_videos=t_pix, video_grid_thw=t_grid,
                mm_token_type_ids=t_mm).logits

  ref = hf_forward().numpy()
  if args.rounds:
    import sys  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cpu_rounds  # pylint: disable=g-import-not-at-top  (benchmarks/cpu_rounds.py)
    work = dict(rows=1, tokens=int(ids.shape[1]), patches=int(pix.shape[0]))
    sides = [("jax", lambda: dict(seconds=_median_time(
                 lambda: jax.block_until_ready(fwd(params, ids, pix, pos)), args.repeats),
                                  **work)),
             ("torch", lambda: dict(seconds=_median_time(hf_forward, args.repeats), **work))]
    return cpu_rounds.run_rounds(
        f"qwen3_forward_{args.preset}_torch_threads_{torch.get_num_threads()}", sides,
        rounds=args.rounds, out=args.out, work_keys=tuple(work),
        extra=dict(preset=args.preset, jax_compile_s=compile_s,
                   params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
                   max_abs_diff_over_scale=float(np.abs(np.asarray(out) - ref).max()
                                                 / np.abs(ref).max())))
  torch_s = _median_time(hf_forward, args.repeats)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  result = dict(
      backbone="qwen3_vl", preset=args.preset, params=n_params, turns=args.turns,
      tokens=int(ids.shape[1]), patches=int(pix.shape[0]), device=str(jax.devices()[0]),
      jax_compile_s=round(compile_s, 3), jax_forward_s=round(jax_s, 4),
      torch_forward_s=round(torch_s, 4), jax_tokens_per_s=round(ids.shape[1] / jax_s, 1),
      torch_tokens_per_s=round(ids.shape[1] / torch_s, 1),
      torch_threads=torch.get_num_threads(),
      max_abs_diff_over_scale=float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()))
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
