"""data/batch.py: the typed batch's field subsets, row axes and shardings on the 8 fake devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from streampro_jax import parallel
from streampro_jax.data.batch import Batch, abstract_batch

B, T, P, D = 8, 5, 3, 2


def _batch(**extra):
  ids = np.arange(B * T, dtype=np.int32).reshape(B, T)
  return Batch(input_ids=ids, labels=ids + 1, loss_mask=np.ones((B, T), np.float32),
               attention_mask=np.ones((B, T), np.int32),
               position_ids=np.arange(3 * B * T, dtype=np.int32).reshape(3, B, T),
               pixel_values_videos=np.zeros((B, P, D), np.float32), **extra)


def test_model_inputs_and_row_axes():
  b = _batch(decision_class=np.zeros((B, T), np.int32), old_logps=np.zeros((B, T), np.float32))
  m = b.model_inputs()
  assert m.decision_class is None and m.old_logps is None and m.input_ids is b.input_ids
  assert len(jax.tree.leaves(m)) == 6 and len(jax.tree.leaves(b)) == 8
  dims = b.batch_dims()
  assert dims.position_ids == 1 and dims.input_ids == 0 and dims.old_logps == 0
  assert dims.rewards is None
  assert b.num_rows == B


def test_shard_puts_rows_over_data_and_fsdp():
  mesh = parallel.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  b = _batch(rewards=np.arange(B, dtype=np.float32))
  g = b.shard(mesh)
  assert g.position_ids.sharding.spec == PartitionSpec(None, ("data", "fsdp"), None)
  assert g.input_ids.sharding.spec == PartitionSpec(("data", "fsdp"), None)
  assert g.rewards.sharding.spec == PartitionSpec(("data", "fsdp"))
  # Each of the 8 devices holds one row: its position_ids shard is [3, 1, T].
  assert g.position_ids.addressable_shards[0].data.shape == (3, 1, T)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(g), b)
  shardings = abstract_batch(B, T, P, D, optional=("rewards",)).shardings(mesh)
  assert jax.tree.map(lambda x: x.sharding, g) == shardings
  with pytest.raises(ValueError, match=r"'\.input_ids' has global batch 6"):
    Batch(*(x[:6] if x.ndim < 3 or x.shape[0] == B else x[:, :6]
            for x in (b.input_ids, b.labels, b.loss_mask, b.attention_mask, b.position_ids,
                      b.pixel_values_videos))).shard(mesh)


def test_abstract_batch_shapes_dtypes_and_errors():
  a = abstract_batch(B, T, P, D, optional=("old_logps", "reward_fmt"))
  assert a.position_ids.shape == (3, B, T) and a.position_ids.dtype == np.int32
  assert a.pixel_values_videos.shape == (B, P, D) and a.loss_mask.dtype == np.float32
  assert a.old_logps.shape == (B, T) and a.reward_fmt.shape == (B,) and a.rewards is None
  with pytest.raises(ValueError, match=r"\['labels', 'bogus'\] are not optional"):
    abstract_batch(B, T, P, D, optional=("labels", "bogus"))
