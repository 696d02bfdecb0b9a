"""Token-level reference runs of the streaming sampler's three users, on tiny random models.

The same inputs at fixed seeds for GRPO rollouts (the sampler as train/grpo_trainer.py calls it:
B prompts x G rollouts at temperature > 0), the evaluation harness (bench/harness.run_benchmark,
greedy) and a live session (live.LiveSession, one second at a time). `run_all()` returns, per
case, the token ids, decisions and messages of every row and turn; tests/test_sampling_reference.py
compares them with tests/fixtures/sampling_reference.json, which this module wrote at commit
c51d9b6, where the sampler was the module streampro_jax/rollout.py with the same names (the
file in commit f373da9 imports it so):

  PYTHONPATH=$PWD .venv/bin/python tests/helpers/sampling_reference.py \
      tests/fixtures/sampling_reference.json
"""

import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FRAME = 16          # 16 x 16 frames
QUESTION = "What colour is the circle?"


def _rows(batch):
  """Per row: the real tokens, the per-turn decision codes and the messages."""
  out = []
  for r in range(batch.input_ids.shape[0]):
    k = int(batch.num_turns[r])
    out.append({"input_ids": [int(x) for x in batch.input_ids[r, :int(batch.lengths[r])]],
                "decisions": [int(d) for d in batch.decisions[r, :k]],
                "messages": list(batch.messages[r])})
  return out


def _prompts(synthetic, sampling, proc, turns, *, force=False):
  sc = synthetic.SynthConfig(resolution=32, min_duration=12, max_duration=14)
  prompts = []
  for i, k in enumerate(turns):
    rec = synthetic.make_record("test", i, config=sc)
    prompts.append(sampling.prompt_from_record(
        rec, rec.questions[0], synthetic.render_frames(rec), proc, max_turns=k,
        frame_size=(FRAME, FRAME), force_response_at_ask=force))
  return prompts


def grpo_cases(tokenizer):
  """GRPO rollouts: B prompts x G rows, tempered sampling, on both backbones."""
  from streampro_jax import models
  from streampro_jax import sampling
  from streampro_jax.data import chat_format, synthetic
  from streampro_jax.train import setup
  out = {}
  for family in ("qwen2_5_vl", "qwen3_vl"):
    cfg = models.config_from_section(dict(family=family, attention_impl="xla"), tokenizer)
    params = setup.random_params(cfg, seed=0)
    proc = models.video_processor_config(cfg)
    grid = tuple(int(g) for g in proc.grid(FRAME, FRAME))
    chat = chat_format.ChatFormat(
        tokenizer, tokens_per_turn=grid[1] * grid[2] // cfg.vision.spatial_merge_size ** 2)
    prompts = _prompts(synthetic, sampling, proc, (5, 4, 6) if family == "qwen2_5_vl" else (4, 3))
    settings = {"t1": sampling.SamplerConfig(temperature=1.0, max_text_tokens=5)}
    if family == "qwen2_5_vl":
      settings["t07_p08_constrained"] = sampling.SamplerConfig(
          temperature=0.7, top_p=0.8, max_text_tokens=4, constrain_decision=True)
    for name, scfg in settings.items():
      sampler = sampling.StreamingSampler(cfg, chat, scfg, video_grid=grid)
      batch = sampler.sample(params, prompts, group_size=2, seed=3)
      out[f"grpo/{family}/{name}"] = _rows(batch)
  return out


def harness_case(params, mcfg, tok, workdir):
  """bench/harness.run_benchmark: greedy, batches of 2, both prompt styles."""
  from streampro_jax.bench import harness
  from streampro_jax.data import synthetic
  records = [synthetic.make_record("test", i, config=synthetic.SynthConfig(
      resolution=32, min_duration=12, max_duration=12)) for i in range(3)]
  items = harness.benchmark_items(records)
  out = {}
  for style in ("streampro", "wait"):
    hcfg = harness.HarnessConfig(batch_size=2, frame_height=FRAME, frame_width=FRAME,
                                 max_text_tokens=3, max_turns=6, prompt_style=style, progress=False,
                                 force_response_at_ask=(style == "wait"))
    res = harness.run_benchmark(params, mcfg, tok, items, os.path.join(workdir, f"{style}.jsonl"),
                                hcfg)
    out[f"harness/{style}"] = [{"id": r["id"], "turns": r["turns"],
                                "predictions": r["predictions"]} for r in res]
  return out


def live_case(params, mcfg, tok):
  """live.LiveSession: six seconds with a question on the third; a skip with a forced answer."""
  import numpy as np
  from streampro_jax import live
  frames = np.random.default_rng(0).integers(0, 256, (8, 2, FRAME, FRAME, 3), dtype=np.uint8)
  out = {}
  model = live.LiveModel(params, mcfg, tok, live.LiveConfig(
      frame_height=FRAME, frame_width=FRAME, max_text_tokens=6))
  s = model.new_session("s")
  out["live/plain"] = [s.step(frames[k], [QUESTION] if k == 2 else ()).to_json()
                       for k in range(6)]
  model = live.LiveModel(params, mcfg, tok, live.LiveConfig(
      frame_height=FRAME, frame_width=FRAME, max_text_tokens=4, force_response_at_ask=True,
      prompt_style="wait", max_question_tokens=200))
  s = model.new_session("w")
  got = [s.step(frames[0]), s.step(frames[1], ["Where is it?"], turn=5), s.step(frames[2]),
         s.step(frames[3], [QUESTION], turn=9)]
  out["live/wait_skips"] = [r.to_json() for r in got]
  for turns in out.values():
    for t in turns:
      del t["latency_s"]
  return out


def run_all(tokenizer_dir=None):
  """Every case's outputs (tokenizer_dir: where the synthetic tokenizer is built)."""
  from configs import tiny_synthetic
  from streampro_jax.data import synthetic
  from streampro_jax.data import tokenizer as tok_lib
  from streampro_jax.train import setup
  with tempfile.TemporaryDirectory() as tmp:
    tok = tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(),
                                            tokenizer_dir or os.path.join(tmp, "tok"))
    out = grpo_cases(tok)
    params, mcfg, tok2 = setup.random_model(tiny_synthetic.get_config(),
                                            os.path.join(tmp, "model"))
    out.update(harness_case(params, mcfg, tok2, tmp))
    out.update(live_case(params, mcfg, tok2))
  return out


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  sys.path.insert(0, ROOT)
  result = run_all()
  with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump(result, f, indent=None, separators=(",", ":"))
    f.write("\n")
  print({k: len(v) for k, v in result.items()})
