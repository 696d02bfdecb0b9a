"""The sampler's three users give the tokens recorded before the sampler moved into
streampro_jax/sampling/ (tests/fixtures/sampling_reference.json, written at commit c51d9b6 by
tests/helpers/sampling_reference.py from the same inputs and seeds): GRPO rollouts on both
backbones, the evaluation harness in both prompt styles, and live sessions. Token ids, decisions
and messages must be equal, row by row and turn by turn."""

import json
import os

import pytest

from helpers import sampling_reference as ref  # pylint: disable=g-bad-import-order

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "sampling_reference.json")


@pytest.fixture(scope="module")
def recorded():
  with open(FIXTURE, encoding="utf-8") as f:
    return json.load(f)


def _same(got, want):
  assert sorted(got) == sorted(want)
  for case in want:
    assert len(got[case]) == len(want[case]), case
    for i, (g, w) in enumerate(zip(got[case], want[case])):
      assert g == w, f"{case}, row {i}"


@pytest.mark.slow
def test_grpo_rollouts_as_recorded(recorded, synthetic_tokenizer):
  got = ref.grpo_cases(synthetic_tokenizer)
  _same(got, {k: v for k, v in recorded.items() if k.startswith("grpo/")})


@pytest.mark.slow
def test_harness_and_live_as_recorded(recorded, tiny_random_model, tmp_path):
  params, mcfg, tok = tiny_random_model
  got = ref.harness_case(params, mcfg, tok, str(tmp_path))
  got.update(ref.live_case(params, mcfg, tok))
  _same(got, {k: v for k, v in recorded.items() if not k.startswith("grpo/")})
