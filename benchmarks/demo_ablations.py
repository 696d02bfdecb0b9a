r"""The paper's ablations at the demo's scale (opt-in findings script, not run by CI).

  .venv/bin/python benchmarks/demo_ablations.py --workdir=workdir/ablations \
      [--seeds=0,1,2] [--budget=default] [--grpo_steps=0] [--only=NAME,...]

For every seed, one demo workdir <workdir>/seed_<n> (launch/demo.py's stages, resumable: a rerun
skips every finished stage) holds the base model (with --shared_base, the default, a link to the
first seed's: the paper's ablations share one pretrained model too), the SFT and GRPO runs below
and their streaming evaluations on the SynthStream test split. The runs go ablation by ablation
(every seed of one before the next), so whatever has finished is a complete paired comparison.
Each ablation changes one setting of a reference run, from the same initialisation and data order
(same seed), so a difference is paired:

  SFT (CB-Stream, from the seed's base model; reference: sft_cb_stream = lambda_text 2, counts
  over the global batch):
    sft_text1, sft_text3       lambda_text 1 and 3            (paper 16.3 / 16.3 / 15.3 for 1/2/3)
    sft_scope_microbatch       class counts of each micro-batch, 8 micro-batches of one
                               trajectory (Streamo's per-trajectory counts; weight ratio ~20)
  GRPO (from the seed's sft_cb_stream; reference: grpo_paper = the paper's tau 8,
  temperature 1.0, weights 0.1/0.45/0.45, GT-first matching):
    grpo_tau3                  tau 3                          (paper 25.8 vs 28.1)
    grpo_w_0.1_0.9_0           weights 0.1/0.9/0              (paper 25.5 vs 28.1)
    grpo_w_0.1_0.6_0.3         weights 0.1/0.6/0.3            (paper 24.8 vs 28.1)
    grpo_pred_first            prediction-first matching in R_turn
    grpo_t07                   temperature 0.7 alone (with grpo_demo_old: tau and temperature
                               apart)
    grpo_demo_old              tau 4, temperature 0.7 (the demo's defaults before this ablation)

Outputs: <workdir>/ablations.json (per seed, per run: W-Avg, PU, TR, PA; the paired differences
against each run's reference with mean, sample std (ddof 1) and the per-seed values) and
<workdir>/ablations.md (the table, x100, next to the paper's numbers). The runs that have not
finished are listed as missing, never filled in.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_spec = importlib.util.spec_from_file_location("streampro_demo", os.path.join(ROOT, "launch",
                                                                             "demo.py"))
demo_lib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_lib)

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program: the tests import it)."""
  flags.DEFINE_string("workdir", None, "Parent folder of the per-seed workdirs.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each a full set of runs).")
  flags.DEFINE_enum("budget", "default", ("smoke", "default"), "Demo budget.")
  flags.DEFINE_integer("grpo_steps", 0, "GRPO steps of every GRPO run (0: the demo budget's).")
  flags.DEFINE_list("only", [], "Run only these ablations (names below; their references run "
                    "too). Empty: all.")
  flags.DEFINE_boolean("progress_bar", False, "Evaluation progress bars.")
  flags.DEFINE_boolean(
      "shared_base", True, "Every seed starts from the first seed's base model (the stand-in "
      "for the pretrained VLM, which the paper's ablations share too); seeds then differ in SFT "
      "/ GRPO init, data order and rollouts.")
  demo_lib.define_cache_flag()
  flags.mark_flags_as_required(["workdir"])


PAPER_GRPO = {"reward.tau": 8.0, "grpo.temperature": 1.0, "reward.weights": (0.1, 0.45, 0.45),
              "reward.matching": "gt_first"}


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: its stage name, its kind, the config overrides, and its reference."""
  name: str
  stage: str                      # "sft" | "grpo"
  overrides: tuple = ()           # ((dotted key, value), ...)
  reference: str = ""             # the run it is compared with ("" for a reference)
  paper: str = ""                 # the paper's number for this run / its reference

  def override_dict(self) -> dict:
    return dict(self.overrides)


def _grpo(name, reference="grpo_paper", paper="", **changes):
  over = dict(PAPER_GRPO)
  over.update({k.replace("__", "."): v for k, v in changes.items()})
  return Run(name, "grpo", tuple(over.items()), reference, paper)


RUNS = (  # in the order they run: the references, the demo-default question, then the rest
    Run("sft_cb_stream", "sft", (), "", "lambda_text 2: 16.3"),
    _grpo("grpo_paper", reference="", paper="28.1"),
    _grpo("grpo_demo_old", paper="- (the paper: tau 8, temperature 1.0)", reward__tau=4.0,
          grpo__temperature=0.7),
    Run("sft_text1", "sft", (("loss.text_weight", 1.0),), "sft_cb_stream", "16.3 vs 16.3"),
    Run("sft_text3", "sft", (("loss.text_weight", 3.0),), "sft_cb_stream", "15.3 vs 16.3"),
    Run("sft_scope_microbatch", "sft", (("loss.count_scope", "microbatch"),
                                        ("num_microbatches", 8)), "sft_cb_stream",
        "not ablated (the paper counts over \"the current batch\")"),
    _grpo("grpo_tau3", paper="25.8 vs 28.1", reward__tau=3.0),
    _grpo("grpo_w_0.1_0.9_0", paper="25.5 vs 28.1", reward__weights=(0.1, 0.9, 0.0)),
    _grpo("grpo_w_0.1_0.6_0.3", paper="24.8 vs 28.1", reward__weights=(0.1, 0.6, 0.3)),
    _grpo("grpo_pred_first", paper="ablated, number not given",
          reward__matching="prediction_first"),
    _grpo("grpo_t07", paper="- (the paper samples at 1.0)", grpo__temperature=0.7),
)
RUN_BY_NAME = {r.name: r for r in RUNS}
KEYS = ("W-Avg", "PU", "TR", "PA")


def selected_runs(only) -> list[Run]:
  """The runs to do, references first; unknown names are an error naming the known ones."""
  if not only:
    return list(RUNS)
  unknown = sorted(set(only) - set(RUN_BY_NAME))
  if unknown:
    raise app.UsageError(f"--only: unknown ablations {unknown}; known: {sorted(RUN_BY_NAME)}")
  want = set(only) | {RUN_BY_NAME[n].reference for n in only if RUN_BY_NAME[n].reference}
  return [r for r in RUNS if r.name in want]


def prepare_seed(cfg, workdir: str, *, progress: bool, base_from: str = ""):
  """The seed's Demo with its data and base model (skipped when finished). base_from: another
  seed's workdir whose base model this seed starts from (linked, not retrained)."""
  demo = demo_lib.Demo(cfg, workdir, progress=progress)
  d = cfg.data
  demo.run_stage("data", f"SynthStream {d.num_train} train + {d.num_test} test videos",
                 demo.stage_data)
  link = demo.stage_dir("base")
  if base_from and not os.path.exists(link):
    os.symlink(os.path.join(os.path.abspath(base_from), "base"), link)
  demo.run_stage("base", "base model (narration)", demo.stage_base)
  return demo


def run_one(demo, r: Run, *, grpo_steps: int) -> None:
  """One run and its evaluation (each skipped when finished). A GRPO run needs the seed's
  sft_cb_stream, which runs first when missing."""
  over = r.override_dict()
  if r.stage == "sft":
    demo.run_stage(r.name, f"SFT (CB-Stream) {over or 'reference'}",
                   lambda: demo.stage_sft(r.name, kind="cb_stream", overrides=over))
  else:
    if demo.done("sft_cb_stream") is None:
      run_one(demo, RUN_BY_NAME["sft_cb_stream"], grpo_steps=grpo_steps)
    if grpo_steps:
      over["total_steps"] = int(grpo_steps)
    demo.run_stage(r.name, f"GRPO from sft_cb_stream {over}",
                   lambda: demo.stage_grpo(r.name, overrides=over))
  demo.run_stage(f"eval_{r.name}", f"streaming evaluation of {r.name}",
                 lambda: demo.stage_eval(r.name))


def seed_scores(workdir: str) -> dict[str, dict]:
  """{run: {W-Avg, PU, TR, PA}} of the finished evaluations of one seed's workdir."""
  out = {}
  for r in RUNS:
    path = os.path.join(workdir, f"eval_{r.name}", demo_lib.DONE)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        sc = json.load(f)["scores"]
      out[r.name] = {k: float(sc[k]) for k in KEYS}
  return out


def mean_std(xs) -> tuple[float, float]:
  """(mean, sample standard deviation, ddof 1; 0.0 for one value)."""
  xs = [float(x) for x in xs]
  m = sum(xs) / len(xs)
  if len(xs) < 2:
    return m, 0.0
  return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summarize(per_seed: dict[int, dict[str, dict]]) -> dict:
  """Means over the seeds where a run finished, and paired W-Avg differences run - reference
  over the seeds where both finished."""
  out = {"runs": {}, "differences": {}, "missing": {}}
  for r in RUNS:
    seeds = sorted(s for s in per_seed if r.name in per_seed[s])
    out["missing"][r.name] = sorted(s for s in per_seed if r.name not in per_seed[s])
    if seeds:
      out["runs"][r.name] = {
          k: dict(zip(("mean", "std"), mean_std([per_seed[s][r.name][k] for s in seeds])),
                  values=[per_seed[s][r.name][k] for s in seeds], seeds=seeds)
          for k in KEYS}
    if r.reference:
      both = sorted(s for s in per_seed
                    if r.name in per_seed[s] and r.reference in per_seed[s])
      if both:
        diffs = [per_seed[s][r.name]["W-Avg"] - per_seed[s][r.reference]["W-Avg"] for s in both]
        m, sd = mean_std(diffs)
        out["differences"][r.name] = {"reference": r.reference, "mean": m, "std": sd,
                                      "values": diffs, "seeds": both,
                                      "wins": sum(d > 0 for d in diffs)}
  return out


def table(summary: dict) -> str:
  """Markdown: each run's mean W-Avg (x100) +- std, the paired difference against its
  reference, how many seeds it beat the reference on, and the paper's numbers."""
  lines = ["| run | changes | W-Avg (mean +- std) | paired diff vs reference | wins | seeds | "
           "paper |", "|---|---|---:|---:|---:|---|---|"]
  for r in RUNS:
    res = summary["runs"].get(r.name)
    if res is None:
      lines.append(f"| {r.name} | {_changes(r)} | not run | | | | {r.paper} |")
      continue
    w = res["W-Avg"]
    diff = summary["differences"].get(r.name)
    dtxt = (f"{100 * diff['mean']:+.1f} +- {100 * diff['std']:.1f} (vs {r.reference})"
            if diff else "reference")
    wins = f"{diff['wins']}/{len(diff['seeds'])}" if diff else ""
    lines.append(f"| {r.name} | {_changes(r)} | {100 * w['mean']:.1f} +- {100 * w['std']:.1f} "
                 f"| {dtxt} | {wins} | {','.join(map(str, w['seeds']))} | {r.paper} |")
  return "\n".join(lines) + "\n"


def _changes(r: Run) -> str:
  if r.stage == "grpo":
    diff = {k: v for k, v in r.overrides if PAPER_GRPO.get(k) != v}
    return ", ".join(f"{k.split('.')[-1]} {v}" for k, v in diff.items()) or "paper settings"
  return ", ".join(f"{k.split('.')[-1]} {v}" for k, v in r.overrides) or "demo SFT settings"


def main(argv):
  del argv
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  demo_lib.quiet_library_logs()
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(FLAGS.workdir)
  os.makedirs(root, exist_ok=True)
  demo_lib.set_compilation_cache(root, FLAGS.compilation_cache)
  runs = selected_runs(FLAGS.only)
  seeds = [int(s) for s in FLAGS.seeds]
  dirs = {s: os.path.join(root, f"seed_{s}") for s in seeds}
  t0 = time.perf_counter()
  demos = {}
  for seed in seeds:
    cfg = demo_configs.get_config(FLAGS.budget)
    cfg.seed = seed
    base_from = dirs[seeds[0]] if FLAGS.shared_base and seed != seeds[0] else ""
    demos[seed] = prepare_seed(cfg, dirs[seed], progress=FLAGS.progress_bar, base_from=base_from)
  # Run-major: every seed of one ablation before the next, so the paired comparisons that
  # finish first are complete ones.
  for r in runs:
    for seed in seeds:
      demo_lib.banner(f"ablation {r.name}, seed {seed} ({time.perf_counter() - t0:.0f} s so far)")
      run_one(demos[seed], r, grpo_steps=FLAGS.grpo_steps)
    summary = summarize({s: seed_scores(dirs[s]) for s in seeds})
    summary.update(budget=FLAGS.budget, grpo_steps=FLAGS.grpo_steps, seeds=seeds,
                   shared_base=FLAGS.shared_base)
    with open(os.path.join(root, "ablations.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
    text = table(summary)
    with open(os.path.join(root, "ablations.md"), "w", encoding="utf-8") as f:
      f.write(text)
    print("\n" + text, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
