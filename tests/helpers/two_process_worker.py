"""One process of the two-process test: joins a 2-process JAX run on loopback.

Usage: python two_process_worker.py PORT PROCESS_ID OUT_JSON
Each process owns 2 CPU devices and the half of a [8, 3] batch with rows
[4 * pid, 4 * pid + 4). They build one global array with parallel.shard_batch and
reduce it inside jit; the result is written to OUT_JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from streampro_jax import parallel  # noqa: E402


def main():
  port, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  parallel.initialize_distributed(parallel.DistributedConfig(
      coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid))
  assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(),
                                                                 jax.device_count())
  mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 1})
  full = np.arange(24, dtype=np.float32).reshape(8, 3) ** 1.5
  local = full[4 * pid: 4 * pid + 4]
  batch = parallel.shard_batch({"x": local}, mesh)
  x = batch["x"]
  total = jax.jit(lambda a: jnp.sum(a * a), out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))(x)
  row_sums = jax.jit(lambda a: a.sum(axis=1))(x)
  with open(out, "w") as f:
    json.dump({"shape": list(x.shape), "total": float(total),
               "n_shards_local": len(x.addressable_shards),
               "row_sums_local": [float(v) for s in row_sums.addressable_shards
                                  for v in np.asarray(s.data)]}, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
