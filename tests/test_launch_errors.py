"""What a user meets when something is wrong (issue 28): a workdir or checkpoint the project wrote
is read back by every launcher that takes it; bad flags, config keys and files are one line and
exit code 2 before any model is loaded; a run that stops at start-up leaves nothing behind.

Launchers run as subprocesses (absl flags can be defined only once per process)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="",
              HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _python(code, timeout=120):
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, env=_env(), cwd=ROOT, timeout=timeout, check=False)


# ------------------------------------------------------------------------------------------------
# What the project writes, it reads back.


@pytest.mark.parametrize("name", ["tiny_synthetic", "tiny_synthetic_qwen3"])
def test_model_config_from_config_json(name, synthetic_tokenizer):
  """A training config written to a workdir's config.json (tuples become JSON lists) gives the
  same hashable backbone config as the config file (it is a static argument of jitted code)."""
  import importlib

  import ml_collections
  from streampro_jax import models
  from streampro_jax.train import config_check
  cfg = importlib.import_module(f"configs.{name}").get_config()
  back = ml_collections.ConfigDict(json.loads(json.dumps(config_check.config_as_json(cfg))))
  want = models.config_from_section(cfg.model, synthetic_tokenizer)
  got = models.config_from_section(back.model, synthetic_tokenizer)
  assert got == want and hash(got) == hash(want)
  # The backbone configs themselves: any list field becomes the tuple it declares.
  mod = models.backbone_module(want)
  again = mod.Config.from_hf(json.loads(json.dumps(want.to_hf())))
  assert hash(again) == hash(mod.Config.from_hf(want.to_hf()))
  assert isinstance(mod.TextConfig(mrope_section=[1, 2, 3]).mrope_section, tuple)


def test_serve_refuses_uploads_until_the_model_is_ready():
  """launch/serve.make_app: while the model compiles, and after its warm-up failed, a new stream
  is 503 with the reason (never 201 for a stream that cannot run); /healthz names the error."""
  r = _python("""
      import asyncio, json, sys, threading
      sys.path.insert(0, "launch")
      import serve

      class Model:
        def __init__(self, fail):
          self.fail, self.go = fail, threading.Event()
        def warm_up(self):
          self.go.wait(30)
          if self.fail:
            raise TypeError("unhashable type: 'list'")
          return 0.0

      def call(api, path, method):
        route = next(r for r in api.routes if r.path == path and method in r.methods)
        fn = route.endpoint
        out = fn(None, None) if path == "/api/sessions" else fn()
        out = asyncio.run(out) if asyncio.iscoroutine(out) else out
        return out if isinstance(out, dict) else (out.status_code, json.loads(out.body))

      for fail in (False, True):
        model = Model(fail)
        api = serve.make_app(model)
        print("compiling", call(api, "/api/sessions", "POST"))
        model.go.set()
        for _ in range(100):
          health = call(api, "/healthz", "GET")
          if health["ready"] or health["error"]:
            break
          threading.Event().wait(0.05)
        print("health", json.dumps(health))
        if fail:
          print("failed", call(api, "/api/sessions", "POST"))
      """)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.splitlines()
  assert lines[0].startswith("compiling (503,") and "still compiling" in lines[0]
  assert json.loads(lines[1].split(" ", 1)[1])["ready"] is True
  health = json.loads(lines[3].split(" ", 1)[1])
  assert health["ready"] is False and "unhashable" in health["error"]
  assert lines[4].startswith("failed (503,") and "failed to load" in lines[4]
