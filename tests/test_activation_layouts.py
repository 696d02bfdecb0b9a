"""Named activation layouts (parallel.constrain with the act_* rules): the SFT and GRPO steps of a
tiny Qwen2.5-VL on (data 2, fsdp 2, tensor 2) and (fsdp 4, tensor 2) equal the one-device step,
the lowered step carries the activations' sharding constraints over the tensor axis, and the
constraints are no-ops without a mesh.
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order
from streampro_jax import grpo, parallel
from streampro_jax.data import tokenizer as tok_lib
from streampro_jax.models import qwen2_5_vl
from streampro_jax.train import config_check, grpo_step, optim, sft
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

G = 4
# Adam eps 1e-3 (as tests/test_grpo_step.py): the first step lr * g / (|g| + eps) is
# continuous in the gradient, so float32 summation-order noise stays noise-sized.
OPTIM = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, grad_clip_norm=1.0, eps=1e-3,
                                       weight_decay=0.0, frozen=r"^visual/(?!merger/)"))
MESHES = ({"data": 2, "fsdp": 2, "tensor": 2}, {"data": 1, "fsdp": 4, "tensor": 2})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_sft_config):
  cfg = tiny_sft_config(8, num_videos=8, seq_len=320, max_turns=4, prefetch_buffer_size=8)
  tokenizer = setup_lib.make_tokenizer(cfg, str(tmp_path_factory.mktemp("tok")))
  mcfg = setup_lib.make_model_config(cfg.model, tokenizer)
  it, pipe = setup_lib.make_data(config_check.build(cfg, "sft").data, tokenizer, mcfg)
  host = next(it)
  grid = np.tile(pipe.video_grid_thw.reshape(1, 3), (pipe.cfg.max_turns, 1))
  module = qwen2_5_vl.Qwen2_5_VL(mcfg)
  forward = setup_lib.make_forward(module, grid)
  init = jax.tree.map(np.asarray, __import__("flax").linen.unbox(
      jax.device_get(qwen2_5_vl.init_params(mcfg, jax.random.key(0)))))
  sft_batch = host.model_inputs()
  logps_fn = grpo.make_logps_fn(forward, temperature=1.0)
  tf = np.asarray(jax.jit(logps_fn)(init, jax.tree.map(jnp.asarray, sft_batch)))
  r = np.random.default_rng(0)
  gbatch = sft_batch.replace(
      old_logps=((tf + r.normal(0.0, 0.3, tf.shape)) * (sft_batch.loss_mask > 0)
                 ).astype(np.float32),
      reward_fmt=np.asarray([1, 1, 0.5, 0, 1, 0, 1, 1], np.float32),
      reward_turn=np.asarray([0.2, 1.5, 0, 0.7, 0.4, 0.1, 0.9, 0.4], np.float32),
      reward_traj=np.asarray([0.5, 1, 0, 0.25, 0.3, 0.6, 0.3, 0.0], np.float32))
  return dict(cfg=cfg, mcfg=mcfg, module=module, forward=forward, init=init,
              sft_batch=sft_batch, gbatch=gbatch, logps_fn=logps_fn,
              decision_ids=tok_lib.decision_token_ids(tokenizer))


def _state(setup, mesh, tx):
  boxed = jax.eval_shape(lambda rng: qwen2_5_vl.init_params(setup["mcfg"], rng),
                         jax.random.key(0))
  shardings = state_lib.state_shardings(tx, boxed, mesh)
  return state_lib.state_from_params(setup["init"], tx, shardings, mesh), shardings


def _sft_step(setup, mesh):
  tx = optim.make_optimizer(OPTIM, total_steps=1)
  state, shardings = _state(setup, mesh, tx)
  step = sft.make_sft_step(
      setup["forward"], dict(kind="cb_stream", chunk_size=128), setup["decision_ids"], tx,
      state_shardings=shardings, batch_sharding=setup["sft_batch"].shardings(mesh),
      mesh=mesh, unembed_fn=setup_lib.make_unembed(setup["mcfg"]),
      trainable=optim.trainable_mask(state.params, OPTIM.frozen),
      schedule=optim.make_schedule(OPTIM, 1))
  batch = setup["sft_batch"].shard(mesh)
  return step, (state, batch)


def _grpo(setup, mesh):
  tx = optim.make_optimizer(OPTIM, total_steps=1)
  state, shardings = _state(setup, mesh, tx)
  step = grpo_step.make_grpo_step(
      setup["logps_fn"], tx, grpo.GRPOStepConfig(group_size=G, beta=0.0),
      state_shardings=shardings,
      batch_sharding=setup["gbatch"].shardings(mesh), mesh=mesh,
      trainable=optim.trainable_mask(state.params, OPTIM.frozen),
      schedule=optim.make_schedule(OPTIM, 1))
  batch = setup["gbatch"].shard(mesh)
  return step, (state, None, batch)


STEPS = {"sft": _sft_step, "grpo": _grpo}


def _mesh(shape):
  n = int(np.prod(list(shape.values())))
  return parallel.make_mesh(shape, devices=jax.devices()[:n])


def _run(setup, kind, shape):
  step, args = STEPS[kind](setup, _mesh(shape))
  state, m = step(*args)
  return jax.device_get(m), jax.device_get(state.params)


@pytest.fixture(scope="module")
def single(setup):
  return {k: _run(setup, k, {"data": 1, "fsdp": 1, "tensor": 1}) for k in STEPS}


def test_constrain_is_a_no_op_without_a_mesh():
  x = jnp.ones((4, 6, 8))
  assert parallel.constrain(x, parallel.ACT_RESIDUAL) is x
  with jax.set_mesh(_mesh({"data": 1, "fsdp": 1, "tensor": 1})):
    assert parallel.constrain(x, parallel.ACT_RESIDUAL) is x   # one device: nothing to say


def test_rule_sets_by_name():
  assert parallel.rules_from_config({"rules": "default"}) == parallel.DEFAULT_RULES
  tp = dict(parallel.rules_from_config({"rules": "tensor_in_host_fsdp_across"}))
  assert tp["act_residual_length"] == "tensor" and tp["act_heads"] == "tensor"
  assert tp["act_length"] is None
  assert tp["embed"] == "fsdp" and tp["act_batch"] == ("data", "fsdp")
  with pytest.raises(ValueError, match="config.mesh.rules = 'nope': not a rule set"):
    parallel.rules_from_config({"rules": "nope"})


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(STEPS))
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s.values())))
def test_step_on_mesh_equals_one_device(setup, single, kind, shape):
  m1, p1 = single[kind]
  m8, p8 = _run(setup, kind, shape)
  # One Adam step from the same params: the runs differ only in float32 summation order (the
  # gradient all-reduce over 4 row shards, the tensor-split q/k/v/o, MLP and vocabulary
  # matmuls). The gradient entries differ by at most model_rel(backward) of the clipped
  # gradient's scale (<= 1), and Adam's first step lr * g / (|g| + eps) is 1/eps-Lipschitz in g
  # (tol.adam_param_bound); that worst case, and the 1e-5, must both hold.
  rel = tol.model_rel(setup["mcfg"], 320, backward=True, tokens=8 * 320)
  bound = min(tol.adam_param_bound(rel, [OPTIM.lr], OPTIM.eps), 1e-5)
  tol.assert_within(tol.max_abs_diff(p1, p8), bound, f"{kind} {shape}: params")
  assert tol.max_abs_diff(p1, setup["init"]) > 100 * bound   # it trained: the check can fail
  assert m1["loss"] == pytest.approx(m8["loss"], rel=rel), kind


def _constraints(text):
  """(shape, per-dimension mesh axes) of every sharding constraint in the lowered module
  (Shardy's `sdy.sharding_constraint %x <@mesh, [{"data", "fsdp"}, {}, ...]> : tensor<AxBxf32>`)."""
  out = []
  for dims, ty in re.findall(r"sdy\.sharding_constraint %\S+ <@mesh, \[(.*?)\]> : tensor<([^>]*)>",
                             text):
    axes = tuple(frozenset(re.findall(r'"(\w+)"', d)) for d in re.findall(r"\{[^}]*\}", dims))
    shape = tuple(int(x) for x in ty.split("x")[:-1])
    out.append((shape, axes))
  return out


@pytest.mark.parametrize("kind", list(STEPS))
def test_lowered_step_constrains_activations_over_tensor(setup, kind):
  """The StableHLO of the (data 2, fsdp 2, tensor 2) step holds sharding constraints that split
  the q / k / v / o heads, the MLP hidden units and (SFT's chunked loss) the vocabulary chunk
  over the tensor axis, rows over (data, fsdp), and keep the residual stream whole over tensor
  (parallel.ACT_Q, ACT_KV, ACT_ROWS_MLP, ACT_LOGITS, ACT_RESIDUAL under DEFAULT_RULES)."""
  mesh = _mesh(MESHES[0])
  step, args = STEPS[kind](setup, mesh)
  with state_lib.sharding_context(mesh):
    text = step.jitted.lower(*args).as_text()
  found = _constraints(text)
  t = setup["mcfg"].text
  rows, tp, whole = frozenset({"data", "fsdp"}), frozenset({"tensor"}), frozenset()
  b, n = 8, 320
  assert ((b, n, t.num_attention_heads, t.head_dim), (rows, whole, tp, whole)) in found, found
  assert ((b, n, t.num_key_value_heads, t.head_dim), (rows, whole, tp, whole)) in found, found
  assert ((b * n, t.intermediate_size), (rows, tp)) in found, found
  assert ((b, n, t.hidden_size), (rows, whole, whole)) in found, found
  assert not any(ax[-1] == tp for shape, ax in found if shape == (b, n, t.hidden_size))
  if kind == "sft":
    assert ((b, n, 128), (rows, whole, tp)) in found, found


def test_tensor_in_host_rule_set_splits_the_residual_stream_by_sequence(setup):
  """Under the named set "tensor_in_host_fsdp_across" the residual stream [B, T, D] is split by
  row over (data, fsdp) and along the sequence over tensor; q stays split by heads."""
  mesh = _mesh(MESHES[0])
  step, args = _sft_step(setup, mesh)
  rules = parallel.rules_from_config({"rules": "tensor_in_host_fsdp_across"})
  with state_lib.sharding_context(mesh, rules):
    text = step.jitted.lower(*args).as_text()
  found = _constraints(text)
  t = setup["mcfg"].text
  rows, tp, whole = frozenset({"data", "fsdp"}), frozenset({"tensor"}), frozenset()
  assert ((8, 320, t.hidden_size), (rows, tp, whole)) in found, found
  assert ((8, 320, t.hidden_size), (rows, whole, whole)) not in found, found
  # q / k / v stay split by heads (their length is act_length, whole in both sets).
  assert ((8, 320, t.num_attention_heads, t.head_dim), (rows, whole, tp, whole)) in found, found
