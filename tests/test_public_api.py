"""The public API (issue 29): each package names its public functions, classes and modules in
`__all__`; this test pins those lists, checks that every module of a package is declared, and
that docs/api.md (written by docs/make_api.py) is what the code says.

Changing a list here is changing the public API: say so in the commit and update the callers
(no aliases or forwarders before 1.0)."""

import importlib
import os
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PINNED = {
    "streampro_jax":
        ["__version__", "bench", "cluster", "data", "demo", "grpo", "judges", "live", "losses",
        "models", "numerics", "parallel", "prompts", "rewards", "sampling", "spans", "train",
        "xla_presets"],
    "streampro_jax.models":
        ["BACKBONES", "COMPUTE_KEYS", "DEFAULT_FAMILY", "backbone_module", "build", "config_class",
        "config_from_section", "layout_of", "load_hf_checkpoint", "model_class", "model_type_of",
        "process_turns",
        "round_up", "scan_params", "unscan_params", "video_processor_config", "common", "hf_io",
        "kv_cache", "layers", "processing", "processing_qwen3", "qwen2_5_vl", "qwen3_vl"],
    "streampro_jax.sampling":
        ["DECISION_NAMES", "FORCED_TOKEN", "Message", "NO_TURN", "PROMPT_TOKEN",
        "RolloutBatch", "SAMPLED_TOKEN", "SamplerConfig", "SamplerState",
        "StreamProFormat", "StreamPrompt", "StreamingSampler", "TURN_INVALID", "TURN_RESPONSE",
        "TURN_SILENCE", "TurnOutput", "WAIT_INSTRUCTION", "WAIT_SYSTEM_PROMPT", "WaitPromptFormat",
        "decode_message", "prompt_from_record", "row_keys", "sample_tokens", "sampler_step_fns",
        "teacher_forced_logps", "top_p_filter"],
    "streampro_jax.data":
        ["batch", "chat_format", "importers", "peer_loaders", "pipeline", "pipeline_config",
        "schema", "synthetic", "tfds_builders", "tokenizer", "video"],
    "streampro_jax.data.tfds_builders":
        ["JsonlVideos", "JsonlVideosConfig", "SynthStream", "SynthStreamConfig", "build"],
    "streampro_jax.train":
        ["aot", "checkpoint", "config_check", "grpo_data", "grpo_learner", "grpo_policy",
        "grpo_rewards", "grpo_rollouts", "grpo_step", "grpo_trainer", "loop", "metrics", "optim",
        "run", "setup", "sft", "state", "step"],
    "streampro_jax.bench":
        ["checkpoints", "content_probe", "harness", "ovo", "pauc", "report", "seeds",
        "streamingbench", "streampro_f1"],
}


@pytest.mark.parametrize("package", sorted(PINNED))
def test_all_is_pinned_and_resolves(package):
  pkg = importlib.import_module(package)
  assert list(pkg.__all__) == PINNED[package]
  for name in pkg.__all__:
    if not hasattr(pkg, name):   # a module: importable by that name
      importlib.import_module(f"{package}.{name}")


@pytest.mark.parametrize("package", sorted(PINNED))
def test_every_module_of_a_package_is_declared(package):
  """A module of the package is named in __all__, or defines a name __all__ lists (the package
  re-exports it), or is underscored (internal)."""
  pkg = importlib.import_module(package)
  folder = os.path.dirname(pkg.__file__)
  exported_from = set()
  for name in pkg.__all__:
    obj = getattr(pkg, name, None)
    if obj is not None and not isinstance(obj, types.ModuleType):
      exported_from.add(getattr(obj, "__module__", None))
  undeclared = []
  for entry in sorted(os.listdir(folder)):
    path = os.path.join(folder, entry)
    name = entry[:-3] if entry.endswith(".py") else entry
    is_module = entry.endswith(".py") or os.path.isfile(os.path.join(path, "__init__.py"))
    if not is_module or name.startswith("_"):
      continue
    if name not in pkg.__all__ and f"{package}.{name}" not in exported_from:
      undeclared.append(name)
  assert not undeclared, f"{package}: modules neither in __all__ nor underscored: {undeclared}"


def test_api_page_is_current():
  r = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "make_api.py"), "--check"],
                     capture_output=True, text=True, cwd=ROOT, timeout=300,
                     env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stdout + r.stderr[-2000:]
