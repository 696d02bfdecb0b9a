"""Checkpointer: state + data iterator round trip, restore onto another mesh, keep-N, metrics IO."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import portpicker
import pytest

from streampro_jax import parallel
from streampro_jax.train import checkpoint as ckpt_lib
from streampro_jax.train import metrics as metrics_lib
from streampro_jax.train import config_check, optim
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

import multiprocess_run  # pylint: disable=g-bad-import-order
from helpers import checkpoint_model  # pylint: disable=g-bad-import-order
from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# Values here are host-side float64 arithmetic (Python floats) of a few dozen operations on
# values of order one, compared with hand-computed references: tol.approx64, rel and abs
# gamma_64 in float64 (7e-15) (tests/helpers/tolerances.py).


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                     ("embed", "mlp")), (8, 16))
    v = self.param("visual", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                          ("vision_patch", "vision_embed")), (4, 8))
    return x @ v @ w


def _init(rng):
  return Tiny().init(rng, jnp.ones((2, 4)))["params"]


TX = optim.make_optimizer(ml_collections.ConfigDict(dict(lr=1e-2, warmup_steps=0,
                                                         frozen="^visual")), total_steps=10)


def _mesh(shape):
  n = int(np.prod(list(shape.values())))
  return parallel.make_mesh(shape, devices=jax.devices()[:n])


def _pipeline_iterator(tmp_path, tiny_sft_config):
  # The data of the tiny SFT config (tests/conftest.py); the model section only shapes the rows
  # (the default tiny Qwen2.5-VL).
  cfg = tiny_sft_config(
      2, model=dict(family="qwen2_5_vl", hf_checkpoint="", dtype="float32", tiny_text={},
                    tiny_vision={}),
      num_videos=6, seq_len=384, max_turns=6, prefetch_buffer_size=2)
  tokenizer = setup_lib.make_tokenizer(cfg, str(tmp_path))
  mcfg = setup_lib.make_model_config(cfg.model, tokenizer)
  data = config_check.build(cfg, "sft").data
  return lambda: setup_lib.make_data(data, tokenizer, mcfg)[0]


def test_roundtrip_onto_other_mesh_with_data_iterator(tmp_path, tiny_sft_config):
  make_iter = _pipeline_iterator(tmp_path, tiny_sft_config)
  mesh8 = _mesh({"data": 2, "fsdp": 2, "tensor": 2})
  state, _ = state_lib.create_train_state(_init, TX, mesh8, jax.random.key(0))
  state = state.replace(step=state.step + 7)
  it = make_iter()
  next(it)
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=2, every_steps=1)
  ckpt.save(7, state, it)
  expected_next = next(it)  # The iterator may move on while the save is in flight.
  ckpt.close()

  mesh_other = _mesh({"data": 1, "fsdp": 4, "tensor": 2})
  boxed = jax.eval_shape(_init, jax.random.key(0))
  shardings = state_lib.state_shardings(TX, boxed, mesh_other)
  fresh = make_iter()
  ckpt = ckpt_lib.Checkpointer(tmp_path / "ckpt", keep=2, every_steps=1)
  assert ckpt.latest_step() == 7
  restored = ckpt.restore(7, state_lib.abstract_state(TX, boxed), shardings, fresh)
  assert int(restored.step) == 7
  w = restored.params["w"]
  assert w.sharding == shardings.params["w"]
  assert w.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  np.testing.assert_array_equal(np.asarray(w), np.asarray(state.params["w"]))
  for a, b in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  got_next = next(fresh)
  assert jax.tree.structure(got_next) == jax.tree.structure(expected_next)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(got_next),
                               jax.tree.leaves(expected_next)):
    np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))
  ckpt.close()


def test_maybe_save_every_and_keep(tmp_path):
  mesh = _mesh({"data": 1})
  state, _ = state_lib.create_train_state(_init, TX, mesh, jax.random.key(0))
  ckpt = ckpt_lib.Checkpointer(tmp_path / "c", keep=2, every_steps=3)
  saved = [s for s in range(1, 11) if ckpt.maybe_save(s, state, last_step=10)]
  ckpt.close()
  assert saved == [3, 6, 9, 10]
  assert ckpt_lib.Checkpointer(tmp_path / "c").all_steps() == [9, 10]
  with pytest.raises(FileNotFoundError, match="no data iterator state"):
    boxed = jax.eval_shape(_init, jax.random.key(0))
    ckpt_lib.Checkpointer(tmp_path / "c").restore(
        10, state_lib.abstract_state(TX, boxed), state_lib.state_shardings(TX, boxed, mesh),
        data_iterator=object())


def test_metric_writers(tmp_path):
  writer = metrics_lib.create_writer(str(tmp_path), total_steps=10)
  writer.write_scalars(1, {"loss": 2.5, "steps_per_sec": 4.0, "eta_s": 2.25})
  writer.write_scalars(2, {"loss": 2.0})
  writer.close()
  assert metrics_lib.read_jsonl(tmp_path / "metrics.jsonl") == {
      1: {"loss": 2.5, "steps_per_sec": 4.0, "eta_s": 2.25}, 2: {"loss": 2.0}}
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
  progress = metrics_lib.Progress(total_steps=100, start_step=0)
  progress.update(10, now=0.0)
  rates = progress.update(30, now=4.0)
  assert rates["steps_per_sec"] == tol.approx64(5.0) and rates["eta_s"] == tol.approx64(14.0)
  assert metrics_lib._format_duration(3723) == "1h02m03s"


class _CountingIterator:
  """A data iterator whose state is one number."""

  def __init__(self, n=0):
    self.n = n

  def get_state(self):
    return {"n": self.n}

  def set_state(self, state):
    self.n = state["n"]


def test_resume_skips_an_empty_step_folder_and_says_so(tmp_path, caplog):
  """Issue 16 item 8: an empty checkpoints/50 (a crash between creating it and writing) is set
  aside; the newest complete checkpoint is restored, and step 50 can be saved again."""
  mesh = _mesh({"data": 1})
  state, _ = state_lib.create_train_state(_init, TX, mesh, jax.random.key(0))
  ckpt = ckpt_lib.Checkpointer(tmp_path / "c", every_steps=1)
  ckpt.save(40, state, _CountingIterator(40))
  ckpt.close()
  (tmp_path / "c" / "50").mkdir()
  (tmp_path / "c" / "60" / "state").mkdir(parents=True)   # started, never finalised

  with caplog.at_level("WARNING"):
    ckpt = ckpt_lib.Checkpointer(tmp_path / "c", every_steps=1)
  assert ckpt.latest_step() == 40
  assert [s for s, _ in ckpt.set_aside] == [50, 60]
  assert "checkpoint 50" in caplog.text and "incomplete" in caplog.text
  boxed = jax.eval_shape(_init, jax.random.key(0))
  it = _CountingIterator()
  restored = ckpt.restore(40, state_lib.abstract_state(TX, boxed),
                          state_lib.state_shardings(TX, boxed, mesh), it)
  assert int(restored.step) == int(state.step) and it.n == 40
  assert ckpt.save(50, state, _CountingIterator(50))
  ckpt.close()
  assert ckpt_lib.Checkpointer(tmp_path / "c").all_steps() == [40, 50]
  assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
      "40", "50", "incomplete_50", "incomplete_60"]


def test_orbax_info_records_are_filtered_from_the_launchers_log():
  """Issue 16 item 9: 311 log lines for a 16-step run, most of them orbax INFO."""
  import logging
  f = ckpt_lib._OrbaxInfoFilter()

  def rec(path, level):
    return logging.LogRecord("absl", level, path, 1, "m", None, None)
  site = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not f.filter(rec(site, logging.INFO))
  assert f.filter(rec(site, logging.WARNING))
  assert f.filter(rec("/repo/streampro_jax/train/sft.py", logging.INFO))
  ckpt_lib.quiet_orbax_info()
  ckpt_lib.quiet_orbax_info()
  from absl import logging as absl_logging
  assert sum(isinstance(x, ckpt_lib._OrbaxInfoFilter)
             for x in absl_logging.get_absl_handler().filters) == 1


def test_resume_falls_back_past_an_unreadable_checkpoint(tmp_path, caplog):
  """Issue 28: the newest checkpoint has its commit markers but its array files are gone; resume
  logs which step and why, moves it to unreadable_<step> and restores the previous one."""
  import shutil
  mesh = _mesh({"data": 1})
  state, _ = state_lib.create_train_state(_init, TX, mesh, jax.random.key(0))
  ckpt = ckpt_lib.Checkpointer(tmp_path / "c", every_steps=1)
  ckpt.save(40, state, _CountingIterator(40))
  ckpt.save(50, state.replace(step=state.step + 10), _CountingIterator(50))
  ckpt.close()
  state_dir = tmp_path / "c" / "50" / "state"
  arrays = [p for p in state_dir.iterdir() if p.is_dir() or p.name.startswith("manifest")]
  assert arrays, sorted(p.name for p in state_dir.iterdir())
  for p in arrays:   # the array data; _CHECKPOINT_METADATA and state/_METADATA stay
    shutil.rmtree(p) if p.is_dir() else p.unlink()
  assert ckpt_lib.is_complete(tmp_path / "c" / "50")

  ckpt = ckpt_lib.Checkpointer(tmp_path / "c", every_steps=1)
  boxed = jax.eval_shape(_init, jax.random.key(0))
  it = _CountingIterator()
  with caplog.at_level("WARNING"):
    restored, step = ckpt.restore_newest(state_lib.abstract_state(TX, boxed),
                                         state_lib.state_shardings(TX, boxed, mesh), it)
  assert step == 40 and int(restored.step) == int(state.step) and it.n == 40
  assert "checkpoint 50" in caplog.text and "cannot be read" in caplog.text
  assert "unreadable" in ckpt_lib.skipped_note(ckpt)
  ckpt.close()
  assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["40", "unreadable_50"]


def test_metrics_jsonl_marks_a_resume(tmp_path):
  """Issue 28: a resumed run's repeated steps follow a marker line naming the step it resumed
  from; read_jsonl keeps the last record per step and skips the marker."""
  import json
  writer = metrics_lib.create_writer(str(tmp_path), total_steps=10, tensorboard=False)
  for step in (1, 2, 3):
    writer.write_scalars(step, {"loss": float(step)})
  writer.close()
  writer = metrics_lib.create_writer(str(tmp_path), total_steps=10, tensorboard=False,
                                     start_step=2)   # killed after step 3, checkpoint at 2
  writer.write_scalars(3, {"loss": 30.0})
  writer.close()
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [x.get("step") for x in lines] == [1, 2, 3, None, 3]
  assert lines[3]["resumed_from_step"] == 2 and "time" in lines[3]
  assert metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")[3] == {"loss": 30.0}
  disabled = metrics_lib.create_writer(str(tmp_path), total_steps=10, enabled=False,
                                       tensorboard=False)   # another process: no marker
  disabled.close()
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5


# ------------------------------------------------------------------------------------------------
# Restore onto another mesh shape, device count or process count: the same bits.


def _bits(x):
  """The bytes of an array (a scalar as a 1-element array): equal bytes, equal bits."""
  return np.ascontiguousarray(np.atleast_1d(np.asarray(x))).view(np.uint8)


def _assert_same_bits(restored, expected):
  """Every leaf of two TrainStates equal to the bit (NaN-free float32 arrays and the step)."""
  got = jax.tree_util.tree_leaves_with_path(restored)
  want = jax.tree_util.tree_leaves(expected)
  assert len(got) == len(want)
  for (path, a), b in zip(got, want):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("target", [{"fsdp": 4}, {"tensor": 4}, {"data": 2, "tensor": 2}],
                         ids=["8fsdp-4fsdp", "8fsdp-4tensor", "8fsdp-2data2tensor"])
def test_restore_onto_fewer_devices_and_other_axes_is_bit_exact(tmp_path, target):
  state, _ = checkpoint_model.stepped_state(_mesh({"fsdp": 8}))
  assert state.params["w"].sharding.spec[0] == "fsdp"     # [16, 32] split over 8 devices
  assert {s.data.shape for s in state.params["w"].addressable_shards} == {(2, 32)}
  ckpt = ckpt_lib.Checkpointer(tmp_path / "c", every_steps=1)
  ckpt.save(1, state)
  ckpt.close()

  mesh = _mesh(target)
  abstract, shardings = checkpoint_model.abstract_and_shardings(mesh)
  restored = ckpt_lib.Checkpointer(tmp_path / "c").restore(1, abstract, shardings)
  w = restored.params["w"]
  assert w.sharding == shardings.params["w"] and len(w.sharding.device_set) == 4
  if "tensor" in target:   # the mlp axis now split over tensor, the embed axis whole
    assert w.sharding.spec[1] == "tensor"
    assert {s.data.shape for s in w.addressable_shards} == {(16, 32 // target["tensor"])}
  _assert_same_bits(restored, state)
  # A non-vacuous comparison: the step moved the parameters and the Adam moments are not zero.
  mu = [x for x in jax.tree.leaves(restored.opt_state) if np.ndim(x) == 2]
  assert mu and all(np.abs(np.asarray(m)).max() > 0 for m in mu)


@pytest.mark.slow
def test_two_process_checkpoint_restores_in_one_process_bit_exact(tmp_path):
  """Saved by two processes joined on loopback (fsdp 4 over 2 x 2 CPU devices), restored by this
  one process onto a (fsdp 2, tensor 2) mesh: every leaf equals the shards the two processes
  held, to the bit."""
  port = portpicker.pick_unused_port()
  worker = os.path.join(os.path.dirname(__file__), "helpers", "two_process_checkpoint_worker.py")
  outs = [str(tmp_path / f"shards{pid}.npz") for pid in range(2)]
  multiprocess_run.run_workers(
      [[worker, str(port), str(pid), str(tmp_path / "c"), outs[pid]] for pid in range(2)],
      timeout=300)
  # The saved arrays, assembled from both processes' shards.
  saved = {}
  for out in outs:
    with np.load(out) as z:
      for name in z.files:
        key, i, part = name.split("|")
        if part != "data":
          continue
        shape = tuple(z[f"{key}|{i}|shape"])
        full = saved.setdefault(key, np.full(shape, np.nan, z[name].dtype)
                                if z[name].dtype.kind == "f" else np.zeros(shape, z[name].dtype))
        sl = tuple(slice(a, b) for a, b in z[f"{key}|{i}|index"])
        full[sl] = z[name]
  mesh = _mesh({"fsdp": 2, "tensor": 2})
  abstract, shardings = checkpoint_model.abstract_and_shardings(mesh)
  restored = ckpt_lib.Checkpointer(tmp_path / "c").restore(1, abstract, shardings)
  leaves = jax.tree_util.tree_leaves_with_path(restored)
  assert sorted(jax.tree_util.keystr(p) for p, _ in leaves) == sorted(saved)
  for path, leaf in leaves:
    want = saved[jax.tree_util.keystr(path)]
    assert not (want.dtype.kind == "f" and np.isnan(want).any())   # every element was held
    np.testing.assert_array_equal(_bits(leaf), _bits(want), err_msg=jax.tree_util.keystr(path))
  assert int(restored.step) == 1
  # The data position was saved per process: resuming it in one process stops with the counts
  # named, and leaves the checkpoint where it is (not set aside as unreadable).
  ckpt = ckpt_lib.Checkpointer(tmp_path / "c")
  with pytest.raises(ckpt_lib.ProcessCountError,
                     match=r"written by 2 process\(es\); this run has 1"):
    ckpt.restore_newest(abstract, shardings, _CountingIterator())
  assert ckpt.all_steps() == [1] and ckpt_lib.is_complete(tmp_path / "c" / "1")
  ckpt.close()
