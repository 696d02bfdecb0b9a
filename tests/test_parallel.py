"""Mesh construction, logical-axis shardings, batch sharding and a real two-process run."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest
from jax.sharding import PartitionSpec as P

from streampro_jax import parallel

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

import multiprocess_run  # pylint: disable=g-bad-import-order


def test_eight_fake_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("sizes,expected", [
    ({"data": 2, "fsdp": 2, "tensor": 2}, (2, 2, 2)),
    ({"data": -1}, (8, 1, 1)),
    ({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)),
    ({"fsdp": -1, "tensor": 4}, (1, 2, 4)),
    ({}, (8, 1, 1)),
])
def test_make_mesh_shapes(sizes, expected):
  mesh = parallel.make_mesh(sizes or None)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape[a] for a in mesh.axis_names) == expected
  assert mesh.devices.size == 8


@pytest.mark.parametrize("sizes,message", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "3 devices but 8 devices"),
    ({"data": 3, "fsdp": -1}, "multiply to 3, which does not divide the 8 devices"),
    ({"data": -1, "fsdp": -1}, "at most one mesh axis may be -1"),
    ({"data": 0}, "positive or -1"),
    ({"model": 2}, "unknown mesh axes"),
])
def test_make_mesh_errors_name_the_sizes(sizes, message):
  with pytest.raises(parallel._MeshError, match=message):
    parallel.make_mesh(sizes)


def test_logical_to_spec_drops_non_dividing_axes():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert parallel._logical_to_spec(("embed", "mlp"), mesh=mesh, shape=(64, 128)) == P("fsdp",
                                                                                    "tensor")
  # 517 is odd: the vocabulary dimension stays whole.
  assert parallel._logical_to_spec(("vocab", "embed"), mesh=mesh, shape=(517, 64)) == P(None,
                                                                                      "fsdp")
  rules = (*parallel.DEFAULT_RULES, ("batch", ("data", "fsdp")), ("length", None))
  assert parallel._logical_to_spec(("batch", "length"), rules=rules, mesh=mesh,
                                  shape=(8, 5)) == P(("data", "fsdp"), None)
  # Batch of 2 is divisible by data (2) but not by data x fsdp (4): keeps data only.
  assert parallel._logical_to_spec(("batch", None), rules=rules, mesh=mesh,
                                  shape=(2, 5)) == P("data", None)
  with pytest.raises(KeyError, match="no sharding rule"):
    parallel._logical_to_spec(("nonsense",))


class _Tiny(nn.Module):

  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp")),
                   (16, 32))
    b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (32,))
    return x @ w + b


def test_logical_shardings_place_params_born_sharded():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model = _Tiny()
  init = lambda rng: model.init(rng, jnp.ones((1, 16)))
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = parallel.logical_shardings(abstract, mesh)
  params = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
  w = params["params"]["w"]
  assert w.sharding.spec == P("fsdp", "tensor")
  assert {s.data.shape for s in w.addressable_shards} == {(8, 16)}
  assert params["params"]["b"].sharding.spec == P("tensor")
  # Values equal the unsharded (single-device) jitted init bit for bit.
  ref = jax.jit(lambda r: nn.unbox(init(r)))(jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(w), np.asarray(ref["params"]["w"]))


def test_shardings_from_axes():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  axes = {"a": ("embed", "vocab"), "b": None}
  shapes = {"a": jax.ShapeDtypeStruct((8, 6), jnp.float32),
            "b": jax.ShapeDtypeStruct((3,), jnp.float32)}
  out = parallel._shardings_from_axes(axes, shapes, mesh)
  assert out["a"].spec == P("fsdp", "tensor") and out["b"].spec == P()


def test_shard_batch_single_process():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch = {"input_ids": np.arange(8 * 5).reshape(8, 5),
           "position_ids": np.arange(3 * 8 * 5).reshape(3, 8, 5)}
  out = parallel.shard_batch(batch, mesh, batch_dims={"position_ids": 1})
  assert out["input_ids"].sharding.spec == P(("data", "fsdp"), None)
  assert out["position_ids"].sharding.spec == P(None, ("data", "fsdp"), None)
  np.testing.assert_array_equal(np.asarray(out["position_ids"]), batch["position_ids"])
  assert {s.data.shape for s in out["input_ids"].addressable_shards} == {(2, 5)}
  with pytest.raises(ValueError, match="global batch 6 .* not divisible by the 4 data-parallel"):
    parallel.shard_batch({"x": np.zeros((6, 2))}, mesh)


def test_describe_batch():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  line = parallel.describe_batch(16, mesh)
  assert "global batch 16" in line and "4 per data-parallel shard" in line
  with pytest.raises(ValueError, match="global batch 6 is not divisible by the 4"):
    parallel.describe_batch(6, mesh)


def test_initialize_distributed_noop_without_config(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize_distributed() is False


@pytest.mark.slow
def test_two_processes_build_one_global_array(tmp_path):
  """Two real processes joined by jax.distributed on loopback reduce to the one-process value."""
  port = portpicker.pick_unused_port()
  worker = os.path.join(os.path.dirname(__file__), "helpers", "two_process_worker.py")
  multiprocess_run.run_workers(
      [[worker, str(port), str(pid), str(tmp_path / f"out{pid}.json")] for pid in range(2)],
      timeout=180)
  full = np.arange(24, dtype=np.float32).reshape(8, 3) ** 1.5
  expected = float(np.sum(full.astype(np.float64) ** 2))
  results = [json.loads((tmp_path / f"out{pid}.json").read_text()) for pid in range(2)]
  for pid, r in enumerate(results):
    assert r["shape"] == [8, 3]
    assert r["n_shards_local"] == 2
    # float32 sum of 24 squares (positive: no cancellation) across two processes vs float64:
    # the squares (1 rounding) and gamma_23 for the sum, relative.
    np.testing.assert_allclose(r["total"], expected, rtol=tol.gamma(24))
    # Row sums of 3 positive float32 values, two orders: 2 gamma_2, relative.
    np.testing.assert_allclose(sorted(r["row_sums_local"]),
                               sorted(full[4 * pid:4 * pid + 4].sum(axis=1)),
                               rtol=tol.f32_sum_bound(3, 1.0))
