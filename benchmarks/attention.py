"""Causal self-attention forward + backward: this library's implementations against PyTorch's.

  .venv/bin/python benchmarks/attention.py [--batch 8] [--seq_len 768] [--heads 4]
      [--kv_heads 2] [--head_dim 16] [--pad 228] [--rounds 10] [--causal_block 64]

Defaults are the demo's rows (B 8, T 768, 4 query / 2 kv heads of 16, the last --pad positions
of every row padding). Same inputs, same mask (padding + causal), float32, this CPU. Timed, each
as sum(o * w) differentiated w.r.t. q, k and v (the training step's pattern), compiled first:

* `xla_block`: `layers.attention(impl='xla', is_causal=True)` (query blocks that skip the keys
  after the block, layers.CAUSAL_BLOCK rows; --causal_block sets it for this run);
* `xla_square`: the same einsum/softmax over the whole [T, S] square (impl='xla', the causal
  mask passed as an explicit mask, is_causal=False): the previous implementation;
* `jax_nn`: `layers.attention(impl='jax')` (jax.nn.dot_product_attention);
* `torch_sdpa`: torch.nn.functional.scaled_dot_product_attention with the same boolean mask
  (kv heads repeated), one torch thread per core.

The implementations run interleaved (one of each per round); reported: the median wall time per
call and the ratio to xla_block, plus the largest output difference from xla_square.

With --out_dir, the CPU method (benchmarks/cpu_rounds.py) for the docs' two ratios, xla_block
against xla_square and against torch_sdpa: `--rounds` (at least 5) rounds alternating the two
sides, each side's turn the median of `--calls` calls, the load average around every turn, the
same shapes on both sides (recorded and checked), written to
<out_dir>/cpu_attention_xla_block_vs_{xla_square,torch_sdpa}.jsonl.

  .venv/bin/python benchmarks/attention.py --rounds 5 --out_dir benchmarks/results
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np


from streampro_jax.models import layers


def _jax_fns(mask_pad, mask_full, w):
  """name -> jitted (q, k, v) -> (dq, dk, dv), and name -> jitted forward."""
  calls = {
      "xla_block": lambda q, k, v: layers.attention(q, k, v, mask=mask_pad, impl="xla",
                                                    is_causal=True),
      "xla_square": lambda q, k, v: layers.attention(q, k, v, mask=mask_full, impl="xla"),
      "jax_nn": lambda q, k, v: layers.attention(q, k, v, mask=mask_pad, impl="jax",
                                                 is_causal=True),
  }
  grads = {n: jax.jit(jax.grad(lambda q, k, v, f=f: (f(q, k, v) * w).sum(), argnums=(0, 1, 2)))
           for n, f in calls.items()}
  return grads, {n: jax.jit(f) for n, f in calls.items()}


def _torch_fn(q, k, v, allowed, w):
  """A callable running torch sdpa forward + backward on copies of q, k, v; None without torch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count() or 1)
  g = q.shape[2] // k.shape[2]
  tq = torch.tensor(np.asarray(q)).transpose(1, 2).contiguous().requires_grad_()
  tk = torch.tensor(np.repeat(np.asarray(k), g, axis=2)).transpose(1, 2).contiguous()
  tv = torch.tensor(np.repeat(np.asarray(v), g, axis=2)).transpose(1, 2).contiguous()
  tk.requires_grad_()
  tv.requires_grad_()
  tm = torch.tensor(allowed)  # [B, 1, T, S]
  tw = torch.tensor(np.asarray(w)).transpose(1, 2)

  def run():
    for t in (tq, tk, tv):
      t.grad = None
    o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm)
    (o * tw).sum().backward()
    return tq.grad

  return run


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq_len", type=int, default=768)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--kv_heads", type=int, default=2)
  ap.add_argument("--head_dim", type=int, default=16)
  ap.add_argument("--pad", type=int, default=228, help="padding positions at the end of a row")
  ap.add_argument("--rounds", type=int, default=10)
  ap.add_argument("--causal_block", type=int, default=layers.CAUSAL_BLOCK,
                  help="query block of xla_block (layers.CAUSAL_BLOCK for this run)")
  ap.add_argument("--out_dir", default="",
                  help="the CPU method's raw files go here (see the module docstring)")
  ap.add_argument("--calls", type=int, default=5, help="with --out_dir: calls per side per round")
  args = ap.parse_args()
  layers.CAUSAL_BLOCK = args.causal_block  # read when attention is traced
  b, t, n, kh, h = args.batch, args.seq_len, args.heads, args.kv_heads, args.head_dim
  rng = np.random.default_rng(0)
  q, w = (jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32) for _ in range(2))
  k, v = (jnp.asarray(rng.normal(size=(b, t, kh, h)), jnp.float32) for _ in range(2))
  pad = np.arange(t)[None, :] < (t - args.pad)  # [B or 1, S]
  pad = np.broadcast_to(pad, (b, t))
  allowed = pad[:, None, None, :] & np.tril(np.ones((t, t), bool))[None, None]  # [B, 1, T, S]
  grads, fwds = _jax_fns(jnp.asarray(pad[:, None, None, :]), jnp.asarray(allowed), w)

  real = slice(0, t - args.pad)  # padded queries are unspecified in every implementation
  ref = np.asarray(fwds["xla_square"](q, k, v))[:, real]
  diffs = {name: float(np.abs(np.asarray(f(q, k, v))[:, real] - ref).max())
           for name, f in fwds.items()}
  fns = {name: (lambda g=g: jax.block_until_ready(g(q, k, v))) for name, g in grads.items()}
  torch_run = _torch_fn(q, k, v, allowed, w)
  if torch_run is not None:
    fns["torch_sdpa"] = torch_run
  compile_s = {}
  for name, f in fns.items():
    t0 = time.perf_counter()
    f()
    compile_s[name] = time.perf_counter() - t0
  if args.out_dir:
    _cpu_method(args, fns, diffs, compile_s)
    return
  times = {name: [] for name in fns}
  for r in range(args.rounds):
    for name, f in fns.items():
      t0 = time.perf_counter()
      f()
      times[name].append(time.perf_counter() - t0)
    print(f"round {r + 1}/{args.rounds}", flush=True)
  med = {name: statistics.median(ts) for name, ts in times.items()}
  out = {"shape": dict(batch=b, seq_len=t, heads=n, kv_heads=kh, head_dim=h, pad=args.pad,
                       causal_block=layers.CAUSAL_BLOCK),
         "median_ms": {name: 1e3 * s for name, s in med.items()},
         "ratio_to_xla_block": {name: s / med["xla_block"] for name, s in med.items()},
         "first_call_s": compile_s, "max_abs_diff_vs_xla_square": diffs}
  print(json.dumps(out, indent=1))
  print("fwd+bwd ms: " + "  ".join(f"{name} {1e3 * s:.1f}" for name, s in med.items()))


def _cpu_method(args, fns, diffs, compile_s) -> None:
  """xla_block against xla_square and against torch_sdpa, by benchmarks/cpu_rounds.run_rounds."""
  import cpu_rounds  # pylint: disable=g-import-not-at-top  (benchmarks/cpu_rounds.py)
  shape = dict(batch=args.batch, seq_len=args.seq_len, heads=args.heads, kv_heads=args.kv_heads,
               head_dim=args.head_dim, pad=args.pad)

  def side(name):
    def fn():
      ts = []
      for _ in range(args.calls):
        t0 = time.perf_counter()
        fns[name]()
        ts.append(time.perf_counter() - t0)
      return {"seconds": statistics.median(ts), "calls": args.calls, **shape}
    return fn

  for other in ("xla_square", "torch_sdpa"):
    if other not in fns:
      print(f"{other}: not available, no figure")
      continue
    cpu_rounds.run_rounds(
        f"attention_xla_block_vs_{other}", [("xla_block", side("xla_block")),
                                            (other, side(other))],
        rounds=args.rounds, out=os.path.join(args.out_dir,
                                             f"cpu_attention_xla_block_vs_{other}.jsonl"),
        work_keys=tuple(shape), extra={"shape": shape, "causal_block": layers.CAUSAL_BLOCK,
                                       "max_abs_diff_vs_xla_square": diffs,
                                       "first_call_s": compile_s})


if __name__ == "__main__":
  main()
