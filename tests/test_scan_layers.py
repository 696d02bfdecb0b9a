"""Scanned layer stacks (`scan_layers`): the same model as the unrolled layers, everywhere.

The HF-parity tests run both layouts against transformers (test_model_parity.py,
test_qwen3_vl_parity.py). Here: the KV-cache stream, the SFT step (loss and gradients, single
device and 8 fake devices), HF checkpoints written from either layout, the remat policies, and
orbax checkpoints that refuse the other layout.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from streampro_jax import models, parallel
from streampro_jax.models import common
from streampro_jax.models import kv_cache as kc
from streampro_jax.models import qwen2_5_vl as q
from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import optim, sft
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

import test_model_kv_cache as kvt  # pylint: disable=g-bad-import-order
import test_train_step as tst  # pylint: disable=g-bad-import-order
from helpers import tolerances as tol  # pylint: disable=g-bad-import-order


def _max_rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_scan_params_round_trip_and_layout_names():
  cfg = q.tiny_config(text=dict(num_hidden_layers=3), vision=dict(depth=3))
  params = nn.unbox(q.init_params(cfg, jax.random.key(0)))
  scanned = common.scan_params(params)
  assert common.layout_of(params) == "unrolled" and common.layout_of(scanned) == "scanned"
  assert scanned["layers"]["mlp"]["up_proj"]["kernel"].shape[0] == 3
  assert scanned["visual"]["blocks"]["attn"]["qkv"]["kernel"].shape[0] == 3
  np.testing.assert_array_equal(scanned["layers"]["mlp"]["up_proj"]["kernel"][2],
                                params["layers_2"]["mlp"]["up_proj"]["kernel"])
  back = common.unscan_params(scanned)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool((x == y).all()), back, params)))
  # The scanned init has the same tree as the converted params, the stack axis named 'layers'.
  boxed = jax.eval_shape(lambda r: q.init_params(cfg.replace(scan_layers=True), r),
                         jax.random.key(0))
  assert jax.tree.structure(nn.unbox(boxed)) == jax.tree.structure(scanned)
  names = boxed["layers"]["self_attn"]["q_proj"]["kernel"].names
  assert names == ("layers", "embed", "q_heads")
  mesh = parallel.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  sh = parallel.logical_shardings(boxed, mesh)
  assert sh["layers"]["self_attn"]["q_proj"]["kernel"].spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor")


def test_kv_cache_stream_equals_unrolled():
  cfg = q.tiny_config()
  params = kvt.scaled_params(cfg)
  s = kvt.Stream(cfg, 3)
  outs, cache = kvt.run_stream(cfg, params, s, kc.make_extend(cfg), kc.init_cache(cfg, 2,
                                                                                  kvt.CAP))
  scfg = cfg.replace(scan_layers=True)
  s_cache = kc.init_cache(scfg, 2, kvt.CAP)
  assert s_cache.k.shape == (cfg.text.num_hidden_layers, 2, cfg.text.num_key_value_heads,
                             kvt.CAP, cfg.text.head_dim)
  s_outs, s_cache = kvt.run_stream(scfg, common.scan_params(params), s, kc.make_extend(scfg),
                                   s_cache)
  # Other summation orders (scan vs unrolled): the logits' chain of reductions (vision, 2 text
  # layers over <= CAP positions) on the logits' scale; layer i's keys pass i layers and the
  # RMSNorm + k projection, on the keys' scale.
  rel = tol.model_rel(cfg, kvt.CAP)
  for r in range(2):
    ref = np.concatenate(outs[r])
    tol.assert_within(tol.max_abs_diff(np.concatenate(s_outs[r]), ref),
                      rel * tol.max_abs(ref), "scan: kv stream logits")
  t = cfg.text
  layer = tol.path_lengths(hidden=t.hidden_size, intermediate=t.intermediate_size,
                           head_dim=t.head_dim, seq=kvt.CAP, layers=1)[:-2]
  vision = tol.model_path(cfg, kvt.CAP)[:-len(layer) * t.num_hidden_layers - 2]
  for i in range(t.num_hidden_layers):
    k_rel = tol.chain_bound(vision + layer * i + [t.hidden_size] * 2, 1.0)
    tol.assert_within(tol.max_abs_diff(s_cache.k[i], cache.k[i]),
                      k_rel * tol.max_abs(cache.k[i]), f"scan: kv cache keys layer {i}")


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch", "dots_attn", "none"])
def test_remat_policies_give_the_same_gradients(policy):
  cfg = q.tiny_config(scan_layers=True)
  params = nn.unbox(q.init_params(cfg, jax.random.key(1)))
  inp = q.synthetic_inputs(cfg, [(1, 4, 4)], batch=2, seed=0)
  pos = q.host_position_ids(cfg, inp["input_ids"], inp["video_grid_thw"])
  grid = inp.pop("video_grid_thw")
  inp.pop("second_per_grid_ts")

  def loss(c, p):
    out = q.Qwen2_5_VL(c).apply({"params": p}, video_grid_thw=grid, position_ids=pos, **inp)
    return jnp.sum(jnp.sin(out))

  ref = jax.jit(jax.grad(lambda p: loss(cfg, p)))(params)
  got = jax.jit(jax.grad(lambda p: loss(cfg.replace(remat=True, remat_policy=policy), p)))(params)
  # Recomputation may fuse and sum in another order: the weight gradients' chain (the model's
  # path forward and back over 2 x 16 + text positions, then the sum over the batch's tokens),
  # relative to each leaf's largest entry.
  seq = inp["input_ids"].shape[1]
  rel = tol.model_rel(cfg, seq, backward=True, tokens=inp["input_ids"].size)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(ref)):
    tol.assert_within(_max_rel(a, b), rel,
                      f"scan: remat {policy} grad {jax.tree_util.keystr(path)}")
  with pytest.raises(ValueError, match="unknown remat_policy"):
    loss(cfg.replace(remat=True, remat_policy="offload_everything"), params)


def _loss_and_grads(mcfg, grid, ids, batch, params):
  """CB-Stream SFT loss sum and its gradient at `params` (in mcfg's layout), one jit."""
  forward = setup_lib.make_forward(q.Qwen2_5_VL(mcfg), grid)
  loss_fn = sft.make_sft_loss_fn(forward, dict(kind="cb_stream"), ids)
  b = jax.tree.map(jnp.asarray, batch.model_inputs())
  ctx = sft.sft_context(ids)(b)
  return jax.device_get(jax.jit(jax.value_and_grad(lambda p: loss_fn(p, b, ctx)[0]))(params))


@pytest.mark.slow
def test_sft_step_scanned_equals_unrolled_and_shards(tmp_path, tiny_sft_config):
  mcfg, _, batches, grid, ids = tst._qwen_setup(tmp_path, tiny_sft_config)  # pylint: disable=protected-access
  mcfg = mcfg.replace(text=mcfg.text.__class__(**{**mcfg.text.__dict__,
                                                   "num_hidden_layers": 2}))
  params = jax.tree.map(np.asarray, nn.unbox(q.init_params(mcfg, jax.random.key(0))))
  scfg = mcfg.replace(scan_layers=True, remat=True, remat_policy="dots_no_batch")
  sparams = jax.tree.map(np.asarray, common.scan_params(params))
  # Tolerances: the two sides sum in other orders (scan + remat vs unrolled; 8 devices vs 1), so
  # each differs by the worst-case rounding of the reductions the value passes through
  # (tst.qwen_rels: the vision block, 2 text layers over 384 positions, the vocabulary, the
  # token sum; a gradient passes the path both ways).
  loss_rel, grad_rel = tst.qwen_rels(mcfg, batches[0])
  # Same loss and gradients as the unrolled layers.
  loss_u, g_u = _loss_and_grads(mcfg, grid, ids, batches[0], params)
  loss_s, g_s = _loss_and_grads(scfg, grid, ids, batches[0], sparams)
  tol.assert_within(abs(float(loss_s) - float(loss_u)), loss_rel * abs(float(loss_u)),
                    "scan: loss scanned vs unrolled")
  g_s = common.unscan_params(g_s)
  assert jax.tree.structure(g_s) == jax.tree.structure(g_u)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_u), jax.tree.leaves(g_s)):
    # Per leaf, on the leaf's scale (its largest entry).
    tol.assert_within(float(np.abs(a - b).max()), grad_rel * max(float(np.abs(a).max()), 1e-30),
                      f"scan: grad scanned vs unrolled {jax.tree_util.keystr(path)}")
  assert float(np.abs(g_u["layers_1"]["mlp"]["up_proj"]["kernel"]).max()) > 0
  # The scanned step on 8 fake devices (data 2 x fsdp 2 x tensor 2) equals one device.
  h_1, init, p_1, _ = tst._sft_steps(scfg, grid, ids, batches, {"data": 1}, sparams)  # pylint: disable=protected-access
  h_8, _, p_8, state8 = tst._sft_steps(scfg, grid, ids, batches,  # pylint: disable=protected-access
                                       {"data": 2, "fsdp": 2, "tensor": 2}, sparams)
  assert state8.params["layers"]["self_attn"]["q_proj"]["kernel"].sharding.spec == (
      jax.sharding.PartitionSpec(None, "fsdp", "tensor"))
  n_sup = float(h_1[0]["supervised_tokens"])
  # The step's loss (scanned, jitted, / count) is the unrolled loss sum's mean: + 1 division.
  tol.assert_within(abs(h_1[0]["loss"] - float(loss_u) / n_sup),
                    (2 * loss_rel + tol.U32) * abs(h_1[0]["loss"]),
                    "scan: step loss vs unrolled loss sum / count")
  assert h_1[0]["loss"] != h_1[1]["loss"]
  # The step's gradient is the loss sum's / the supervised tokens: its largest trained entry
  # scales the gradient noise that Adam (eps 1e-2) turns into parameter differences.
  g_trained = max(tol.max_abs({k: v for k, v in g_u.items() if k != "visual"}),
                  tol.max_abs(g_u["visual"]["merger"]))
  tst.assert_steps_agree((h_1, p_1), (h_8, p_8), init, loss_rel=loss_rel, grad_rel=grad_rel,
                         lrs=tst.SFT_LRS, eps=tst.SFT_ADAM_EPS,
                         weight_decay=tst.SFT_WEIGHT_DECAY, g_max=g_trained / n_sup,
                         what="scan: 8 devices vs 1")


def test_hf_checkpoint_from_either_layout_is_the_same_files(tmp_path):
  cfg = q.tiny_config(text=dict(num_hidden_layers=3))
  params = nn.unbox(q.init_params(cfg, jax.random.key(2)))
  q.save_hf_checkpoint(cfg, params, str(tmp_path / "u"))
  q.save_hf_checkpoint(cfg.replace(scan_layers=True), common.scan_params(params),
                       str(tmp_path / "s"), max_shard_bytes=40_000)  # several shards
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  u = load_file(str(tmp_path / "u" / "model.safetensors"))
  s = {}
  for name in os.listdir(tmp_path / "s"):
    if name.endswith(".safetensors"):
      s.update(load_file(str(tmp_path / "s" / name)))
  assert sorted(u) == sorted(s) and "model.layers.2.mlp.up_proj.weight" in u
  for k in u:
    np.testing.assert_array_equal(u[k], s[k])
  for path in ("u", "s"):
    for scan in (False, True):
      c, p = models.load_hf_checkpoint(str(tmp_path / path), scan_layers=scan)
      assert c.scan_layers == scan and common.layout_of(p) == ("scanned" if scan else "unrolled")
      want = common.scan_params(params) if scan else params
      assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool((np.asarray(x) == y).all()),
                                              p, want)))


def test_orbax_checkpoint_refuses_the_other_layout(tmp_path):
  cfg = q.tiny_config()
  mesh = parallel.make_mesh({"data": 1}, devices=jax.devices()[:1])
  tx = optim.make_optimizer(ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0)),
                            total_steps=2)
  saved = {}
  for scan in (False, True):
    c = cfg.replace(scan_layers=scan)
    state, shardings = state_lib.create_train_state(lambda r, c=c: q.init_params(c, r), tx, mesh,
                                                    jax.random.key(0))
    boxed = jax.eval_shape(lambda r, c=c: q.init_params(c, r), jax.random.key(0))
    ck = ckpt_lib.Checkpointer(str(tmp_path / str(scan)), keep=1, every_steps=1,
                               async_save=False)
    ck.save(1, state, None)
    ck.wait()
    saved[scan] = (ck, state_lib.abstract_state(tx, boxed), shardings)
  for scan in (False, True):
    ck, _, _ = saved[scan]
    _, abstract, shardings = saved[not scan]
    with pytest.raises(ValueError, match="layer stacks but this run"):
      ck.restore(1, abstract, shardings)
    ck.restore(1, saved[scan][1], saved[scan][2])  # its own layout restores
