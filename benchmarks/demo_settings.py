r"""Demo settings against CB-Stream's gap over cross-entropy (opt-in findings script, not run by
CI; issue 27 item 3: what was tried to make the gap hold beyond the seeds' spread).

  .venv/bin/python benchmarks/demo_settings.py --workdir=<root> [--demo_workdir=<a demo workdir>] \
      [--settings=demo,steps150,...] [--seeds=0,1,2]

Each setting changes a few keys of the demo's config (configs/demo.py; SETTINGS) and trains the
sft_ce and sft_cb_stream variants of every seed (the seed gives both the same initialisation and
data order, as in the demo), then scores both on the validation split (where settings are chosen)
and the test split. Settings live in <root>/<setting>/, a demo workdir of their own (the demo's
identity check refuses a workdir of other settings); every stage is resumable and reused. A
setting that changes only the SFT section shares --demo_workdir's data, base model and tokenizer
(hard links); one that changes the data or the base stage builds its own.

Writes benchmarks/results/demo_settings.json (--out): per setting its overrides, per seed and
split each variant's W-Avg and responses, the paired gap sft_cb_stream - sft_ce per split
(bench.seeds.summarize), its stages' wall time, the command, commit, date and load; the host once.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS

# setting -> overrides of the demo config, dotted paths ({} is the demo itself).
SETTINGS = {
    "demo": {},
    "steps150": {"sft.steps": 150},                              # half the steps
    "steps600": {"sft.steps": 600},                              # twice the steps, twice the cost
    "batch16": {"sft.steps": 150, "sft.batch_size": 16},        # the same rows, half the steps
    # SynthStream's distractor objects and pixel noise (synthetic.SynthConfig.difficulty): new
    # data, so a new base model; the same compute.
    "difficulty1": {"data.synth.difficulty": 1},
    "difficulty2": {"data.synth.difficulty": 2},
}
VARIANTS = ("sft_ce", "sft_cb_stream")
SPLITS = ("validation", "test")
SHARED_STAGES = ("data", "base", "tokenizer")


def define_flags():
  """The command line's flags (defined only when run as a program)."""
  flags.DEFINE_string("workdir", None, "Root of the settings' workdirs.")
  flags.DEFINE_string("demo_workdir", None, "A default-budget demo workdir whose data and base "
                      "model the SFT-only settings share (launch/demo.py --workdir).")
  flags.DEFINE_list("settings", list(SETTINGS), f"Settings to run, of {sorted(SETTINGS)}.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (paired).")
  flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results", "demo_settings.json"),
                      "The raw results file.")
  flags.mark_flags_as_required(["workdir"])


def setting_config(name: str):
  """The demo's default-budget config with the setting's overrides."""
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  if name not in SETTINGS:
    raise app.UsageError(f"--settings: unknown setting {name!r}; known: {sorted(SETTINGS)}")
  cfg = demo_configs.get_config("default")
  for key, value in SETTINGS[name].items():
    *path, field = key.split(".")
    node = cfg
    for part in path:
      node = node.get(part)
      if node is None:
        break
    if node is None or field not in node:
      raise KeyError(f"setting {name}: {key} is not a key of the demo config")
    node[field] = value
  return cfg


def shares_demo_stages(name: str) -> bool:
  """Whether the setting changes only the SFT section (so it reuses the demo's data and base)."""
  return all(key.startswith("sft.") for key in SETTINGS[name])


def link_shared(demo_workdir: str, workdir: str) -> None:
  """Hard-links the demo workdir's data, base model and tokenizer into workdir (once)."""
  os.makedirs(workdir, exist_ok=True)
  for stage in SHARED_STAGES:
    src, dst = os.path.join(demo_workdir, stage), os.path.join(workdir, stage)
    if not os.path.exists(src):
      raise FileNotFoundError(f"--demo_workdir={demo_workdir} has no {stage}/: run "
                              "launch/demo.py --workdir there first")
    if not os.path.exists(dst):
      subprocess.check_call(["cp", "-al", src, dst])


def run_setting(name: str, workdir: str, seeds: list[int]) -> dict:
  """Trains and scores one setting's variants on every seed (its own data and base model first,
  unless it shares the demo's); returns its raw record."""
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  from streampro_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.bench import seeds as seeds_lib  # pylint: disable=g-import-not-at-top
  demo = demo_lib.Demo(setting_config(name), workdir, configs=demo_configs, progress=False)
  wall: dict[str, float] = {}
  if not shares_demo_stages(name):
    for stage, fn in (("data", demo.stage_data), ("base", demo.stage_base)):
      wall[stage] = demo.run_stage(stage, f"setting {name}: {stage}", fn)["timing"]["wall_s"]
  per_seed: dict[str, dict] = {}
  for seed in seeds:
    for v in VARIANTS:
      stage = demo_lib.seed_stage(seed, v)
      info = demo.run_stage(stage, f"setting {name}, seed {seed}: {v}",
                            lambda v=v, seed=seed: demo.stage_sft(seed, v))
      wall[stage] = info["timing"]["wall_s"]
      for split in SPLITS:
        r = demo.run_stage(demo_lib.seed_stage(seed, demo_lib.eval_stage(split, v)),
                           f"setting {name}, seed {seed}: {v} on the {split} split",
                           lambda v=v, split=split, seed=seed: demo.stage_eval(seed, v, split))
        per_seed.setdefault(str(seed), {}).setdefault(split, {})[v] = {
            "W-Avg": r["scores"]["W-Avg"], "responses": r["decisions"]["response"]}
  summary = {split: seeds_lib.summarize({s: per_seed[s][split] for s in per_seed}, VARIANTS)
             for split in SPLITS}
  return {"overrides": SETTINGS[name], "per_seed": per_seed, "summary": summary,
          "wall_s": wall}


def main(argv):
  del argv
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from streampro_jax import numerics  # pylint: disable=g-import-not-at-top
  numerics.pin_cpu_numerics()      # the demo's pin, before JAX starts
  from streampro_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  demo_lib.quiet_library_logs()
  root = os.path.abspath(FLAGS.workdir)
  seeds = [int(s) for s in FLAGS.seeds]
  for name in FLAGS.settings:       # refuse a bad command line before any work
    setting_config(name)
    if shares_demo_stages(name) and not FLAGS.demo_workdir:
      raise app.UsageError(f"setting {name} shares a demo's data and base model: pass "
                           "--demo_workdir")
  out = {}
  if os.path.exists(FLAGS.out):
    with open(FLAGS.out, encoding="utf-8") as f:
      out = json.load(f)
  out.update(
      what="The demo's sft_ce and sft_cb_stream trained under other settings (SFT budget and "
           "batch, SynthStream's difficulty; each seed gives both variants the same "
           "initialisation and data order), scored on the validation and test splits: does "
           "CB-Stream's paired gap over cross-entropy hold beyond the seeds' spread?",
      numerics=numerics.fingerprint())
  settings = out.setdefault("settings", {})
  commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=False).stdout.strip()
  for name in FLAGS.settings:
    workdir = os.path.join(root, name)
    if shares_demo_stages(name):
      link_shared(os.path.abspath(FLAGS.demo_workdir), workdir)
    demo_lib.set_compilation_cache(workdir, "")
    demo_lib.banner(f"setting {name}: {SETTINGS[name]}")
    load0 = os.getloadavg()
    record = run_setting(name, workdir, seeds)
    record.update(
        command="benchmarks/demo_settings.py --workdir=<root> --demo_workdir=<demo workdir> "
                f"--settings={name} --seeds={','.join(map(str, seeds))}",
        commit=commit, date=time.strftime("%Y-%m-%dT%H:%M UTC", time.gmtime()),
        load={"before": [round(x, 2) for x in load0],
              "after": [round(x, 2) for x in os.getloadavg()]})
    settings[name] = record
    with open(FLAGS.out, "w", encoding="utf-8") as f:   # after each setting: nothing is lost
      json.dump(out, f, indent=1)
  for name in FLAGS.settings:
    for split in SPLITS:
      g = settings[name]["summary"][split]["gaps"]["sft_cb_stream - sft_ce"]
      print(f"{name:12s} {split:10s} gap x100 per seed "
            f"{', '.join(f'{100 * v:+.1f}' for v in g['values'])}: mean {100 * g['mean']:+.1f} "
            f"+- {100 * g['std']:.1f}, holds: {g['holds']}")
  print(f"raw: {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
