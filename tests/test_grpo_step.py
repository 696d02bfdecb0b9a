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

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from streampro_jax import grpo, parallel, rewards
from streampro_jax.train import config_check, grpo_step, optim
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

G = 4
# Adam eps 1e-2: at the default 1e-8 the first Adam steps are ~lr * sign(g), which turns float32
# summation-order noise in near-zero gradients into lr-sized parameter differences that no bound
# below the step holds on every host; with a large eps the update is Lipschitz in g
# (tol.adam_param_bound) and the derived bound stays below half the parameters' change.
OPTIM = ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0, grad_clip_norm=1.0, eps=1e-2,
                                       weight_decay=0.0, frozen=r"^visual/(?!merger/)"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_sft_config):
  from streampro_jax.models import qwen2_5_vl  # pylint: disable=g-import-not-at-top
  cfg = tiny_sft_config(8, num_videos=16, seq_len=320, max_turns=4, prefetch_buffer_size=8)
  tokenizer = setup_lib.make_tokenizer(cfg, str(tmp_path_factory.mktemp("tok")))
  mcfg = setup_lib.make_model_config(cfg.model, tokenizer)
  it, pipe = setup_lib.make_data(config_check.build(cfg, "sft").data, tokenizer, mcfg)
  host = next(it)
  grid = np.tile(pipe.video_grid_thw.reshape(1, 3), (pipe.cfg.max_turns, 1))
  module = qwen2_5_vl.Qwen2_5_VL(mcfg)
  forward = setup_lib.make_forward(module, grid)
  logps_fn = grpo.make_logps_fn(forward, temperature=1.0)
  init_params = jax.device_get(qwen2_5_vl.init_params(mcfg, jax.random.key(0)))
  init_params = jax.tree.map(np.asarray, __import__("flax").linen.unbox(init_params))
  batch = host.model_inputs()
  tf = np.asarray(jax.jit(logps_fn)(init_params, jax.tree.map(jnp.asarray, batch)))
  logits = np.asarray(jax.jit(forward)(init_params, jax.tree.map(jnp.asarray, batch)))
  logit_scale = float(np.abs(logits[batch.attention_mask > 0]).max())
  r = np.random.default_rng(0)
  mask = batch.loss_mask
  batch = batch.replace(
      old_logps=((tf + r.normal(0.0, 0.3, tf.shape)) * (mask > 0)).astype(np.float32),
      reward_fmt=np.asarray([1, 1, 0.5, 0, 1, 1, 1, 1], np.float32),
      reward_turn=np.asarray([0.2, 1.5, 0, 0.7, 0.4, 0.4, 0.4, 0.4], np.float32),
      reward_traj=np.asarray([0.5, 1, 0, 0.25, 0.3, 0.3, 0.3, 0.3], np.float32))
  ref = jax.tree.map(lambda p: (p + 0.02 * r.normal(size=p.shape)).astype(np.float32),
                     init_params)
  ref_logps = np.asarray(jax.jit(logps_fn)(ref, jax.tree.map(jnp.asarray, batch)))
  return dict(mcfg=mcfg, module=module, logps_fn=logps_fn, batch=batch, tf=tf, ref=ref,
              ref_logps=ref_logps, init=init_params, logit_scale=logit_scale)


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
  ref = state_lib._put_params(setup["ref"], shardings.params)
  step = grpo_step.make_grpo_step(
      setup["logps_fn"], tx, cfg, state_shardings=shardings,
      batch_sharding=setup["batch"].shardings(mesh), mesh=mesh,
      trainable=optim.trainable_mask(state.params, OPTIM.frozen),
      schedule=optim.make_schedule(OPTIM, total))
  history = []
  for _ in range(calls):
    batch = setup["batch"].shard(mesh)
    state, m = step(state, ref, batch)
    history.append(jax.device_get(m))
  return history, jax.device_get(state.params), state, jax.device_get(ref)


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


def _np_advantages(r, g, eps=1e-6, ddof=1):
  r = np.asarray(r, np.float64).reshape(-1, g)
  c = r - r.mean(axis=1, keepdims=True)
  return (c / (np.sqrt((c ** 2).sum(axis=1, keepdims=True) / (g - ddof)) + eps)).reshape(-1)


def _bounds(setup) -> dict:
  """The derived bounds of the first pass (tests/helpers/tolerances.py):
  lp: a token's log-prob between two summation orders (tol.logp_bound on the logits' scale);
  slope: the largest derivative of a token's GRPO loss in its log-prob, r_max |A|_max +
    beta (1 + e^(max(ref - lp))) (r = e^(lp - old)), so the loss (the aggregation's weights sum
    to 1) moves by at most slope * lp;
  adv: an advantage (r - mean) / (std + eps) in float32 against another order or float64: the
    centring to gamma(G + 1) max |r| / sigma (r - mean cancels), the rest (variance, sqrt,
    division) to gamma(G + 4) |A|, on each side;
  n_tok, adv_max: the policy tokens and the largest |advantage|."""
  b, mcfg = setup["batch"], setup["mcfg"]
  msk = b.loss_mask > 0
  lp = tol.logp_bound(mcfg, b.input_ids.shape[1], setup["logit_scale"])
  r_all = rewards.combine(b.reward_fmt, b.reward_turn, b.reward_traj)
  adv_max = float(np.abs(_np_advantages(r_all, G)).max())
  r_max = float(np.exp(setup["tf"] - b.old_logps)[msk].max()) * (1 + lp)
  kl_slope = 1 + float(np.exp(setup["ref_logps"] - setup["tf"])[msk].max()) * (1 + lp)
  groups = np.asarray(r_all, np.float64).reshape(-1, G)
  sigma = groups.std(axis=1, ddof=1)
  adv = 2 * (tol.gamma(G + 1) * float(np.abs(groups).max()) / float(sigma[sigma > 0].min())
             + tol.gamma(G + 4) * adv_max)
  return dict(lp=lp, slope=r_max * adv_max + grpo.GRPOStepConfig(group_size=G).beta * kl_slope,
              adv=adv, n_tok=int(msk.sum()), adv_max=adv_max, r_all=r_all)


def _param_bound(setup, m, lp) -> float:
  """The parameters after two Adam steps of the GRPO loss in two summation orders: the weight
  gradients' noise is the model's chain forward and back (with the log-softmax, summed over the
  batch's tokens) plus the per-token factors' (r, e^(ref - lp): relative lp each), on the scale
  of the first pass's largest trained gradient entry (computed here, one device); clipping to
  norm 1 divides the scale by max(1, |g|) and is 2-Lipschitz when active. Step 2's gradient also
  moves by the curvature times step 1's parameter difference, assumed at most the rounding noise
  (as test_train_step.assert_steps_agree does)."""
  b, mcfg = setup["batch"], setup["mcfg"]
  n_rows, seq = b.input_ids.shape
  grad_rel = tol.model_rel(mcfg, seq, vocab=True, backward=True, tokens=n_rows * seq) + 2 * lp
  model_batch = jax.tree.map(jnp.asarray, b.model_inputs())
  r_all = rewards.combine(b.reward_fmt, b.reward_turn, b.reward_traj)
  adv32 = jnp.asarray(_np_advantages(r_all, G), jnp.float32)

  def first_pass_loss(params):
    return grpo.grpo_loss_and_aux(setup["logps_fn"](params, model_batch), b.old_logps,
                                  setup["ref_logps"], adv32, b.loss_mask)[0]
  g = jax.device_get(jax.jit(jax.grad(first_pass_loss))(setup["init"]))
  g_max = max(tol.max_abs({k: v for k, v in g.items() if k != "visual"}),
              tol.max_abs(g["visual"]["merger"]))
  gn = float(m["grad_norm"])
  noise = grad_rel * min(g_max / max(gn, 1.0), 1.0) * (2.0 if gn > 1.0 else 1.0)
  lrs = [float(optim.make_schedule(OPTIM, 2)(i)) for i in range(2)]
  return tol.adam_param_bound(2 * noise, lrs, OPTIM.eps)


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
  m1, m8 = h1[0], h8[0]
  b = setup["batch"]
  n_rows = b.input_ids.shape[0]
  d = _bounds(setup)
  lp, n_tok = d["lp"], d["n_tok"]
  # Token means over n_tok tokens (micro-batch and device partial sums): sum_bound on the mean
  # of the magnitudes, plus each term's own difference.
  mean_rounding = lambda mean_abs: tol.sum_bound(n_tok, mean_abs)  # noqa: E731
  # behaviour_gap = mean |logp - old|: each term moves by <= lp.
  tol.assert_within(abs(m1["behaviour_gap"] - m8["behaviour_gap"]),
                    lp + mean_rounding(m1["behaviour_gap"]), "grpo 8 vs 1: behaviour_gap")
  tol.assert_within(abs(m1["loss_first_pass"] - m8["loss_first_pass"]),
                    d["slope"] * lp + mean_rounding(d["slope"]), "grpo 8 vs 1: loss_first_pass")
  # Means of the same float32 inputs over the rows in another order.
  for key in ("reward", "reward_fmt", "reward_turn", "reward_traj"):
    values = d["r_all"] if key == "reward" else getattr(b, key)
    tol.assert_within(abs(m1[key] - m8[key]),
                      tol.sum_bound(n_rows, float(np.abs(values).mean())),
                      f"grpo 8 vs 1: {key}")
  tol.assert_within(abs(m1["advantage_abs_mean"] - m8["advantage_abs_mean"]),
                    d["adv"] + tol.sum_bound(n_rows, d["adv_max"]),
                    "grpo 8 vs 1: advantage_abs_mean")
  assert m1["zero_variance_groups"] == m8["zero_variance_groups"] == 0.5
  dp = _param_bound(setup, m1, lp)
  tol.assert_within(_max_diff(p1, p8), dp, "grpo 8 vs 1: params after 2 passes")
  # The bound leaves room to fail: below half of the largest parameter change.
  assert dp < 0.5 * _max_diff(p1, setup["init"]), (dp, _max_diff(p1, setup["init"]))


def test_first_pass_equals_reference_loss_and_metrics(setup, single):
  h1, _, _, ref_after = single
  m = h1[0]
  b = setup["batch"]
  r = np.asarray(rewards.combine(b.reward_fmt, b.reward_turn, b.reward_traj))
  # By hand; float32 inputs (one rounding each) and 3 products + 2 sums of non-negative terms.
  np.testing.assert_allclose(r[:4], [0.415, 1.225, 0.05, 0.4275], rtol=tol.rel_ops_bound(8))
  adv = _np_advantages(r, G)
  assert np.all(adv[4:] == 0.0)
  assert m["zero_variance_groups"] == 0.5
  d = _bounds(setup)
  # Means of 8 non-negative float32 numbers in two orders, one division each.
  mean_rel = tol.sum_bound(8, 1.0) + 2 * tol.U32
  assert m["reward"] == pytest.approx(float(np.mean(r)), rel=mean_rel)
  tol.assert_within(abs(m["advantage_abs_mean"] - float(np.mean(np.abs(adv)))),
                    d["adv"] + tol.sum_bound(8, d["adv_max"]), "grpo: advantage_abs_mean")
  for k in ("reward_fmt", "reward_turn", "reward_traj"):
    assert m[k] == pytest.approx(float(np.mean(getattr(b, k))), rel=mean_rel)
  ref_logps = np.asarray(jax.jit(setup["logps_fn"])(setup["ref"],
                                                    jax.tree.map(jnp.asarray, b)))
  loss, aux = grpo.grpo_loss_and_aux(jnp.asarray(setup["tf"]), b.old_logps, ref_logps,
                                     jnp.asarray(adv, jnp.float32), b.loss_mask)
  # The step's jit and this one compute the log-probs in other orders (lp per token), and the
  # advantages in float32 against float64.
  tol.assert_within(abs(m["loss_first_pass"] - float(loss)),
                    d["slope"] * d["lp"] + tol.sum_bound(d["n_tok"], d["slope"])
                    + d["adv"] * d["slope"] / max(d["adv_max"], 1e-30),
                    "grpo: loss_first_pass vs grpo_loss_and_aux")
  # behaviour gap = mean |logp - old| before any update = the injected noise on masked tokens.
  msk = b.loss_mask > 0
  gap = float(np.mean(np.abs(setup["tf"] - b.old_logps)[msk]))
  tol.assert_within(abs(m["behaviour_gap"] - gap), d["lp"] + tol.sum_bound(d["n_tok"], gap),
                    "grpo: behaviour_gap vs NumPy")
  assert 0.0 < float(aux["clip_fraction"]) < 1.0 and float(aux["kl_mean"]) > 0.0
  assert m["policy_tokens"] == float(msk.sum()) and m["rows"] == 8
  # The reference params are an input, never updated or donated.
  assert _max_diff(ref_after, setup["ref"]) == 0.0


def test_two_passes_equal_two_single_pass_calls_and_vision_frozen(setup, single):
  h_scan, p_scan, _, _ = single
  _, p_loop, _, _ = _run(setup, {"data": 1, "fsdp": 1, "tensor": 1}, calls=2, num_passes=1)
  # A scan over the passes and two calls are two programs: two summation orders.
  tol.assert_within(_max_diff(p_scan, p_loop), _param_bound(setup, h_scan[0], _bounds(setup)["lp"]),
                    "grpo: 2 passes in one call vs 2 calls")
  init = setup["init"]
  np.testing.assert_array_equal(p_scan["visual"]["patch_embed"]["kernel"],
                                init["visual"]["patch_embed"]["kernel"])
  assert np.max(np.abs(p_scan["visual"]["merger"]["mlp_0"]["kernel"]
                       - init["visual"]["merger"]["mlp_0"]["kernel"])) > 1e-5


def test_recompute_old_logps_is_on_policy(setup):
  h, _, _, _ = _run(setup, {"data": 1, "fsdp": 1, "tensor": 1}, old_logps="recompute", beta=0.0,
                    aggregation="token-mean")
  m = h[0]
  d = _bounds(setup)
  lp, n_tok = d["lp"], d["n_tok"]
  # The behaviour log-probs (the reference-style forward) and the policy's (the loss's forward)
  # are two programs: lp apart per token.
  tol.assert_within(m["behaviour_gap"], lp + tol.sum_bound(n_tok, lp), "recompute: behaviour_gap")
  # The same log-probs on both sides: correlation 1 up to the float32 rounding of the moments
  # (relative 1e-7 per sum of a few hundred tokens, amplified by the n S - S S cancellation).
  assert m["behaviour_corr"] == pytest.approx(1.0, abs=1e-4)
  tol.assert_within(abs(m["ratio_mean"] - 1.0), math.expm1(lp) + tol.sum_bound(n_tok, 1 + lp),
                    "recompute: ratio_mean")
  assert m["clip_fraction"] == 0.0 and m["kl"] == 0.0
  # On-policy, beta 0, token-mean: loss = -sum(A_b * n_b) / sum(n_b).
  b = setup["batch"]
  adv = _np_advantages(rewards.combine(b.reward_fmt, b.reward_turn, b.reward_traj), G)
  n_b = b.loss_mask.sum(axis=1)
  tol.assert_within(abs(m["loss"] - float(-(adv * n_b).sum() / n_b.sum())),
                    d["adv_max"] * math.expm1(lp) + d["adv"] + tol.sum_bound(n_tok, d["adv_max"]),
                    "recompute: on-policy loss")


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
