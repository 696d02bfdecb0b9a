"""StreamingBench, OVO-Bench and ProactiveVideoQA-PAUC scorers.

The fixtures below are built in the official file formats. The pinned numbers were produced by
running the official scoring code on exactly these inputs (StreamingBench src/data/count.py at
89299232, OVO-Bench utils/OVOBenchScore.py at c34093f9; docs/components.md#peer-scorers says how),
and are also derived by hand in the comments.
"""

import json

import pytest

from streampro_jax.bench import ovo, pauc, streamingbench

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Values here are host-side float64 arithmetic (Python floats) of a few dozen operations on
# values of order one, compared with hand-computed references: tol.approx64, rel and abs
# gamma_64 in float64 (7e-15) (tests/helpers/tolerances.py).

MODEL = "MyModel"

# (task_type, answer, response or None for "no entry for the model")
_RTVU = [
    [("Object Recognition", "A", "A"), ("Object Recognition", "B", "A. a cup"),
     ("Counting", "C", "C")],
    [("Counting", "D", " D"), ("Clips Summarize", "A", None),
     ("Clips Summarize", "B", "B. The man cooks.")],
    [("Causal Reasoning", "C", "c"), ("Causal Reasoning", "A", "A"), ("Counting", "B", "B")],
]

# (time_stamp, ground_truth_time_stamp, ground_truth_output, last reply (time, content) or None)
_PROACTIVE = [
    ("00:00:20", "00:00:29", "3", (30, "3")),                       # +1 s, output ok
    ("00:02:50", "00:02:58", "20", (181, "20")),                    # +3 s: late
    ("00:05:40", "00:05:47", "40", (345, "The score is 40.")),      # -2 s (inclusive), ok
    ("00:01:30", "00:01:40", "40", (102, "41")),                    # +2 s, wrong output
    ("00:03:00", "00:03:10", "7", None),                            # no entry: skipped
    ("00:04:00", "00:04:05", "9", (249, "no")),                     # never yes: +4 s
]


def rtvu_annotation():
  videos = []
  for vi, qs in enumerate(_RTVU):
    questions = []
    for qi, (task, answer, _) in enumerate(qs):
      questions.append({
          "task_type": task, "question": f"Question {vi}.{qi}?",
          "time_stamp": f"00:0{vi}:{10 + qi:02d}", "answer": answer,
          "options": ["A. one", "B. two", "C. three", "D. four"],
          "required_ability": "episodic memory"})
    videos.append({"time": "[0:00:00 - 0:00:10]", "questions": questions,
                   "video_categories": "cooking", "video_path": f"./videos/sample_{vi}_real.mp4"})
  return videos


def rtvu_official_output():
  """The annotation with each question's model response stored under MODEL (official format)."""
  videos = rtvu_annotation()
  for video, qs in zip(videos, _RTVU):
    for q, (_, _, resp) in zip(video["questions"], qs):
      if resp is not None:
        q[MODEL] = resp
  return videos


def _history(q_time, last):
  """An official dialog_history whose last assistant reply is `last`."""
  t, content = last
  hist = []
  for s in range(q_time + 1, t):
    hist += [{"role": "user", "content": "q", "time": s, "cost": 0.1},
             {"role": "assistant", "content": "No.", "time": s, "cost": 0.1}]
  hist += [{"role": "user", "content": "q", "time": t, "cost": 0.1},
           {"role": "assistant", "content": "Yes", "time": t, "cost": 0.1},
           {"role": "user", "content": "question", "time": t, "cost": 0.1},
           {"role": "assistant", "content": content, "time": t, "cost": 0.1}]
  return hist


def proactive_annotation():
  questions = []
  for i, (ts, gts, out, _) in enumerate(_PROACTIVE):
    questions.append({"task_type": "Proactive Output",
                      "question": f'When X happens, output "{out}". ({i})',
                      "time_stamp": ts, "ground_truth_time_stamp": gts,
                      "ground_truth_output": out, "required_ability": "working memory"})
  return [{"time": "[0:00:00 - 0:00:30]", "questions": questions[:3],
           "video_categories": "basketball", "video_path": "./videos/sample_17_proactive.mp4"},
          {"time": "[0:01:00 - 0:01:30]", "questions": questions[3:],
           "video_categories": "basketball", "video_path": "./videos/sample_18_proactive.mp4"}]


def proactive_official_output():
  videos = proactive_annotation()
  k = 0
  for video in videos:
    for q in video["questions"]:
      last = _PROACTIVE[k][3]
      if last is not None:
        hist = _history(streamingbench._hms_to_seconds(q["time_stamp"]), last)
        q[MODEL] = {"answered": last[0], "dialog_history": hist}
      k += 1
  return videos


def ovo_results():
  """An official OVO-Bench results JSON (backward, realtime, forward)."""
  def br(i, task, gt, response):
    return {"id": i, "video": "v.mp4", "task": task, "question": "q?", "response": response,
            "ground_truth": gt}
  backward = [br(0, "EPM", "A", "A"), br(1, "EPM", "B", "C"), br(2, "EPM", "C", None),
              br(3, "EPM", "D", "The answer is D."), br(4, "ASI", "A", "B"),
              br(5, "ASI", "B", "B"), br(6, "HLD", "C", "C.")]
  realtime = [br(10, "OCR", "A", "a"), br(11, "OCR", "B", "B"), br(12, "ACR", "D", "D"),
              br(13, "STU", "C", "Answer: C"), br(14, "STU", "A", "Answer: B")]
  forward = [
      {"id": 20, "video": "v.mp4", "task": "REC", "activity": "jump",
       "test_info": [{"realtime": 5, "count": 3, "response": "3"},
                     {"realtime": 9, "count": 12, "response": "I saw 1 and then 2"},
                     {"realtime": 12, "count": 4, "response": None},
                     {"realtime": 15, "count": 5, "response": "five"}]},
      {"id": 21, "video": "v.mp4", "task": "SSR", "test_info": [
          {"realtime": 3, "step": "s", "type": 0, "response": "N"},
          {"realtime": 4, "step": "s", "type": 0, "response": "No."},
          {"realtime": 5, "step": "s", "type": 1, "response": "yes"},
          {"realtime": 6, "step": "s", "type": 1, "response": "Y"},
          {"realtime": 7, "step": "s", "type": 1, "response": "Y."}]},
      {"id": 22, "video": "v.mp4", "task": "CRR", "test_info": [
          {"realtime": 3, "type": 0, "response": "no"},
          {"realtime": 8, "type": 1, "response": "Yes"},
          {"realtime": 9, "type": 0, "response": "Not yet. No"}]},
  ]
  return {"backward": backward, "realtime": realtime, "forward": forward}


# ---------------------------------------------------------------------------------------------
# StreamingBench.
# ---------------------------------------------------------------------------------------------


def _write(tmp_path, name, data):
  path = tmp_path / name
  path.write_text(json.dumps(data))
  return str(path)


def test_load_questions_flattens(tmp_path):
  qs = streamingbench.load_questions(_write(tmp_path, "real.json", rtvu_annotation()))
  assert len(qs) == 9
  assert [q["task_type"] for q in qs[:3]] == ["Object Recognition"] * 2 + ["Counting"]
  assert qs[4]["video_index"] == 1 and qs[4]["question_index"] == 1
  assert qs[4]["time_seconds"] == 71      # 00:01:11
  assert qs[4]["video_path"] == "./videos/sample_1_real.mp4"
  assert qs[4]["options"][0] == "A. one" and qs[4]["answer"] == "A"
  pq = streamingbench.load_questions(_write(tmp_path, "pro.json", proactive_annotation()))
  assert pq[2]["ground_truth_time_seconds"] == 347


def test_score_rtvu_matches_official_count(tmp_path):
  qs = streamingbench.load_questions(_write(tmp_path, "real.json", rtvu_annotation()))
  responses = [r for v in _RTVU for (_, _, r) in v]
  out = streamingbench.score_rtvu(qs, responses)
  # Official count.py --task real on rtvu_official_output(): 8 items; OR 1/2, Counting 2/3
  # (" D" is wrong: first character), Clips Summarize 1/1 (no entry skipped), CR 1/2 ("c" wrong).
  assert out["n_scored"] == 8 and out["n_missing"] == 1
  assert out["total"] == tol.approx64(0.625)
  assert out["tasks"] == tol.approx64({"Object Recognition": 0.5, "Counting": 2 / 3,
                                        "Clips Summarize": 1.0, "Causal Reasoning": 0.5})
  assert out["counts"]["Counting"] == {"total": 3, "correct": 2}
  # A mapping keyed by position gives the same.
  by_key = streamingbench.score_rtvu(qs, dict(enumerate(responses)))
  assert by_key["tasks"] == out["tasks"]


def test_score_rtvu_length_mismatch_raises(tmp_path):
  qs = streamingbench.load_questions(_write(tmp_path, "real.json", rtvu_annotation()))
  with pytest.raises(ValueError, match="9 questions but 2 responses"):
    streamingbench.score_rtvu(qs, ["A", "B"])


def test_score_proactive_matches_official_count(tmp_path):
  qs = streamingbench.load_questions(_write(tmp_path, "pro.json", proactive_annotation()))
  official = proactive_official_output()
  histories = [q.get(MODEL) for v in official for q in v["questions"]]
  out = streamingbench.score_proactive(qs, histories)
  # Official count.py --task proactive: total 5, time_correct 3, answer_correct 2.
  assert out["n_scored"] == 5 and out["n_missing"] == 1
  assert out["time_accuracy"] == tol.approx64(0.6)
  assert out["answer_accuracy"] == tol.approx64(0.4)
  t = out["tasks"]["Proactive Output"]
  assert (t["total"], t["time_correct"], t["answer_correct"]) == (5, 3, 2)
  # Plain reply lists {"time", "content"} (no roles) score the same.
  plain = [None if h is None else [{"time": m["time"], "content": m["content"]}
                                   for m in h["dialog_history"] if m["role"] == "assistant"]
           for h in histories]
  assert streamingbench.score_proactive(qs, plain)["answer_accuracy"] == tol.approx64(0.4)


def test_proactive_protocol_helpers():
  q = {"question": 'When the score is 3, output "3".', "time_stamp": "00:00:20",
       "ground_truth_time_stamp": "00:00:29", "ground_truth_output": "3"}
  assert streamingbench._poll_times(q) == list(range(21, 34))
  assert streamingbench._proactive_query(q).endswith(
      'Is it the right time to output "3"? You can only answer yes or no.')
  assert streamingbench._is_yes(" Yes.") and not streamingbench._is_yes("No")
  assert streamingbench._hms_to_seconds("01:02:03") == 3723


# ---------------------------------------------------------------------------------------------
# OVO-Bench.
# ---------------------------------------------------------------------------------------------


def test_ovo_score_matches_official():
  out = ovo.score(ovo_results())
  # Official OVOBenchOfflineScore.score() on ovo_results() prints:
  #   Task: EPM 50.00, ASI 50.00, HLD 100.00; Backward Avg.: 66.67
  #   Task: OCR 50.00, ACR 100.00, STU 100.00; Realtime Avg.: 83.33
  #   Task: SSR 60.00, REC 50.00, CRR 66.67; Forward Avg.: 58.89
  #   Total Avg.: 69.63
  # By hand: EPM "A" ok, "C" for B no, None no, "The answer is D." ok -> 2/4. OCR "a" is not "A".
  # STU: "Answer: C" ok, and "Answer: B" for A is ALSO ok: the "A" of "Answer" is a substring.
  # REC: "3" == "3"; "I saw 1 and then 2" -> "12" == "12"; None; "five" -> "" -> 2/4.
  # SSR: "N" (type 0) ok; "No." ok; "yes" (type 1) no (case); "Y" ok; "Y." no -> 3/5.
  # CRR: "no" (type 0) no; "Yes" ok; "Not yet. No" ok ("No" in "Not") -> 2/3.
  expected_tasks = {"EPM": 0.5, "ASI": 0.5, "HLD": 1.0, "OCR": 0.5, "ACR": 1.0, "STU": 1.0,
                    "REC": 0.5, "SSR": 0.6, "CRR": 2 / 3}
  assert out["tasks"] == tol.approx64(expected_tasks)
  assert round(100 * out["backward"], 2) == 66.67
  assert round(100 * out["realtime"], 2) == 83.33
  assert round(100 * out["forward"], 2) == 58.89
  assert round(100 * out["total"], 2) == 69.63
  assert out["counts"]["SSR"] == 5 and out["counts"]["EPM"] == 4


def test_ovo_rules_and_edges():
  assert ovo._score_choice("B. a", "B") == 1 and ovo._score_choice("b", "B") == 0
  assert ovo._score_choice(None, "A") == 0
  assert ovo._score_rec("count: 1, 0", 10) == 1     # digits joined: "10"
  assert ovo._score_rec("10", 10.0) == 0             # compared with str(10.0) == "10.0"
  assert ovo._score_yes_no("N", 0) == 1 and ovo._score_yes_no("N", 1) == 0
  assert ovo._score_yes_no("no", 0) == 0 and ovo._score_yes_no("Yes!", 1) == 1
  assert ovo._score_yes_no(None, 1) == 0
  res = ovo_results()
  res["forward"] = []
  out = ovo.score(res)
  assert out["forward"] is None and out["total"] is None
  merged = ovo._merge_results([{"backward": res["backward"][:2], "realtime": [], "forward": []},
                              {"backward": res["backward"][2:], "realtime": res["realtime"]}])
  assert ovo.score(merged)["tasks"]["EPM"] == tol.approx64(0.5)
  bad = {"backward": [], "realtime": [], "forward": [{"id": 1, "task": "XYZ", "test_info": []}]}
  with pytest.raises(ValueError, match="XYZ"):
    ovo.score(bad)


# ---------------------------------------------------------------------------------------------
# PAUC.
# ---------------------------------------------------------------------------------------------

# One turn, span [10, 20] (e - s = 10), replies at 12 (grade 1) and 16 (grade 2), max grade 2:
#   omega 0:   0.5 on [0,2), 1 on [2,6), 2 on [6,10]  -> area 1 + 4 + 8 = 13  -> 13/20 = 0.65
#   omega 0.5: x = 1, 3:  0.5*1 + 1*2 + 2*7 = 16.5                          -> 0.825
#   omega 1:   x = 0, 0:  2*10 = 20                                          -> 1.0
@pytest.mark.parametrize("omega, expected", [(0.0, 0.65), (0.5, 0.825), (1.0, 1.0),
                                             (0.25, (0.5 * 1.5 + 1 * 3 + 2 * 5.5) / 20)])
def test_turn_score_by_hand(omega, expected):
  got = pauc.turn_score([16.0, 12.0], [2, 1], (10.0, 20.0), omega=omega)
  assert got == tol.approx64(expected)


@pytest.mark.parametrize("omega", [0.0, 0.5, 1.0])
def test_turn_without_reply_scores_quarter(omega):
  assert pauc.turn_score([], [], (3.0, 9.0), omega=omega) == 0.25
  # Replies outside the closed span are ignored -> still "no reply".
  assert pauc.turn_score([2.0, 9.5], [2, 2], (3.0, 9.0), omega=omega) == 0.25


def test_turn_score_more_cases_by_hand():
  # A bad reply at the span start, then nothing: omega 0 -> grade 0 over the whole span -> 0.
  assert pauc.turn_score([5.0], [0], (5.0, 9.0), omega=0.0) == 0.0
  # A late good reply at the span end: omega 0 -> 0.5 over [0, 4] -> 2/8 = 0.25;
  # omega 0.5 -> 0.5*2 + 2*2 = 5 -> 5/8; omega 1 -> 2*4/8 = 1.
  assert pauc.turn_score([9.0], [2], (5.0, 9.0), omega=0.0) == tol.approx64(0.25)
  assert pauc.turn_score([9.0], [2], (5.0, 9.0), omega=0.5) == tol.approx64(0.625)
  assert pauc.turn_score([9.0], [2], (5.0, 9.0), omega=1.0) == tol.approx64(1.0)
  # Grade 1 at x=1 on a 0..3 scale with start 0: (0*1 + 1*3) / (4*3) = 0.25.
  assert pauc.turn_score([6.0], [1], (5.0, 9.0), omega=0.0, max_grade=3,
                         start=0.0) == tol.approx64(0.25)
  # Zero-length span with a reply in it: 0.
  assert pauc.turn_score([5.0], [2], (5.0, 5.0)) == 0.0
  with pytest.raises(ValueError, match="2 reply times but 1 grades"):
    pauc.turn_score([1.0, 2.0], [1], (0.0, 3.0))


def test_pauc_benchmark_mean_and_postprocess():
  examples = [
      {"question_id": "a", "answer": [
          {"reply_timespan": [10, 20], "related_timespan": [10, 20],
           "judge_scores": {"12": 1, "16": 2}},
          {"reply_timespan": [30, 34], "judge_scores": {}}]},
      {"question_id": "b", "answer": [
          # related ends at 14: the reply at 17 (grade 0 < 2) is dropped; 18 (grade 2) kept.
          {"reply_timespan": [10, 20], "related_timespan": [10, 14],
           "judge_scores": {"12": 2, "17": 0, "18": 2}}]},
  ]
  out = pauc.score(examples)
  # Turn b after post-processing: replies 12 (2), 18 (2).
  #   omega 0: 0.5*2 + 2*8 = 17 -> 0.85; omega 0.5: 0.5*1 + 2*9 = 18.5 -> 0.925; omega 1: 1.
  assert out["omega=0"] == tol.approx64((0.65 + 0.25 + 0.85) / 3)
  assert out["omega=0.5"] == tol.approx64((0.825 + 0.25 + 0.925) / 3)
  assert out["omega=1"] == tol.approx64((1.0 + 0.25 + 1.0) / 3)
  assert out["num_videos"] == 2 and out["num_turns"] == 3
  # Without the post-processing, the grade-0 reply at 17 stays:
  #   omega 0: 0.5*2 + 2*5 + 0*1 + 2*2 = 15 -> 0.75.
  raw = pauc.score(examples, postprocess=False)
  assert raw["omega=0"] == tol.approx64((0.65 + 0.25 + 0.75) / 3)


def test_drop_late_regressions_and_judge_helpers():
  assert pauc._drop_late_regressions({5: 1}, 0.0) == {5.0: 1}
  # Nothing inside the related span: last = 0, so no later grade is below it.
  assert pauc._drop_late_regressions({5: 0, 6: 1}, 1.0) == {5.0: 0, 6.0: 1}
  assert pauc._drop_late_regressions({1: 2, 5: 1, 6: 2}, 2.0) == {1.0: 2, 6.0: 2}
  # "a" at 1 is outside [2, 10]; the repeated "b" at 7 is skipped; "d" at 20 is outside.
  got = pauc.judge_inputs([(1.0, "a"), (4.0, "b"), (5.0, "a"), (7.0, "b"), (8.0, "c"),
                           (20.0, "d")], (2.0, 10.0))
  assert got == [(4.0, "b"), (5.0, "b a"), (8.0, "b a c")]
  assert pauc._grade_from_judge_output(" 3") == 2
  assert pauc._grade_from_judge_output("score: 2") is None
