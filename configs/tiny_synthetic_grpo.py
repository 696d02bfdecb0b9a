"""Tiny GRPO run on SynthStream from the tiny SFT model (configs/tiny_synthetic.py): CPU, minutes.

  .venv/bin/python launch/train_sft.py --config configs/tiny_synthetic.py --workdir /tmp/tiny
  .venv/bin/python launch/train_grpo.py --config configs/tiny_synthetic_grpo.py \
      --workdir /tmp/tiny_grpo --config.init.sft_workdir=/tmp/tiny

The judge needs no LLM: answers are scored by exact / span match (judges.MatchJudge) and the
rubric checkpoints by synthetic.check_rubric ("synthetic" judge). Model, tokenizer and frame size
are those of tiny_synthetic.py (the SFT checkpoint's parameters must fit). Sampling constrains
the first token of a message to the two decision tokens (rollout.constrain_decision), so that an
undertrained tiny model produces some well-formed turns and the groups get non-zero advantages;
the paper settings (configs/qwen2_5_vl_3b_grpo.py) sample freely.

Every field of a GRPO config:
  seed, global_batch_size (samples per step; each gets G rollouts, so the update sees
  global_batch_size * G rows), num_epochs / total_steps, log_every_steps, tokenizer, tensorboard,
  debug_kill_after_step, debug_kill_mid_save: as the SFT configs (configs/common.py).
  init.sft_workdir / init.sft_step: the SFT run to start from (newest checkpoint when step -1);
    empty: model.hf_checkpoint, else a random init.
  model, mesh, optim, checkpoint: as the SFT configs (optim.frozen = the frozen vision tower).
  data: the record source (source, num_videos, split, synth_seed, synth ...) and the sizes:
    seq_len (T of the rollout rows, fixed so the update compiles once), max_turns (longer
    records are cut to their first max_turns turns), frame_size, seed, shuffle.
  grpo: group_size G, temperature, top_p, epsilon, beta (the KL coefficient), kl_estimator
    (k1 | k2 | k3), adv_eps, adv_ddof, aggregation
    (grpo.AGGREGATIONS), old_logps (rollout | recompute), num_passes (optimizer steps per batch),
    num_microbatches (exact accumulation), logps_chunk_size (0: full logits), ref_param_dtype
    ("" = the params' float32; "bfloat16" halves the frozen reference copy).
  reward: weights (fmt, turn, traj), tau (seconds), matching (R_turn's order: "gt_first", the
    paper's Algorithm 1, or "prediction_first"), judge ("synthetic" | "match" | a
    judges.build_judge config such as dict(kind="openai", base_url=..., model=...)),
    max_answers, max_checks (padded sizes), rubrics_file (a launch/write_rubrics.py output whose
    rubrics replace the records' own; "" = none), missing_rubric ("error" | "zero": a sample
    without a rubric stops the run, or gets R_traj = 0).
  rollout: rollout.SamplerConfig fields other than temperature / top_p (max_text_tokens: text
    tokens after </Response>; window_turns, constrain_decision, user_chunk_len, capacity,
    chunk_multiple, capacity_multiple, ...).
"""

import ml_collections

from configs import common
from configs import tiny_synthetic


def get_config():
  sft_cfg = tiny_synthetic.get_config()
  c = common.base_config()
  c.seed = 0
  c.global_batch_size = 2        # samples per step (x G rollouts = 8 rows)
  c.num_epochs = 1.0
  c.total_steps = 4
  c.log_every_steps = 1
  c.tokenizer = "synthetic"
  c.init = ml_collections.ConfigDict(dict(sft_workdir="", sft_step=-1))
  c.model = sft_cfg.model
  c.model.reinit_decision_rows = False  # GRPO starts from the SFT policy's trained rows
  c.mesh = common.mesh_config(data=-1, fsdp=1, tensor=1)
  c.data = common.data_config(
      source="synth", seq_len=1024, max_turns=16, frame_size=16, num_threads=1,
      num_videos=32, split="train", synth_seed=0,
      synth=dict(resolution=32, min_duration=12, max_duration=16, difficulty=0))
  c.optim = common.optim_config(lr=1e-4, warmup_ratio=0.0, weight_decay=0.0, grad_clip_norm=1.0)
  c.optim.schedule = "constant"
  c.grpo = ml_collections.ConfigDict(dict(
      group_size=4, temperature=1.0, top_p=1.0,
      epsilon=0.2, beta=0.04, kl_estimator="k3", adv_eps=1e-6, adv_ddof=1,
      aggregation="sequence-mean-token-mean", old_logps="rollout", num_passes=1,
      num_microbatches=1, logps_chunk_size=0, ref_param_dtype=""))
  c.reward = ml_collections.ConfigDict(dict(
      weights=(0.1, 0.45, 0.45), tau=8.0, matching="gt_first", judge="synthetic",
      max_answers=16, max_checks=16, rubrics_file="", missing_rubric="error"))
  c.rollout = ml_collections.ConfigDict(dict(
      window_turns=200, constrain_decision=True, user_chunk_len=96, capacity=2048,
      max_text_tokens=8))
  c.checkpoint = common.checkpoint_config(every_steps=2, keep=2)
  return c
