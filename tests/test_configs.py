"""Every shipped config builds its data pipeline and model and runs one training step, on tiny
overrides: a tiny Hugging Face folder written by transformers (with the synthetic tokenizer's
files) stands in for Qwen2.5-VL-3B / Qwen3-VL-4B, a tiny SynthStream TFDS build for the data.
The overrides change sizes only (batch, frames, sequence, steps, vocabulary chunks); the keys,
the data source and the model source are the configs' own. And every config passes the
unread-key check (train/config_check.py), which refuses keys that no code reads.

The tiny configs' own training runs are in test_train_resume.py (tiny_synthetic),
test_train_qwen3.py (tiny_synthetic_qwen3, and GRPO from it) and test_grpo_trainer.py
(tiny_synthetic_grpo); here the four paper configs train (about 2 minutes on 2 CPU cores).
"""

import dataclasses
import importlib
import pathlib
import sys

import jax
import ml_collections
import numpy as np
import pytest

from streampro_jax import judges, models
from streampro_jax.data import synthetic
from streampro_jax.data import tokenizer as tok_lib
from streampro_jax.train import config_check, grpo_trainer, sft

ROOT = pathlib.Path(__file__).resolve().parents[1]

TRAINER_CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py")
                         if p.stem not in ("__init__", "common", "demo"))
PAPER_CONFIGS = [n for n in TRAINER_CONFIGS if n.startswith("qwen")]


def _trainer(name):
  return "grpo" if name.endswith("grpo") else "sft"


def _get(name, *args):
  return importlib.import_module(f"configs.{name}").get_config(*args)


def _demo_configs():
  from configs import demo  # pylint: disable=g-import-not-at-top
  d = demo.get_config()
  return {"demo.base": (demo.base_config(d, "/data"), "sft"),
          "demo.sft": (demo.sft_config(d, "cb_stream", "/data"), "sft"),
          "demo.sft_from_base": (demo.sft_config(d, "ce", "/data", "/base_hf"), "sft"),
          "demo.grpo": (demo.grpo_config(d, "/sft", "/data"), "grpo")}


@pytest.mark.parametrize("name", TRAINER_CONFIGS)
def test_every_config_reads_every_key(name):
  args = ("/ckpt",) if name in PAPER_CONFIGS else ()
  assert config_check._config_problems(_get(name, *args), _trainer(name)) == []


def test_demo_trainer_configs_read_every_key():
  for name, (config, trainer) in _demo_configs().items():
    assert config_check._config_problems(config, trainer) == [], name


def test_unread_keys_are_errors_that_name_them():
  """Issue 16 item 2: data.tfds_name / data.tfds_data_dir / data.frame_size were read by
  nothing; now any such key stops the run, named."""
  c = _get("qwen2_5_vl_3b_sft", "/ckpt")
  c.data.tfds_name = "streampro_sft"
  c.data.frame_size = 256
  c.model.no_such_setting = True
  with pytest.raises(config_check.ConfigError) as e:
    sft.train(c, "/nonexistent/never/created")
  msg = str(e.value)
  for key in ("config.data.tfds_name", "config.data.frame_size", "config.model.no_such_setting"):
    assert key in msg, msg
  assert "tfds_dir" in msg  # ... and says which keys the reader takes.
  # A key of another data source is accepted at its unset value only.
  c = _get("qwen2_5_vl_3b_sft", "/ckpt")
  c.data.jsonl = "/data/x.jsonl"
  with pytest.raises(config_check.ConfigError, match=r"config\.data\.jsonl .* data\.source is "
                     r"'tfds'"):
    config_check.build(c, "sft")


def test_narration_answers_is_read_only_with_narration():
  from configs import demo  # pylint: disable=g-import-not-at-top
  d = demo.get_config()
  d.base.answers = True
  base = demo.base_config(d, "/data")
  assert config_check.build(base, "sft").data.narration_answers is True
  c = demo.sft_config(d, "cb_stream", "/data")      # no narration: the key is not read
  c.data.narration_answers = True
  with pytest.raises(config_check.ConfigError,
                     match=r"config\.data\.narration_answers .* data\.narration is off"):
    config_check.build(c, "sft")


def test_model_data_and_mesh_nodes_are_typed():
  """Issue 29 item 4: the model, data and mesh sections are frozen nodes of the tree that
  train/setup.py reads by attribute; the data node is the pipeline's own PipelineConfig (its
  batch_size the global batch, set from global_batch_size), the mesh node holds the resolved
  rules; data.batch_size and a misspelt key are errors naming their full path."""
  from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import pipeline_config  # pylint: disable=g-import-not-at-top
  c = _get("tiny_synthetic")
  c.global_batch_size = 6
  tree = config_check.build(c, "sft")
  assert isinstance(tree.data, pipeline_config.PipelineConfig)
  assert (tree.data.batch_size, tree.data.seq_len, tree.data.source) == (6, c.data.seq_len,
                                                                          c.data.source)
  assert tree.mesh.sizes == {"data": c.mesh.data, "fsdp": c.mesh.fsdp, "tensor": c.mesh.tensor}
  assert tree.mesh.rules == parallel.DEFAULT_RULES
  assert tree.model.family == c.model.family and tree.model.dtype == c.model.dtype
  for node in (tree.model, tree.data, tree.mesh):
    with pytest.raises(dataclasses.FrozenInstanceError):
      node.seed = 1  # type: ignore[misc]
  c.data.batch_size = 6
  with pytest.raises(config_check.ConfigError,
                     match=r"config\.data\.batch_size: .*config\.global_batch_size"):
    config_check.build(c, "sft")
  c = _get("tiny_synthetic")
  c.mesh.fsdb = 2
  with pytest.raises(config_check.ConfigError,
                     match=r"config\.mesh\.fsdb: .*nearest valid key: config\.mesh\.fsdp"):
    config_check.build(c, "sft")


def test_model_keys_come_from_the_backbone_config():
  """The model section's compute keys are the backbone Config fields that config.json does not
  carry (models.COMPUTE_KEYS, the same set for both backbones),
  with the Config's defaults."""
  fields = {f.name: f.default for f in dataclasses.fields(config_check.ModelSection)}
  assert {"dtype", "param_dtype", "attention_impl", "remat"} <= set(fields)
  assert "video_token_id" not in fields and "text" not in fields
  for family in models.BACKBONES:
    hf_keys = set(models.config_class(family)().to_hf())
    compute = {f.name for f in dataclasses.fields(models.config_class(family))
               if f.name not in ("text", "vision") and (f.name not in hf_keys or f.name == "dtype")}
    assert compute == set(models.COMPUTE_KEYS) <= set(fields), family
    assert all(fields[k] == getattr(models.config_class(family)(), k) for k in compute)


def test_the_source_can_be_switched_on_the_command_line():
  """Issue 16 item 9: --config.data.source=jsonl --config.data.jsonl=... works on the paper
  SFT config (its data section holds every source's keys)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  script = (
      "import sys\n"
      "from absl import flags\n"
      "from ml_collections import config_flags\n"
      "from streampro_jax.train import config_check\n"
      "c = config_flags.DEFINE_config_file('config', lock_config=True)\n"
      "flags.FLAGS(sys.argv)\n"
      "config_check.build(c.value, 'sft')\n"
      "print(c.value.data.source, c.value.data.jsonl)\n")
  out = subprocess.run(
      [sys.executable, "-c", script, f"--config={ROOT / 'configs' / 'qwen2_5_vl_3b_sft.py'}:/ckpt",
       "--config.data.source=jsonl", "--config.data.jsonl=/data/train.jsonl"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["jsonl", "/data/train.jsonl"]


# ------------------------------------------------------------------------------------------------
# One step of every config on tiny overrides.


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  """A prepared SynthStream TFDS builder directory (3 videos of 12 s at 32 px)."""
  from streampro_jax.data.tfds_builders import jsonl_videos, synth_stream  # pylint: disable=g-import-not-at-top
  cfg = synth_stream.SynthStreamConfig(
      name="tiny", num_videos={"train": 3},
      synth={"resolution": 32, "min_duration": 12, "max_duration": 12})
  builder = synth_stream.SynthStream(config=cfg, data_dir=str(tmp_path_factory.mktemp("tfds")),
                                     file_format="array_record")
  jsonl_videos.build(builder)
  return builder.data_dir


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  """family -> a Hugging Face folder written by transformers' save_pretrained: a tiny random
  model of that family and the synthetic tokenizer's files (with the decision tokens)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("hf")
  tokenizer = tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(),
                                                str(root / "tokenizer"))
  out = {}
  for family, hf_cls in (("qwen2_5_vl", transformers.Qwen2_5_VLForConditionalGeneration),
                         ("qwen3_vl", transformers.Qwen3VLForConditionalGeneration)):
    section = ml_collections.ConfigDict(dict(family=family, hf_checkpoint="", tiny_text={},
                                             tiny_vision={}))
    mcfg = models.config_from_section(section, tokenizer)
    torch.manual_seed(0)
    model = hf_cls(hf_cls.config_class(**mcfg.to_hf()))
    path = str(root / family)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    out[family] = path
  return out


def _tiny_overrides(c, name, tfds_dir):
  """Sizes only: 8 rows (the 8 fake devices), 16 px frames, short rows, one step."""
  c.total_steps = 1
  c.log_every_steps = 1
  c.tensorboard = False
  if c.data.source == "synth":
    c.data.num_videos = 4
  else:                           # the GRPO configs' jsonl source, switched as on a command line
    c.data.source = "tfds"
    c.data.jsonl = ""
    c.data.tfds_dir = tfds_dir
  c.data.frame_height = c.data.frame_width = 16
  c.data.max_turns = 12
  c.data.num_threads = 1
  c.data.prefetch_buffer_size = 2
  c.checkpoint.every_steps = 1
  c.checkpoint.async_save = False
  if _trainer(name) == "sft":
    c.global_batch_size = 8
    c.num_microbatches = 1
    c.data.seq_len = 640
    c.loss.chunk_size = min(int(c.loss.chunk_size), 128)
  else:
    c.global_batch_size = 2
    c.grpo.group_size = 4
    c.grpo.num_microbatches = 1
    c.rollout.max_text_tokens = 4
    c.grpo.logps_chunk_size = min(int(c.grpo.logps_chunk_size), 128)
    c.data.seq_len = 1024
    c.rollout.capacity = 0
    c.rollout.user_chunk_len = 96
  return c


def _one_step(c, name, workdir):
  if _trainer(name) == "sft":
    state = sft.train(c, workdir)
    assert int(state.step) == 1
    return
  trainer = grpo_trainer.GRPOTrainer(c, workdir, judge=judges.MatchJudge())
  metrics = trainer.train_step(0)
  assert np.isfinite(float(metrics["loss"])), metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_trains_one_step(name, tiny_hf, tiny_data, tmp_path):
  """Issue 16 item 2: the paper configs (Qwen2.5-VL-3B and Qwen3-VL-4B, SFT and GRPO) build
  their TFDS pipeline and their model from a HF folder and train one step."""
  family = "qwen3_vl" if name.startswith("qwen3") else "qwen2_5_vl"
  c = _tiny_overrides(_get(name, tiny_hf[family]), name, tiny_data)
  config_check.build(c, _trainer(name))
  _one_step(c, name, str(tmp_path / "run"))
  jax.clear_caches()


def test_keys_added_by_other_modules_are_read():
  """The keys the SFT loss (count_scope), the GRPO trainer (rubric files, presets) and the model
  (scan_layers, remat_policy) read are accepted, so a user may set them."""
  def fields(cls):
    return {f.name for f in dataclasses.fields(cls)}
  assert "count_scope" in fields(config_check.LossConfig)
  assert {"rubrics_file", "missing_rubric"} <= fields(config_check.RewardSection)
  assert "preset" in fields(config_check.GRPOSection)
  c = _get("tiny_synthetic")
  c.model.scan_layers, c.model.remat_policy = True, "dots_no_batch"
  run = config_check.build(c, "sft")
  assert (run.model.scan_layers, run.model.remat_policy) == (True, "dots_no_batch")


def test_config_files_import_no_trainer_module():
  """configs/*.py are plain data: none imports streampro_jax.train (the trainer reads them)."""
  import ast  # pylint: disable=g-import-not-at-top
  for path in sorted(pathlib.Path(ROOT, "configs").glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.startswith("streampro_jax.train") for n in names), (path.name, names)
