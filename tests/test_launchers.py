"""launch/import_data.py and launch/convert_checkpoint.py, run as subprocesses (absl flags can be
defined only once per process, and other tests load launchers that define --config too)."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_importers import STREAMO_RAW  # noqa: E402  (verbatim Streamo example entries)

TINY_CONFIG = os.path.join(ROOT, "configs", "tiny_synthetic.py")



def _assert_files_have_open_mode(folder):
  """Every file of an export is readable as open() makes files: 0666 less the umask (the
  safetensors file was left 0600)."""
  umask = os.umask(0)
  os.umask(umask)
  files = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
  assert {n: oct(os.stat(os.path.join(folder, n)).st_mode & 0o777) for n in files} == {
      n: oct(0o666 & ~umask) for n in files}

def _run(script, *args, timeout=300, **env_overrides):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
             TRANSFORMERS_OFFLINE="1", **env_overrides)
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                        capture_output=True, text=True, env=env, timeout=timeout, check=False)


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_bit_equal(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    assert fa[k].shape == fb[k].shape, k
    assert np.array_equal(fa[k], fb[k]), k


# ------------------------------------------------------------------------------------------------
# import_data.py


def test_import_data_streamo_raw(tmp_path):
  src = tmp_path / "raw_data.json"
  bad = {"video_path": "other.mp4", "question": [{"content": "q?", "time": "2"}],
         "response": [{"content": "a", "time": "4"}]}  # no task_type
  src.write_text(json.dumps(STREAMO_RAW + [bad], indent=2))
  durations = tmp_path / "durations.csv"
  durations.write_text("video,duration\nytb_ls8tmkfD7S0.mp4,12.5\n")
  out = tmp_path / "out" / "streamo.jsonl"

  # Default --on_error=fail: the bad third entry stops the import; no output is written.
  r = _run("import_data.py", "--format=streamo_raw", f"--input={src}", f"--output={out}",
           "--noprogress_bar", "--nocheck_videos")
  assert r.returncode == 1, r.stdout + r.stderr
  assert "[2].task_type" in r.stderr
  assert not out.exists() and not os.path.exists(str(out) + ".tmp")

  r = _run("import_data.py", "--format=streamo_raw", f"--input={src}", f"--output={out}",
           "--on_error=skip", f"--durations={durations}", "--noprogress_bar",
           "--nocheck_videos")
  assert r.returncode == 0, r.stdout + r.stderr
  assert "read 3 source records, wrote 1 records (2 questions, 2 answers), skipped 1" in r.stdout
  assert "skipped        1 x task_type" in r.stdout
  assert "durations_table" in r.stdout
  lines = out.read_text().splitlines()
  assert len(lines) == 1
  rec = json.loads(lines[0])
  # The two raw entries on the same video merge; Streamo question time q -> ask_time q - 1;
  # interval response (5, 6) -> {start 5, end 7} (docs/components.md#mapping-decisions); duration
  # from the table.
  # The relative path is the input's (resolved against raw_data.json's folder), written relative
  # to the output's folder, where readers resolve it.
  assert rec["video"] == os.path.join("..", STREAMO_RAW[0]["video_path"])
  assert os.path.normpath(out.parent / rec["video"]) == os.path.normpath(
      tmp_path / STREAMO_RAW[0]["video_path"])
  assert rec["duration"] == 12.5
  qs = {q["question"]: q for q in rec["questions"]}
  q1 = qs[STREAMO_RAW[0]["question"][0]["content"]]
  q2 = qs[STREAMO_RAW[1]["question"][0]["content"]]
  assert (q1["ask_time"], q2["ask_time"]) == (4.0, 2.0)
  assert q1["answers"] == [{"start": 5.0, "end": 7.0,
                            "text": STREAMO_RAW[0]["response"][0]["content"]}]
  assert q2["answers"] == [{"start": 5.0, "end": 7.0,
                            "text": STREAMO_RAW[1]["response"][0]["content"]}]
  assert {q["task"] for q in rec["questions"]} == {"EU"}

  # A missing input file or an unknown format is a failure too.
  r = _run("import_data.py", "--format=simple", f"--input={tmp_path / 'nope.csv'}",
           f"--output={tmp_path / 'x.jsonl'}")
  assert r.returncode == 2 and "nope.csv: no such file" in r.stderr
  r = _run("import_data.py", "--format=bogus", f"--input={src}", f"--output={out}")
  assert r.returncode != 0


def test_import_data_reads_durations_from_the_videos_and_warns_on_a_guess(tmp_path):
  """Issue 28: simple rows without a duration were cut at their last answer (a 12 s clip became
  5 s) without a word, and check_data then said "no problems"."""
  from streampro_jax.data import video  # pylint: disable=g-import-not-at-top
  video._encode_video(str(tmp_path / "clip.mp4"), np.zeros((96, 16, 16, 3), np.uint8), fps=8.0)
  src = tmp_path / "rows.csv"
  src.write_text("video,time,question,answer\nclip.mp4,4,What is it?,a box\n")
  out = tmp_path / "probed.jsonl"
  r = _run("import_data.py", "--format=simple", f"--input={src}", f"--output={out}",
           "--noprogress_bar")
  assert r.returncode == 0, r.stdout + r.stderr
  rec = json.loads(out.read_text())
  assert rec["duration"] == 12.0 and rec["meta"]["duration_source"] == "video_probe"  # 96 / 8 fps
  assert "WARNING" not in r.stderr
  r = _run("check_data.py", f"--input={out}")
  assert r.returncode == 0 and "0 warnings" in r.stdout, r.stdout + r.stderr

  guessed = tmp_path / "guessed.jsonl"
  r = _run("import_data.py", "--format=simple", f"--input={src}", f"--output={guessed}",
           "--noprogress_bar", "--noprobe")
  assert r.returncode == 0, r.stdout + r.stderr
  rec = json.loads(guessed.read_text())
  assert rec["duration"] == 4.0 and rec["meta"]["duration_source"] == "annotation_bound"
  assert "WARNING: 1 records give no duration" in r.stderr
  r = _run("check_data.py", f"--input={guessed}")
  assert "covers only part of the video (12.000 s)" in r.stdout, r.stdout
  assert "was guessed from the annotations" in r.stdout


# ------------------------------------------------------------------------------------------------
# convert_checkpoint.py: train workdir -> HF folder


def _write_sft_workdir(workdir, cfg):
  """A workdir as launch/train_sft.py leaves it: <workdir>/tokenizer/process_0 and orbax
  TrainState checkpoints 1 and 2 (different params) written by train/checkpoint.Checkpointer on
  a (data 8) mesh, for the training config `cfg`. Returns the params of step 2 and the
  tokenizer."""
  from streampro_jax import models, parallel  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import optim  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  tokenizer = setup_lib.make_tokenizer(cfg, workdir)
  mcfg = models.config_from_section(cfg.model, tokenizer)
  mesh = parallel.make_mesh(dict(cfg.mesh))
  tx = optim.make_optimizer(cfg.optim, 10)
  init_fn = functools.partial(models.backbone_module(mcfg).init_params, mcfg)
  state, _ = state_lib.create_train_state(init_fn, tx, mesh, jax.random.key(3))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(1, state)
  # Step 2: every parameter moved by a different amount (so a wrong step or leaf shows).
  leaves, treedef = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  moved = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  state2 = state.replace(step=state.step + 1, params=jax.tree.unflatten(treedef, moved))
  ckpt.save(2, state2)
  ckpt.close()
  return jax.device_get(nn.unbox(state2.params)), jax.device_get(nn.unbox(state.params)), tokenizer


@pytest.mark.slow
def test_convert_workdir_to_hf(tmp_path, tiny_synthetic_config):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / "sft")
  params2, params1, tokenizer = _write_sft_workdir(workdir, tiny_synthetic_config)
  out = str(tmp_path / "hf")
  r = _run("convert_checkpoint.py", f"--workdir={workdir}", f"--config={TINY_CONFIG}",
           f"--output={out}")
  assert r.returncode == 0, r.stdout + r.stderr[-4000:]
  _assert_files_have_open_mode(out)
  record = json.load(open(os.path.join(out, "streampro_conversion.json")))
  assert record["step"] == 2 and record["model_type"] == "qwen2_5_vl"
  # The training frame size travels with the export (launch/evaluate.py streams at it; issue 16
  # item 5: it used 224 px whatever the model was trained on).
  assert record["frame_height"] == record["frame_width"] == tiny_synthetic_config.data.frame_height

  # Bit-exact round trip through models.load_hf_checkpoint (newest step = step 2).
  config, loaded = models.load_hf_checkpoint(out)
  _assert_bit_equal(jax.device_get(loaded), params2)
  assert not np.array_equal(params1["embed_tokens"]["embedding"],
                            params2["embed_tokens"]["embedding"])
  assert config.text.vocab_size == params2["embed_tokens"]["embedding"].shape[0]

  # Tokenizer files with the decision tokens, same ids as the run's tokenizer.
  hf_tok, needs_resize = tok_lib.load_tokenizer(out)
  assert not needs_resize
  assert tok_lib.decision_token_ids(hf_tok) == tok_lib.decision_token_ids(tokenizer)
  assert record["decision_token_ids"] == list(tok_lib.decision_token_ids(tokenizer))
  assert len(hf_tok) == len(tokenizer)
  auto = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
  assert auto.convert_tokens_to_ids("</Silence>") == tok_lib.decision_token_ids(tokenizer)[0]

  # transformers opens it, with our weights in its layout.
  m = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
  sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
  emb = [v for k, v in sd.items() if k.endswith("embed_tokens.weight")]
  assert len(emb) == 1 and np.array_equal(emb[0], params2["embed_tokens"]["embedding"])
  assert np.array_equal(sd["lm_head.weight"], params2["lm_head"]["kernel"].T)
  assert m.config.text_config.vocab_size == config.text.vocab_size
  with torch.no_grad():
    logits = m(input_ids=torch.tensor([[1, 2, 3]])).logits
  assert logits.shape == (1, 3, config.text.vocab_size)
  assert torch.isfinite(logits).all()

  # --step picks an older checkpoint; an existing output is not overwritten silently.
  r = _run("convert_checkpoint.py", f"--workdir={workdir}", f"--config={TINY_CONFIG}",
           f"--output={out}", "--step=1")
  assert r.returncode == 1 and "--overwrite" in r.stderr
  r = _run("convert_checkpoint.py", f"--workdir={workdir}", f"--config={TINY_CONFIG}",
           f"--output={out}", "--step=1", "--overwrite", "--dtype=bfloat16")
  assert r.returncode == 0, r.stdout + r.stderr[-4000:]
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  _, loaded1 = models.load_hf_checkpoint(out, dtype=jnp.bfloat16)
  _assert_bit_equal(jax.device_get(loaded1),
                    jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16)), params1))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_synthetic", "tiny_synthetic_qwen3"])
def test_evaluate_and_stream_read_a_training_workdir(tmp_path, name):
  """A training workdir (its config.json stores tuples as JSON lists) is read by evaluate.py and
  stream.py with its own config (issue 28: both ended in "unhashable type: 'list'")."""
  import importlib  # pylint: disable=g-import-not-at-top

  from streampro_jax.data import video  # pylint: disable=g-import-not-at-top
  from streampro_jax.train import config_check  # pylint: disable=g-import-not-at-top
  cfg = importlib.import_module(f"configs.{name}").get_config()
  workdir = str(tmp_path / "sft")
  _write_sft_workdir(workdir, cfg)
  config_check.check_workdir_config(workdir, cfg)   # config.json, as launch/_common.py writes it
  r = _run("evaluate.py", "--benchmark=synthstream", f"--checkpoint={workdir}",
           f"--workdir={tmp_path / 'eval'}", "--max_videos=1", "--batch_size=1",
           "--synth_num_videos=1", "--max_text_tokens=2", "--max_turns=3", "--noprogress_bar",
           timeout=600, XLA_FLAGS="")   # one device: the launcher as a user runs it
  assert r.returncode == 0, r.stdout + r.stderr[-4000:]
  assert os.path.isfile(tmp_path / "eval" / "scores.json")
  clip = str(tmp_path / "clip.mp4")
  video._encode_video(clip, np.zeros((8, 16, 16, 3), np.uint8), fps=4)
  r = _run("stream.py", f"--checkpoint={workdir}", f"--video={clip}", "--question=What?@1",
           f"--transcript={tmp_path / 't.jsonl'}", "--max_text_tokens=2", timeout=600,
           XLA_FLAGS="")
  assert r.returncode == 0, r.stdout + r.stderr[-4000:]
  assert "2 turns over 2 s" in r.stdout


# ------------------------------------------------------------------------------------------------
# convert_checkpoint.py --hf_input: add the decision tokens, grow the embedding


def _plain_tokenizer(out_dir):
  """A word-level tokenizer with Qwen's special tokens but no decision tokens."""
  from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  words = ["<unk>", "a", "b", "c", "hello", "world", " "]
  specials = list(tok_lib._QWEN_SPECIAL_TOKENS)
  vocab = {t: i for i, t in enumerate(words + specials)}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                 pad_token="<|endoftext|>", eos_token="<|im_end|>")
  fast.save_pretrained(out_dir)
  return vocab


@pytest.mark.slow
def test_convert_hf_input_adds_decision_tokens(tmp_path):
  import transformers  # pylint: disable=g-import-not-at-top

  from streampro_jax import models  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl as q  # pylint: disable=g-import-not-at-top

  src = str(tmp_path / "hf_src")
  vocab = _plain_tokenizer(src)
  v_old = len(vocab)  # 21: the embedding has exactly the tokenizer's rows
  cfg = q.tiny_config(text=dict(vocab_size=v_old), image_token_id=vocab["<|image_pad|>"],
                      video_token_id=vocab["<|video_pad|>"],
                      vision_start_token_id=vocab["<|vision_start|>"],
                      vision_end_token_id=vocab["<|vision_end|>"])
  params = jax.device_get(nn.unbox(jax.jit(functools.partial(q.init_params, cfg))(
      jax.random.key(5))))
  q.save_hf_checkpoint(cfg, params, src)
  with open(os.path.join(src, "config.json")) as f:
    src_json = json.load(f)
  src_json["some_extra_key"] = "kept"
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(src_json, f)
  with open(os.path.join(src, "preprocessor_config.json"), "w") as f:
    json.dump({"patch_size": 4}, f)

  out = str(tmp_path / "hf_out")
  r = _run("convert_checkpoint.py", f"--hf_input={src}", f"--output={out}")
  assert r.returncode == 0, r.stdout + r.stderr[-4000:]
  _assert_files_have_open_mode(out)
  record = json.load(open(os.path.join(out, "streampro_conversion.json")))
  assert record["added_tokens"] == ["</Silence>", "</Response>"]
  assert record["vocab_size_before"] == v_old and record["vocab_size"] == 64  # 23 -> pad to 64
  assert record["decision_token_ids"] == [v_old, v_old + 1]

  config, loaded = models.load_hf_checkpoint(out)
  loaded = jax.device_get(loaded)
  assert config.text.vocab_size == 64
  emb_old = np.asarray(params["embed_tokens"]["embedding"])
  emb_new = np.asarray(loaded["embed_tokens"]["embedding"])
  assert emb_new.shape == (64, emb_old.shape[1])
  assert np.array_equal(emb_new[:v_old], emb_old)  # old rows untouched
  mean = emb_old.astype(np.float64).mean(axis=0)    # new rows: mean of the old rows
  # The float32 mean of v_old rows vs float64: gamma_{v_old} on the rows' scale, + 1 division.
  mean_tol = (tol.gamma(v_old) + tol.U32) * float(np.abs(emb_old).max())
  np.testing.assert_allclose(emb_new[v_old:], np.broadcast_to(mean, (64 - v_old, mean.size)),
                             rtol=0, atol=mean_tol)
  head_old = np.asarray(params["lm_head"]["kernel"])
  head_new = np.asarray(loaded["lm_head"]["kernel"])
  assert np.array_equal(head_new[:, :v_old], head_old)
  np.testing.assert_allclose(head_new[:, v_old:],
                             np.repeat(head_old.astype(np.float64).mean(axis=1, keepdims=True),
                                       64 - v_old, axis=1), rtol=0,
                             atol=(tol.gamma(v_old) + tol.U32) * float(np.abs(head_old).max()))
  rest_old = {k: v for k, v in params.items() if k not in ("embed_tokens", "lm_head")}
  rest_new = {k: v for k, v in loaded.items() if k not in ("embed_tokens", "lm_head")}
  _assert_bit_equal(rest_new, rest_old)

  with open(os.path.join(out, "config.json")) as f:
    out_json = json.load(f)
  assert out_json["some_extra_key"] == "kept" and out_json["text_config"]["vocab_size"] == 64
  assert os.path.exists(os.path.join(out, "preprocessor_config.json"))
  tok, needs_resize = tok_lib.load_tokenizer(out)
  assert not needs_resize and tok_lib.decision_token_ids(tok) == (v_old, v_old + 1)
  assert tok.encode("hello </Response> world", add_special_tokens=False) == \
      [vocab["hello"], v_old + 1, vocab["world"]]
  m = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
  assert m.get_input_embeddings().weight.shape == (64, emb_old.shape[1])
  assert np.array_equal(m.get_input_embeddings().weight.detach().numpy(), emb_new)


def test_convert_hf_input_without_tokenizer_files_fails(tmp_path):
  """Issue 16 item 3: a folder with weights but no tokenizer files built a 3-token tokenizer,
  put the decision tokens at ids 1 and 2 (real vocabulary rows), re-initialised them and exited
  0. Now: exit 1 naming the folder, nothing written."""
  from streampro_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  src = tmp_path / "no_tokenizer"
  src.mkdir()
  (src / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
    tok_lib.load_tokenizer(str(src))
  out = tmp_path / "out"
  r = _run("convert_checkpoint.py", f"--hf_input={src}", f"--output={out}")
  assert r.returncode == 1, r.stdout + r.stderr[-3000:]
  assert f"{src} holds no tokenizer" in r.stderr
  assert not out.exists()
