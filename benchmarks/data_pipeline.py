"""Throughput of the grain input pipeline: trajectories (rows) per second on this machine.

Builds a SynthStream TFDS dataset (array_record) in a temporary folder, then times the pipeline
(read, render the chat format, frames -> patches, M-RoPE positions, padding, batching) with the
synthetic tokenizer and a model config whose vision tower has Qwen2.5-VL's patch sizes
(patch 14, merge 2, temporal patch 2; the model itself is not run).

  .venv/bin/python benchmarks/data_pipeline.py --num_videos 32 --batches 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax

from streampro_jax.data import pipeline, synthetic
from streampro_jax.data import tokenizer as tokenizer_lib
from streampro_jax.data.tfds_builders import jsonl_videos, synth_stream
from streampro_jax.models import qwen2_5_vl


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num_videos", type=int, default=32)
  p.add_argument("--resolution", type=int, default=56, help="SynthStream frame size")
  p.add_argument("--frame_size", type=int, default=112, help="pipeline frame size (x28)")
  p.add_argument("--seq_len", type=int, default=4096)
  p.add_argument("--max_turns", type=int, default=30)
  p.add_argument("--batch_size", type=int, default=4)
  p.add_argument("--batches", type=int, default=10)
  p.add_argument("--num_threads", type=int, default=2)
  args = p.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    cfg = synth_stream.SynthStreamConfig(
        name="bench", num_videos={"train": args.num_videos},
        synth={"resolution": args.resolution, "min_duration": 20, "max_duration": 30})
    builder = synth_stream.SynthStream(config=cfg, data_dir=tmp, file_format="array_record")
    jsonl_videos.build(builder)
    build_s = time.perf_counter() - t0
    tok = tokenizer_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(),
                                                  os.path.join(tmp, "tok"))
    ids = {n: tok.convert_tokens_to_ids(t) for n, t in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>")]}
    model_config = qwen2_5_vl.tiny_config(
        text={"vocab_size": len(tok)}, vision={"patch_size": 14, "window_size": 112}, **ids)
    data_cfg = {"source": "tfds", "tfds_dir": builder.data_dir, "split": "train",
                "batch_size": args.batch_size, "seq_len": args.seq_len,
                "max_turns": args.max_turns, "frame_height": args.frame_size,
                "frame_width": args.frame_size, "num_threads": args.num_threads,
                "prefetch_buffer_size": 2 * args.batch_size}
    it, pipe = pipeline.make_train_iterator(data_cfg, tokenizer=tok, model_config=model_config,
                                            process_index=0, process_count=1)
    next(it)  # warm-up
    t1 = time.perf_counter()
    for _ in range(args.batches):
      batch = next(it)
    dt = time.perf_counter() - t1
    rows = args.batches * args.batch_size
    mb = sum(v.nbytes for v in jax.tree.leaves(batch)) / 2**20
    print(f"build {args.num_videos} SynthStream videos ({args.resolution}px): {build_s:.2f} s")
    grid = tuple(int(g) for g in pipe.video_grid_thw)
    print(f"grid {grid} per turn, batch {args.batch_size} x seq_len "
          f"{args.seq_len}, max_turns {args.max_turns}, {mb:.1f} MiB per batch")
    print(f"{rows} trajectories in {dt:.2f} s: {rows / dt:.1f} trajectories/s "
          f"({args.num_threads} threads); stats {it.stats.as_dict()}")


if __name__ == "__main__":
  main()
