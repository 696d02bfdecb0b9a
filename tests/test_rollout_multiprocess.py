"""Rollouts across processes: two processes joined by jax.distributed on loopback, each sampling
its own prompts with the globally sharded parameters, produce the rollouts of one process
sampling all prompts with the same seed (tests/helpers/two_process_rollout_worker.py)."""

import os

import numpy as np
import portpicker
import pytest

from streampro_jax import models
from streampro_jax.data import synthetic
from streampro_jax.data import tokenizer as tok_lib

import multiprocess_run  # pylint: disable=g-bad-import-order
from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "helpers", "two_process_rollout_worker.py")


def _run(num: int, tok_dir: str, tmp_path) -> list[dict]:
  port = portpicker.pick_unused_port()
  outs = [str(tmp_path / f"n{num}_p{pid}.npz") for pid in range(num)]
  multiprocess_run.run_workers(
      [[WORKER, str(port), str(pid), str(num), tok_dir, outs[pid]] for pid in range(num)],
      timeout=600)
  return [dict(np.load(o)) for o in outs]


@pytest.mark.slow
def test_two_process_rollouts_equal_one_process(tmp_path):
  tok_dir = str(tmp_path / "tok")
  tok = tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(), tok_dir)
  (ref,) = _run(1, tok_dir, tmp_path)
  parts = _run(2, tok_dir, tmp_path)
  # Process p holds rows [4 p, 4 p + 4) of the global batch (prompts 2 p, 2 p + 1; G = 2).
  assert ref["input_ids"].shape[0] == 8 and all(x["input_ids"].shape[0] == 4 for x in parts)
  for key in ("input_ids", "position_ids", "decisions", "loss_mask", "messages"):
    axis = 1 if key == "position_ids" else 0
    np.testing.assert_array_equal(np.concatenate([x[key] for x in parts], axis=axis), ref[key],
                                  err_msg=key)
  got = np.concatenate([x["old_logps"] for x in parts])
  # Two summation orders of the same log-probs (sharded over 4 devices vs one):
  # tol.logp_bound on the reference's logits' scale.
  cfg = models.config_from_section(dict(family="qwen2_5_vl", attention_impl="xla"), tok)
  tol.assert_within(tol.max_abs_diff(got, ref["old_logps"]),
                    tol.logp_bound(cfg, int(ref["seq"]), float(ref["logit_scale"])),
                    "rollouts: 2 processes vs 1")
  # The rows sampled something (not a vacuous comparison) and the two G rollouts differ.
  assert ref["loss_mask"].sum() > 8 * 3
  assert not np.array_equal(ref["input_ids"][0], ref["input_ids"][1])
