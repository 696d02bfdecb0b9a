"""Test configuration: every test sees 8 fake CPU devices.

The XLA flag must be set before jax is imported anywhere, so it is set here at
import time of the conftest (pytest imports it before collecting test modules).
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_addoption(parser):
  parser.addoption(
      "--skip-slow", action="store_true", default=False,
      help="skip tests marked slow (they run by default)")


def pytest_collection_modifyitems(config, items):
  # The longest test (README's demo, ~15 min) starts first: under pytest-xdist (README's test
  # command, -n 2) one worker runs it while the other works through the rest. The sort is
  # stable and the same on every worker, as xdist requires.
  items.sort(key=lambda item: "first" not in item.keywords)
  if not config.getoption("--skip-slow"):
    return
  skip = pytest.mark.skip(reason="--skip-slow given")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)


# ------------------------------------------------------------------------------------------------
# Shared tiny builders. Objects that outlive one test are never handed out for mutation: configs
# are frozen dataclasses, jax arrays are immutable, and parameter dicts are fresh trees (new dicts
# around the same arrays) on every call; ConfigDicts are built fresh for each test.


@pytest.fixture(scope="session")
def synthetic_tokenizer_dir(tmp_path_factory):
  """The folder of the synthetic tokenizer (`synthetic_tokenizer`): tokenizer.json and the rest."""
  return str(tmp_path_factory.mktemp("synthetic_tokenizer"))


@pytest.fixture(scope="session")
def synthetic_tokenizer(synthetic_tokenizer_dir):
  """data/tokenizer.build_synthetic_tokenizer of synthetic.synthetic_vocabulary(), built once
  per session (what `tokenizer="synthetic"` configs build). Tests must not add tokens to it."""
  from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  return tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(),
                                           synthetic_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_backbone(synthetic_tokenizer):
  """family -> (config, params): the tiny random backbone of that family ('qwen2_5_vl' |
  'qwen3_vl') on the synthetic tokenizer, built once per family per session.

  config: models.config_from_section({family, attention_impl: "xla"}, tokenizer), i.e. the
  family's tiny_config with the tokenizer's special ids and vocab_size = len(tokenizer) rounded up
  to 64. params: train/setup.random_params(config, seed=0) (jitted init, unboxed), a fresh dict
  tree on every call."""
  import jax  # pylint: disable=g-import-not-at-top
  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup  # pylint: disable=g-import-not-at-top
  built = {}

  def get(family: str):
    if family not in built:
      cfg = models.config_from_section(dict(family=family, attention_impl="xla"),
                                       synthetic_tokenizer)
      built[family] = (cfg, setup.random_params(cfg, seed=0))
    cfg, params = built[family]
    return cfg, jax.tree.map(lambda x: x, params)

  return get


@pytest.fixture
def tiny_synthetic_config():
  """A fresh configs/tiny_synthetic.py config (a ConfigDict the test may change)."""
  from configs import tiny_synthetic  # pylint: disable=g-import-not-at-top
  return tiny_synthetic.get_config()


@pytest.fixture(scope="session")
def _tiny_random_model_once(tmp_path_factory):
  from configs import tiny_synthetic  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup  # pylint: disable=g-import-not-at-top
  return setup.random_model(tiny_synthetic.get_config(),
                            str(tmp_path_factory.mktemp("tiny_random_model")))


@pytest.fixture
def tiny_random_model(_tiny_random_model_once):
  """(params, model_config, tokenizer): configs/tiny_synthetic.py with random weights of seed 0
  (train/setup.random_model: what `--checkpoint=random` and benchmarks/live_stream.py load),
  built once per session; params a fresh dict tree for each test."""
  import jax  # pylint: disable=g-import-not-at-top
  params, mcfg, tok = _tiny_random_model_once
  return jax.tree.map(lambda x: x, params), mcfg, tok


# The tiny SFT config of the step / checkpoint / GRPO tests: tiny Qwen2.5-VL (1 text layer, 1
# vision block) in float32 on SynthStream 12 s videos at 32 px, 16 x 16 frames.
_TINY_SFT = dict(
    tokenizer="synthetic",
    model=dict(family="qwen2_5_vl", hf_checkpoint="", dtype="float32", param_dtype="float32",
               attention_impl="xla", remat=False, tiny_text=dict(num_hidden_layers=1),
               tiny_vision=dict(depth=1, fullatt_block_indexes=(0,))),
    data=dict(source="synth", split="train", synth_seed=0,
              synth=dict(resolution=32, min_duration=12, max_duration=12),
              frame_height=16, frame_width=16, seed=0, shuffle=True, num_threads=1))


def make_tiny_sft_config(global_batch_size: int, model: dict | None = None, **data):
  """A fresh ConfigDict: the tiny SFT config above with that global batch size, `model` (if
  given) replacing the whole model section, and the data keys (each test names its num_videos,
  seq_len, max_turns, prefetch_buffer_size, ...) added to the data section."""
  import copy  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  d = copy.deepcopy(_TINY_SFT)
  d["global_batch_size"] = global_batch_size
  if model is not None:
    d["model"] = dict(model)
  d["data"].update(data)
  return ml_collections.ConfigDict(d)


@pytest.fixture(scope="session")
def tiny_sft_config():
  """make_tiny_sft_config: (global_batch_size, model=None, **data) -> a fresh tiny SFT
  ConfigDict (a pure function, so one per session)."""
  return make_tiny_sft_config
