"""Rollout time at G = 8: one `StreamingSampler.sample` call of B samples x G rollouts, before and
after a change (two checkouts, rounds interleaved).

Workload: the tiny_synthetic_grpo model (random init) on B = 4 SynthStream samples of 16 turns
(the demo's GRPO shapes: 4 samples x G = 8 = 32 rows, 18 text tokens, temperature 1, no decision
constraint), user chunks of 96 tokens, a 1,024-slot cache. A round runs one checkout in a fresh
process: one untimed call (compilation), then `--calls` timed calls with seeds 1, 2, ...; its
figures are the median call's wall time and its CPU time (all threads of the process: less
sensitive than wall time to other jobs on a shared machine). Rounds alternate between the
checkouts (`--roots`), `--rounds` each.

  .venv/bin/python benchmarks/rollout_group.py --roots before=/tmp/before,after=. --rounds 5 \
      --out benchmarks/results/rollout_group_g8.jsonl

Each round appends one JSON line (commit, date, machine, load average before / after, versions,
command, per-call seconds); the summary (median and range of the round medians per checkout)
is printed. A checkout older than streampro_jax/sampling/ is driven through its
streampro_jax/rollout.py, which had the same StreamingSampler constructor and `sample` call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import cpu_rounds  # benchmarks/, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES, GROUP, TURNS, TEXT_TOKENS = 4, 8, 16, 18


def one_round(calls: int) -> dict:
  """Times `calls` sample calls of the checkout on sys.path[0] (after one compiling call)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import tiny_synthetic_grpo  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import chat_format, pipeline, pipeline_config, synthetic  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup  # pylint: disable=g-import-not-at-top
  try:
    from streampro_jax import sampling as lib  # pylint: disable=g-import-not-at-top
  except ImportError:   # a checkout from before streampro_jax/sampling/
    from streampro_jax import rollout as lib  # pylint: disable=g-import-not-at-top
  config = tiny_synthetic_grpo.get_config()
  with tempfile.TemporaryDirectory() as tmp:
    tok = setup.make_tokenizer(config, tmp)
  mcfg = setup.make_model_config(config.model, tok)
  params = setup.random_params(mcfg, seed=0)
  pcfg = pipeline_config.PipelineConfig.from_config(config.data)
  proc = pipeline.processor_config(pcfg, mcfg)
  _, gh, gw = proc.grid(pcfg.frame_height, pcfg.frame_width)
  chat = chat_format.ChatFormat(tok, tokens_per_turn=gh * gw // mcfg.vision.spatial_merge_size ** 2,
                                system_prompt=pcfg.system_prompt)
  synth = synthetic.SynthConfig.from_dict(dict(config.data.synth))
  prompts = []
  for i in range(SAMPLES):
    rec = synthetic.make_record("train", i, config=synth)
    prompts.append(lib.prompt_from_record(rec, rec.questions[0], synthetic.render_frames(rec),
                                          proc, max_turns=TURNS,
                                          frame_size=(pcfg.frame_height, pcfg.frame_width)))
  sampler = lib.StreamingSampler(mcfg, chat, lib.SamplerConfig(
      temperature=1.0, max_text_tokens=TEXT_TOKENS, user_chunk_len=96, capacity=1024),
      video_grid=(1, gh, gw))
  t = time.perf_counter()
  sampler.sample(params, prompts, group_size=GROUP, seed=0)
  compile_s = time.perf_counter() - t
  seconds, cpu, tokens = [], [], []
  for seed in range(1, calls + 1):
    t, c = time.perf_counter(), time.process_time()
    rb = sampler.sample(params, prompts, group_size=GROUP, seed=seed)
    seconds.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    tokens.append(int(rb.lengths.sum()))
  return {"rows": SAMPLES * GROUP, "samples": SAMPLES, "group_size": GROUP,
          "turns": [p.num_turns for p in prompts], "max_text_tokens": TEXT_TOKENS,
          "first_call_s": compile_s, "call_s": seconds, "median_call_s": statistics.median(seconds),
          "call_cpu_s": cpu, "median_call_cpu_s": statistics.median(cpu),
          "tokens_per_call": tokens, "jax": jax.__version__, "numpy": np.__version__,
          "devices": [str(d) for d in jax.devices()]}


def _command(roots) -> str:
  """The command line, each checkout outside this one named by its commit (no host paths)."""
  args = " ".join(sys.argv[1:])
  for _, root in roots:
    if os.path.abspath(root) != ROOT:
      args = args.replace(root, f"<checkout of {cpu_rounds.commit(root)}>")
  return f"benchmarks/rollout_group.py {args}"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--roots", default=f"after={ROOT}",
                 help="name=checkout,... the checkouts to compare, in round order")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--calls", type=int, default=3, help="timed calls per round")
  p.add_argument("--out", default="", help="JSON lines file the rounds are appended to")
  p.add_argument("--one_round", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.one_round:
    print(json.dumps(one_round(args.calls)))
    return
  roots = [tuple(x.split("=", 1)) for x in args.roots.split(",")]
  results = {name: [] for name, _ in roots}
  cpu_results = {name: [] for name, _ in roots}
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
         "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
  for r in range(args.rounds):
    for name, root in roots:
      root = os.path.abspath(root)
      load0 = os.getloadavg()
      proc = subprocess.run(
          [sys.executable, os.path.abspath(__file__), "--one_round", "--calls", str(args.calls)],
          cwd=root, env={**env, "PYTHONPATH": root}, capture_output=True, text=True, check=False)
      load1 = os.getloadavg()
      if proc.returncode:
        raise SystemExit(f"{name} ({root}) failed:\n{proc.stderr[-3000:]}")
      m = json.loads(proc.stdout.strip().splitlines()[-1])
      line = {"benchmark": "rollout_group", "name": name, "round": r,
              "commit": cpu_rounds.commit(root),
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
              "load_before": load0, "load_after": load1, "python": platform.python_version(),
              "command": _command(roots), **m}
      results[name].append(m["median_call_s"])
      cpu_results[name].append(m["median_call_cpu_s"])
      print(f"round {r} {name}: median {m['median_call_s']:.2f} s wall, "
            f"{m['median_call_cpu_s']:.2f} s CPU (load {load0[0]:.1f} -> {load1[0]:.1f})",
            flush=True)
      if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
          f.write(json.dumps(line) + "\n")
  for name, xs in results.items():
    cs = cpu_results[name]
    print(f"{name}: median {statistics.median(xs):.2f} s per call (range {min(xs):.2f}-"
          f"{max(xs):.2f}), CPU {statistics.median(cs):.2f} s (range {min(cs):.2f}-"
          f"{max(cs):.2f}) over {len(xs)} rounds")


if __name__ == "__main__":
  main()
