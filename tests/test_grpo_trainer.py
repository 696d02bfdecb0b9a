"""The GRPO loop end to end: tiny Qwen2.5-VL on SynthStream, from an SFT checkpoint, sharded over
8 fake CPU devices (data 2, fsdp 2, tensor 2), checkpoint and resume; plus the reward scorer.

The SFT checkpoint is written the way launch/train_sft.py writes one (train/checkpoint.py,
TrainState of the SFT optimizer at step 0 + the SFT data iterator state); the GRPO run must read
its params (and only them) as the initial and the reference policy.
"""

import os
import shutil

import jax
import numpy as np
import pytest

from configs import tiny_synthetic_grpo
from streampro_jax import sampling
from streampro_jax.data import schema, synthetic
from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import grpo_data, grpo_rewards, grpo_trainer, metrics, optim
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order


def _config(sft_dir, total_steps):
  c = tiny_synthetic_grpo.get_config()
  c.init.sft_workdir = sft_dir
  c.total_steps = total_steps
  c.tensorboard = False
  c.model.tiny_text = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1)
  c.model.tiny_vision = dict(depth=1, hidden_size=32, fullatt_block_indexes=(0,))
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  c.data.num_videos = 8
  c.data.synth = dict(resolution=32, min_duration=12, max_duration=12, difficulty=0)
  c.data.max_turns, c.data.seq_len = 8, 576
  c.rollout.max_text_tokens = 4
  c.rollout.capacity = 1024
  c.checkpoint.every_steps, c.checkpoint.keep, c.checkpoint.async_save = 1, 5, False
  return c


def _write_sft_checkpoint(config, sft_dir):
  """An SFT-run checkpoint (step 0 of a random init, SFT optimizer with its Adam state)."""
  from streampro_jax.models import qwen2_5_vl  # pylint: disable=g-import-not-at-top
  tok = setup_lib.make_tokenizer(config, sft_dir)
  mcfg = setup_lib.make_model_config(config.model, tok)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1),
                           ("data", "fsdp", "tensor"))
  tx = optim.make_optimizer(config.optim, total_steps=10)
  state, _ = state_lib.create_train_state(lambda r: qwen2_5_vl.init_params(mcfg, r), tx, mesh,
                                          jax.random.key(7))
  ck = ckpt_lib.Checkpointer(os.path.join(sft_dir, "checkpoints"), async_save=False)
  ck.save(3, state)
  ck.close()
  return jax.device_get(state.params)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
  root = tmp_path_factory.mktemp("grpo")
  sft_dir, work = str(root / "sft"), str(root / "a")
  sft_params = _write_sft_checkpoint(_config(sft_dir, 2), sft_dir)
  trainer = grpo_trainer.GRPOTrainer(_config(sft_dir, 2), work)
  assert jax.tree.leaves(trainer.state.params)[0].sharding.mesh.devices.size == 8
  for a, b in zip(jax.tree.leaves(jax.device_get(trainer.ref_params)),
                  jax.tree.leaves(sft_params)):
    np.testing.assert_array_equal(a, b)  # initial = reference = the SFT checkpoint's params
  state = trainer.train()
  return dict(root=root, sft_dir=sft_dir, work=work, params=jax.device_get(state.params),
              sft_params=sft_params, compiles=trainer.sampler.compile_counts(),
              step=int(jax.device_get(state.step)), model_config=trainer.model_config)


@pytest.mark.slow
def test_grpo_runs_from_sft_checkpoint_and_logs_metrics(run_a):
  assert run_a["step"] == 2
  log = metrics.read_jsonl(os.path.join(run_a["work"], "metrics.jsonl"))
  assert sorted(log) == [1, 2]
  m = log[1]
  for key in ("reward", "reward_fmt", "reward_turn", "reward_traj", "kl", "clip_fraction",
              "response_rate", "zero_variance_groups", "rollout_s", "reward_s", "update_s",
              "behaviour_gap", "grad_norm", "loss"):
    assert np.isfinite(m[key]), key
  assert 0.0 <= m["response_rate"] <= 1.0 and 0.0 <= m["reward_fmt"] <= 1.0
  assert m["rows"] == 8 and m["judge_failures"] == 0
  # The sampler's log-probs are the teacher-forced ones of the same params: two summation orders
  # (KV cache of 1,024 slots vs the update's forward over 576), each token within
  # tol.logp_bound on a logit bound from the step-1 (SFT) parameters, so their mean too.
  mcfg = run_a["model_config"]
  tol.assert_within(m["behaviour_gap"],
                    tol.logp_bound(mcfg, 1024, tol.logit_bound(run_a["sft_params"], mcfg)),
                    "grpo trainer: behaviour_gap")
  assert log[2]["kl"] > 0.0  # step 2's policy moved away from the reference
  # user: the question turn's bucket and the small bucket of the other turns.
  assert run_a["compiles"] == {"prefix": 1, "user": 2, "decode": 1}
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(run_a["params"]), jax.tree.leaves(run_a["sft_params"])))
  assert diff > 0.0
  assert sorted(os.listdir(os.path.join(run_a["work"], "checkpoints"))) == ["1", "2"]


@pytest.mark.slow
def test_resume_from_checkpoint_equals_uninterrupted_run(run_a):
  work_b = str(run_a["root"] / "b")
  shutil.copytree(run_a["work"], work_b)
  shutil.rmtree(os.path.join(work_b, "checkpoints", "2"))
  trainer = grpo_trainer.GRPOTrainer(_config(run_a["sft_dir"], 2), work_b)
  assert int(jax.device_get(trainer.state.step)) == 1
  assert trainer.prompts.position == 2  # one step of 2 samples was consumed
  state = trainer.train()
  # The same programs on the same mesh and inputs: bit for bit.
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)),
                  jax.tree.leaves(run_a["params"])):
    np.testing.assert_array_equal(a, b)


def _record(task, answers, rubric, duration=10.0):
  return schema.parse_record({
      "id": "r", "video": "synth://x", "duration": duration,
      "questions": [{"id": "q0", "task": task, "ask_time": 0.0, "question": "What?",
                     "answers": answers, "rubric": rubric}]})


def _rollout_batch(messages_per_row, group_size):
  n, k = len(messages_per_row), len(messages_per_row[0])
  dec = np.asarray([[sampling.TURN_RESPONSE if m.startswith("</Response>")
                      else sampling.TURN_SILENCE for m in row] for row in messages_per_row],
                    np.int32)
  z = np.zeros((n, 4), np.float32)
  return sampling.RolloutBatch(
      input_ids=z.astype(np.int32), labels=z.astype(np.int32), loss_mask=z, forced_mask=z,
      decision_class=z.astype(np.int32), attention_mask=z.astype(np.int32),
      position_ids=np.zeros((3, n, 4), np.int32), pixel_values_videos=np.zeros((n, 1, 1)),
      video_grid_thw=np.zeros((1, 3), np.int64), old_logps=z, sampling_logps=z,
      turn_index=z.astype(np.int32), decisions=dec, texts=[[""] * k] * n,
      messages=messages_per_row, num_turns=np.full((n,), k, np.int32),
      lengths=np.full((n,), 4, np.int32), sample_index=np.arange(n) // group_size,
      group_size=group_size, sample_ids=["r"], overflow=np.zeros((n,), bool))


def test_reward_scorer_by_hand():
  """Two rollouts of one sample; every reward computed by hand (tau 8)."""
  s, r = "</Silence>", "</Response>"
  rec = _record("OU", [{"time": 3.0, "text": "red circle"}, {"time": 8.0, "text": "blue"}],
                ['Says "red circle" between 3s and 6s.', "Responds at most 3 times.",
                 "Responds at least 1 time.", 'Never mentions "green".'])
  # Row 0: responds "red circle" at Y = 3 (turn 2) and "green" at Y = 9 (turn 8); one invalid turn.
  row0 = [s, s, r + " red circle", s, s, s, "oops", s, r + " green", s]
  # Row 1: silent throughout.
  row1 = [s] * 10
  batch = _rollout_batch([row0, row1], 2)
  scorer = grpo_rewards.RewardScorer(grpo_rewards._SyntheticRubricJudge(), tau=8.0,
                                     max_turns=10, max_answers=4, max_checks=4)
  out = scorer.score(batch, [(rec, 0)])
  np.testing.assert_allclose(out["reward_fmt"], [0.9, 1.0])
  # Row 0: GT (3, red circle) takes pred (3, red circle): S' = 1 + 1 = 2; GT (8, blue) takes the
  # remaining pred (9, green): S' = (1 - 1/8) + 0 = 0.875. R_turn = 2 * 2.875 / (2 + 2).
  # (R_turn's formula: two S' sums, P, R and the F1: at most 8 roundings, float32 or not.)
  np.testing.assert_allclose(out["reward_turn"], [1.4375, 0.0], rtol=tol.rel_ops_bound(8))
  # Row 0 passes the window and both count checks but mentions "green": 3/4; row 1 (silent)
  # passes "at most 3" and "never green": 2/4.
  np.testing.assert_allclose(out["reward_traj"], [0.75, 0.5], rtol=tol.rel_ops_bound(8))
  assert out["judge_failures"].tolist() == [0, 0]
  # An answer due after the rollout's last turn (a 16 s record cut to 10 turns) is not a
  # ground truth.
  rec_late = _record("OU", [{"time": 3.0, "text": "red circle"}, {"time": 14.0, "text": "x"}],
                     [], duration=16.0)
  row = [s, s, r + " red circle"] + [s] * 7
  # No rubric: an error by default (reward.missing_rubric = "error") ...
  with pytest.raises(ValueError, match="has no rubric.*write_rubrics"):
    scorer.score(_rollout_batch([row, row], 2), [(rec_late, 0)])
  # ... or R_traj = 0, counted, with the "zero" fallback.
  scorer.missing_rubric = "zero"
  out = scorer.score(_rollout_batch([row, row], 2), [(rec_late, 0)])
  np.testing.assert_allclose(out["reward_turn"], [2.0, 2.0], rtol=tol.rel_ops_bound(8))
  np.testing.assert_allclose(out["reward_traj"], [0.0, 0.0])
  assert out["rubric_fallbacks"].tolist() == [1, 1]


def test_synthetic_judge_counts_unknown_templates_as_failures():
  judge = grpo_rewards._SyntheticRubricJudge()
  marks = judge.check_responses([(3.0, "red circle")], ['Mentions "red circle".', "Be nice."])
  assert marks == [True, None] and judge.stats.failures == 1
  assert synthetic.check_rubric('Mentions "red circle".', [(3.0, "red circle")])


def test_prompt_iterator_state_resumes_exactly():
  from streampro_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  src = pipeline.synthetic_source("train", 5)
  src.frames = lambda rec: np.zeros((1,), np.uint8)  # no rendering needed here
  it = grpo_data._PromptIterator(src, 2, seed=3)
  first = [[(r.id, q) for r, q, _ in next(it)] for _ in range(2)]
  state = it.get_state()
  want = [[(r.id, q) for r, q, _ in next(it)] for _ in range(4)]  # crosses the epoch boundary
  it2 = grpo_data._PromptIterator(src, 2, seed=3)
  it2.set_state(state)
  assert [[(r.id, q) for r, q, _ in next(it2)] for _ in range(4)] == want
  ids = [x for b in first + want for x in b]
  assert sorted(ids[:5]) == sorted({x for x in ids[:5]})  # the first epoch is a permutation
