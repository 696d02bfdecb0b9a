r"""Demo settings against CB-Stream's gap over cross-entropy (opt-in findings script, not run by
CI; issue 27 item 3: what was tried to make the gap hold beyond the seeds' spread).

  .venv/bin/python benchmarks/demo_settings.py --workdir=<root> \
      [--settings=difficulty0,difficulty2,...] [--seeds=0,1,2]

Each setting changes a few keys of the demo's config (configs/demo.py; SETTINGS) and trains the
sft_ce and sft_cb_stream variants of every seed (the seed gives both the same initialisation and
data order, as in the demo), then scores both on the validation split (where settings are chosen)
and the test split. Settings live in <root>/<setting>/, a demo workdir of their own (the demo's
identity check refuses a workdir of other settings); every stage is resumable and reused.
Settings that differ only in the SFT section share one data set, base model and tokenizer (hard
links): the first of them in SETTINGS builds them (`stage_owner`), the others link them. Every
setting scores the demo's 560 validation videos (140 could not tell the settings apart:
docs/ablations.md); none reuses the demo's own workdir.

The settings in WITH_GRPO also train and score the demo's GRPO stage from sft_cb_stream.

Writes benchmarks/results/demo_settings.json (--out): per setting its overrides and the
effective values of RECORDED_KEYS (the demo's own where the setting keeps them), per seed and
split each variant's W-Avg and responses, the paired gaps (sft_cb_stream - sft_ce; grpo -
sft_cb_stream where GRPO ran) per split
(bench.seeds.summarize), its stages' timings, the command, commit, date and load; the host once.
docs/ablations.md's table is written from it by benchmarks/figures.py (block `demo_settings`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

import cpu_rounds  # benchmarks/, beside this file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS

# setting -> overrides of the demo config, dotted paths. Every setting scores 560 validation
# videos (the demo's own validation split). SynthStream's difficulty (synthetic.SynthConfig:
# distractor objects, pixel noise) changes the data, so each difficulty has its own base model, at
# the same compute; the SFT settings keep the demo's data (difficulty 0). The first seven ran at
# the SFT lr the demo had before `sft_lr4` was chosen (3e-3): they pin it. `base_answers` changes
# the base stage (half its videos narrate their own question's answers: configs/demo.py
# base.answers), so it has a base model of its own, on the demo's data.
_LR3 = {"sft.lr": 3e-3}
SETTINGS = {
    "difficulty0": dict(_LR3),                                  # the demo's data, SFT lr 3e-3
    "difficulty1": {**_LR3, "data.synth.difficulty": 1},
    "difficulty2": {**_LR3, "data.synth.difficulty": 2},
    "steps150": {**_LR3, "sft.steps": 150},                     # half the steps
    "steps600": {**_LR3, "sft.steps": 600},                     # twice the steps and the cost
    "batch16": {**_LR3, "sft.steps": 150, "sft.batch_size": 16},  # the same rows, half the steps
    "steps400": {**_LR3, "sft.steps": 400},                     # a third more steps and cost
    "sft_lr4": {},                                              # the demo: SFT lr 4e-3
    "base_answers": {"base.answers": True},                     # the base model answers too
}
VARIANTS = ("sft_ce", "sft_cb_stream")
# Settings whose demo GRPO stage (from sft_cb_stream, the demo's GRPO settings) is trained and
# scored too, for the paper's second ordering: the difficulties and the demo compared whole.
WITH_GRPO = ("difficulty0", "difficulty1", "difficulty2", "sft_lr4", "base_answers")
SPLITS = ("validation", "test")
SHARED_STAGES = ("data", "base", "tokenizer")
# The demo config's keys every record stores at their effective values (the setting's overrides
# applied to the demo config of the day), so that a record describes what it ran even after the
# demo's own settings change; docs/ablations.md's "what it sets" column reads them.
RECORDED_KEYS = ("data.synth.difficulty", "base.answers", "sft.steps", "sft.batch_size",
                 "sft.lr", "sft.text_weight")


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "Root of the settings' workdirs.")
  flags.DEFINE_list("settings", list(SETTINGS), f"Settings to run, of {sorted(SETTINGS)}.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (paired).")
  flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results", "demo_settings.json"),
                      "The raw results file.")
  flags.mark_flags_as_required(["workdir"])


def setting_config(name: str):
  """The demo's default-budget config with the setting's overrides (demo.apply_overrides: an
  unknown key is a KeyError naming it)."""
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  from streampro_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  if name not in SETTINGS:
    raise app.UsageError(f"--settings: unknown setting {name!r}; known: {sorted(SETTINGS)}")
  cfg = demo_configs.get_config("default")
  demo_lib.apply_overrides(cfg, SETTINGS[name])
  return cfg


def effective_values(cfg) -> dict:
  """{dotted key: value} of RECORDED_KEYS in a demo config (setting_config's output)."""
  out = {}
  for key in RECORDED_KEYS:
    node = cfg
    for part in key.split("."):
      node = node[part]
    out[key] = node
  return out


def _outside_sft(name: str) -> dict:
  return {k: v for k, v in SETTINGS[name].items() if not k.startswith("sft.")}


def stage_owner(name: str) -> str:
  """The setting that builds the data set and base model `name` uses: the first in SETTINGS whose
  overrides outside the SFT section are the same as `name`'s."""
  return next(other for other in SETTINGS if _outside_sft(other) == _outside_sft(name))


def link_shared(src_workdir: str, workdir: str) -> None:
  """Hard-links src_workdir's data, base model and tokenizer into workdir (once)."""
  os.makedirs(workdir, exist_ok=True)
  if not os.path.exists(os.path.join(src_workdir, "base", "DONE.json")):
    raise FileNotFoundError(f"{src_workdir} has no finished base model: run its setting first")
  for stage in SHARED_STAGES:
    src, dst = os.path.join(src_workdir, stage), os.path.join(workdir, stage)
    if not os.path.exists(dst):
      subprocess.check_call(["cp", "-al", src, dst])


def run_setting(name: str, workdir: str, seeds: list[int]) -> dict:
  """Trains and scores one setting's variants on every seed (the data and base model first, unless
  linked from another workdir); returns its raw record, with every stage's timing (`skipped`:
  reused from an earlier run or a linked workdir)."""
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  from streampro_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.bench import seeds as seeds_lib  # pylint: disable=g-import-not-at-top
  demo = demo_lib.Demo(setting_config(name), workdir, configs=demo_configs, progress=False)
  for stage, fn in (("data", demo.stage_data), ("base", demo.stage_base)):  # skipped if linked
    demo.run_stage(stage, f"setting {name}: {stage}", fn)
  variants = VARIANTS + (("grpo",) if name in WITH_GRPO else ())
  per_seed: dict[str, dict] = {}
  for seed in seeds:
    for v in variants:
      stage = demo_lib.seed_stage(seed, v)
      train = ((lambda seed=seed: demo.stage_grpo(seed)) if v == "grpo" else
               (lambda v=v, seed=seed: demo.stage_sft(seed, v)))
      demo.run_stage(stage, f"setting {name}, seed {seed}: {v}", train)
      for split in SPLITS:
        r = demo.run_stage(demo_lib.seed_stage(seed, demo_lib.eval_stage(split, v)),
                           f"setting {name}, seed {seed}: {v} on the {split} split",
                           lambda v=v, split=split, seed=seed: demo.stage_eval(seed, v, split))
        per_seed.setdefault(str(seed), {}).setdefault(split, {})[v] = {
            "W-Avg": r["scores"]["W-Avg"], "responses": r["decisions"]["response"]}
  summary = {split: seeds_lib.summarize({s: per_seed[s][split] for s in per_seed}, variants)
             for split in SPLITS}
  return {"overrides": SETTINGS[name], "effective": effective_values(demo.cfg),
          "per_seed": per_seed, "summary": summary, "timings": demo.timings}


def main(argv):
  del argv
  from streampro_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  demo_lib.start_cpu_process()     # the demo's pin, before JAX starts
  from streampro_jax import numerics  # pylint: disable=g-import-not-at-top
  root = os.path.abspath(FLAGS.workdir)
  seeds = [int(s) for s in FLAGS.seeds]
  for name in FLAGS.settings:       # refuse a bad command line before any work
    setting_config(name)
  # Owners first, so the settings that share their data and base model find them.
  names = sorted(FLAGS.settings, key=lambda n: (stage_owner(n) != n, list(SETTINGS).index(n)))
  out = {}
  if os.path.exists(FLAGS.out):
    with open(FLAGS.out, encoding="utf-8") as f:
      out = json.load(f)
  out.update(
      what="The demo's sft_ce and sft_cb_stream trained under other settings (SFT budget, "
           "batch and learning rate, SynthStream's difficulty; each seed gives both variants "
           "the same initialisation and data order), scored on the validation and test splits: "
           "does CB-Stream's paired gap over cross-entropy hold beyond the seeds' spread?",
      numerics=numerics.fingerprint())
  settings = out.setdefault("settings", {})
  commit = cpu_rounds.commit()
  for name in names:
    workdir = os.path.join(root, name)
    owner = stage_owner(name)
    if owner != name:
      link_shared(os.path.join(root, owner), workdir)
    demo_lib.set_compilation_cache(workdir, "")
    demo_lib.banner(f"setting {name}: {SETTINGS[name]}")
    load0 = os.getloadavg()
    record = run_setting(name, workdir, seeds)
    record.update(
        command=f"benchmarks/demo_settings.py --workdir=<root> --settings={name} "
                f"--seeds={','.join(map(str, seeds))}",
        commit=commit, date=time.strftime("%Y-%m-%dT%H:%M UTC", time.gmtime()),
        load={"before": [round(x, 2) for x in load0],
              "after": [round(x, 2) for x in os.getloadavg()]})
    settings[name] = record
    with open(FLAGS.out, "w", encoding="utf-8") as f:   # after each setting: nothing is lost
      json.dump(out, f, indent=1)
  for name in names:
    for split in SPLITS:
      g = settings[name]["summary"][split]["gaps"]["sft_cb_stream - sft_ce"]
      print(f"{name:12s} {split:10s} gap x100 per seed "
            f"{', '.join(f'{100 * v:+.1f}' for v in g['values'])}: mean {100 * g['mean']:+.1f} "
            f"+- {100 * g['std']:.1f}, holds: {g['holds']}")
  print(f"raw: {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
