"""The paper's Time and Acc columns (issue 20 item 6), TG scored by IoU with an LLM-style judge in
the metric (item 2), and one colour per variant in response_offsets.png (issue 16 item 10)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.axes  # noqa: E402

from streampro_jax.bench import report  # noqa: E402
from streampro_jax.bench import streampro_f1 as f1m  # noqa: E402

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Values here are host-side float64 arithmetic (Python floats) of a few dozen operations on
# values of order one, compared with hand-computed references: tol.approx64, rel and abs
# gamma_64 in float64 (7e-15) (tests/helpers/tolerances.py).


def _judge(p, a, q):
  """Text judge: 'good' 1.0, 'half' 0.5, anything else 0."""
  del a, q
  return {"good": 1.0, "half": 0.5}.get(p, 0.0)


def _items():
  return [
      # OU (point, window +-3, tau 4). Answer at 10. Preds: 11 "good" joins (S_time 0.75, acc 1),
      # 12 "half" joins (S_time 0.5, acc 0.5), 20 joins nothing.
      {"id": "ou1", "task": "OU", "answers": [{"time": 10.0, "text": "a"}],
       "predictions": [(11.0, "good"), (12.0, "half"), (20.0, "good")]},
      # OU: answer at 30, pred 30 "bad" joins (S_time 1, acc 0).
      {"id": "ou2", "task": "OU", "answers": [{"time": 30.0, "text": "a"}],
       "predictions": [(30.0, "bad")]},
      # AA (window [0, +5], tau 6): answer at 10, pred 13 "good": S_time 0.5, acc 1.
      {"id": "aa1", "task": "AA", "answers": [{"time": 10.0, "text": "a"}],
       "predictions": [(13.0, "good")]},
      # TG (window +-3, tau 4): answer "6s-10s" due at 10, pred 11 "8s-12s": S_time 0.75,
      # IoU 2/6 -- whatever the judge (this one would say 0 for the text).
      {"id": "tg1", "task": "TG", "answers": [{"time": 10.0, "text": "6s-10s"}],
       "predictions": [(11.0, "8s-12s")]},
  ]


def test_time_acc_by_hand():
  res = f1m.score_benchmark(_items(), _judge)
  ta = res["time_acc"]
  # OU: matched (0.75, 1), (0.5, 0.5), (1, 0): Time 2.25 / 3, Acc 1.5 / 3.
  assert ta["OU"]["time"] == tol.approx64(0.75) and ta["OU"]["acc"] == tol.approx64(0.5)
  assert ta["OU"]["matched"] == 3 and ta["OU"]["count"] == 2
  assert res["per_task"]["OU"]["time"] == tol.approx64(0.75)
  assert ta["AA"]["time"] == tol.approx64(0.5) and ta["AA"]["acc"] == tol.approx64(1.0)
  assert ta["TG"]["time"] == tol.approx64(0.75) and ta["TG"]["acc"] == tol.approx64(2 / 6)
  # PU pools OU and AA's 4 matched predictions: Time (2.25 + 0.5) / 4, Acc (1.5 + 1) / 4.
  assert ta["PU"]["time"] == tol.approx64(2.75 / 4) and ta["PU"]["acc"] == tol.approx64(2.5 / 4)
  # PU F1: QA-weighted (OU 2 QA, AA 1 QA). OU QA 1: best S = max(0.75, 0.25) = 0.75, P = 0.25,
  # R = 0.75, F1 = 0.375; OU QA 2: S = 0, F1 0. AA: S 0.5, P = R = 0.5, F1 0.5.
  assert ta["OU"]["f1"] == tol.approx64(0.375 / 2)
  assert ta["PU"]["f1"] == tol.approx64((0.375 + 0 + 0.5) / 3)
  assert ta["TR"]["acc"] == tol.approx64(2 / 6) and "PA" not in ta
  assert ta["All"]["matched"] == 5 and ta["All"]["count"] == 4
  # The table.
  table = report._detail_table({"m": res})
  lines = table.splitlines()
  assert lines[0] == "| Variant | Task | F1 | P | R | Time | Acc | matched |"
  ou = next(line for line in lines if line.startswith("| m | OU |"))
  assert ou == "| m | OU | 18.8 | 12.5 | 37.5 | 75.0 | 50.0 | 3 |"
  assert any(line.startswith("| m | **PU** | 29.2 |") for line in lines)


def test_tg_in_the_metric_is_iou_with_a_batched_llm_judge():
  class ZeroLLM:
    """A batched judge (judges.Judge interface) that would score every answer 0."""
    def __init__(self):
      self.items = []

    def score_answers(self, items):
      self.items.extend(items)
      return [0.0] * len(items)

  j = ZeroLLM()
  res = f1m.score_benchmark([_items()[3]], j)
  assert res["per_qa"][0]["f1"] == tol.approx64(0.75 * 2 / 6)
  assert j.items == []          # TG never reaches the judge


def test_offsets_figure_keeps_one_colour_per_variant(tmp_path, monkeypatch):
  """sft_ce has no TG or RF responses: the later variants must keep their colours there."""
  def items(tasks):
    out = []
    for task in f1m.TASKS:
      ans = ([{"start": 6.0, "end": 10.0, "text": "a"}] if task in ("EU", "TP") else
             [{"time": 10.0, "text": "6s-10s" if task == "TG" else "a"}])
      preds = [(10.0, "6s-10s" if task == "TG" else "a")] if task in tasks else []
      out.append({"id": task, "task": task, "answers": ans, "predictions": preds})
    return out
  everything = f1m.TASKS
  results = {"sft_ce": f1m.score_benchmark(items([t for t in everything if t not in ("TG", "RF")]),
                                           _judge),
             "sft_cb": f1m.score_benchmark(items(everything), _judge),
             "grpo": f1m.score_benchmark(items(everything), _judge)}
  seen = {}
  original = matplotlib.axes.Axes.hist

  def hist(self, x, *args, **kwargs):
    out = original(self, x, *args, **kwargs)
    name = kwargs["label"].split(" (")[0]
    seen.setdefault(name, set()).add(tuple(out[2][0].get_edgecolor()))
    return out

  monkeypatch.setattr(matplotlib.axes.Axes, "hist", hist)
  report.write_report(results, str(tmp_path))
  assert set(seen) == {"sft_ce", "sft_cb", "grpo"}
  assert all(len(colors) == 1 for colors in seen.values()), seen
  assert len({next(iter(c)) for c in seen.values()}) == 3
