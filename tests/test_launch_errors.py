"""What a user meets when something is wrong (issue 28): a workdir or checkpoint the project wrote
is read back by every launcher that takes it; bad flags, config keys and files are one line and
exit code 2 before any model is loaded; a run that stops at start-up leaves nothing behind.

Launchers run as subprocesses (absl flags can be defined only once per process)."""

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import textwrap
import time

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
  back = ml_collections.ConfigDict(json.loads(json.dumps(config_check._config_as_json(cfg))))
  want = models.config_from_section(cfg.model, synthetic_tokenizer)
  got = models.config_from_section(back.model, synthetic_tokenizer)
  assert got == want and hash(got) == hash(want)
  # The backbone configs themselves: any list field becomes the tuple it declares.
  mod = models.backbone_module(want)
  again = models.config_class(want).from_hf(json.loads(json.dumps(want.to_hf())))
  assert hash(again) == hash(models.config_class(want).from_hf(want.to_hf()))
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


# ------------------------------------------------------------------------------------------------
# Every launcher: a mistake is one line naming it, exit 2, within seconds, before any model load.

TINY = "configs/tiny_synthetic.py"
TINY_GRPO = "configs/tiny_synthetic_grpo.py"
_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")   # absl's log lines (not what the user is told)


def _cases(tmp):
  """(id, script, args, text the one line holds, a folder that must stay unwritten or None)."""
  w = str(tmp / "work")
  nope = str(tmp / "nope")
  clip, corrupt, tfds_cfg, file_key_cfg = (str(tmp / n) for n in (
      "clip.mp4", "corrupt.mp4", "tfds_config.py", "typo_config.py"))
  judge = '--judge={"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "j"}'
  return [
      ("sft-flag", "train_sft.py", [f"--config={TINY}", f"--workdir={w}", "--bogus=1"],
       "bogus", w),
      ("sft-key", "train_sft.py", [f"--config={TINY}", f"--workdir={w}",
                                   "--config.optim.lr_typo=1"], "config.optim.lr_typo", w),
      ("sft-section", "train_sft.py", [f"--config={TINY}", f"--workdir={w}",
                                       "--config.nosuch.key=1"], "'nosuch'", w),
      ("sft-file-key", "train_sft.py", [f"--config={file_key_cfg}", f"--workdir={w}"],
       "config.optim.lr_typo", w),
      ("sft-preset", "train_sft.py", [f"--config={TINY}", f"--workdir={w}",
                                      "--xla_preset=cuda"], "xla_preset", w),
      ("sft-tfds", "train_sft.py", [f"--config={tfds_cfg}", f"--workdir={w}"],
       "config.data.tfds_dir", w),
      ("sft-tfds-empty", "train_sft.py", [f"--config={tfds_cfg}", f"--workdir={w}",
                                          f"--config.data.tfds_dir={tmp}"],
       "dataset_info.json", w),
      ("grpo-renamed", "train_grpo.py", [f"--config={TINY_GRPO}", f"--workdir={w}",
                                         "--config.grpo.beta_kl=0.1"],
       "config.grpo.beta_kl: no code reads this key (nearest valid key: config.grpo.beta;", w),
      ("grpo-rubrics", "train_grpo.py", [f"--config={TINY_GRPO}", f"--workdir={w}",
                                         f"--config.reward.rubrics_file={nope}.jsonl"],
       "config.reward.rubrics_file", w),
      ("grpo-init", "train_grpo.py", [f"--config={TINY_GRPO}", f"--workdir={w}",
                                      f"--config.init.sft_workdir={nope}"],
       "config.init.sft_workdir", w),
      ("eval-flag", "evaluate.py", ["--checkpoint=random", f"--workdir={w}", "--bogus"],
       "bogus", w),
      ("eval-ckpt", "evaluate.py", [f"--checkpoint={nope}", f"--workdir={w}"],
       "--checkpoint", None),
      ("eval-bench", "evaluate.py", ["--checkpoint=random", f"--workdir={w}",
                                     "--benchmark=nosuch"], "benchmark", w),
      ("stream-video", "stream.py", ["--checkpoint=random", f"--video={nope}.mp4"],
       "--video", None),
      ("stream-corrupt", "stream.py", ["--checkpoint=random", f"--video={corrupt}"],
       "cannot be read as a video", None),
      ("stream-at-abc", "stream.py", ["--checkpoint=random", f"--video={clip}",
                                      "--question=What?@abc"], "--question", None),
      ("stream-at-neg", "stream.py", ["--checkpoint=random", f"--video={clip}",
                                      "--question=What?@-3"], "--question", None),
      ("stream-at-end", "stream.py", ["--checkpoint=random", f"--video={clip}",
                                      "--question=What?@50"], "after the video ends", None),
      ("stream-long", "stream.py", ["--checkpoint=random", f"--video={clip}",
                                    "--question=" + "how many boxes " * 700],
       "ask a shorter question", None),
      ("serve-ckpt", "serve.py", [f"--checkpoint={nope}"], "--checkpoint", None),
      ("serve-flag", "serve.py", ["--checkpoint=random", "--max_viewers=x"], "max_viewers",
       None),
      ("check-input", "check_data.py", [f"--input={nope}.jsonl"], "no such file", None),
      ("check-flag", "check_data.py", [f"--input={nope}.jsonl", "--bogus"], "bogus", None),
      ("import-input", "import_data.py", ["--format=simple", f"--input={nope}.csv",
                                          f"--output={w}/o.jsonl"], "no such file", w),
      ("import-format", "import_data.py", ["--format=bogus", f"--input={nope}.csv",
                                           f"--output={w}/o.jsonl"], "format", w),
      ("convert-workdir", "convert_checkpoint.py", [f"--workdir={nope}", f"--config={TINY}",
                                                    f"--output={w}"], "--workdir", w),
      ("convert-key", "convert_checkpoint.py", [f"--workdir={nope}", f"--config={TINY}",
                                                "--config.optim.lr_typo=1", f"--output={w}"],
       "lr_typo", w),
      ("rubrics-input", "write_rubrics.py", [f"--input={nope}.jsonl", f"--output={w}/o.jsonl",
                                             judge], "no such file", w),
      ("demo-flag", "demo.py", [f"--workdir={w}", "--bogus"], "bogus", w),
      ("demo-seeds", "demo.py", [f"--workdir={w}", "--seeds=0,x"], "--seeds", w),
  ]


LAUNCHERS = ("train_sft.py", "train_grpo.py", "evaluate.py", "stream.py", "serve.py",
             "check_data.py", "import_data.py", "convert_checkpoint.py", "write_rubrics.py",
             "demo.py", "aot_compile.py")


def _launch(script, args, timeout=240):
  t0 = time.monotonic()
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                     capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout,
                     check=False)
  return r, time.monotonic() - t0


@pytest.fixture(scope="module")
def launcher_runs(tmp_path_factory):
  """Every case of _cases and --help of every launcher, run two at a time: {id: (result,
  seconds, text, folder)}."""
  import numpy as np
  from streampro_jax.data import video
  tmp = tmp_path_factory.mktemp("launchers")
  video._encode_video(str(tmp / "clip.mp4"), np.zeros((24, 16, 16, 3), np.uint8), fps=4)  # 6 s
  (tmp / "corrupt.mp4").write_bytes(b"\x00not a video" * 100)
  (tmp / "tfds_config.py").write_text(textwrap.dedent("""
      from configs import common, tiny_synthetic
      def get_config():
        c = tiny_synthetic.get_config()
        c.data = common.data_config(source="tfds", seq_len=768, max_turns=16, frame_size=16)
        return c
      """))
  (tmp / "typo_config.py").write_text(textwrap.dedent("""
      from configs import tiny_synthetic
      def get_config():
        c = tiny_synthetic.get_config()
        c.optim.lr_typo = 1.0
        return c
      """))
  jobs = {cid: (script, args, text, folder) for cid, script, args, text, folder in _cases(tmp)}
  jobs.update({f"help-{s}": (s, ["--help"], None, None) for s in LAUNCHERS})
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = {cid: pool.submit(_launch, s, a) for cid, (s, a, _, _) in jobs.items()}
    return {cid: (*futures[cid].result(), jobs[cid][2], jobs[cid][3]) for cid in jobs}


def _case_ids():
  return [c[0] for c in _cases(__import__("pathlib").Path("/x"))]


@pytest.mark.slow
@pytest.mark.parametrize("cid", _case_ids())
def test_launcher_mistake_is_one_line(launcher_runs, cid):
  r, seconds, text, folder = launcher_runs[cid]
  said = [line for line in r.stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]
  assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
  assert len(said) == 1 and said[0].startswith("error: ") and text in said[0], said
  assert "Traceback" not in r.stderr + r.stdout
  # No model was loaded or compiled: seconds on an idle machine (the imports); the bound only
  # catches a launcher that went on to load and compile (minutes on a loaded 2-core CI machine).
  assert seconds < 240 and "compiling" not in r.stdout
  if folder is not None:  # nothing written: no config.json, no tokenizer, no workdir at all
    assert not os.path.exists(folder), os.listdir(folder)


@pytest.mark.slow
@pytest.mark.parametrize("script", LAUNCHERS)
def test_launcher_help_exits_0(launcher_runs, script):
  r, _, _, _ = launcher_runs[f"help-{script}"]
  assert r.returncode == 0, r.stderr[-2000:]
  assert "--" in r.stdout


def test_a_run_that_fails_before_config_json_leaves_the_workdir_as_it_found_it(tmp_path):
  """Issue 28: a trainer that stopped at start-up had written its tokenizer (and the workdir)."""
  from streampro_jax.train import setup  # pylint: disable=g-import-not-at-top
  w = tmp_path / "w"
  with pytest.raises(ValueError, match="no data"):
    with setup.clean_on_early_failure(str(w)):
      (w / "tokenizer" / "process_0").mkdir(parents=True)
      raise ValueError("no data")
  assert not w.exists()                                  # new workdir: gone
  (w / "checkpoints").mkdir(parents=True)                # a workdir that was there stays
  with pytest.raises(KeyboardInterrupt):
    with setup.clean_on_early_failure(str(w)):
      (w / "tokenizer").mkdir()
      raise KeyboardInterrupt
  assert sorted(os.listdir(w)) == ["checkpoints"]
  with pytest.raises(RuntimeError):                      # past config.json: everything is kept
    with setup.clean_on_early_failure(str(w)):
      (w / "tokenizer").mkdir()
      (w / "config.json").write_text("{}")
      raise RuntimeError("step 7 failed")
  assert sorted(os.listdir(w)) == ["checkpoints", "config.json", "tokenizer"]
