"""streampro_jax.bench.seeds: paired gaps over seeds and the findings they support (numbers
computed by hand)."""

import math

import pytest

from streampro_jax.bench import seeds

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order


def _per_seed(table):
  """{seed: {variant: W-Avg}} -> the per_seed layout of the demo's results.json."""
  return {s: {v: {"W-Avg": x} for v, x in row.items()} for s, row in table.items()}


# Host float64 arithmetic of a few numbers each (differences, means, a variance, a sqrt):
# tol.approx64 with 16 roundings.
VARIANTS = ("sft_ce", "sft_focal", "sft_cb_stream", "grpo")


def test_paired_gaps_hand_computed():
  table = {"0": {"sft_ce": 0.10, "sft_focal": 0.12, "sft_cb_stream": 0.16, "grpo": 0.17},
           "1": {"sft_ce": 0.20, "sft_focal": 0.19, "sft_cb_stream": 0.24, "grpo": 0.26},
           "2": {"sft_ce": 0.05, "sft_focal": 0.07, "sft_cb_stream": 0.13, "grpo": 0.12}}
  s = seeds.summarize(_per_seed(table), VARIANTS)
  cb = s["gaps"]["sft_cb_stream - sft_ce"]
  # gaps 0.06, 0.04, 0.08: mean 0.06, std sqrt((0 + 0.0004 + 0.0004) / 2) = 0.02; 0.06 >= 0.04.
  assert cb["values"] == tol.approx64([0.06, 0.04, 0.08], ops=16)
  assert cb["mean"] == tol.approx64(0.06, ops=16)
  assert cb["std"] == tol.approx64(0.02, ops=16)
  assert cb["all_positive"] and cb["holds"]
  # GRPO: 0.01, 0.02, -0.01 -> not on every seed.
  g = s["gaps"]["grpo - sft_cb_stream"]
  assert g["values"] == tol.approx64([0.01, 0.02, -0.01], ops=16)
  assert not g["all_positive"] and not g["holds"]
  assert seeds.findings(s) == {"sft_cb_stream - sft_ce": True, "grpo - sft_cb_stream": False}
  # Focal is reported, not claimed.
  assert "sft_focal - sft_ce" in s["gaps"] and "sft_focal - sft_ce" not in seeds.findings(s)
  assert s["variants"]["sft_ce"]["mean"] == tol.approx64(0.35 / 3, ops=16)
  text = seeds._findings_text(s, "test")
  assert "sft_cb_stream scores above sft_ce on every one of the 3 seeds: +6.0, +4.0, +8.0" in text
  assert "grpo does not score above sft_cb_stream on 1 of 3 seeds" in text


def test_positive_gaps_with_a_wide_spread_do_not_hold():
  # gaps 0.01, 0.01, 0.10: all > 0, mean 0.04, std sqrt((0.0009 * 2 + 0.0036) / 2) = 0.05196.
  table = {str(i): {"sft_ce": 0.0, "sft_cb_stream": d, "grpo": d + 0.01, "sft_focal": 0.0}
           for i, d in enumerate((0.01, 0.01, 0.10))}
  g = seeds.summarize(_per_seed(table), VARIANTS)["gaps"]["sft_cb_stream - sft_ce"]
  assert g["std"] == tol.approx64(math.sqrt(0.0027), ops=16)
  assert g["all_positive"] and not g["holds"]
  assert seeds._gaps_table({"gaps": {"x - y": g}}).splitlines()[-1] == (
      "| x - y | +1.0, +1.0, +10.0 | +4.0 +- 5.2 | yes | no |")


def test_one_seed_and_missing_variants():
  s = seeds.summarize(_per_seed({"0": {"sft_ce": 0.1, "sft_focal": 0.1, "sft_cb_stream": 0.2,
                                       "grpo": 0.25}}), VARIANTS)
  assert s["gaps"]["grpo - sft_cb_stream"]["std"] == 0.0 and seeds.findings(s)[
      "grpo - sft_cb_stream"]
  with pytest.raises(KeyError, match="lack 'grpo'"):
    seeds._paired_gap({"0": {"sft_cb_stream": 0.1}}, "grpo", "sft_cb_stream")
  with pytest.raises(ValueError, match="no values"):
    seeds._mean_std([])
