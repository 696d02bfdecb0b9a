r"""The end-to-end StreamPro demo on SynthStream, on CPU.

  .venv/bin/python launch/demo.py --workdir=workdir/demo [--budget=smoke|default] [--seeds=0,1,2]

Stages (each one's outputs live in --workdir; a rerun skips the stages that finished and resumes
an interrupted one from its last checkpoint / results line):

  data            SynthStream train, validation and test splits, built once as a TFDS
                  array_record data set (data/); every later stage reads it.
  base            the base model (stand-in for the paper's pretrained VLM, one for every seed):
                  the random tiny Qwen2.5-VL trained with cross-entropy to narrate the training
                  videos (a caption of the objects on screen, or of the one the question names, on
                  every turn), exported as a Hugging Face folder (base/hf); no benchmark
                  question, no silence.
  then for every seed in --seeds, in seed_<n>/:
  sft_ce          SFT under plain cross-entropy        } same init (the base model, decision
                                                       } rows re-initialised), same data order,
  sft_focal       SFT under the Streamo focal loss     } same steps / batch / learning rate
  sft_cb_stream   SFT under CB-Stream                  }
  grpo            GRPO from the sft_cb_stream checkpoint (format + turn-F1 + rubric rewards)
  eval_<split>_<variant>  streaming evaluation (greedy, turn by turn) of each model on the
                  validation split (where settings are chosen) and the test split (the headline),
                  scored with StreamPro-F1 (exact-match judge, span IoU for TG)
  report          results.json, table.md and the report figures (report/*.png: the first seed's
                  test split; seeds.png: every seed's four models on both splits)

The workdir belongs to one budget: a later run with more --seeds reuses the data, the base model
and every finished seed. Before JAX starts, the demo pins XLA:CPU's rounding
(streampro_jax.numerics; --nopin_numerics turns it off): the same command prints the same table
on every machine of the CI kind (docs/decisions.md#cpu-numerics).

results.json: {"budget", "seeds", "numerics" (the host and the base model's parameter hash),
"per_seed": {seed: {split: {variant: {"W-Avg", "Avg", "PU", "TR", "PA", "per_task": {task: F1},
"decisions"}}}}, "summary": {split: bench.seeds.summarize output}, "findings": {split: {gap:
holds}}, "timings", "load", "figures"}. Scores are fractions in [0, 1]; the printed tables are
x100. Settings: configs/demo.py; what they are and why: docs/components.md#the-end-to-end-demo.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags."""
  flags.DEFINE_string("workdir", None, "Where every stage writes (resumable).")
  flags.DEFINE_enum("budget", "default", ("smoke", "default"), "Demo budget.")
  flags.DEFINE_list("seeds", ["0"], "Training seeds of the SFT and GRPO stages (decision-row "
                    "init, data order, rollouts); the data and the base model are shared.")
  flags.DEFINE_boolean("progress_bar", True, "Show the evaluation progress bars.")
  flags.DEFINE_boolean("pin_numerics", True, "Pin XLA:CPU's rounding (streampro_jax.numerics) "
                       "so that every host of a kind prints the same table.")
  flags.DEFINE_string("compilation_cache", "",
                      "JAX persistent compilation cache folder ('' : <workdir>/jax_cache, "
                      "'none': off).")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
  from streampro_jax import demo as demo_lib  # pylint: disable=g-import-not-at-top
  demo_lib.quiet_library_logs()
  try:
    seeds = [int(s) for s in FLAGS.seeds]
  except ValueError as e:
    raise app.UsageError(f"--seeds={','.join(FLAGS.seeds)}: expected integers ({e})") from e
  if not seeds or len(set(seeds)) != len(seeds):
    raise app.UsageError(f"--seeds={','.join(FLAGS.seeds)}: expected distinct integers")
  # The demo runs on the CPU (its figures are CPU figures): no other backend is probed, so an
  # installed libtpu (the test extra's, for launch/aot_compile.py) stays silent.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from streampro_jax import numerics  # pylint: disable=g-import-not-at-top
  if FLAGS.pin_numerics:
    numerics.pin_cpu_numerics()     # before JAX starts its backend
  import jax  # pylint: disable=g-import-not-at-top
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  workdir = FLAGS.workdir
  demo_lib.set_compilation_cache(workdir, FLAGS.compilation_cache)
  cfg = demo_configs.get_config(FLAGS.budget)
  fp = numerics.fingerprint()
  demo_lib.banner(f"StreamPro demo: budget {cfg.budget}, seeds {seeds}, workdir {workdir} "
         f"({jax.device_count()} {jax.devices()[0].platform} device(s); {fp['cpu']}, "
         f"{fp['cores']} cores; numerics {'pinned' if fp['pinned'] else 'NOT pinned'})")
  try:
    demo = demo_lib.Demo(cfg, workdir, configs=demo_configs, progress=FLAGS.progress_bar)
  except demo_lib.WorkdirMismatch as e:
    raise app.UsageError(f"--workdir: {e}") from None
  demo.run(seeds)


if __name__ == "__main__":
  import _cli  # pylint: disable=g-import-not-at-top  (launch/_cli.py: one-line usage errors)
  define_flags()
  _cli.run(main)
