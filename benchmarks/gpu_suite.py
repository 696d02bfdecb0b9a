"""Issue 33's GPU figures in one run on one GPU (about 10 minutes), as raw JSON lines.

  python3 benchmarks/gpu_suite.py --out=benchmarks/results/gpu_suite_h200.jsonl
  python3 benchmarks/gpu_suite.py --tiny --out=/tmp/suite.jsonl   # every path on CPU
  python3 benchmarks/gpu_suite.py --parts=sft,decode ...; ... --parts=grpo,live   # two calls

--tiny runs every part on tiny models: about 10 minutes on a 2-core CPU at load average 11,
nearly all of it XLA compiles (each part compiles its own programs in its own process).

Parts (each in its own process, so that each has the device's memory to itself; --parts picks):
  sft     the paper-shape SFT step of the 3B model (benchmarks/gpu_train_step.py --part jax):
          remat dots_attn in bf16 and with the FP8 switch (policy+fp8): step time, MFU (causal
          attention counted at half), compile time, peak memory. Targets: MFU >= 50 %; FP8
          >= 1.25x faster per step.
  decode  16 rows x 64 new tokens after a 512-token prefix, 3B in bf16 (benchmarks/
          rollout_decode.py): prefill and decode timed apart, the fraction of the bound that
          counts the bytes a decode step reads (decoder + lm_head weights + KV cache), against
          transformers' static-cache torch.compiled generate on the same prompts. Targets: >= 60 %
          of the bound; >= 2x transformers.
  grpo    a whole GRPO step with the 3B architecture (random weights, the synthetic tokenizer):
          --prompts SynthStream samples x G = 8 multi-turn streaming rollouts (the sampler's
          `sample`), then the jitted update (policy + reference, remat dots_attn) on them: the
          time split, sampled tokens/s and update tokens/s, and the sampler-vs-trainer log-prob
          agreement (behaviour_gap = mean |logp - old_logp|, behaviour_corr). Rewards are random
          (the judge is not part of the device's time). Then the largest frames per sample
          whose update fits at G = 8 (search over --frames_search turns, 2 frames per turn).
  live    benchmarks/live_stream.stream with the 3B architecture: one turn per second of video
          (LiveModel.step, as live.py runs a stream) for --live_seconds (600 = 10 minutes):
          p50 / p95 seconds per second of video and live device buffers over time. Target:
          p95 <= 0.25 s, flat memory.
Every line of --out is one JSON object: the header fields (commit, date, machine, load average
before / after the part, versions, command) plus the part's measurements. Imports only what the
GPU image has (no grain, tensorflow_datasets, av, ml_collections, tensorboardX).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import cpu_rounds  # noqa: E402  (beside this file; the standard library only at import)

PARTS = ("sft", "decode", "grpo", "live")
H200_HBM = 4.8e12   # bytes/s, datasheet (H100 SXM: 3.35e12)


def emit(**kw):
  print("RESULT " + json.dumps(kw), flush=True)


def _versions() -> dict:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
    try:
      out[name] = __import__(name).__version__
    except Exception:  # pylint: disable=broad-except
      out[name] = None
  return out


def _child(args, argv: list[str], timeout: int, echo: str = "") -> tuple[list[str], int]:
  """Runs `argv` under this Python, echoing its output with the prefix `echo` (a part's
  children echo indented, so that the driver reads only the part's own RESULT lines)."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  if args.tiny:
    env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.Popen([sys.executable] + argv, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
  lines = []
  t0 = time.time()
  for line in proc.stdout:
    lines.append(line.rstrip("\n"))
    print(echo + line, end="", flush=True)
    if time.time() - t0 > timeout:
      proc.kill()
      lines.append(f"ERROR timeout after {timeout} s")
      break
  return lines, proc.wait()


# ----------------------------------------------------------------------------------------------
# Parts run in the driver's children.


def part_sft(args) -> list[dict]:
  policies = "dots_attn,dots_attn+fp8"
  argv = [os.path.join(HERE, "gpu_train_step.py"), "--part", "jax", "--policies", policies,
          "--steps", str(1 if args.tiny else 5)] + (["--tiny"] if args.tiny else [])
  lines, rc = _child(args, argv, 300, echo="  ")
  rows = [json.loads(l[len("RESULT "):]) for l in lines if l.startswith("RESULT ")]
  out = [dict(r, part="sft/" + r["part"]) for r in rows]
  steps = {r.get("matmul"): r for r in rows if r["part"] == "sft_step" and "step_s" in r}
  if "default" in steps and "fp8" in steps:
    out.append({"part": "sft/fp8_speedup",
                "speedup": steps["default"]["step_s"] / steps["fp8"]["step_s"],
                "loss_bf16": steps["default"]["loss"], "loss_fp8": steps["fp8"]["loss"],
                "target": 1.25})
  for r in out:
    if r["part"] == "sft/sft_step" and "mfu_spec" in r:
      r["target_mfu"] = 0.5
  if rc != 0 or not any(r["part"] == "sft/sft_step" for r in out):
    out.append({"part": "sft/exit", "error": f"exit {rc}: " + " | ".join(lines[-5:])})
  return out


def part_decode(args) -> list[dict]:
  if args.tiny:
    flags = ["--tiny", "--rows", "2", "--new_tokens", "4", "--repeats", "1", "--prefix_len",
             "64", "--hf_mode", "eager"]   # torch.compile on a loaded CPU takes minutes
  else:
    flags = ["--model", "3b", "--scan_layers", "--rows", "16", "--new_tokens", "64",
             "--prefix_len", "512", "--repeats", "3", "--hf_mode", "static_compiled",
             "--hbm_bytes_per_s", str(args.hbm_bytes_per_s)]
  lines, rc = _child(args, [os.path.join(HERE, "rollout_decode.py")] + flags, 420, echo="  ")
  out = {"part": "decode", "rc": rc, "flags": flags}
  for l in lines:
    for side in ("ours", "transformers"):
      if l.startswith(side + ": "):
        out[side] = ast.literal_eval(l[len(side) + 2:])
  ours, theirs = out.get("ours"), out.get("transformers")
  if ours and theirs:
    out["ratio_tokens_per_s"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
    out["ratio_decode_tokens_per_s"] = (ours["decode_tokens_per_s"] /
                                        theirs["decode_tokens_per_s"])
  else:
    out["error"] = f"exit {rc}: " + " | ".join(lines[-5:])
  out["targets"] = {"bandwidth_fraction": 0.6, "ratio_tokens_per_s": 2.0}
  return [out]


def _tokenizer(workdir: str):
  from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  return tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(), workdir)


def model_config(tiny: bool, tok, **compute):
  """The tiny random Qwen2.5-VL (--tiny) or the 3B architecture, with the tokenizer's special
  ids (random weights: the 3B vocabulary holds the synthetic tokenizer's ids)."""
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top
  section = dict(family="qwen2_5_vl", **compute)
  if tiny:
    return models.config_from_section(dict(section, attention_impl="xla"), tok)
  small = models.config_from_section(section, tok)   # carries the tokenizer's special ids
  ids = {k: getattr(small, k) for k in ("image_token_id", "video_token_id",
                                        "vision_start_token_id", "vision_end_token_id")}
  return q.Qwen2_5_VLConfig(**compute, **ids)


def _frame(tiny: bool) -> int:
  return 16 if tiny else 224


def part_grpo(args) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from streampro_jax import grpo, models, sampling  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import chat_format, synthetic  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import grpo_step  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  import gpu_train_step  # pylint: disable=g-import-not-at-top

  group = 8
  tok = _tokenizer(tempfile.mkdtemp(prefix="gpu_suite_tok_"))
  compute = dict(dtype="float32" if args.tiny else "bfloat16", param_dtype="float32",
                 remat=True, remat_policy="dots_attn", scan_layers=True)
  cfg = model_config(args.tiny, tok, **compute)
  proc = models.video_processor_config(cfg)
  frame = _frame(args.tiny)
  _, gh, gw = proc.grid(frame, frame)
  grid = (1, gh, gw)
  chat = chat_format.ChatFormat(tok, tokens_per_turn=gh * gw // 4)
  turns = args.grpo_turns or (12 if args.tiny else 32)
  synth = synthetic.SynthConfig(min_duration=max(turns, 12), max_duration=max(turns, 12))
  prompts = []
  for i in range(args.prompts):
    rec = synthetic.make_record("train", i, config=synth)
    prompts.append(sampling.prompt_from_record(rec, rec.questions[0],
                                               synthetic.render_frames(rec), proc,
                                               max_turns=turns, frame_size=(frame, frame)))
  scfg = sampling.SamplerConfig(temperature=1.0, max_text_tokens=8 if args.tiny else 32,
                                constrain_decision=False)
  sampler = sampling.StreamingSampler(cfg, chat, scfg, video_grid=grid)
  mesh, tx, trainable, state, shardings = gpu_train_step.one_device_train_state(cfg, lr=1e-6)
  ref = jax.tree.map(lambda x: x.copy(), state.params)
  gcfg = grpo.GRPOStepConfig(group_size=group, beta=0.04, logps_chunk_size=0)
  out = []
  step = None
  max_pix = turns * gh * gw
  for s in range(args.grpo_steps + 1):
    t0 = time.perf_counter()
    rb = sampler.sample(state.params, prompts, group_size=group, seed=s)
    t1 = time.perf_counter()
    batch = rb.as_batch()
    pix = batch.pixel_values_videos
    batch = batch.replace(
        pixel_values_videos=np.pad(pix, ((0, 0), (0, max_pix - pix.shape[1]), (0, 0))),
        rewards=np.random.default_rng(s).random(rb.input_ids.shape[0]).astype(np.float32))
    if step is None:
      logps_fn = grpo.make_logps_fn(
          setup_lib.make_forward(q.Qwen2_5_VL(cfg), np.tile(np.asarray(grid), (turns, 1))),
          temperature=1.0, chunk_size=0, unembed_fn=setup_lib.make_unembed(cfg))
      step = grpo_step.make_grpo_step(
          logps_fn, tx, gcfg, state_shardings=shardings,
          batch_sharding=batch.shardings(mesh), mesh=mesh, trainable=trainable)
    gb = batch.shard(mesh)
    with state_lib.sharding_context(mesh):
      state, m = step(state, ref, gb)
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    t2 = time.perf_counter()
    sampled = float((rb.loss_mask + rb.forced_mask).sum())
    real = float(rb.attention_mask.sum())
    out.append({"part": "grpo/step", "step": s, "first_call": s == 0,
                "rows": int(rb.input_ids.shape[0]), "group_size": group,
                "prompts": len(prompts), "turns": turns, "seq_len": int(rb.input_ids.shape[1]),
                "rollout_s": t1 - t0, "update_s": t2 - t1, "step_s": t2 - t0,
                "rollout_fraction": (t1 - t0) / (t2 - t0),
                "sampled_tokens": sampled, "rollout_tokens_per_s": sampled / (t1 - t0),
                "update_tokens_per_s": real / (t2 - t1),
                "behaviour_gap": m["behaviour_gap"], "behaviour_corr": m["behaviour_corr"],
                "loss": m["loss"], "overflow": int(rb.overflow.sum())})
  del state, ref
  out.append(_frames_search(args, cfg, group))
  return out


def _frames_search(args, cfg, group: int) -> dict:
  """The largest number of turns (2 frames each) per sample whose GRPO update (G rows of the
  paper's layout: 64 visual + 16 text tokens per turn at 224 px) compiles and runs."""
  import gc  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import gpu_train_step  # pylint: disable=g-import-not-at-top

  fits, tried = 0, []
  for turns in [int(x) for x in args.frames_search.split(",")]:
    shp = gpu_train_step.shape_args(args.tiny)
    shp.update(batch=group, turns=turns)
    run_args = argparse.Namespace(tiny=args.tiny, steps=1)
    try:
      res = _grpo_update_at(run_args, cfg, shp)
      tried.append({"turns": turns, "frames": 2 * turns, "fits": True, **res})
      fits = turns
    except Exception as e:  # pylint: disable=broad-except  (out of memory ends the search)
      tried.append({"turns": turns, "frames": 2 * turns, "fits": False,
                    "error": f"{type(e).__name__}: {str(e)[:300]}"})
      break
    finally:
      jax.clear_caches()
      gc.collect()
  return {"part": "grpo/frames_search", "group_size": group, "largest_fitting_turns": fits,
          "largest_fitting_frames": 2 * fits, "tried": tried}


def _grpo_update_at(args, cfg, shp) -> dict:
  """One GRPO update (after a compiling call) on a gpu_train_step batch of shape `shp`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from streampro_jax import grpo  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import grpo_step  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  import gpu_train_step  # pylint: disable=g-import-not-at-top

  batch, grid = gpu_train_step.build_batch(cfg, **shp)
  b, t = batch.input_ids.shape
  mesh, tx, trainable, state, shardings = gpu_train_step.one_device_train_state(cfg, lr=1e-6)
  ref = jax.tree.map(lambda x: x.copy(), state.params)
  gbatch = batch.replace(old_logps=np.zeros(batch.labels.shape, np.float32),
                         rewards=np.random.default_rng(0).random(b).astype(np.float32))
  gcfg = grpo.GRPOStepConfig(group_size=b, beta=0.04, logps_chunk_size=shp["chunk"])
  logps_fn = grpo.make_logps_fn(setup_lib.make_forward(q.Qwen2_5_VL(cfg), grid), temperature=1.0,
                                chunk_size=shp["chunk"], unembed_fn=setup_lib.make_unembed(cfg))
  step = grpo_step.make_grpo_step(logps_fn, tx, gcfg, state_shardings=shardings,
                                  batch_sharding=gbatch.shardings(mesh),
                                  mesh=mesh, trainable=trainable)
  gb = gbatch.shard(mesh)
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    with state_lib.sharding_context(mesh):
      state, m = step(state, ref, gb)
    float(jax.device_get(m["loss"]))
    times.append(time.perf_counter() - t0)
  return {"rows": b, "seq_len": t, "first_s": times[0], "update_s": times[1],
          "peak_bytes": gpu_train_step.peak_memory()}


def part_live(args) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from streampro_jax import live  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup  # pylint: disable=g-import-not-at-top
  import live_stream  # pylint: disable=g-import-not-at-top

  tok = _tokenizer(tempfile.mkdtemp(prefix="gpu_suite_tok_"))
  dtype = "float32" if args.tiny else "bfloat16"
  cfg = model_config(args.tiny, tok, dtype=dtype, param_dtype=dtype, scan_layers=True)
  params = setup.random_params(cfg, seed=0)
  frame = _frame(args.tiny)
  model = live.LiveModel(params, cfg, tok, live.LiveConfig(
      frame_height=frame, frame_width=frame, max_text_tokens=16, constrain_decision=True,
      force_response_at_ask=True))
  compile_s = model.warm_up()
  seconds = args.live_seconds
  run = live_stream.stream(model, turns=seconds, every=max(1, seconds // 20), ask_every=60,
                           frame_hw=(frame, frame), log=lambda s: print(s, flush=True))
  lat = np.asarray(run["lat"])
  dev = [s["device_mb"] for s in run["samples"]]
  stats = {}
  if jax.devices()[0].platform == "gpu":
    stats = {k: v for k, v in (jax.devices()[0].memory_stats() or {}).items()
             if k in ("peak_bytes_in_use", "bytes_in_use")}
  return [{"part": "live", "seconds_of_video": seconds, "frames_per_second": 1,
           "compile_s": compile_s, "wall_s": run["wall_s"],
           "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
           "max_s": float(lat.max()), "target_p95_s": 0.25,
           "device_mb_first_last": [dev[0], dev[-1]], "device_mb_min_max": [min(dev), max(dev)],
           "decisions": run["decisions"], "overflow": run["overflow"],
           "kv_capacity": model.capacity, "samples": run["samples"], **stats}]


PART_FNS = {"sft": part_sft, "decode": part_decode, "grpo": part_grpo, "live": part_live}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tiny", action="store_true", help="tiny models on CPU (a test runs it)")
  p.add_argument("--parts", default=",".join(PARTS))
  p.add_argument("--part", default="", help=argparse.SUPPRESS)   # a child's one part
  p.add_argument("--out", default="")
  p.add_argument("--prompts", type=int, default=0, help="GRPO samples per step (0: 1 tiny, 2)")
  p.add_argument("--grpo_turns", type=int, default=0, help="turns per sample (0: 12 tiny, 32)")
  p.add_argument("--grpo_steps", type=int, default=2, help="timed GRPO steps after the first")
  p.add_argument("--frames_search", default="", help="turns per sample tried at G = 8, "
                 "ascending (default: 2,4 tiny; 64,128,192)")
  p.add_argument("--live_seconds", type=int, default=0, help="0: 600 (tiny: 30)")
  p.add_argument("--hbm_bytes_per_s", type=float, default=H200_HBM)
  args = p.parse_args()
  args.prompts = args.prompts or (1 if args.tiny else 2)
  args.frames_search = args.frames_search or ("2,4" if args.tiny else "64,128,192")
  args.live_seconds = args.live_seconds or (30 if args.tiny else 600)
  if args.tiny:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.grpo_steps == 2:
      args.grpo_steps = 1
  if args.part:
    for r in PART_FNS[args.part](args):
      emit(**r)
    return
  header = {"commit": cpu_rounds.commit(ROOT), "command": "python3 benchmarks/gpu_suite.py " +
            " ".join(sys.argv[1:]), "machine": f"{platform.node()}, {os.cpu_count()} CPUs",
            "versions": _versions()}
  rows = []
  for part in args.parts.split(","):
    if part not in PART_FNS:
      raise SystemExit(f"--parts: unknown part {part!r}; known: {', '.join(PARTS)}")
    load0, t0 = os.getloadavg(), time.time()
    argv = [os.path.abspath(__file__), "--part", part] + sys.argv[1:]
    argv = [a for a in argv if not a.startswith("--out")]
    lines, rc = _child(args, argv, 600)
    got = [json.loads(l[len("RESULT "):]) for l in lines if l.startswith("RESULT ")]
    if rc != 0 or not got:
      got.append({"part": part, "error": f"exit {rc}", "tail": lines[-30:]})
    for r in got:
      rows.append({**header, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                   "load_before": load0, "load_after": os.getloadavg(),
                   "part_wall_s": time.time() - t0, **r})
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")
  print("\n== suite ==")
  for r in rows:
    print(json.dumps({k: v for k, v in r.items() if k not in header and k != "samples"})[:400])


if __name__ == "__main__":
  main()
