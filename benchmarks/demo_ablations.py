r"""The paper's ablations at the demo's scale (opt-in findings script, not run by CI).

  .venv/bin/python benchmarks/demo_ablations.py --workdir=<a demo workdir> \
      [--seeds=0,1,2] [--budget=default] [--split=validation] [--grpo_steps=0] [--only=NAME,...]

The workdir is a demo workdir (launch/demo.py's stages, resumable: a rerun skips every finished
stage): the data and the one base model (the paper's ablations share one pretrained model too),
then per seed seed_<n>/<run> and its streaming evaluation seed_<n>/eval_<split>_<run>. Pointed at
the workdir of `launch/demo.py --seeds=0,1,2`, the runs that are the demo's own (sft_cb_stream;
grpo_tau3 is the demo's grpo) are reused, not retrained. Scores are taken on the validation split
by default: these comparisons choose the demo's settings, and the test split is kept for the
headline table (docs/ablations.md). The runs go ablation by ablation (every seed of one before
the next), so whatever has finished is a complete paired comparison.
Each ablation changes one setting of a reference run, from the same initialisation and data order
(same seed), so a difference is paired:

  SFT (CB-Stream, from the seed's base model; reference: sft_cb_stream = lambda_text 2, counts
  over the global batch):
    sft_text1, sft_text3       lambda_text 1 and 3            (paper 16.3 / 16.3 / 15.3 for 1/2/3)
    sft_beta_paper             beta 0.9999 (the paper's; the demo's is 0.99)
    sft_scope_microbatch       class counts of each micro-batch, 8 micro-batches of one
                               trajectory (Streamo's per-trajectory counts; weight ratio ~20)
  GRPO (from the seed's sft_cb_stream; reference: grpo_paper = the paper's tau 8,
  temperature 1.0, weights 0.1/0.45/0.45, GT-first matching):
    grpo_tau3                  tau 3 (= the demo's grpo run)  (paper 25.8 vs 28.1)
    grpo_w_0.1_0.9_0           weights 0.1/0.9/0              (paper 25.5 vs 28.1)
    grpo_w_0.1_0.6_0.3         weights 0.1/0.6/0.3            (paper 24.8 vs 28.1)
    grpo_pred_first            prediction-first matching in R_turn
    grpo_t07                   temperature 0.7 alone (with grpo_demo_old: tau and temperature
                               apart)
    grpo_demo_old              tau 4, temperature 0.7 (the demo's defaults before this ablation)

Outputs: <workdir>/ablations_<split>.json (per seed, per run: W-Avg, PU, TR, PA; the paired
differences against each run's reference with mean, sample std (ddof 1) and the per-seed values)
and <workdir>/ablations_<split>.md (the table, x100, next to the paper's numbers). The runs that
have not finished are listed as missing, never filled in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

from absl import app
from absl import flags

from streampro_jax import demo as demo_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run as a program: the tests import it)."""
  flags.DEFINE_string("workdir", None, "A demo workdir (launch/demo.py --workdir).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each a full set of runs).")
  flags.DEFINE_enum("budget", "default", ("smoke", "default"), "Demo budget.")
  flags.DEFINE_enum("split", "validation", ("validation", "test"), "Split the runs are scored "
                    "on (settings are chosen on validation).")
  flags.DEFINE_integer("grpo_steps", 0, "GRPO steps of every GRPO run (0: the demo budget's).")
  flags.DEFINE_list("only", [], "Run only these ablations (names below; their references run "
                    "too). Empty: all.")
  flags.DEFINE_boolean("progress_bar", False, "Evaluation progress bars.")
  flags.DEFINE_boolean("pin_numerics", True, "Pin XLA:CPU's rounding as the demo does.")
  flags.DEFINE_string("compilation_cache", "",
                      "JAX persistent compilation cache folder ('' : <workdir>/jax_cache, "
                      "'none': off).")
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
  stage_name: str = ""            # the demo stage it is (same config: reused), else its name

  @property
  def stage_dir(self) -> str:
    return self.stage_name or self.name

  def override_dict(self) -> dict:
    return dict(self.overrides)


def _grpo(name, reference="grpo_paper", paper="", stage_name="", **changes):
  over = dict(PAPER_GRPO)
  over.update({k.replace("__", "."): v for k, v in changes.items()})
  return Run(name, "grpo", tuple(over.items()), reference, paper, stage_name)


RUNS = (  # in the order they run: the references, the demo-default question, then the rest
    Run("sft_cb_stream", "sft", (), "", "lambda_text 2: 16.3"),
    _grpo("grpo_paper", reference="", paper="28.1"),
    _grpo("grpo_demo_old", paper="- (the paper: tau 8, temperature 1.0)", reward__tau=4.0,
          grpo__temperature=0.7),
    Run("sft_text1", "sft", (("loss.text_weight", 1.0),), "sft_cb_stream", "16.3 vs 16.3"),
    Run("sft_text3", "sft", (("loss.text_weight", 3.0),), "sft_cb_stream", "15.3 vs 16.3"),
    Run("sft_beta_paper", "sft", (("loss.beta", 0.9999),), "sft_cb_stream",
        "beta 0.9999 is the paper's setting"),
    Run("sft_scope_microbatch", "sft", (("loss.count_scope", "microbatch"),
                                        ("num_microbatches", 8)), "sft_cb_stream",
        "not ablated (the paper counts over \"the current batch\")"),
    _grpo("grpo_tau3", paper="25.8 vs 28.1", stage_name="grpo", reward__tau=3.0),
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


def prepare(cfg, workdir: str, *, progress: bool):
  """The workdir's Demo with its data and base model (skipped when finished)."""
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  demo = demo_lib.Demo(cfg, workdir, configs=demo_configs, progress=progress)
  d = cfg.data
  demo.run_stage("data", f"SynthStream {d.num_train} train + {d.num_validation} validation + "
                 f"{d.num_test} test videos", demo.stage_data)
  demo.run_stage("base", "base model (narration)", demo.stage_base)
  return demo


def run_one(demo, seed: int, r: Run, *, grpo_steps: int, split: str) -> None:
  """One run of one seed and its evaluation on split (each skipped when finished). A GRPO run
  needs the seed's sft_cb_stream, which runs first when missing."""
  over = r.override_dict()
  stage = demo_lib.seed_stage(seed, r.stage_dir)
  if r.stage == "sft":
    demo.run_stage(stage, f"seed {seed}: SFT (CB-Stream) {over or 'reference'}",
                   lambda: demo.stage_sft(seed, r.stage_dir, kind="cb_stream", overrides=over))
  else:
    if demo.done(demo_lib.seed_stage(seed, "sft_cb_stream")) is None:
      run_one(demo, seed, RUN_BY_NAME["sft_cb_stream"], grpo_steps=grpo_steps, split=split)
    if grpo_steps:
      over["total_steps"] = int(grpo_steps)
    demo.run_stage(stage, f"seed {seed}: GRPO from sft_cb_stream {over}",
                   lambda: demo.stage_grpo(seed, r.stage_dir, overrides=over))
  demo.run_stage(demo_lib.seed_stage(seed, demo_lib.eval_stage(split, r.stage_dir)),
                 f"seed {seed}: streaming evaluation of {r.name} on the {split} split",
                 lambda: demo.stage_eval(seed, r.stage_dir, split))


def seed_scores(demo, seed: int, split: str) -> dict[str, dict]:
  """{run: {W-Avg, PU, TR, PA}} of one seed's finished evaluations on split."""
  out = {}
  for r in RUNS:
    done = demo.done(demo_lib.seed_stage(seed, demo_lib.eval_stage(split, r.stage_dir)))
    if done is not None:
      out[r.name] = {k: float(done["scores"][k]) for k in KEYS}
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
  demo_lib.start_cpu_process(pin_numerics=FLAGS.pin_numerics)
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(FLAGS.workdir)
  os.makedirs(root, exist_ok=True)
  demo_lib.set_compilation_cache(root, FLAGS.compilation_cache)
  runs = selected_runs(FLAGS.only)
  seeds = [int(s) for s in FLAGS.seeds]
  split = FLAGS.split
  t0 = time.perf_counter()
  demo = prepare(demo_configs.get_config(FLAGS.budget), root, progress=FLAGS.progress_bar)
  # Run-major: every seed of one ablation before the next, so the paired comparisons that
  # finish first are complete ones.
  for r in runs:
    for seed in seeds:
      demo_lib.banner(f"ablation {r.name}, seed {seed} ({time.perf_counter() - t0:.0f} s so far)")
      run_one(demo, seed, r, grpo_steps=FLAGS.grpo_steps, split=split)
    summary = summarize({s: seed_scores(demo, s, split) for s in seeds})
    summary.update(budget=FLAGS.budget, grpo_steps=FLAGS.grpo_steps, seeds=seeds, split=split)
    with open(os.path.join(root, f"ablations_{split}.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
    text = table(summary)
    with open(os.path.join(root, f"ablations_{split}.md"), "w", encoding="utf-8") as f:
      f.write(text)
    print("\n" + text, flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
