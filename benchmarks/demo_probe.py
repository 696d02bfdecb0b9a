r"""Does a demo model see and read? Teacher-forced probabilities of the answer words that carry
content, on the demo's test split.

  .venv/bin/python benchmarks/demo_probe.py --workdir=workdir/demo [--seed=0] \
      [--variants=base,sft_ce,...] [--narration] [--rows=64]

For each trained variant of a finished demo workdir (launch/demo.py), the test trajectories are
fed whole (teacher forcing, the same rows the SFT pipeline builds) and
``streampro_jax.bench.content_probe`` reads, at every supervised answer token that is a colour, a
shape or a direction word, the model's probability of the right word renormalised over its group
(chance = 1 / group size), split for colours and shapes by whether the question names the word
(it can be copied) or not (it can only be seen in the frames).

StreamPro-F1 with an exact-match judge gives 0 to any answer with one wrong word, so it cannot
tell "sees nothing" from "almost right"; this probe can. With --narration the rows are the
narration captions of the same test videos (``synthetic._narration_record``: every turn names the
objects on screen, their colours and frame halves), which measures perception directly.

Prints one markdown table and writes <workdir>/probe.json. Results:
docs/benchmarks.md#the-end-to-end-demo.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKDIR = flags.DEFINE_string("workdir", None, "A demo workdir (launch/demo.py --workdir).")
_SEED = flags.DEFINE_integer("seed", 0, "Whose SFT / GRPO models (seed_<n>/); base is shared.")
_VARIANTS = flags.DEFINE_list("variants", ["sft_ce", "sft_focal", "sft_cb_stream", "grpo"],
                              "Variants to probe (those without a checkpoint are skipped).")
_NARRATION = flags.DEFINE_boolean("narration", False,
                                  "Probe the narration captions of the test videos instead of "
                                  "the answers to their questions.")
_ROWS = flags.DEFINE_integer("rows", 64, "Test trajectories to probe.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import demo as demo_configs  # pylint: disable=g-import-not-at-top
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.bench import content_probe  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import config_check, grpo_policy  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(_WORKDIR.value)
  with open(os.path.join(workdir, "demo_config.json"), encoding="utf-8") as f:
    stored = json.load(f)
  cfg = demo_configs.get_config(stored["budget"])
  cfg.seed = int(_SEED.value)
  mine = json.loads(cfg.to_json_best_effort())
  mine.pop("seed")
  if mine != {k: v for k, v in stored.items() if k != "pinned_numerics"}:
    raise app.UsageError(f"{workdir} was run with settings other than configs/demo.py's "
                         f"{stored['budget']!r} budget now holds; probe it with that version")
  c = demo_configs.sft_config(cfg, "ce", demo_configs.data_dir(workdir))
  c.global_batch_size = batch = 8
  c.data.split = "test"
  c.data.shuffle = False
  c.data.narration = bool(_NARRATION.value)
  if c.data.narration:
    c.data.seq_len = max(int(c.data.seq_len), 768)
  tokenizer = setup_lib.make_tokenizer(c, workdir)
  mcfg = setup_lib.make_model_config(c.model, tokenizer)
  it, pipe = setup_lib.make_data(config_check.build(c, "sft").data, tokenizer, mcfg)
  n_batches = max(1, min(_ROWS.value, pipe.num_trajectories) // batch)
  batches = [jax.tree.map(jnp.asarray, next(it).model_inputs()) for _ in range(n_batches)]
  grid = np.tile(np.asarray(pipe.video_grid_thw).reshape(1, 3), (pipe.cfg.max_turns, 1))
  forward = jax.jit(setup_lib.make_forward(models.build(mcfg), grid))
  groups = content_probe.slot_groups(tokenizer)
  abstract = nn.unbox(jax.eval_shape(lambda r: models.backbone_module(mcfg).init_params(mcfg, r),
                                     jax.random.key(0)))
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  shardings = jax.tree.map(lambda _: cpu, abstract)

  results = {}
  for v in _VARIANTS.value:
    ckpt = os.path.join(workdir, v if v == "base" else f"seed_{_SEED.value}/{v}", "checkpoints")
    if not os.path.isdir(ckpt):
      print(f"[skip] {v}: no checkpoint in {ckpt}")
      continue
    params = grpo_policy.restore_params(ckpt, abstract, shardings)
    results[v] = content_probe.probe_batches(forward, params, batches, groups)
  what = "narration captions" if c.data.narration else "answers"
  keys = sorted({k for r in results.values() for k in r})
  print(f"\nTeacher-forced p(right word) / argmax accuracy on {n_batches * batch} test {what} "
        f"(chance in brackets):\n")
  print("| slot | chance | " + " | ".join(results) + " |")
  print("|---|---:|" + "---:|" * len(results))
  for k in keys:
    cells = []
    for r in results.values():
      s = r.get(k)
      cells.append(f"{s['p_right']:.2f} / {s['accuracy']:.2f} (n {s['slots']})" if s else "-")
    chance = next(r[k]["chance"] for r in results.values() if k in r)
    print(f"| {k} | {chance:.2f} | " + " | ".join(cells) + " |")
  out = os.path.join(workdir, "probe_narration.json" if c.data.narration else "probe.json")
  with open(out, "w", encoding="utf-8") as f:
    json.dump({"rows": n_batches * batch, "narration": c.data.narration, "variants": results}, f,
              indent=1)
  print(f"\n{out}")


if __name__ == "__main__":
  app.run(main)
