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
  if not config.getoption("--skip-slow"):
    return
  skip = pytest.mark.skip(reason="--skip-slow given")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
