r"""What a larger demo model would cost on this CPU (opt-in findings script, not run by CI; issue
27 item 3 names a wider model among the ways to make the demo's findings hold).

  .venv/bin/python benchmarks/demo_scale_cost.py --workdir=<scratch dir> [--models=demo,wide128]

For each model (MODELS: overrides of the demo config's model section) it runs the demo's three
training stages, seed 0, at two step counts (STEPS: the base stage, the CB-Stream SFT stage, the
GRPO stage from that SFT model) in fresh workdirs with no compilation cache, and takes each
stage's time per step as the difference of the two runs' wall times over the difference of their
steps: compilation, start-up and checkpoint restore cancel out. The projection is the demo's
default budget at those per-step times: base steps + 3 SFT variants x SFT steps + GRPO steps
(the evaluations, about 2 of the demo's 13 minutes, are left out). The data set is the demo's
(generated once, hard-linked into every workdir: it does not depend on the model).

Writes benchmarks/results/demo_scale_cost.json (--out): per model its overrides, parameter count,
per stage the two runs' wall times and the seconds per step, the projection, and against the
demo's model the ratios; the command, commit, date, host and load. Run it on an otherwise idle
machine: the per-step times are whole-process wall times. docs/ablations.md's table is written
from it by benchmarks/figures.py (block `demo_scale_cost`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

import cpu_rounds  # benchmarks/, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS

_TEXT = "model.tiny_text."
# model -> overrides of the demo config. wide128: twice the text model's width (hidden,
# MLP and heads; head_dim 16 as the demo's) and twice the vision tower's.
MODELS = {
    "demo": {},
    "wide128": {_TEXT + "hidden_size": 128, _TEXT + "intermediate_size": 384,
                _TEXT + "num_attention_heads": 8, _TEXT + "num_key_value_heads": 4,
                "model.tiny_vision.hidden_size": 64},
}
# stage -> (its steps key in the demo config, the two step counts timed)
STEPS = {"base": ("base.steps", (20, 80)), "sft_cb_stream": ("sft.steps", (20, 80)),
         "grpo": ("grpo.steps", (4, 12))}


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "Scratch root (one workdir per model and step count).")
  flags.DEFINE_list("models", list(MODELS), f"Models to time, of {sorted(MODELS)}.")
  flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results", "demo_scale_cost.json"),
                      "The raw results file.")
  flags.mark_flags_as_required(["workdir"])


def model_config(name: str, run: int):
  """The demo's default config with the model's overrides and run `run`'s step counts (0 or 1:
  the lower or the higher of STEPS)."""
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  from streampro_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  if name not in MODELS:
    raise app.UsageError(f"--models: unknown model {name!r}; known: {sorted(MODELS)}")
  cfg = demo_configs.get_config("default")
  overrides = dict(MODELS[name])
  for key, counts in STEPS.values():
    overrides[key] = counts[run]
    overrides[key.split(".")[0] + ".log_every_steps"] = counts[run]
  demo_lib.apply_overrides(cfg, overrides)
  return cfg


def per_step(walls: list[float], counts: tuple[int, int]) -> float:
  """Seconds per step from the wall times of two runs of `counts` steps."""
  return (walls[1] - walls[0]) / (counts[1] - counts[0])


def projection(steps_s: dict, cfg) -> float:
  """Seconds of the demo's default training stages at these per-step times (3 SFT variants)."""
  return (steps_s["base"] * int(cfg.base.steps) + 3 * steps_s["sft_cb_stream"] * int(cfg.sft.steps)
          + steps_s["grpo"] * int(cfg.grpo.steps))


def time_model(name: str, root: str, data_src: str | None) -> tuple[dict, str]:
  """Runs the model's stages at both step counts; returns its record and the data folder the
  next model links (data_src, or this model's first workdir's when None)."""
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  from streampro_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  walls: dict[str, list[float]] = {stage: [] for stage in STEPS}
  params = None
  for run in (0, 1):
    workdir = os.path.join(root, f"{name}_{run}")
    if os.path.exists(workdir):     # timings only mean something from a fresh workdir
      shutil.rmtree(workdir)
    os.makedirs(workdir)
    if data_src:
      subprocess.check_call(["cp", "-al", data_src, os.path.join(workdir, "data")])
    demo = demo_lib.Demo(model_config(name, run), workdir, configs=demo_configs, progress=False)
    demo.run_stage("data", "data", demo.stage_data)
    data_src = data_src or os.path.join(workdir, "data")
    demo.run_stage("base", f"{name}, run {run}: base", demo.stage_base)
    demo.run_stage(demo_lib.seed_stage(0, "sft_cb_stream"), f"{name}, run {run}: sft",
                   lambda demo=demo: demo.stage_sft(0, "sft_cb_stream"))
    demo.run_stage(demo_lib.seed_stage(0, "grpo"), f"{name}, run {run}: grpo",
                   lambda demo=demo: demo.stage_grpo(0))
    for stage in STEPS:
      key = stage if stage == "base" else demo_lib.seed_stage(0, stage)
      walls[stage].append(demo.timings[key]["wall_s"])
    if params is None:
      params = _param_count(os.path.join(workdir, "base", "hf"))
  steps_s = {stage: per_step(walls[stage], STEPS[stage][1]) for stage in STEPS}
  record = {"overrides": MODELS[name], "params": params, "wall_s": walls,
            "step_counts": {stage: list(c) for stage, (_, c) in STEPS.items()},
            "seconds_per_step": steps_s,
            "projected_training_s": projection(steps_s, demo_configs.get_config("default"))}
  return record, data_src


def _param_count(hf_dir: str) -> int:
  """Parameters of the exported base model (models.load_hf_checkpoint, optim.count_params)."""
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import optim  # pylint: disable=g-import-not-at-top
  _, params = models.load_hf_checkpoint(hf_dir)
  return optim.count_params(params)["total"]


def main(argv):
  del argv
  from streampro_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  demo_lib.start_cpu_process()     # the demo's pin, before JAX starts
  from streampro_jax import numerics  # pylint: disable=g-import-not-at-top
  for name in FLAGS.models:        # refuse a bad command line before any work
    model_config(name, 0)
  root = os.path.abspath(FLAGS.workdir)
  load0 = os.getloadavg()
  models, data_src = {}, None
  for name in FLAGS.models:
    demo_lib.banner(f"model {name}: {MODELS[name] or 'the demo model'}")
    models[name], data_src = time_model(name, root, data_src)
  ref = models.get("demo")
  if ref:
    for rec in models.values():
      rec["ratio_to_demo"] = {
          **{stage: rec["seconds_per_step"][stage] / ref["seconds_per_step"][stage]
             for stage in STEPS},
          "projected_training": rec["projected_training_s"] / ref["projected_training_s"]}
  commit = cpu_rounds.commit()
  out = dict(
      what="Seconds per step of the demo's training stages (base, CB-Stream SFT, GRPO; seed 0) "
           "for the demo's model and larger ones, from two runs of each stage at different step "
           "counts, and the demo's default training stages projected at those times",
      command=(f"benchmarks/demo_scale_cost.py --workdir=<scratch> "
               f"--models={','.join(FLAGS.models)}"),
      commit=commit, date=time.strftime("%Y-%m-%dT%H:%M UTC", time.gmtime()),
      numerics=numerics.fingerprint(),
      load={"before": [round(x, 2) for x in load0],
            "after": [round(x, 2) for x in os.getloadavg()]},
      models=models)
  with open(FLAGS.out, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  for name, rec in models.items():
    print(f"{name:8s} {rec['params']:,} parameters; s/step " + ", ".join(
        f"{stage} {v:.3f}" for stage, v in rec["seconds_per_step"].items())
        + f"; training stages projected {rec['projected_training_s'] / 60:.1f} min")
  print(f"raw: {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
