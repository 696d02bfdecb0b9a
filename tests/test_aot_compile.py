"""launch/aot_compile.py and streampro_jax/train/aot.py: TPU compiles on the CPU (libtpu's
compile-only backend; the rest of the suite keeps JAX_PLATFORMS=cpu)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streampro_jax.train import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("libtpu", reason="libtpu (the test extra) gives the compile-only TPU backend")


class _Layout:
  def __init__(self, major_to_minor, tiling):
    self.major_to_minor, self.tiling = major_to_minor, tiling


@pytest.mark.parametrize("shape,dtype,layout,expected", [
    # Layouts and argument sizes the v5e compiler reported for these arrays (jax 0.10.2 libtpu
    # 0.0.42): minor dims rounded up to the first tile, times the item size.
    ((3,), np.float32, _Layout((0,), ((128,),)), 128 * 4),
    ((), np.int32, _Layout((), ((128,),)), 128 * 4),
    ((5, 7), np.float32, _Layout((0, 1), ((8, 128),)), 8 * 128 * 4),
    ((5, 7), jnp.bfloat16, _Layout((0, 1), ((8, 128), (2, 1))), 8 * 128 * 2),
    ((9,), np.bool_, _Layout((0,), ((512,), (128,), (4, 1))), 512),
    ((2, 3, 5), np.int32, _Layout((1, 0, 2), ((2, 128),)), 3 * 2 * 128 * 4),
    ((1000,), np.float32, _Layout((0,), ((1024,),)), 1024 * 4),
    ((4, 8), np.float32, None, 0),   # an argument the executable does not read
])
def test_tiled_bytes(shape, dtype, layout, expected):
  assert aot._tiled_bytes(shape, np.dtype(dtype), layout) == expected


def test_parse_resource_exhausted_and_advice():
  msg = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
         "space hbm. Used 75.84G of 15.75G hbm. Exceeded hbm capacity by 60.09G. ... HLO "
         "temporaries (66.37G) exceeds available HBM (15.75G)")
  got = aot._parse_resource_exhausted(msg)
  assert got["temp"] == int(66.37 * 2 ** 30)
  assert got["available"] == int(15.75 * 2 ** 30)
  assert got["total"] == int(75.84 * 2 ** 30)
  report = aot.Report(
      stage="sft", topology="v5e:2x2", num_slices=1, chips=4, mesh={"fsdp": 4},
      hbm_bytes=16 * 2 ** 30, per_chip_bytes={"argument": 2 ** 30, "temp": 20 * 2 ** 30,
                                              "total": 21 * 2 ** 30},
      counted_argument_bytes={}, tiled_argument_bytes=0, fits=False, model_flops=0.0,
      flops_per_chip=0.0, compiler_flops_per_chip=None, compile_s=0.0, shapes={}, model={})
  advice = report.advice()
  assert "5.00 GiB over the 16.00 GiB" in advice and "remat_policy=full" in advice
  assert "attention_impl=splash" in advice


def test_unknown_topology_is_one_line():
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'"):
    aot.generation("v9:2x2")


@pytest.mark.slow
def test_tiny_all_stages_v5e(tmp_path):
  """The README-style command on the tiny config, every stage, for a 4-chip v5e slice: each
  stage fits; the compiler's argument bytes per chip are the state's and the batch's own bytes
  divided over the mesh (each leaf's shard shape, in the executable's TPU tiling)."""
  out = tmp_path / "aot.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "aot_compile.py"),
       "--config=" + os.path.join(ROOT, "configs", "tiny_synthetic.py"), "--topology=v5e:2x2",
       "--stage=all", f"--json={out}"], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["stage"] for r in rows] == ["sft", "grpo", "prefill", "decode"]
  for r in rows:
    for key in ("stage", "topology", "chips", "mesh", "per_chip_bytes", "hbm_bytes", "fits",
                "flops_per_chip", "compile_s", "commit", "command"):
      assert key in r, key
    assert r["chips"] == 4 and r["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert r["hbm_bytes"] == 16 * 2 ** 30 and r["fits"]
    b = r["per_chip_bytes"]
    # Exact: the executable's argument bytes are our per-leaf shards in its tiling.
    assert b["argument"] == r["tiled_argument_bytes"], r["stage"]
    counted = sum(r["counted_argument_bytes"].values())
    # Tiling only adds: at most the (8, 128) round-up of the tiny model's 32- and 64-wide
    # arrays; measured 1.07x (prefill) to 1.28x (grpo): bound 1.5x. The decode step reads no
    # vision-tower parameter, and arguments it does not read are not allocated: no lower bound.
    assert b["argument"] <= 1.5 * counted, (r["stage"], counted, b["argument"])
    if r["stage"] != "decode":
      assert counted <= b["argument"], (r["stage"], counted, b["argument"])
    assert b["total"] == b["argument"] + b["output"] - b["alias"] + b["temp"] + b["generated_code"]
    assert r["compiler_flops_per_chip"] > 0
  sft = rows[0]
  # The batch by hand: 8 rows x (4 [T] arrays + position_ids [3, T]) int32/f32 at T = 768, plus
  # pixels [16 turns x 16 patches, 96] f32; rows over data = 4 chips.
  row = (4 + 3) * 768 * 4 + 16 * 16 * 96 * 4
  assert sft["counted_argument_bytes"]["batch"] == 8 * row // 4
  # The state: parameters replicated (data parallel), so each chip holds all of it: params +
  # Adam mu and nu of the trainable ones (vision blocks frozen: masked, no moments) + counters.
  from configs import tiny_synthetic  # pylint: disable=g-import-not-at-top
  s = aot._build_setup(tiny_synthetic.get_config(), jax.devices()[:4])
  state = aot._abstract_train_state(s)
  total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
  assert sft["counted_argument_bytes"]["state"] == total


@pytest.mark.slow
def test_decode_loop_keeps_the_donated_cache_in_place():
  """The sampler's message decode (sampling.sampler_step_fns' decode_fn: a while loop of [N, 1]
  steps, each through the scanned layers) compiled for a v5p slice writes the donated KV cache
  in place: the compiler aliases it to the output and its temporaries hold no copy of it.
  With the kv heads in the write's scatter window, XLA:TPU carries the cache through the loops in
  a slot-major layout and copies all of it in and out: temporaries 1.03x the cache (measured
  here on that code); about 60 s on the shared 2-core machine, hence slow."""
  from configs import tiny_synthetic_grpo  # pylint: disable=g-import-not-at-top
  config = tiny_synthetic_grpo.get_config()
  # The 3B decoder's cache geometry (2 kv heads of 128, bfloat16, scanned layers) at 2 layers
  # and 8,192 slots: 8 rows per chip hold 2 x 2 x 8 x 2 x 8192 x 128 x 2 B = 128 MiB of cache,
  # far above what the compiler keeps in on-chip memory.
  config.model.update(dtype="bfloat16", scan_layers=True, remat=True, remat_policy="full")
  config.model.tiny_text.update(hidden_size=256, intermediate_size=256, num_attention_heads=2,
                                num_key_value_heads=2, mrope_section=(16, 24, 24))
  config.global_batch_size = 8   # x group_size 4 = 32 rows, 8 per chip
  config.rollout.capacity = 8192
  config.mesh.update(data=1, fsdp=-1)
  s = aot._build_setup(config, aot._topology_devices("v5p:2x2x1"))
  report = aot._compile_stage(s, "decode", "v5p:2x2x1")
  cache = report.counted_argument_bytes["cache"]
  # k, v [L, 8, K, cap, H] bf16; slot_turn, slot_seq i32 and slot_valid bool [8, cap]; four i32
  # and one bool [8] counters.
  assert cache == 2 * 2 * 8 * 2 * 8192 * 128 * 2 + 8 * 8192 * (4 + 4 + 1) + 8 * (4 * 4 + 1)
  b = report.per_chip_bytes
  assert b["alias"] >= cache, (b, cache)   # donated: the output cache is the input's buffer
  # The loop's own temporaries are [N, 1, D] activations, [N, V] logits and [N, 1, cap] masks
  # (measured 1.5% of the cache); one layer's k and v is 1 / L = 1/2 of the cache, the old
  # relayout copy 1.0x. Bound: a quarter of the cache, below any copy of one layer's k and v.
  assert b["temp"] < cache / 4, (b["temp"] / cache, b)
