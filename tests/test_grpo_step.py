"""The GRPO update step (grpo.py section 5) on a tiny Qwen2.5-VL and a rollout-shaped batch.

The batch is 8 SynthStream rows from the grain pipeline (the teacher-forcing layout the sampler
also returns) with rollout fields added: old_logps (teacher-forced log-probs of the initial
params plus noise, so ratios differ from 1 and some get clipped), and reward components that make
2 groups of G = 4 (one of them with zero variance). The reference params are the initial ones
perturbed, so the KL term is not 0.

Checked: the sharded step on 8 fake CPU devices (data 2, fsdp 2, tensor 2, 2 micro-batches)
equals the single-device step; the first pass's loss / KL / clip fraction equal grpo_loss_and_aux
with advantages from a NumPy float64 reference; 2 passes in one call equal 2 calls of 1 pass;
the vision tower stays frozen; "recompute" makes the behaviour policy the current one.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from streampro_jax import grpo, parallel, rewards
from streampro_jax.train import grpo_step, optim
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import step as step_lib
from streampro_jax.train import state as state_lib

G = 4
# Adam eps 1e-3: the first Adam steps are ~lr * sign(g) for |g| >> eps, which turns float32
# summation-order noise in near-zero gradients into lr-sized parameter differences; with a larger
# eps the update is continuous in g and sharded == single device holds to 1e-5.
OPTIM = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, grad_clip_norm=1.0, eps=1e-3,
                                       weight_decay=0.0, frozen=r"^visual/(?!merger/)"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_sft_config):
  from streampro_jax.models import qwen2_5_vl  # pylint: disable=g-import-not-at-top
  cfg = tiny_sft_config(8, num_videos=16, seq_len=320, max_turns=4, prefetch_buffer_size=8)
  tokenizer = setup_lib.make_tokenizer(cfg, str(tmp_path_factory.mktemp("tok")))
  mcfg = setup_lib.make_model_config(cfg.model, tokenizer)
  it, pipe = setup_lib.make_data(cfg, tokenizer, mcfg)
  host = next(it)
  grid = np.tile(pipe.video_grid_thw.reshape(1, 3), (pipe.cfg.max_turns, 1))
  module = qwen2_5_vl.Qwen2_5_VL(mcfg)
  forward = setup_lib.make_forward(module, grid)
  logps_fn = grpo.make_logps_fn(forward, temperature=1.0)
  init_params = jax.device_get(qwen2_5_vl.init_params(mcfg, jax.random.key(0)))
  init_params = jax.tree.map(np.asarray, __import__("flax").linen.unbox(init_params))
  batch = {k: host[k] for k in grpo.GRPO_MODEL_KEYS}
  tf = np.asarray(jax.jit(logps_fn)(init_params, jax.tree.map(jnp.asarray, batch)))
  r = np.random.default_rng(0)
  mask = batch["loss_mask"]
  batch["old_logps"] = ((tf + r.normal(0.0, 0.3, tf.shape)) * (mask > 0)).astype(np.float32)
  batch["reward_fmt"] = np.asarray([1, 1, 0.5, 0, 1, 1, 1, 1], np.float32)
  batch["reward_turn"] = np.asarray([0.2, 1.5, 0, 0.7, 0.4, 0.4, 0.4, 0.4], np.float32)
  batch["reward_traj"] = np.asarray([0.5, 1, 0, 0.25, 0.3, 0.3, 0.3, 0.3], np.float32)
  ref = jax.tree.map(lambda p: (p + 0.02 * r.normal(size=p.shape)).astype(np.float32),
                     init_params)
  return dict(mcfg=mcfg, module=module, logps_fn=logps_fn, batch=batch, tf=tf, ref=ref,
              init=init_params)


def _run(setup, mesh_shape, *, calls=1, **cfg_kw):
  n = int(np.prod(list(mesh_shape.values())))
  mesh = parallel.make_mesh(mesh_shape, devices=jax.devices()[:n])
  cfg = grpo.GRPOStepConfig(group_size=G, **cfg_kw)
  total = calls * cfg.num_passes
  tx = optim.make_optimizer(OPTIM, total_steps=total)
  from streampro_jax.models import qwen2_5_vl  # pylint: disable=g-import-not-at-top
  boxed = jax.eval_shape(lambda rng: qwen2_5_vl.init_params(setup["mcfg"], rng),
                         jax.random.key(0))
  shardings = state_lib.state_shardings(tx, boxed, mesh)
  state = state_lib.state_from_params(setup["init"], tx, shardings, mesh)
  ref = state_lib.put_params(setup["ref"], shardings.params)
  step = grpo_step.make_grpo_step(
      setup["logps_fn"], tx, cfg, state_shardings=shardings,
      batch_sharding=grpo_step.grpo_batch_shardings(setup["batch"], mesh), mesh=mesh,
      trainable=optim.trainable_mask(state.params, OPTIM.frozen),
      schedule=optim.make_schedule(OPTIM, total))
  history = []
  for _ in range(calls):
    batch = parallel.shard_batch(setup["batch"], mesh, batch_dims=step_lib.BATCH_DIMS)
    state, m = step(state, ref, batch)
    history.append(jax.device_get(m))
  return history, jax.device_get(state.params), state, jax.device_get(ref)


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def _np_advantages(r, g, eps=1e-6, ddof=1):
  r = np.asarray(r, np.float64).reshape(-1, g)
  c = r - r.mean(axis=1, keepdims=True)
  return (c / (np.sqrt((c ** 2).sum(axis=1, keepdims=True) / (g - ddof)) + eps)).reshape(-1)


@pytest.fixture(scope="module")
def single(setup):
  return _run(setup, {"data": 1, "fsdp": 1, "tensor": 1}, num_passes=2)


@pytest.mark.slow
def test_sharded_step_equals_single_device(setup, single):
  h1, p1, _, _ = single
  h8, p8, state8, _ = _run(setup, {"data": 2, "fsdp": 2, "tensor": 2}, num_passes=2,
                           num_microbatches=2)
  q = state8.params["layers_0"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert len(q.addressable_shards) == 8
  for key in ("loss", "loss_first_pass", "kl", "clip_fraction", "pg_loss", "ratio_mean",
              "reward", "zero_variance_groups", "advantage_abs_mean", "behaviour_gap"):
    assert h1[0][key] == pytest.approx(h8[0][key], abs=2e-5, rel=1e-4), key
  assert h1[0]["grad_norm"] == pytest.approx(h8[0]["grad_norm"], rel=1e-4)
  assert _max_diff(p1, p8) < 1e-5
  assert _max_diff(p1, setup["init"]) > 1e-3  # it did train


def test_first_pass_equals_reference_loss_and_metrics(setup, single):
  h1, _, _, ref_after = single
  m = h1[0]
  b = setup["batch"]
  r = np.asarray(rewards.combine(b["reward_fmt"], b["reward_turn"], b["reward_traj"]))
  np.testing.assert_allclose(r[:4], [0.415, 1.225, 0.05, 0.4275], rtol=1e-6)  # by hand
  adv = _np_advantages(r, G)
  assert np.all(adv[4:] == 0.0)
  assert m["zero_variance_groups"] == 0.5
  assert m["reward"] == pytest.approx(float(np.mean(r)), rel=1e-6)
  assert m["advantage_abs_mean"] == pytest.approx(float(np.mean(np.abs(adv))), rel=1e-5)
  for k in ("reward_fmt", "reward_turn", "reward_traj"):
    assert m[k] == pytest.approx(float(np.mean(b[k])), rel=1e-6)
  ref_logps = np.asarray(jax.jit(setup["logps_fn"])(setup["ref"],
                                                    jax.tree.map(jnp.asarray, b)))
  loss, aux = grpo.grpo_loss_and_aux(jnp.asarray(setup["tf"]), b["old_logps"], ref_logps,
                                     jnp.asarray(adv, jnp.float32), b["loss_mask"])
  assert m["loss_first_pass"] == pytest.approx(float(loss), rel=1e-4, abs=1e-6)
  # behaviour gap = mean |logp - old| before any update = the injected noise on masked tokens.
  msk = b["loss_mask"] > 0
  assert m["behaviour_gap"] == pytest.approx(
      float(np.mean(np.abs(setup["tf"] - b["old_logps"])[msk])), rel=1e-4)
  assert 0.0 < float(aux["clip_fraction"]) < 1.0 and float(aux["kl_mean"]) > 0.0
  assert m["policy_tokens"] == float(msk.sum()) and m["rows"] == 8
  # The reference params are an input, never updated or donated.
  assert _max_diff(ref_after, setup["ref"]) == 0.0


def test_two_passes_equal_two_single_pass_calls_and_vision_frozen(setup, single):
  _, p_scan, _, _ = single
  _, p_loop, _, _ = _run(setup, {"data": 1, "fsdp": 1, "tensor": 1}, calls=2, num_passes=1)
  assert _max_diff(p_scan, p_loop) < 1e-6
  init = setup["init"]
  np.testing.assert_array_equal(p_scan["visual"]["patch_embed"]["kernel"],
                                init["visual"]["patch_embed"]["kernel"])
  assert np.max(np.abs(p_scan["visual"]["merger"]["mlp_0"]["kernel"]
                       - init["visual"]["merger"]["mlp_0"]["kernel"])) > 1e-5


def test_recompute_old_logps_is_on_policy(setup):
  h, _, _, _ = _run(setup, {"data": 1, "fsdp": 1, "tensor": 1}, old_logps="recompute", beta=0.0,
                    aggregation="token-mean")
  m = h[0]
  assert m["behaviour_gap"] == pytest.approx(0.0, abs=1e-6)
  # The same log-probs on both sides: correlation 1 up to the float32 rounding of the moments
  # (relative 1e-7 per sum of a few hundred tokens, amplified by the n S - S S cancellation).
  assert m["behaviour_corr"] == pytest.approx(1.0, abs=1e-4)
  assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
  assert m["clip_fraction"] == 0.0 and m["kl"] == 0.0
  # On-policy, beta 0, token-mean: loss = -sum(A_b * n_b) / sum(n_b).
  b = setup["batch"]
  adv = _np_advantages(rewards.combine(b["reward_fmt"], b["reward_turn"], b["reward_traj"]), G)
  n_b = b["loss_mask"].sum(axis=1)
  assert m["loss"] == pytest.approx(float(-(adv * n_b).sum() / n_b.sum()), abs=1e-5)


def test_config_errors_state_the_numbers():
  with pytest.raises(ValueError, match="group size 1 with ddof 1"):
    grpo.GRPOStepConfig(group_size=1)
  with pytest.raises(ValueError, match="old_logps 'sampler'"):
    grpo.GRPOStepConfig(old_logps="sampler")
  cfg = grpo.GRPOStepConfig.from_config(
      dict(group_size=8, beta=0.0, temperature=0.7, num_passes=2),
      dict(weights=(0.1, 0.9, 0.0)))
  assert (cfg.beta, cfg.temperature, cfg.num_passes, cfg.reward_weights) == (
      0.0, 0.7, 2, (0.1, 0.9, 0.0))
