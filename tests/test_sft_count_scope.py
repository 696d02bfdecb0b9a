"""config.loss.count_scope in the SFT step: global | microbatch | device, numbers by hand.

The "model" returns its only parameter as the logits (zeros: every -log p = ln V), so the step's
reported loss is the CB-Stream weighting alone, checked against the hand formula for each scope.
The batch of 8 rows runs on a mesh of 4 data-parallel devices with 1 or 2 micro-batches.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from streampro_jax import parallel
from streampro_jax.data.batch import Batch
from streampro_jax.train import sft
from streampro_jax.train import state as state_lib

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

SIL, RESP, V, BETA = 2, 3, 4, 0.5
S, R = SIL, RESP
# 8 rows x 4 tokens, all supervised.
ROWS = np.array([[S, S, S, R], [S, S, S, S], [S, R, R, R], [S, S, S, S],
                 [S, S, R, R], [S, S, S, S], [R, R, R, R], [S, S, S, R]], np.int32)


def _w(n_s, n_r):
  """Hand weights: E = (1 - beta^n) / (1 - beta); absent class left out."""
  present = [(k, (1 - BETA ** n) / (1 - BETA)) for k, n in (("s", n_s), ("r", n_r)) if n > 0]
  inv = {k: 1 / e for k, e in present}
  tot = sum(inv.values())
  return {k: inv.get(k, 0.0) / tot * len(inv) for k in ("s", "r")}


def _hand_loss(groups):
  """Mean over the 32 tokens of w * ln V, each group of rows with its own counts."""
  total = 0.0
  for rows in groups:
    n_s = int(np.sum(ROWS[rows] == S))
    n_r = int(np.sum(ROWS[rows] == R))
    w = _w(n_s, n_r)
    total += n_s * w["s"] + n_r * w["r"]
  return total * math.log(V) / ROWS.size


def _step_loss(scope, num_microbatches):
  mesh = parallel.make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:4])
  b, t = ROWS.shape
  # The forward ignores the batch: only labels and loss_mask enter the loss.
  batch = Batch(input_ids=np.zeros((b, t), np.int32), labels=ROWS,
                loss_mask=np.ones((b, t), np.float32), attention_mask=np.ones((b, t), np.int32),
                position_ids=np.zeros((3, b, t), np.int32),
                pixel_values_videos=np.zeros((b, 1, 1), np.float32))
  params = {"logits": jnp.zeros((b // num_microbatches, t, V), jnp.float32)}
  tx = optax.sgd(0.0)
  forward = lambda p, mb, hidden: p["logits"]  # noqa: E731
  update = sft.make_sft_update(forward, dict(kind="cb_stream", beta=BETA, count_scope=scope),
                               (SIL, RESP), tx, num_microbatches=num_microbatches)
  state = state_lib.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))
  sharded = batch.shard(mesh)
  with state_lib.sharding_context(mesh):
    _, metrics = jax.jit(update)(state, sharded)
  return float(metrics["loss"])


@pytest.mark.parametrize("num_microbatches", [1, 2])
def test_count_scopes_by_hand(num_microbatches):
  everything = [list(range(8))]
  # Micro-batches are strided: micro-batch i holds rows i, i + m, ...
  micro = [list(range(i, 8, num_microbatches)) for i in range(num_microbatches)]
  # Devices hold contiguous blocks of each micro-batch's rows.
  per = 8 // num_microbatches // 4
  device = [mb[d * per:(d + 1) * per] for mb in micro for d in range(4)]
  want = {"global": _hand_loss(everything), "microbatch": _hand_loss(micro),
          "device": _hand_loss(device)}
  # The three scopes give three different numbers here (the test can tell them apart).
  if num_microbatches == 2:
    assert len({round(v, 6) for v in want.values()}) == 3
  for scope, value in want.items():
    # float32 against the float64 hand value: each token's log V is one rounding (the V
    # exponentials of the zero logits and their sum are exact), its class weight a short formula
    # (beta powers, a division: <= 8 roundings), then the weighted sum over the tokens and the
    # mean's division.
    rel = tol.rel_ops_bound(1 + 8 + ROWS.size + 1)
    assert _step_loss(scope, num_microbatches) == pytest.approx(value, rel=rel), scope


def test_unknown_scope_is_an_error():
  with pytest.raises(ValueError, match="count_scope"):
    sft.make_sft_loss_fn(lambda p, b, h: None, dict(kind="cb_stream", count_scope="host"),
                         (SIL, RESP))
