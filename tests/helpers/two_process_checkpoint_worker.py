"""One process of the two-process checkpoint test (tests/test_train_checkpoint.py).

Usage: python two_process_checkpoint_worker.py PORT PROCESS_ID CKPT_DIR OUT_NPZ

Two processes joined by jax.distributed on 127.0.0.1:PORT, 2 CPU devices each, an (fsdp 4) mesh
over both: the train state of tests/helpers/checkpoint_model.py (one AdamW step) saved together
as checkpoint 1 in CKPT_DIR (asynchronously, then closed), with each process's data position
({"position": 10 + PROCESS_ID}). Each process writes the shards it
holds of every leaf, with their global index, to OUT_NPZ, so that the test can assemble the saved
arrays without trusting the checkpoint.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402


class _Position:
  """A data iterator's checkpointed state, as the trainers' iterators give it."""

  def __init__(self, position):
    self.position = position

  def get_state(self):
    return {"position": self.position}


def main():
  port, pid, ckpt_dir, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
  from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import checkpoint_model  # pylint: disable=g-import-not-at-top

  parallel.initialize_distributed(parallel.DistributedConfig(
      coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid))
  assert jax.process_count() == 2 and jax.device_count() == 4
  mesh = parallel.make_mesh({"fsdp": 4})
  state, _ = checkpoint_model.stepped_state(mesh)
  assert not state.params["w"].is_fully_addressable
  ckpt = ckpt_lib.Checkpointer(ckpt_dir, every_steps=1)
  ckpt.save(1, state, _Position(10 + pid))
  ckpt.close()
  shards = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    key = jax.tree_util.keystr(path)
    for i, s in enumerate(leaf.addressable_shards):
      index = [(sl.start or 0, sl.stop if sl.stop is not None else leaf.shape[d])
               for d, sl in enumerate(s.index)]
      shards[f"{key}|{i}|data"] = np.asarray(s.data)
      shards[f"{key}|{i}|index"] = np.asarray(index, np.int64).reshape(-1, 2)
      shards[f"{key}|{i}|shape"] = np.asarray(leaf.shape, np.int64)
  np.savez(out, **shards)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
