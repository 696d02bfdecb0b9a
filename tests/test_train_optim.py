"""Optimizer: schedule values, frozen-parameter masks and AdamW against a NumPy reference."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from streampro_jax.train import optim

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order


def _cfg(**kw):
  base = dict(lr=1e-3, warmup_steps=10, end_lr_factor=0.0, schedule="cosine", b1=0.9, b2=0.999,
              eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0, frozen=None)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_schedule_pinned_values():
  sched = optim.make_schedule(_cfg(), total_steps=110)
  # Warmup 0 -> 1e-3 over 10 steps, then cosine over the remaining 100 steps. float32: the
  # warmup fraction and product (3 roundings), the cosine's argument, cos, 1 + cos, the halving
  # and the products (8 roundings, the cosine's error absolute on a value >= 1/2 of lr here).
  near = lambda x: tol.approx_ops(x, ops=8)  # noqa: E731
  assert float(sched(0)) == 0.0  # 0 * lr
  assert float(sched(5)) == near(5e-4)
  assert float(sched(10)) == near(1e-3)
  assert float(sched(60)) == near(5e-4)  # cos(pi/2) = 0 -> half
  assert float(sched(35)) == near(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)))
  # 1 + cos(fl(pi)) vanishes up to one rounding of cos: lr * u.
  assert abs(float(sched(110))) <= 1e-3 * tol.U32
  sched = optim.make_schedule(_cfg(end_lr_factor=0.1, warmup_steps=-1, warmup_ratio=0.5), 20)
  assert float(sched(10)) == near(1e-3)
  assert float(sched(20)) == near(1e-4)
  const = optim.make_schedule(_cfg(schedule="constant", warmup_steps=0), 20)
  assert float(const(17)) == near(1e-3)


def test_trainable_mask_freezes_vision_but_not_merger():
  params = {"visual": {"blocks_0": {"attn": {"qkv": {"kernel": np.zeros((2, 2))}}},
                       "merger": {"mlp_0": {"kernel": np.zeros((2, 2))}},
                       "patch_embed": {"kernel": np.zeros((2, 2))}},
            "model": {"embed_tokens": {"embedding": np.zeros((4, 2))}}}
  mask = optim.trainable_mask(params, r"^visual/(?!merger/)")
  assert mask["visual"]["blocks_0"]["attn"]["qkv"]["kernel"] is False
  assert mask["visual"]["patch_embed"]["kernel"] is False
  assert mask["visual"]["merger"]["mlp_0"]["kernel"] is True
  assert mask["model"]["embed_tokens"]["embedding"] is True
  counts = optim.count_params(params, r"^visual/(?!merger/)")
  assert counts == {"total": 20, "trainable": 12, "frozen": 8}


def _adamw_reference(p, grads_seq, *, lr_seq, b1, b2, eps, wd, clip, decay):
  """NumPy float64 AdamW with global-norm clipping (optax's formulas)."""
  p = {k: v.astype(np.float64) for k, v in p.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v_ = {k: np.zeros_like(v) for k, v in p.items()}
  for t, (g, lr) in enumerate(zip(grads_seq, lr_seq), start=1):
    norm = math.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g.values()))
    scale = min(1.0, clip / norm)
    for k in p:
      gk = g[k].astype(np.float64) * scale
      m[k] = b1 * m[k] + (1 - b1) * gk
      v_[k] = b2 * v_[k] + (1 - b2) * gk ** 2
      mhat = m[k] / (1 - b1 ** t)
      vhat = v_[k] / (1 - b2 ** t)
      upd = mhat / (np.sqrt(vhat) + eps) + (wd * p[k] if decay[k] else 0.0)
      p[k] = p[k] - lr * upd
  return p


def test_adamw_with_clipping_and_frozen_matches_numpy():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 4)).astype(np.float32),
            "b": rng.normal(size=(4,)).astype(np.float32),
            "frozen_w": rng.normal(size=(2, 2)).astype(np.float32)}
  cfg = _cfg(lr=0.1, warmup_steps=0, weight_decay=0.05, grad_clip_norm=0.5, frozen="^frozen")
  tx = optim.make_optimizer(cfg, total_steps=3)
  sched = optim.make_schedule(cfg, 3)
  grads_seq = [{k: (3.0 * rng.normal(size=v.shape)).astype(np.float32) for k, v in params.items()}
               for _ in range(3)]
  state = tx.init(jax.tree.map(jnp.asarray, params))
  p = jax.tree.map(jnp.asarray, params)
  for g in grads_seq:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  trainable = {k: v for k, v in params.items() if k != "frozen_w"}
  ref = _adamw_reference(
      trainable, [{k: g[k] for k in trainable} for g in grads_seq],
      lr_seq=[float(sched(i)) for i in range(3)], b1=0.9, b2=0.999, eps=1e-8, wd=0.05, clip=0.5,
      decay={"w": True, "b": False})
  # float32 optax vs the float64 reference: each step's update lr_t (m^ / (sqrt(v^) + eps) +
  # wd p) has |m^| / sqrt(v^) <= 1.1 here (adam_gain's r at t <= 3) and rounds the global norm
  # (a sum of 16 squares, gamma_16), the clip, the moments, the bias corrections, sqrt, eps and
  # the quotient (~12): 28 roundings, relative. b1 and b2 themselves round to float32, and
  # 1 - b cancels: (1 - b) is off by u b / (1 - b), 9u for b1, 999u for b2 (v^'s weights, half of
  # that through the sqrt, twice: v and its bias correction). Adding the update to p rounds once
  # on |p| per step.
  lrs = [float(sched(i)) for i in range(3)]
  scale = max(float(np.abs(params[k]).max()) for k in ("w", "b")) + sum(lrs) * 1.2
  consts = tol.U32 * (0.9 / 0.1 + 0.999 / 0.001)
  bound = (sum(lr * (1.1 + 0.05 * scale) for lr in lrs) * (tol.rel_ops_bound(28) + consts)
           + 3 * tol.U32 * scale)
  for k in ("w", "b"):
    tol.assert_within(tol.max_abs_diff(p[k], ref[k]), bound, f"optim: adamw {k} vs numpy")
  np.testing.assert_array_equal(np.asarray(p["frozen_w"]), params["frozen_w"])
