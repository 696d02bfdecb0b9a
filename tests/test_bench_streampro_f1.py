"""StreamPro-F1 (docs/method.md section 4): windows, tolerances, matching, aggregation -- by
hand."""

import pytest

from streampro_jax import spans
from streampro_jax.bench import streampro_f1 as f1m

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Values here are host-side float64 arithmetic (Python floats) of a few dozen operations on
# values of order one, compared with hand-computed references: tol.approx64, rel and abs
# gamma_64 in float64 (7e-15) (tests/helpers/tolerances.py).


def judge_by_text(pred, answer, question):
  """1 when the prediction text equals the answer text, 0.5 for "half", else 0."""
  del question
  if pred == "half":
    return 0.5
  return 1.0 if pred == answer else 0.0


def one(task, answer, t, text="ok", judge=judge_by_text):
  """F1 of one prediction against one answer: equals S (P = R = S)."""
  out = f1m.score_qa(task, [(t, text)], [dict(answer, text=answer.get("text", "ok"))], judge)
  assert out["precision"] == tol.approx64(out["recall"])
  return out["f1"]


# (task, answer, prediction time, expected S = S_time with a perfect judge)
_WINDOW_CASES = [
    # EU: event [10, 20], window [10, 23], tau 4; dt = 0 inside the event.
    ("EU", {"start": 10, "end": 20}, 9.9, 0.0),      # before the window
    ("EU", {"start": 10, "end": 20}, 10.0, 1.0),
    ("EU", {"start": 10, "end": 20}, 15.0, 1.0),
    ("EU", {"start": 10, "end": 20}, 22.0, 0.5),     # 1 - 2/4
    ("EU", {"start": 10, "end": 20}, 23.0, 0.25),    # closed window end
    ("EU", {"start": 10, "end": 20}, 23.5, 0.0),
    # TP: event [5, 8], window [5, 11], tau 4.
    ("TP", {"start": 5, "end": 8}, 4.0, 0.0),
    ("TP", {"start": 5, "end": 8}, 8.0, 1.0),
    ("TP", {"start": 5, "end": 8}, 9.0, 0.75),
    ("TP", {"start": 5, "end": 8}, 11.0, 0.25),
    # OU: t = 30, window [27, 33], tau 4.
    ("OU", {"time": 30}, 26.9, 0.0),
    ("OU", {"time": 30}, 27.0, 0.25),
    ("OU", {"time": 30}, 30.0, 1.0),
    ("OU", {"time": 30}, 32.0, 0.5),
    ("OU", {"time": 30}, 33.0, 0.25),
    ("OU", {"time": 30}, 33.01, 0.0),
    # AA: onset 30, window [30, 35], tau 6.
    ("AA", {"time": 30}, 29.9, 0.0),
    ("AA", {"time": 30}, 30.0, 1.0),
    ("AA", {"time": 30}, 33.0, 0.5),
    ("AA", {"time": 30}, 35.0, 1 / 6),
    ("AA", {"time": 30}, 35.5, 0.0),
    # GP: completion 50, window [47, 50], tau 4.
    ("GP", {"time": 50}, 46.9, 0.0),
    ("GP", {"time": 50}, 47.0, 0.25),
    ("GP", {"time": 50}, 49.0, 0.75),
    ("GP", {"time": 50}, 50.0, 1.0),
    ("GP", {"time": 50}, 50.5, 0.0),
    # RF: best time 20 (hazard at 23), window [19, 23], tau 2 before / 4 after.
    ("RF", {"time": 20}, 18.9, 0.0),
    ("RF", {"time": 20}, 19.0, 0.5),                 # 1 - 1/2
    ("RF", {"time": 20}, 20.0, 1.0),
    ("RF", {"time": 20}, 22.0, 0.5),                 # 1 - 2/4
    ("RF", {"time": 20}, 23.0, 0.25),
    ("RF", {"time": 20}, 23.1, 0.0),
    ("RF", {"hazard_time": 23}, 19.0, 0.5),          # the same answer encoded by its hazard
    ("RF", {"hazard_time": 23}, 23.0, 0.25),
]


@pytest.mark.parametrize("task, answer, t, expected", _WINDOW_CASES)
def test_window_and_tolerance(task, answer, t, expected):
  assert one(task, answer, t) == tol.approx64(expected)


def test_accuracy_multiplies_time():
  # OU at dt = 2 (S_time 0.5) with a judge score 0.5: S = 0.25.
  assert one("OU", {"time": 30}, 32.0, text="half") == tol.approx64(0.25)
  # A wrong answer right on time: 0.
  assert one("OU", {"time": 30}, 30.0, text="wrong") == 0.0


# TG: answer at the event's end 40 with span "34s-40s"; window [37, 43], tau 4; S_acc = IoU.
@pytest.mark.parametrize("t, text, expected", [
    (41.0, "34s-40s", 0.75),                        # S_time 0.75, IoU 1
    (40.0, "from 36 to 40 seconds", 4 / 6),         # IoU [36,40] / [34,40]
    (38.0, "It happens at 30s-38s.", 0.5 * 0.4),    # S_time 0.5, IoU 4 / 10
    (40.0, "no span here", 0.0),                    # unparseable -> IoU 0
    (40.0, "50s-60s", 0.0),                         # disjoint
    (36.0, "34s-40s", 0.0),                         # outside the window
])
def test_temporal_grounding_iou(t, text, expected):
  answers = [{"time": 40, "text": "34s-40s"}]
  out = f1m.score_qa("TG", [(t, text)], answers, judge=None)
  assert out["f1"] == tol.approx64(expected)
  # The same answer given as a span {"start", "end"} (best time = end) scores the same.
  out2 = f1m.score_qa("TG", [(t, text)], [{"start": 34, "end": 40, "text": ""}], judge=None)
  assert out2["f1"] == tol.approx64(expected)


@pytest.mark.parametrize("text, span", [
    ("12s-18s", (12.0, 18.0)), ("<12.5s - 18s>", (12.5, 18.0)), ("12-18 seconds", (12.0, 18.0)),
    ("from 3 s to 7.5 s", (3.0, 7.5)), ("between 4 and 9 sec", (4.0, 9.0)),
    ("0:12-1:05", (12.0, 65.0)), ("18s–12s", (12.0, 18.0)), ("at 12 seconds", None), ("", None),
])
def test_parse_span(text, span):
  assert spans.parse_span(text) == span


def test_span_match_covers_the_unit():
  # The match spans the whole unit word, so what is left of a reference is its framing words only.
  assert spans.SPAN_RE.search("From 4 to 8 seconds.").group(0) == "4 to 8 seconds."
  assert spans.SPAN_RE.search("2-6 secs later").group(0) == "2-6 secs"


def test_span_iou():
  assert spans.span_iou((0, 10), (5, 15)) == tol.approx64(5 / 15)
  assert spans.span_iou((3, 3), (3, 3)) == 1.0
  assert spans.span_iou((3, 3), (4, 4)) == 0.0
  assert spans.span_iou(None, (0, 1)) == 0.0


def test_greedy_matching_by_hand():
  # OU answers A at 10 (window [7, 13]) and B at 14 (window [11, 17]).
  answers = [{"time": 14, "text": "B"}, {"time": 10, "text": "A"}]   # given out of time order
  preds = [(30.0, "A"), (16.0, "B"), (12.5, "B"), (12.0, "A"), (8.0, "A")]
  m = f1m._match_qa("OU", preds, answers, judge_by_text)
  # 8 -> A: S_time 1 - 2/4 = 0.5, S = 0.5.   12 -> A (A's window comes first): S = 0.5.
  # 12.5 -> A although B's window holds it too: judge("B", "A") = 0, S = 0.
  # 16 -> B: S_time 0.5, S = 0.5.            30 -> nothing (still counts in N_pred).
  assert [r["answer"] for r in m.predictions] == [1, 1, 1, 0, None]
  assert [r["s"] for r in m.predictions] == tol.approx64([0.5, 0.5, 0.0, 0.5, 0.0])
  assert m.best_s == tol.approx64([0.5, 0.5])          # given order: B, A
  assert (m.n_pred, m.n_gt) == (5, 2)
  p, r = 1.0 / 5, 1.0 / 2
  assert (m.precision, m.recall) == tol.approx64((p, r))
  assert m.f1 == tol.approx64(2 * p * r / (p + r))
  assert f1m.score_qa("OU", preds, answers, judge_by_text) == tol.approx64(
      {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)})


def test_first_window_wins_even_with_zero_score():
  # GP answers A at 10 (window [7, 10]) and B at 12 (window [9, 12]). A prediction "B" at 9.5
  # joins A (first window holding it) where its S is 0, not B where it would score 0.375.
  answers = [{"time": 10, "text": "A"}, {"time": 12, "text": "B"}]
  out = f1m.score_qa("GP", [(9.5, "B")], answers, judge_by_text)
  assert out == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
  # A prediction at 13 for OU answers at 10 / 14 joins 10 (S_time 0.25), not 14 (0.75).
  out = f1m.score_qa("OU", [(13.0, "x")], [{"time": 10, "text": "x"}, {"time": 14, "text": "x"}],
                     judge_by_text)
  p, r = 0.25, 0.125
  assert out["f1"] == tol.approx64(2 * p * r / (p + r))


def test_answer_keeps_its_best_prediction():
  # Three predictions on one AA answer at 30: S = 0.5 (t=33), 1 (t=30), 1/6 (t=35).
  out = f1m.score_qa("AA", [(33, "a"), (30, "a"), (35, "a")], [{"time": 30, "text": "a"}],
                     judge_by_text)
  p, r = 1.0 / 3, 1.0
  assert out["precision"] == tol.approx64(p) and out["recall"] == tol.approx64(r)
  assert out["f1"] == tol.approx64(0.5)


def test_edge_cases():
  ans = [{"time": 5, "text": "a"}]
  assert f1m.score_qa("OU", [], ans, judge_by_text) == {"precision": 0.0, "recall": 0.0,
                                                        "f1": 0.0}
  assert f1m.score_qa("OU", [], [], judge_by_text) == {"precision": 1.0, "recall": 1.0,
                                                       "f1": 1.0}
  assert f1m.score_qa("OU", [(5, "a")], [], judge_by_text)["f1"] == 0.0
  with pytest.raises(ValueError, match="unknown task 'XX'"):
    f1m.score_qa("XX", [], ans, judge_by_text)
  with pytest.raises(ValueError, match=r"returned 4.0, outside \[0, 1\]"):
    f1m.score_qa("OU", [(5, "a")], ans, lambda p, a, q: 4.0)
  with pytest.raises(ValueError, match="returned None"):
    f1m.score_qa("OU", [(5, "a")], ans, lambda p, a, q: None)
  with pytest.raises(ValueError, match="no 'Xs-Ys' span"):
    f1m.score_qa("TG", [(5, "1s-2s")], [{"time": 5, "text": "the end"}], None)
  with pytest.raises(ValueError, match="end 3.0 is before start 4.0"):
    f1m.score_qa("EU", [], [{"start": 4, "end": 3, "text": ""}], judge_by_text)


def test_five_point_judge_and_question_passed():
  seen = []

  def judge5(p, a, q):
    seen.append(q)
    return 4
  out = f1m.score_qa("OU", [(5, "x")], [{"time": 5, "text": "y"}], f1m._five_point_judge(judge5),
                     question="What?")
  assert out["f1"] == tol.approx64(0.8) and seen == ["What?"]


def test_aggregate_reproduces_paper():
  # StreamPro-GRPO-4B per-task F1 and the QA counts (docs/method.md section 4).
  task_f1 = {"EU": 54.6, "OU": 36.4, "AA": 43.5, "TP": 58.8, "TG": 31.4, "GP": 10.6, "RF": 6.3}
  out = f1m.aggregate(task_f1, f1m._PAPER_QA_COUNTS)
  paper = {"PU": 45.0, "TR": 44.4, "PA": 7.6, "Avg": 32.3, "W-Avg": 41.5}
  # The inputs are rounded to 0.1, so a weighted mean moves by <= 0.05 and the shown value by
  # another 0.05: agreement to 0.1.
  for k, v in paper.items():
    assert abs(out[k] - v) <= 0.1, (k, out[k], v)
  # Exact weighted means of the rounded inputs, by hand.
  assert out["PU"] == tol.approx64((54.6 * 166 + 36.4 * 144 + 43.5 * 240) / 550)
  assert out["TR"] == tol.approx64((58.8 * 296 + 31.4 * 331) / 627)
  assert out["PA"] == tol.approx64((10.6 * 33 + 6.3 * 75) / 108)
  assert out["W-Avg"] == tol.approx64(sum(task_f1[k] * f1m._PAPER_QA_COUNTS[k]
                                           for k in task_f1) / 1285)
  assert out["Avg"] == tol.approx64((out["PU"] + out["TR"] + out["PA"]) / 3)
  assert all(out[k] == task_f1[k] for k in task_f1)
  assert round(out["PU"], 1) == 45.0 and round(out["Avg"], 1) == 32.3
  assert round(out["W-Avg"], 1) == 41.5 and round(out["PA"], 1) == 7.6


def test_aggregate_missing_dimension():
  out = f1m.aggregate({"EU": 0.5, "TP": 0.2, "TG": 0.4}, {"EU": 2, "TP": 1, "TG": 3})
  assert out["PU"] == 0.5 and out["TR"] == tol.approx64((0.2 + 1.2) / 4)
  assert out["PA"] is None
  assert out["Avg"] == tol.approx64((0.5 + 0.35) / 2)
  assert out["W-Avg"] == tol.approx64((1.0 + 0.2 + 1.2) / 6)
  with pytest.raises(ValueError, match="unknown tasks"):
    f1m.aggregate({"XX": 1.0}, {"XX": 1})


def test_score_benchmark_by_hand():
  items = [
      {"id": "eu1", "task": "EU", "question": "q", "answers": [{"start": 0, "end": 4, "text": "a"}],
       "predictions": [(2, "a")]},                                    # F1 1
      {"id": "eu2", "task": "EU", "answers": [{"start": 0, "end": 4, "text": "a"}],
       "predictions": [(6, "a"), (50, "a")]},                         # S 0.5: P .25 R .5
      {"id": "gp1", "task": "GP", "answers": [{"time": 10, "text": "g"}],
       "predictions": [(9, "g")]},                                    # S 0.75
      {"id": "tg1", "task": "TG", "answers": [{"time": 8, "text": "4s-8s"}],
       "predictions": [(8, "4s-8s")]},                                # 1
  ]
  out = f1m.score_benchmark(items, judge_by_text)
  f1_eu2 = 2 * 0.25 * 0.5 / 0.75
  assert out["per_task"]["EU"] == tol.approx64(
      {"f1": (1 + f1_eu2) / 2, "precision": (1 + 0.25) / 2, "recall": (1 + 0.5) / 2, "count": 2,
       # Matched: (2, "a") S_time 1 acc 1; (6, "a") S_time 1 - 2/4, acc 1; (50) joins nothing.
       "time": 0.75, "acc": 1.0, "matched": 2})
  assert out["per_task"]["GP"]["f1"] == tol.approx64(0.75)
  sc = out["scores"]
  assert sc["EU"] == tol.approx64((1 + f1_eu2) / 2)
  assert sc["PU"] == tol.approx64(sc["EU"]) and sc["TR"] == tol.approx64(1.0)
  assert sc["W-Avg"] == tol.approx64((1 + f1_eu2 + 0.75 + 1) / 4)
  assert out["version"] == f1m.METRIC_VERSION
  assert [q["id"] for q in out["per_qa"]] == ["eu1", "eu2", "gp1", "tg1"]
  # Offsets: t_p - t_best (for EU the event's end 4); the unmatched one vs the nearest answer.
  offs = [(p["id"], p["offset"], p["matched"]) for p in out["predictions"]]
  assert offs == [("eu1", -2.0, True), ("eu2", 2.0, True), ("eu2", 46.0, False),
                  ("gp1", -1.0, True), ("tg1", 0.0, True)]


class _BatchedJudge:
  """A batched judge (the streampro_jax.judges interface): scores by text, None for "fail"."""

  def __init__(self):
    self.batches = []

  def score_answers(self, items):
    self.batches.append(list(items))
    return [None if it.prediction == "fail" else judge_by_text(it.prediction, it.reference, "")
            for it in items]


def test_score_benchmark_batched_judge_and_failures():
  items = [
      {"id": "a", "task": "OU", "question": "q1", "answers": [{"time": 10, "text": "x"}],
       "predictions": [(10, "x"), (11, "x"), (12, "fail"), (40, "x")]},
      {"id": "b", "task": "OU", "question": "q1", "answers": [{"time": 10, "text": "x"}],
       "predictions": [(10, "x")]},
      {"id": "c", "task": "TG", "answers": [{"time": 8, "text": "4s-8s"}],
       "predictions": [(8, "4s-8s")]},
  ]
  judge = _BatchedJudge()
  out = f1m.score_benchmark(items, judge)
  # One batch; (x, x, q1) asked once although 3 predictions need it; "fail" asked once;
  # the prediction at 40 (no window) and TG (IoU) need no judge.
  assert len(judge.batches) == 1
  assert sorted((it.prediction, it.task, it.question) for it in judge.batches[0]) == [
      ("fail", "OU", "q1"), ("x", "OU", "q1")]
  # QA a: S = 1 (t=10), 0.75, 0 (failed -> counted, scored 0), outside: P = 1/4, R = 1.
  assert out["per_qa"][0]["f1"] == tol.approx64(2 * 0.25 / 1.25)
  assert out["per_qa"][0]["judge_failures"] == 1 and out["judge_failures"] == 1
  ref = f1m.score_benchmark(
      [dict(it, predictions=[p for p in it["predictions"] if p[1] != "fail"] + (
          [(12, "wrong")] if it["id"] == "a" else [])) for it in items], judge_by_text)
  # The same float64 scores (None where a task has no QA): the None entries equal, the rest
  # within approx64.
  nums = {k: v for k, v in ref["scores"].items() if v is not None}
  assert {k for k, v in out["scores"].items() if v is None} == set(ref["scores"]) - set(nums)
  assert {k: out["scores"][k] for k in nums} == tol.approx64(nums)
  assert ref["judge_failures"] == 0
  with pytest.raises(ValueError, match="judge failed on QA 'a'"):
    f1m.score_benchmark(items, _BatchedJudge(), on_judge_failure="raise")
  # score_qa also takes a batched judge object.
  assert f1m.score_qa("OU", [(10, "x")], [{"time": 10, "text": "x"}], _BatchedJudge())["f1"] == 1


def test_score_benchmark_with_project_match_judge():
  judges = pytest.importorskip("streampro_jax.judges")
  items = [{"task": "AA", "answers": [{"time": 5, "text": "A fire starts."}],
            "predictions": [(8, "a fire starts")]}]
  out = f1m.score_benchmark(items, judges.MatchJudge())
  assert out["scores"]["AA"] == tol.approx64(0.5)    # S_time 1 - 3/6, normalised exact match
