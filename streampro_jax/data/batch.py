"""The batch: one typed pytree shared by the data pipeline, the sampler and the update steps.

The grain pipeline's collate (data/pipeline.py) produces a :class:`Batch` of NumPy arrays, the
sampler's ``RolloutBatch.as_batch()`` gives one with the rollout's log-probs, and the SFT and GRPO
steps (train/step.py, train/grpo_step.py) take it, sharded by :meth:`Batch.shard`. It is a frozen
``flax.struct`` dataclass, so ``jax.tree.map``, ``jax.jit`` and ``lax.scan`` see its fields as
leaves; a field that a side does not have is ``None`` (an empty subtree: no leaf, no sharding).

Shapes: B rows (N = B * G rollouts in GRPO, groups contiguous), T tokens per row, K turns of P
patches each of dimension D = 3 * tp * p * p. Every field has its rows on axis 0 except
position_ids, [3, B, T] (:meth:`Batch.batch_dims`).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from streampro_jax import parallel

__all__ = ["Batch", "abstract_batch"]

# The fields a teacher-forced forward and its loss read (Batch.model_inputs).
_MODEL_FIELDS = ("input_ids", "labels", "loss_mask", "attention_mask", "position_ids",
                 "pixel_values_videos")


@flax.struct.dataclass
class Batch:
  """B rows in the teacher-forcing layout (docs/architecture.md#shared-interfaces).

  Attributes:
    input_ids: i32[B, T] the tokens; pad id after a row's end.
    labels: i32[B, T] labels[t] = input_ids[t + 1], the target at position t.
    loss_mask: f32[B, T] 1 where labels[t] is supervised (SFT: assistant tokens; GRPO: sampled
      assistant tokens).
    attention_mask: i32[B, T] 1 on real tokens.
    position_ids: i32[3, B, T] the M-RoPE positions (temporal, height, width); rows on axis 1.
    pixel_values_videos: f32[B, K*P, D] each row's turn patches (zeros after its last turn).
    decision_class: i32[B, T] 1 where labels[t] is </Silence>, 2 </Response>, else 0 (the
      pipeline's; None elsewhere).
    old_logps: f32[B, T] the behaviour policy's log-prob of labels[t] (GRPO: the sampler's, or
      recomputed inside the step; None in SFT).
    rewards: f32[B] one combined reward per rollout (GRPO, instead of the three components).
    reward_fmt, reward_turn, reward_traj: f32[B] the reward components of a rollout (GRPO; the
      step combines them with GRPOStepConfig.reward_weights).
    advantages: f32[B] the group advantages (set inside the GRPO step).
    ref_logps: f32[B, T] the reference policy's log-probs (set inside the GRPO step when its KL
      coefficient is not 0).
  """
  input_ids: Any
  labels: Any
  loss_mask: Any
  attention_mask: Any
  position_ids: Any
  pixel_values_videos: Any
  decision_class: Any = None
  old_logps: Any = None
  rewards: Any = None
  reward_fmt: Any = None
  reward_turn: Any = None
  reward_traj: Any = None
  advantages: Any = None
  ref_logps: Any = None

  @property
  def num_rows(self) -> int:
    """B, the number of rows."""
    return int(self.input_ids.shape[0])

  def model_inputs(self) -> Batch:
    """The batch with only the fields a teacher-forced forward and its loss read (input_ids,
    labels, loss_mask, attention_mask, position_ids, pixel_values_videos); the others None."""
    return Batch(**{k: getattr(self, k) for k in _MODEL_FIELDS})

  def batch_dims(self) -> Batch:
    """The row axis of each present field as a Batch of ints: 1 for position_ids [3, B, T], 0
    for every other field (None where the field is None)."""
    return jax.tree.map(lambda _: 0, self).replace(position_ids=1)

  def shardings(self, mesh: Mesh) -> Batch:
    """NamedShardings of the fields (of arrays or ShapeDtypeStructs): rows over ('data',
    'fsdp'), the other axes replicated."""
    return jax.tree.map(lambda x, dim: parallel.batch_sharding(mesh, len(x.shape), batch_dim=dim),
                        self, self.batch_dims())

  def shard(self, mesh: Mesh) -> Batch:
    """This host's rows (NumPy) -> global arrays sharded like :meth:`shardings`
    (parallel.shard_batch: the global batch is the hosts' rows in process order)."""
    return parallel.shard_batch(self, mesh, batch_dims=self.batch_dims())


def abstract_batch(rows: int, seq_len: int, num_patches: int, patch_dim: int, *,
                   optional: tuple[str, ...] = ()) -> Batch:
  """A Batch of jax.ShapeDtypeStructs: the model inputs of `rows` rows of `seq_len` tokens and
  `num_patches` patches of `patch_dim` (shapes and dtypes as the Batch fields say), plus the
  optional fields named in `optional`."""
  n, t = rows, seq_len
  sds = jax.ShapeDtypeStruct
  shapes = {"input_ids": sds((n, t), jnp.int32), "labels": sds((n, t), jnp.int32),
            "loss_mask": sds((n, t), jnp.float32), "attention_mask": sds((n, t), jnp.int32),
            "position_ids": sds((3, n, t), jnp.int32),
            "pixel_values_videos": sds((n, num_patches, patch_dim), jnp.float32),
            "decision_class": sds((n, t), jnp.int32), "old_logps": sds((n, t), jnp.float32),
            "rewards": sds((n,), jnp.float32), "reward_fmt": sds((n,), jnp.float32),
            "reward_turn": sds((n,), jnp.float32), "reward_traj": sds((n,), jnp.float32),
            "advantages": sds((n,), jnp.float32), "ref_logps": sds((n, t), jnp.float32)}
  unknown = [k for k in optional if k in _MODEL_FIELDS or k not in shapes]
  if unknown:
    raise ValueError(f"abstract_batch: optional fields {unknown} are not optional Batch fields "
                     f"(those are {[k for k in shapes if k not in _MODEL_FIELDS]})")
  return Batch(**{k: shapes[k] for k in _MODEL_FIELDS + tuple(optional)})
