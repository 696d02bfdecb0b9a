"""Each default is written once, in its dataclass: the config path yields the dataclass defaults,
reads every field, and a key no field declares is an error naming the nearest valid key."""

import dataclasses
import re

import ml_collections
import pytest

from configs import common, tiny_synthetic_grpo
from streampro_jax import _config, grpo, models, sampling
from streampro_jax.data import pipeline_config, synthetic, video
from streampro_jax.data import tokenizer as tok_lib
from streampro_jax.models import processing, processing_qwen3
from streampro_jax.train import checkpoint, config_check, grpo_rollouts, optim

FROM_CONFIG = (grpo.GRPOStepConfig, pipeline_config.PipelineConfig, video.ResizePolicy,
               processing.VideoProcessorConfig, processing_qwen3.Qwen3VideoProcessorConfig,
               config_check.LossConfig, checkpoint.CheckpointConfig)


@pytest.mark.parametrize("cls", FROM_CONFIG, ids=lambda c: c.__name__)
@pytest.mark.parametrize("empty", [{}, ml_collections.ConfigDict()], ids=["dict", "ConfigDict"])
def test_empty_section_gives_the_dataclass_defaults(cls, empty):
  assert cls.from_config(empty) == cls()


def test_optim_section_needs_only_lr():
  assert optim.OptimConfig.from_config({"lr": 1e-3}) == optim.OptimConfig(lr=1e-3)
  with pytest.raises(ValueError, match=r"config\.optim\.lr is required"):
    optim.OptimConfig.from_config({})
  # None disables clipping (as 0 does) and keeps all checkpoints (as 0 does).
  assert optim.OptimConfig.from_config({"lr": 1.0, "grad_clip_norm": None}).grad_clip_norm == 0
  assert checkpoint.CheckpointConfig.from_config({"keep": None}).keep == 0


def test_configs_common_sections_are_the_dataclass_defaults():
  """configs/common.py (plain data: it imports no trainer module) writes every field of the
  dataclasses out at their defaults; a default changed in one place and not the other fails
  here."""
  assert dict(common.loss_config()) == dataclasses.asdict(config_check.LossConfig())
  assert dict(common.checkpoint_config()) == dataclasses.asdict(checkpoint.CheckpointConfig())
  assert dict(common.optim_config(lr=0.5, frozen=None)) == dataclasses.asdict(
      optim.OptimConfig(lr=0.5))
  assert common.optim_config(lr=0.5).frozen == common.FROZEN_VISION  # The project's choice.
  assert config_check.LossConfig.from_config(
      common.loss_config("focal", gamma=3.0)) == config_check.LossConfig(kind="focal", gamma=3.0)
  # The top-level keys every config has: the tree's defaults.
  top = {f.name: f.default for f in dataclasses.fields(config_check.SFTRun)
         if not dataclasses.is_dataclass(f.type) and f.default is not dataclasses.MISSING
         and f.name in common.base_config()}
  assert dict(common.base_config()) == top


def test_sampler_config_defaults_are_the_dataclass_defaults():
  run = config_check.GRPORun()
  assert grpo_rollouts.sampler_config(run) == sampling.SamplerConfig()


def test_the_tree_is_built_from_every_section():
  """A GRPO config's tree holds its values, converted to each field's type, and the defaults
  of the keys it leaves out."""
  config = tiny_synthetic_grpo.get_config()
  with config.unlocked():
    config.grpo.epsilon = 1   # an int where the field is a float
    del config.reward.max_answers
  run = config_check.build(config, "grpo")
  assert run.grpo.epsilon == 1.0 and isinstance(run.grpo.epsilon, float)
  assert run.reward.max_answers == config_check.RewardSection.max_answers
  assert run.optim == optim.OptimConfig.from_config(config.optim)
  assert run.checkpoint == checkpoint.CheckpointConfig.from_config(config.checkpoint)
  with pytest.raises(dataclasses.FrozenInstanceError):
    run.seed = 1  # type: ignore[misc]


# One value per field, none of them the default (hand-written, so a field that from_config drops
# or a default it overrides shows here).
GRPO_SECTION = dict(group_size=4, epsilon=0.3, beta=0.5, kl_estimator="k1", adv_eps=1e-3,
                    adv_ddof=0, aggregation="token-mean", temperature=0.7,
                    old_logps="recompute", num_passes=2, num_microbatches=4,
                    logps_chunk_size=128)


def test_grpo_from_config_reads_every_field():
  cfg = grpo.GRPOStepConfig.from_config(GRPO_SECTION, dict(weights=(0.2, 0.3, 0.5)))
  assert dataclasses.asdict(cfg) == {**GRPO_SECTION, "reward_weights": (0.2, 0.3, 0.5)}
  default = grpo.GRPOStepConfig()
  assert all(getattr(default, k) != v for k, v in GRPO_SECTION.items())
  assert set(GRPO_SECTION) | {"reward_weights"} == {
      f.name for f in dataclasses.fields(grpo.GRPOStepConfig)}


def test_grpo_from_config_types_and_greedy_temperature():
  cfg = grpo.GRPOStepConfig.from_config(dict(epsilon=0, group_size=4.0, temperature=0.0))
  assert (cfg.epsilon, cfg.group_size, cfg.temperature) == (0.0, 4, 1.0)
  assert isinstance(cfg.epsilon, float) and isinstance(cfg.group_size, int)
  with pytest.raises(ValueError, match=r"config\.grpo\.group_size = 2\.5"):
    grpo.GRPOStepConfig.from_config(dict(group_size=2.5))


def test_sampler_config_reads_rollout_and_grpo_keys():
  config = tiny_synthetic_grpo.get_config()
  with config.unlocked():
    config.grpo = ml_collections.ConfigDict(dict(temperature=0.5, top_p=0.9))
    config.rollout = ml_collections.ConfigDict(dict(max_text_tokens=7, window_turns=10,
                                                    capacity=512))
  assert grpo_rollouts.sampler_config(config_check.build(config, "grpo")) == sampling.SamplerConfig(
      temperature=0.5, top_p=0.9, max_text_tokens=7, window_turns=10, capacity=512)


@pytest.mark.parametrize("key,nearest", [("beta_kl", "beta"), ("epsilonn", "epsilon")])
def test_unknown_grpo_key_is_an_error_naming_the_nearest_key(key, nearest):
  config = tiny_synthetic_grpo.get_config()
  with config.unlocked():
    config.grpo[key] = 1
  message = (f"config.grpo.{key}: no code reads this key (nearest valid key: "
             f"config.grpo.{nearest};")
  with pytest.raises(config_check.ConfigError, match=re.escape(message)):
    config_check.build(config, "grpo")


def test_field_values_conversion_and_none():
  @dataclasses.dataclass
  class Example:
    n: int = 1
    x: float = 0.5
    flag: bool = False
    pair: tuple = (1, 2)
    maybe: int | None = None

  values = _config.field_values(Example, dict(n=3.0, x=2, flag=True, pair=[5, 6], maybe=None,
                                              other="not a field"))
  assert values == dict(n=3, x=2.0, flag=True, pair=(5, 6), maybe=None)
  assert type(values["n"]) is int and type(values["x"]) is float
  assert _config.field_values(Example, dict(n=None, x=None)) == {}  # None: the default applies.
  assert _config.field_values(Example, None) == {}
  with pytest.raises(ValueError, match=r"config\.s\.n = 'three': expected a value of type int"):
    _config.field_values(Example, dict(n="three"), section_name="s")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_model_section_compute_keys_default_to_the_backbone_config(family, tmp_path):
  tokenizer = tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(), str(tmp_path))
  config_cls = models.config_class({"family": family})
  mcfg = models.config_from_section({"family": family}, tokenizer)
  assert {k: getattr(mcfg, k) for k in models.COMPUTE_KEYS} == {
      k: getattr(config_cls(), k) for k in models.COMPUTE_KEYS}
  given = dict(dtype="bfloat16", param_dtype="bfloat16", attention_impl="xla",
               attention_block_q=256, attention_block_kv=1024, remat=True, remat_policy="dots",
               scan_layers=True, matmul_dtype="fp8")
  assert set(given) == set(models.COMPUTE_KEYS)
  mcfg = models.config_from_section({"family": family, **given}, tokenizer)
  assert {k: getattr(mcfg, k) for k in models.COMPUTE_KEYS} == given
