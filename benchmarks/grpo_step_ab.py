"""The demo's GRPO step on two checkouts of this repository, run in turn (an A/B over commits).

Each run starts a fresh process on one checkout (``--root``, imported ahead of the installed
package) and times GRPOTrainer.train_step on the demo's GRPO shapes: configs/demo.py "default"
(4 samples x G 8, 16 turns, seq_len 768, its tiny Qwen2.5-VL, its system prompt and SynthStream
settings, rollout sizes), temperature 1.0 and 18 text tokens per message on both sides, random
init, SynthStream records generated on the fly. The first step compiles and is not counted;
the median of the next ``--steps`` is printed as one JSON line per run. The config is built
here from the keys both checkouts know (an older checkout names the text budget
``grpo.max_response_tokens``), so the same script measures commits that predate it.

  git worktree add /tmp/old <commit>
  .venv/bin/python benchmarks/grpo_step_ab.py --root /tmp/old --root . --rounds 3

With ``--out`` it follows the CPU method (benchmarks/cpu_rounds.py): ``--rounds`` (at least 5)
interleaved rounds, the load average before and after each run, equal work checked every round
(the same rows, timed steps and sampled tokens of every step on both checkouts), one raw
JSON-lines file with the per-round measurements and the summary (median and range of each side
and of the ratio). Equal sampled tokens need the same draws on both sides: the checkouts derive
their sampling keys differently, so at a temperature above 0 they sample different tokens (3,653
against 3,978 per step between 23563ed and d46bca3 at temperature 1); ``--temperature 0``
(greedy; the default with ``--out``) removes the key difference, so two checkouts that build the
same model from the same seed sample the same tokens. The counts are checked either way: a round
with unequal work stops the run and the raw file says so (23563ed against this code: unequal
even greedy, the figure is dropped; docs/rollouts.md).

  .venv/bin/python benchmarks/grpo_step_ab.py --root . --root /tmp/old --rounds 5 \
      --out benchmarks/results/cpu_grpo_step_vs_23563ed.jsonl
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys

def demo_grpo_config(demo, tiny_synthetic_grpo, *, temperature=None):
  """The demo's GRPO stage (configs/demo.py "default": samples x G, turns, text tokens, seq_len,
  its tiny model, system prompt, SynthStream settings and rollout sizes) as a GRPOTrainer config
  on SynthStream records generated on the fly (random init). Takes the checkout's `configs.demo`
  and `configs.tiny_synthetic_grpo` modules and reads only keys every checkout since 23563ed has
  (the text budget was `grpo.max_response_tokens` there). temperature: None keeps the demo's."""
  d = demo.get_config("default")
  c = tiny_synthetic_grpo.get_config()
  c.model = d.model
  c.model.reinit_decision_rows = False   # GRPO starts from a trained policy
  c.global_batch_size = int(d.grpo.batch_size)
  c.grpo.group_size = int(d.grpo.group_size)
  c.grpo.temperature = float(d.grpo.temperature if temperature is None else temperature)
  text_tokens = int(d.grpo.get("max_text_tokens", d.grpo.get("max_response_tokens")))
  if "max_text_tokens" in c.rollout:
    c.rollout.max_text_tokens = text_tokens
  else:
    c.grpo.max_response_tokens = text_tokens
  c.data.seq_len = int(d.grpo.seq_len)
  c.data.max_turns = int(d.max_turns)
  if int(d.frame_size) != int(c.data.get("frame_size", c.data.get("frame_height"))):
    c.data.frame_size = int(d.frame_size)
  c.data.synth = dict(d.data.synth)
  c.data.system_prompt = str(d.system_prompt)
  c.rollout.constrain_decision = bool(d.grpo.constrain_decision)
  c.rollout.user_chunk_len = int(d.grpo.user_chunk_len)
  c.rollout.capacity = int(d.grpo.capacity)
  return c


# The child runs in a fresh process on the checkout; demo_grpo_config's source travels with it.
_CHILD = r"""
import json, os, sys, tempfile
root, steps, temperature = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sys.path.insert(0, root)
os.chdir(root)
import numpy as np
from configs import demo, tiny_synthetic_grpo
import streampro_jax
from streampro_jax.train import grpo_trainer
if not os.path.abspath(streampro_jax.__file__).startswith(os.path.abspath(root)):
  raise SystemExit(f"imported {streampro_jax.__file__}, not the checkout {root}")
""" + inspect.getsource(demo_grpo_config) + r"""
c = demo_grpo_config(demo, tiny_synthetic_grpo, temperature=temperature)
trainer = grpo_trainer.GRPOTrainer(c, tempfile.mkdtemp())
rows = []
for s in range(1, steps + 2):
  m = trainer.train_step(s)
  if s > 1:
    rows.append({k: float(m[k]) for k in ("step_s", "rollout_s", "update_s", "sampled_tokens")})
med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
med["sampled_tokens_per_step"] = [int(r["sampled_tokens"]) for r in rows]
med["rows"] = int(c.global_batch_size) * int(c.grpo.group_size)
med["timed_steps"] = len(rows)
med["temperature"] = temperature
print("RESULT " + json.dumps(dict(med, load=os.getloadavg()[0])), flush=True)
"""


def _child_env() -> dict:
  """The environment of a child: CPU unless set, and no PYTHONPATH (a package of the parent's
  checkout on it would shadow the child's: an old checkout's configs/ is a namespace package)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def run(root: str, steps: int, temperature: float = 1.0) -> dict:
  """One fresh process on `root`: median step_s / rollout_s / update_s / sampled_tokens, the
  sampled tokens of every timed step, rows and timed steps."""
  proc = subprocess.run([sys.executable, "-c", _CHILD, os.path.abspath(root), str(steps),
                         str(temperature)], capture_output=True, text=True, check=False,
                        cwd=os.path.abspath(root), env=_child_env())
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"run on {root} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", action="append", required=True,
                 help="a checkout of this repository; give it twice (A, then B)")
  p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (A, B, B, A, ...)")
  p.add_argument("--steps", type=int, default=3, help="timed steps per run, after the first")
  p.add_argument("--temperature", type=float, default=None,
                 help="sampling temperature on both sides (default: 0 with --out, so that both "
                      "sample the same tokens; else 1)")
  p.add_argument("--out", default="",
                 help="the CPU method's raw JSON-lines file (benchmarks/cpu_rounds.py); the "
                      "ratio is the second --root's step_s over the first's (how many times "
                      "faster the first is)")
  args = p.parse_args()
  temperature = args.temperature if args.temperature is not None else (0.0 if args.out else 1.0)
  if args.out:
    import cpu_rounds  # pylint: disable=g-import-not-at-top  (benchmarks/cpu_rounds.py)
    if len(args.root) != 2:
      p.error("--out needs two --root")
    names = [f"{os.path.basename(os.path.abspath(r))}" for r in args.root]
    sides = [(cpu_rounds.commit(os.path.abspath(r)), (lambda r=r: run(r, args.steps, temperature)))
             for r in args.root]
    if sides[0][0] == sides[1][0]:
      sides = [(f"{n}:{c}", fn) for n, (c, fn) in zip(names, sides)]
    command = "benchmarks/grpo_step_ab.py " + " ".join(
        f"--root <checkout of {name}>" for name, _ in sides) + (
        f" --rounds {args.rounds} --steps {args.steps} --temperature {temperature} --out "
        f"{os.path.relpath(os.path.abspath(args.out), cpu_rounds.ROOT)}")
    cpu_rounds.run_rounds("demo_grpo_step_ab", sides, rounds=args.rounds, out=args.out,
                          command=command, metric="step_s",
                          work_keys=("rows", "timed_steps", "sampled_tokens_per_step"),
                          extra=dict(temperature=temperature, timed_steps=args.steps))
    return
  results = {root: [] for root in args.root}
  for i in range(args.rounds):
    for root in args.root:
      r = run(root, args.steps, temperature)
      results[root].append(r)
      print(json.dumps(dict(round=i + 1, root=root, **r)), flush=True)
  if len(args.root) == 2:
    a, b = args.root
    ratios = [x["step_s"] / y["step_s"] for x, y in zip(results[a], results[b])]
    print(json.dumps({"step_s ratio A/B per round": [round(x, 2) for x in ratios]}))


if __name__ == "__main__":
  main()
