"""Tests of the streaming evaluation harness (bench/harness.py) and launch/evaluate.py."""

import functools
import importlib.util
import json
import os

import numpy as np
import pytest

from streampro_jax import sampling
from streampro_jax.bench import checkpoints, harness, ovo, streamingbench, streampro_f1
from streampro_jax.data import chat_format, peer_loaders, synthetic

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Values here are host-side float64 arithmetic (Python floats) of a few dozen operations on
# values of order one, compared with hand-computed references: tol.approx64, rel and abs
# gamma_64 in float64 (7e-15) (tests/helpers/tolerances.py).

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def _load_launcher():
  """launch/evaluate.py as a module (once: it defines absl flags)."""
  spec = importlib.util.spec_from_file_location("evaluate_launcher",
                                                os.path.join(ROOT, "launch", "evaluate.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _turns(decisions_texts):
  return [{"turn": k, "time": float(k + 1), "decision": d, "text": x, "message": ""}
          for k, (d, x) in enumerate(decisions_texts)]


def _oracle_result(item):
  """The result line of a model that answers exactly as the ground truth's chat format."""
  plans = chat_format.plan_turns(item.record, item.question)
  turns = _turns([("response", p.text) if p.decision == chat_format.DECISION_RESPONSE
                  else ("silence", "") for p in plans])
  return {"id": item.id, "record_id": item.record.id, "question_id": item.question.id,
          "task": item.question.task, "num_turns": len(plans),
          "ask_turn": chat_format.ask_turn(item.question.ask_time, len(plans)),
          "predictions": [[t["time"], t["text"]] for t in turns if t["decision"] == "response"],
          "turns": turns}


@pytest.mark.slow
def test_end_to_end_tiny_model_synthstream(tmp_path):
  """launch/evaluate.py on a random tiny model: results, scores and report files; resume."""
  ev = _load_launcher()
  workdir = str(tmp_path / "eval")
  ev.flags.FLAGS(["evaluate", "--benchmark=synthstream", "--checkpoint=random",
                  f"--workdir={workdir}", "--max_videos=3", "--batch_size=2",
                  "--max_text_tokens=3", "--synth_num_videos=3", "--noprogress_bar"])
  ev.main([])
  for name in ("results.jsonl", "scores.json", "results.json", "table.md", "f1_by_task.png",
               "response_offsets.png", "precision_recall.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  results = harness._read_results(os.path.join(workdir, harness.RESULTS_FILE))
  records = [synthetic.make_record("test", i, config=synthetic.SynthConfig(
      resolution=32, min_duration=12, max_duration=16)) for i in range(3)]
  items = harness.benchmark_items(records)
  assert sorted(results) == sorted(it.id for it in items)
  for it in items:
    res = results[it.id]
    assert res["num_turns"] == it.num_turns == len(res["turns"])
    assert {t["decision"] for t in res["turns"]} <= {"silence", "response", "invalid"}
    assert res["predictions"] == [[t["time"], t["text"]] for t in res["turns"]
                                  if t["decision"] == "response"]
    assert not res["overflow"]
  scores = json.load(open(os.path.join(workdir, "scores.json")))
  assert scores["decisions"]["turns"] == sum(it.num_turns for it in items)
  table = open(os.path.join(workdir, "table.md")).read()
  assert "W-Avg" in table

  # Resume: a complete file runs nothing; a torn last line reruns only that item.
  def no_frames(record, k):
    raise AssertionError("nothing should run")
  hcfg = harness.HarnessConfig(batch_size=2, frame_height=16, frame_width=16,
                               max_text_tokens=3, progress=False)
  path = os.path.join(workdir, harness.RESULTS_FILE)
  again = harness.run_benchmark(None, None, None, items, path, hcfg, frames_fn=no_frames)
  assert [r["id"] for r in again] == [it.id for it in items]
  lines = open(path).read().splitlines()
  with open(path, "w") as f:
    f.write("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
  params, model_config, tokenizer, _ = checkpoints.load_model("random", config_path=None,
                                                              tokenizer_dir=None, workdir=workdir)
  calls = []

  def frames(record, k):
    calls.append(record.id)
    return harness._load_frames(record, k, size=(16, 16))
  redo = harness.run_benchmark(params, model_config, tokenizer, items, path, hcfg,
                               frames_fn=frames)
  torn = json.loads(lines[-1])["id"]
  assert calls == [torn.split("/")[0]]
  # Greedy decoding: the rerun reproduces the lost line exactly.
  assert [r for r in redo if r["id"] == torn][0] == json.loads(lines[-1])


def test_streampro_items_oracle_and_silent():
  records = [synthetic.make_record("test", i, config=synthetic.SynthConfig(
      resolution=32, min_duration=12, max_duration=16)) for i in range(7)]
  items = harness.benchmark_items(records)
  assert len(items) == 7 and len({it.question.task for it in items}) == 7
  oracle = [_oracle_result(it) for it in items]
  scored = streampro_f1.score_benchmark(harness._streampro_items(oracle, items),
                                        _exact_judge())
  # Responses dated Y = k + 1 on the ground-truth turns: exact texts, small time offsets.
  assert scored["scores"]["W-Avg"] > 0.8
  for res in oracle:
    assert all(float(t) == float(int(t)) for t, _ in res["predictions"])
  silent = [dict(r, predictions=[]) for r in oracle]
  scored = streampro_f1.score_benchmark(harness._streampro_items(silent, items), _exact_judge())
  assert scored["scores"]["W-Avg"] == 0.0
  stats = harness._decision_stats(oracle)
  assert stats["turns"] == sum(it.num_turns for it in items)
  assert stats["response"] == sum(len(r["predictions"]) for r in oracle)
  with pytest.raises(KeyError):
    harness._streampro_items(oracle[:-1], items)


def _exact_judge():
  from streampro_jax import judges
  return judges.MatchJudge()


def test_benchmark_items_and_max_videos():
  records = [synthetic.make_record("test", i) for i in range(4)]
  items = harness.benchmark_items(records, max_videos=2)
  assert [it.id for it in items] == ["synth-test-000000/q0", "synth-test-000001/q0"]
  assert items[0].num_turns == chat_format.num_turns(records[0].duration)


def test_read_results_skips_torn_lines(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_text('{"id": "a", "x": 1}\n{"id": "b"\n\n{"id": "c"}\n')
  assert sorted(harness._read_results(str(path))) == ["a", "c"]
  assert harness._read_results(str(tmp_path / "missing.jsonl")) == {}


def test_wait_prompt_format(synthetic_tokenizer):
  tok = synthetic_tokenizer
  fmt = sampling.WaitPromptFormat(tok, tokens_per_turn=4)
  text = tok.decode(fmt.user_ids(3, "What colour is the circle?"), skip_special_tokens=False)
  assert text.startswith("<|im_start|>user\n<3s-4s>\n<|vision_start|>")
  assert text.count("<|video_pad|>") == 4
  assert "Question: What colour is the circle?" in text and '"Wait"' in text
  assert text.endswith("<|im_end|>\n")
  plain = tok.decode(fmt.user_ids(3, None), skip_special_tokens=False)
  assert "Question" not in plain
  assert fmt.parse(" Wait.") == (sampling.TURN_SILENCE, "")
  assert fmt.parse("wait") == (sampling.TURN_SILENCE, "")
  assert fmt.parse("  The circle is red. ") == (sampling.TURN_RESPONSE, "The circle is red.")
  assert fmt.parse("   ") == (sampling.TURN_INVALID, "")
  assert fmt.repeat_question


def _sb_file(tmp_path):
  data = [{"time": "[0:00:00 - 0:01:00]", "video_path": "v0.mp4", "video_categories": "x",
           "questions": [
               {"task_type": "Object Recognition", "question": "What is it?",
                "time_stamp": "00:00:05", "options": ["A. cat", "B. dog"], "answer": "B"},
               {"task_type": "Counting", "question": "How many?", "time_stamp": "00:00:08",
                "options": ["A. 1", "B. 2"], "answer": "A"},
               {"task_type": "Proactive Output", "question": "Tell me when the dog runs.",
                "time_stamp": "00:00:02", "ground_truth_time_stamp": "00:00:10",
                "ground_truth_output": "now"}]}]
  path = tmp_path / "questions_real.json"
  path.write_text(json.dumps(data))
  return str(path)


def _result(rec, qid, preds):
  q = rec.question(qid)
  k = chat_format.num_turns(rec.duration)
  return {"id": harness.item_id(rec.id, qid), "question_id": qid, "task": q.task,
          "ask_turn": chat_format.ask_turn(q.ask_time, k), "num_turns": k,
          "predictions": [[float(t), x] for t, x in preds]}


def test_streamingbench_adapters(tmp_path):
  path = _sb_file(tmp_path)
  records, _ = peer_loaders.load_streamingbench(path, probe_videos=False, tail=10.0)
  rec = records[0]
  results = [
      _result(rec, "e0q0", [(3, "A"), (6, "B. dog")]),   # before the ask turn is ignored
      _result(rec, "e0q1", []),                          # silent: missing
      _result(rec, "e0q2", [(2, "early"), (9, "now it runs"), (12, "again")]),
  ]
  questions = streamingbench.load_questions(path)
  rtvu_q = [q for q in questions if q["task_type"] != "Proactive Output"]
  responses = harness.streamingbench_rtvu_responses(results)
  assert responses[(0, 0)] == "B. dog" and (0, 1) not in responses
  score = streamingbench.score_rtvu(rtvu_q, responses)
  assert score["total"] == 1.0 and score["n_missing"] == 1
  pro_q = [q for q in questions if q["task_type"] == "Proactive Output"]
  hist = harness.streamingbench_proactive_histories(results, pro_q)
  # Polling window is [2 + 1, 10 + 4]: the response at 2 s is before it, 9 s is the first yes.
  assert hist == {(0, 2): [{"time": 9.0, "content": "now it runs"}]}
  score = streamingbench.score_proactive(pro_q, hist)
  assert score["time_accuracy"] == 1.0 and score["answer_accuracy"] == 1.0


def test_ovo_adapter(tmp_path):
  data = [
      {"id": 1, "task": "EPM", "video": "a.mp4", "realtime": 4.0, "question": "Q?",
       "options": ["x", "y", "z"], "gt": 2},
      {"id": 2, "task": "CRR", "video": "a.mp4", "question": "Is it open?",
       "test_info": [{"realtime": 3.0, "type": 0}, {"realtime": 8.0, "type": 1}]},
      {"id": 3, "task": "SSR", "video": "a.mp4",
       "test_info": [{"realtime": 2.0, "step": "cut", "type": 1},
                     {"realtime": 6.0, "step": "fry", "type": 1}]},
  ]
  path = tmp_path / "ovo.json"
  path.write_text(json.dumps(data))
  records, _ = peer_loaders.load_ovo_bench(str(path), probe_videos=False, tail=5.0)
  rec = records[0]
  results = [_result(rec, "1", [(5, "C")]),
             _result(rec, "2", [(2, "No"), (8, "Yes")]),
             _result(rec, "3/0", [(2, "Yes")]),
             _result(rec, "3/1", [])]
  out = harness.ovo_results(results, records)
  assert out["backward"] == [{"id": 1, "task": "EPM", "ground_truth": "C", "response": "C"}]
  (crr, ssr) = sorted(out["forward"], key=lambda x: x["task"])
  assert [p["response"] for p in crr["test_info"]] == ["No", "Yes"]
  assert [p["response"] for p in ssr["test_info"]] == ["Yes", None]
  scores = ovo.score(out)
  assert scores["tasks"]["EPM"] == 1.0 and scores["tasks"]["CRR"] == 1.0
  assert scores["tasks"]["SSR"] == 0.5


def test_pauc_adapter(tmp_path):
  from streampro_jax.bench import pauc
  data = [{"video": "v.mp4", "question_id": "p1", "duration": 30,
           "conversation": [{"role": "user", "time": 0, "content": "Narrate."}],
           "answer": [{"role": "assistant", "content": "he opens the door",
                       "reply_timespan": [4, 10], "related_timespan": [4, 8]},
                      {"role": "assistant", "content": "he sits",
                       "reply_timespan": [20, 24], "related_timespan": [20, 24]}]}]
  path = tmp_path / "WEB" / "anno.json"
  path.parent.mkdir()
  path.write_text(json.dumps(data))
  records, _ = peer_loaders.load_proactivevideoqa(str(path), probe_videos=False)
  results = [_result(records[0], "p1", [(6, "he opens the door"), (15, "noise")])]
  grades = []

  def grade(question, reference, prediction):
    grades.append((reference, prediction))
    return 2.0 if prediction == reference else 0.0
  ex = harness.pauc_examples(results, records, grade)
  assert grades == [("he opens the door", "he opens the door")]
  assert ex[0]["answer"][0]["judge_scores"] == {6.0: 2.0}
  assert ex[0]["answer"][1]["judge_scores"] == {}
  got = pauc.score(ex)["omega=0.5"]
  want = (pauc.turn_score([6.0], [2.0], (4, 10)) + pauc.turn_score([], [], (20, 24))) / 2
  assert got == tol.approx64(want)
  assert np.isfinite(got)


def test_restore_train_params(tmp_path):
  """The evaluation reads the params of the newest orbax SFT checkpoint."""
  import jax.numpy as jnp
  from streampro_jax.train import checkpoint as ckpt_lib
  from streampro_jax.train import state as state_lib
  params = {"layer": {"kernel": jnp.arange(6.0).reshape(2, 3)}, "bias": jnp.ones(4)}
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=3, every_steps=1)
  for step in (2, 5):
    state = state_lib.TrainState(step=jnp.asarray(step, jnp.int32),
                                 params={"layer": {"kernel": params["layer"]["kernel"] * step},
                                         "bias": params["bias"]},
                                 opt_state={"mu": jnp.zeros(4)})
    ckpt.save(step, state)
  ckpt.close()
  got = checkpoints._restore_train_params(str(tmp_path / "checkpoints"))
  np.testing.assert_array_equal(np.asarray(got["layer"]["kernel"]),
                                5 * np.arange(6.0).reshape(2, 3))
  np.testing.assert_array_equal(np.asarray(got["bias"]), np.ones(4))


def _tiny_hf_folder(path, seed, frame_size=16):
  """A tiny random Qwen2.5-VL HF folder with the synthetic tokenizer, and the record
  launch/convert_checkpoint.py writes next to an exported model (its training frame size)."""
  import jax
  import ml_collections
  from streampro_jax import models
  from streampro_jax.data import tokenizer as tok_lib
  tok = tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(), str(path))
  cfg = models.config_from_section(ml_collections.ConfigDict(dict(
      family="qwen2_5_vl", hf_checkpoint="", tiny_text=dict(num_hidden_layers=1),
      tiny_vision=dict(depth=1, fullatt_block_indexes=(0,)))), tok)
  import flax.linen as nn
  params = nn.unbox(models.backbone_module(cfg).init_params(cfg, jax.random.key(seed)))
  models.backbone_module(cfg).save_hf_checkpoint(cfg, params, str(path))
  with open(os.path.join(path, "streampro_conversion.json"), "w") as f:
    json.dump({"source": "workdir", "frame_height": frame_size, "frame_width": frame_size}, f)
  return str(path)


@pytest.mark.slow
def test_evaluate_never_mixes_two_checkpoints(tmp_path):
  """Issue 16 items 1, 5, 9: a second checkpoint into the same workdir stops naming what
  differs (it reported the first model's predictions under the second one's name); --overwrite
  starts fresh; an exported folder is streamed at its training frame size (it used 224 px);
  a missing --checkpoint is a usage error naming it (it was a bare traceback)."""
  from absl import app
  ev = _load_launcher()
  a = _tiny_hf_folder(tmp_path / "model_a", 0)
  b = _tiny_hf_folder(tmp_path / "model_b", 1)
  assert checkpoints.trained_frame_size(a, None)[0] == 16
  workdir = str(tmp_path / "eval")
  args = ["evaluate", "--benchmark=synthstream", f"--workdir={workdir}", "--max_videos=1",
          "--batch_size=1", "--max_text_tokens=2", "--synth_num_videos=1", "--max_turns=4",
          "--noprogress_bar", "--nooverwrite"]
  ev.flags.FLAGS(args + [f"--checkpoint={a}"])
  ev.main([])
  ident = json.load(open(os.path.join(workdir, harness._IDENTITY_FILE)))
  assert ident["checkpoint"]["path"] == a and ident["decoding"]["frame_height"] == 16
  first = open(os.path.join(workdir, harness.RESULTS_FILE)).read()

  ev.flags.FLAGS(args + [f"--checkpoint={b}"])
  with pytest.raises(SystemExit) as e:
    ev.main([])
  assert e.value.code == 2
  assert open(os.path.join(workdir, harness.RESULTS_FILE)).read() == first  # untouched

  with pytest.raises(harness.ResultsMismatch, match=r"checkpoint\.path: .*model_a.* -> "
                     r".*model_b"):
    harness._check_results_identity(os.path.join(workdir, harness.RESULTS_FILE),
                                   {**ident, "checkpoint": {"kind": "hf", "path": b}})
  ev.flags.FLAGS(args[:-1] + [f"--checkpoint={b}", "--overwrite"])
  ev.main([])
  assert os.path.exists(os.path.join(workdir, harness.RESULTS_FILE + ".replaced.0"))
  ident = json.load(open(os.path.join(workdir, harness._IDENTITY_FILE)))
  assert ident["checkpoint"]["path"] == b
  scores = json.load(open(os.path.join(workdir, "scores.json")))
  assert scores["identity"]["checkpoint"]["path"] == b and scores["judge"]["class"]

  ev.flags.FLAGS(args + ["--checkpoint=/nonexistent"])
  with pytest.raises(app.UsageError, match="/nonexistent: no such folder"):
    ev.main([])
