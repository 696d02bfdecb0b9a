"""bench/content_probe.py: hand-computed probabilities on a fake forward, and the copyable split."""

import numpy as np
import pytest

from streampro_jax.bench import content_probe
from streampro_jax.data.batch import Batch

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# The probabilities are float32 count ratios (one rounding) and the chance a float64 quotient:
# tol.approx_ops(x, ops=1) (tests/helpers/tolerances.py).

GROUPS = {"colour": list(range(10, 18)), "shape": [20, 21, 22, 23], "direction": [30, 31, 32, 33]}


def _batch():
  # Inputs: user text [5, 12, 6] then an answer "7 12 21"; labels = inputs shifted left.
  ids = np.array([[5, 12, 6, 7, 12, 21, 0]])
  labels = np.array([[12, 6, 7, 12, 21, 0, 0]])
  loss_mask = np.array([[0, 0, 1, 1, 1, 0, 0]])   # the targets 7, 12, 21 are supervised
  # Fields the probe does not read are zeros of their shapes.
  t = ids.shape[1]
  return Batch(input_ids=ids, labels=labels, loss_mask=loss_mask, attention_mask=np.ones_like(ids),
               position_ids=np.zeros((3, 1, t), np.int32),
               pixel_values_videos=np.zeros((1, 1, 1), np.float32))


def _forward(params, batch):
  del params
  logits = np.zeros(batch.input_ids.shape + (40,), np.float32)
  logits[0, 3, 12] = np.log(3.0)    # colour slot: p(12) = 3 / (3 + 7) over the 8 colours
  logits[0, 4, 22] = np.log(2.0)    # shape slot: argmax is 22, the right word 21 has 1 / 5
  return logits


def test_probabilities_accuracy_and_copyable_split():
  out = content_probe.probe_batches(_forward, None, [_batch()], GROUPS)
  # The colour word 12 was in the user text before its slot: copyable. The shape word 21 was not.
  assert set(out) == {"colour", "colour (in the question)", "shape", "shape (only on screen)"}
  assert out["colour"]["p_right"] == tol.approx_ops(0.3, ops=1)
  assert out["colour"]["accuracy"] == 1.0 and out["colour"]["slots"] == 1
  assert out["colour"]["chance"] == tol.approx_ops(1 / 8, ops=1)
  assert out["colour (in the question)"] == out["colour"]
  assert out["shape"]["p_right"] == tol.approx_ops(0.2, ops=1)
  assert out["shape"]["accuracy"] == 0.0 and out["shape"]["chance"] == 0.25


def test_an_answer_word_is_not_copyable_from_an_earlier_answer():
  # The same colour said earlier by the assistant (supervised) does not count as "in the question".
  b = _batch().replace(input_ids=np.array([[5, 9, 6, 12, 12, 21, 0]]),
                       labels=np.array([[9, 6, 12, 12, 21, 0, 0]]))
  out = content_probe.probe_batches(_forward, None, [b], GROUPS)
  assert "colour (only on screen)" in out and "colour (in the question)" not in out


def test_slot_groups_of_the_synthetic_tokenizer(synthetic_tokenizer):
  from streampro_jax.data import synthetic
  tok = synthetic_tokenizer
  groups = content_probe.slot_groups(tok)
  assert [len(groups[g]) for g in ("colour", "shape", "direction")] == [8, 4, 4]
  assert tok.convert_ids_to_tokens(groups["colour"]) == list(synthetic.COLORS)
  assert len({i for ids in groups.values() for i in ids}) == 16     # one token per word


def test_slot_groups_reject_a_tokenizer_that_splits_the_words():
  class CharTokenizer:
    unk_token_id = 0

    def convert_tokens_to_ids(self, word):
      return 0 if len(word) > 1 else ord(word)

  with pytest.raises(ValueError, match="splits some colour words"):
    content_probe.slot_groups(CharTokenizer())
