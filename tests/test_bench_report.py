"""StreamPro-Bench report: JSON, markdown table (paper layout) and PNG figures."""

import json
import random

from streampro_jax.bench import report
from streampro_jax.bench import streampro_f1 as f1m


def _items(seed, skill):
  """A small synthetic benchmark: every task, responses near the best time, judged by text."""
  rng = random.Random(seed)
  items = []
  for task in f1m.TASKS:
    for k in range(6):
      t = 20.0 + 7 * k
      if task in ("EU", "TP"):
        answers = [{"start": t - 4, "end": t, "text": "a"}]
      elif task == "TG":
        answers = [{"time": t, "text": f"{t - 5:g}s-{t:g}s"}]
      else:
        answers = [{"time": t, "text": "a"}]
      preds = []
      for _ in range(rng.randint(0, 3)):
        tp = round(t + rng.gauss(0.0, 4.0 / skill))
        text = f"{t - 5:g}s-{t:g}s" if task == "TG" else ("a" if rng.random() < skill else "b")
        preds.append((tp, text))
      items.append({"id": f"{task}{k}", "task": task, "answers": answers, "predictions": preds})
  return items


def judge(p, a, q):
  del q
  return 1.0 if p == a else 0.0


def test_write_report(tmp_path):
  results = {"SFT": f1m.score_benchmark(_items(0, 0.4), judge),
             "GRPO": f1m.score_benchmark(_items(1, 0.8), judge)}
  paths = report.write_report(results, str(tmp_path / "rep"))
  for key in ("f1", "offsets", "pr"):
    with open(paths[key], "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(paths["json"]) as f:
    saved = json.load(f)
  assert saved["variants"]["GRPO"]["scores"]["W-Avg"] == results["GRPO"]["scores"]["W-Avg"]
  with open(paths["table"]) as f:
    table = f.read()
  lines = table.splitlines()
  assert lines[0] == ("| Variant | EU | OU | AA | TP | TG | GP | RF | PU | TR | PA | Avg | W-Avg |")
  assert lines[2].startswith("| SFT | ") and lines[3].startswith("| GRPO | ")
  wavg = 100 * results["GRPO"]["scores"]["W-Avg"]
  assert lines[3].endswith(f"| **{wavg:.1f}** |")
  assert "QA counts: EU 6" in table


def test_table_from_paper_numbers():
  # A variant given only its scores (fractions), e.g. the paper's row, and a missing dimension.
  task_f1 = {"EU": .546, "OU": .364, "AA": .435, "TP": .588, "TG": .314, "GP": .106, "RF": .063}
  paper = {"scores": f1m.aggregate(task_f1, f1m._PAPER_QA_COUNTS)}
  partial = {"scores": f1m.aggregate({"EU": 0.1}, {"EU": 3})}
  table = report.markdown_table({"StreamPro-GRPO-4B (paper)": paper, "partial": partial})
  row = table.splitlines()[2]
  assert row == ("| StreamPro-GRPO-4B (paper) | 54.6 | 36.4 | 43.5 | 58.8 | 31.4 | 10.6 | 6.3 | "
                 "45.0 | 44.3 | 7.6 | 32.3 | **41.5** |")
  assert table.splitlines()[3] == ("| partial | 10.0 | - | - | - | - | - | - | 10.0 | - | - | "
                                   "10.0 | **10.0** |")


class _KeepFigures:
  """matplotlib.pyplot, but close() keeps the figure for the test to read its artists."""

  def __init__(self):
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    self._plt, self.figures = plt, []

  def __getattr__(self, name):
    return getattr(self._plt, name)

  def close(self, fig):
    self.figures.append(fig)


def _texts(artist):
  """Every text of a figure or an axes: annotations and the entries of every legend."""
  from matplotlib import legend, text  # pylint: disable=g-import-not-at-top
  found = [t.get_text() for t in artist.findobj(text.Text)]
  for leg in artist.findobj(legend.Legend):
    found += [t.get_text() for t in leg.get_texts()]
  return found


def test_figures_say_what_is_missing_and_keep_coinciding_points_apart(tmp_path):
  """Issue 28: empty offset panels had no note, the PR plot had no key for the task colours and
  its points at (0, 0) piled up unseen."""
  items = [it for it in _items(0, 0.8) if it["task"] != "TG"]
  tg = [dict(it, predictions=[]) for it in _items(0, 0.8) if it["task"] == "TG"]
  silent = [dict(it, predictions=[]) for it in _items(2, 0.8)]   # answers nothing at all
  variants = {"A": f1m.score_benchmark(items + tg, judge),
              "B": f1m.score_benchmark(silent, judge)}
  plt = _KeepFigures()
  report._plot_offsets(variants, str(tmp_path / "o.png"), plt)
  (fig,) = plt.figures
  by_title = {ax.get_title(): _texts(ax) for ax in fig.axes}
  assert "no responses\nto this task's questions" in by_title["TG"]
  assert "no responses\nto this task's questions" not in by_title["EU"]
  assert "B: no responses" in by_title["EU"] and any(t.startswith("A (n=") for t in by_title["EU"])
  plt.figures.clear()
  report._plot_pr(variants, str(tmp_path / "p.png"), plt)
  (fig,) = plt.figures
  texts = _texts(fig)
  assert set(f1m.TASKS) <= set(texts) and {"A", "B"} <= set(texts)    # both keys
  (shared,) = [t for t in texts if t.startswith("same point:")]
  assert "(0, 0):\n" in shared and "  A: TG" in shared
  assert "  B: " + " ".join(f1m.TASKS) in shared                      # every task of B
