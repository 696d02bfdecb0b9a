"""HF checkpoint I/O: bit-exact round trips, sharded placement, and transformers interop."""

import functools
import json
import os

import numpy as np
import torch
import transformers

import flax.linen as nn
import jax
import jax.numpy as jnp

from streampro_jax import models
from streampro_jax import parallel
from streampro_jax.models import hf_io
from streampro_jax.models import qwen2_5_vl as q

from helpers import tolerances as tol  # pylint: disable=g-bad-import-order

# The hub config.json of Qwen/Qwen2.5-VL-3B-Instruct (flat text keys, rope_scaling).
HUB_3B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 128000,
    "max_window_layers": 70, "model_type": "qwen2_5_vl", "num_attention_heads": 16,
    "num_hidden_layers": 36, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
                      "intermediate_size": 3420, "num_heads": 16, "in_chans": 3,
                      "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
                      "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                      "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 151936,
}


def random_params(cfg, seed=0):
  return nn.unbox(q.init_params(cfg, jax.random.key(seed)))


def leaves_equal(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (p, x), (_, y) in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape, p
    np.testing.assert_array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))


def test_config_from_hub_flat_layout_matches_transformers():
  cfg = q.Qwen2_5_VLConfig.from_hf(HUB_3B)
  ref = transformers.Qwen2_5_VLConfig(**HUB_3B)
  t, rt = cfg.text, ref.text_config
  for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "rms_norm_eps"):
    assert getattr(t, k) == getattr(rt, k), k
  assert t.rope_theta == rt.rope_parameters["rope_theta"] == 1e6
  assert list(t.mrope_section) == rt.rope_parameters["mrope_section"] == [16, 24, 24]
  v, rv = cfg.vision, ref.vision_config
  for k in ("depth", "hidden_size", "intermediate_size", "num_heads", "patch_size",
            "window_size", "out_hidden_size", "tokens_per_second", "temporal_patch_size"):
    assert getattr(v, k) == getattr(rv, k), k
  assert list(v.fullatt_block_indexes) == list(rv.fullatt_block_indexes)
  assert cfg.tie_word_embeddings and ref.tie_word_embeddings
  # to_hf -> from_hf is the identity, and transformers reads our to_hf().
  assert q.Qwen2_5_VLConfig.from_hf(cfg.to_hf()) == cfg
  again = transformers.Qwen2_5_VLConfig(**cfg.to_hf())
  assert again.text_config.num_key_value_heads == 2 and again.tie_word_embeddings


def test_round_trip_bit_exact_float32_sharded_and_bfloat16(tmp_path):
  cfg = q.tiny_config()
  params = random_params(cfg)
  # Several shards: the index file must be written and read.
  q.save_hf_checkpoint(cfg, params, str(tmp_path / "f32"), max_shard_bytes=60_000)
  files = os.listdir(tmp_path / "f32")
  assert hf_io._INDEX_NAME in files and sum(f.endswith(".safetensors") for f in files) > 2
  cfg2, loaded = q.load_hf_checkpoint(str(tmp_path / "f32"), jnp.float32)
  assert cfg2 == cfg
  leaves_equal(params, loaded)
  # bfloat16 parameters, single file.
  pb = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  q.save_hf_checkpoint(cfg, pb, str(tmp_path / "bf16"))
  assert "model.safetensors" in os.listdir(tmp_path / "bf16")
  # Issue 28: the weights are readable as open() makes files (safetensors left them 0600).
  umask = os.umask(0)
  os.umask(umask)
  for folder in ("f32", "bf16"):
    for name in os.listdir(tmp_path / folder):
      assert os.stat(tmp_path / folder / name).st_mode & 0o777 == 0o666 & ~umask, name
  cfg3, loaded_b = models.load_hf_checkpoint(str(tmp_path / "bf16"), jnp.bfloat16)
  assert cfg3.param_dtype == "bfloat16"
  leaves_equal(pb, loaded_b)


def test_load_places_each_tensor_with_its_sharding(tmp_path):
  cfg = q.tiny_config()
  params = random_params(cfg, seed=1)
  q.save_hf_checkpoint(cfg, params, str(tmp_path))
  mesh = parallel.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  boxed = jax.eval_shape(functools.partial(q.init_params, cfg), jax.random.key(0))
  shardings = parallel.logical_shardings(boxed, mesh)
  _, loaded = q.load_hf_checkpoint(str(tmp_path), jnp.float32, shardings=shardings)
  leaves_equal(params, loaded)
  k = loaded["layers_0"]["mlp"]["gate_proj"]["kernel"]  # ('embed', 'mlp') -> (fsdp, tensor)
  assert k.sharding == shardings["layers_0"]["mlp"]["gate_proj"]["kernel"]
  assert k.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert len(k.addressable_shards) == 8 and k.addressable_shards[0].data.shape == (32, 32)


def test_transformers_loads_our_checkpoint_and_logits_agree(tmp_path):
  for tie in (False, True):
    cfg = q.tiny_config(tie_word_embeddings=tie)
    params = jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim == 2 else x,
                                    random_params(cfg, seed=2))
    path = str(tmp_path / f"tie{tie}")
    q.save_hf_checkpoint(cfg, params, path, max_shard_bytes=100_000)
    with open(os.path.join(path, "config.json")) as f:
      assert json.load(f)["model_type"] == "qwen2_5_vl"
    m = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, attn_implementation="eager").eval()
    if tie:
      assert m.lm_head.weight.data_ptr() == m.model.language_model.embed_tokens.weight.data_ptr()
    inp = q.synthetic_inputs(cfg, [(2, 4, 6)], batch=1, seed=1)
    ids = inp["input_ids"]
    with torch.no_grad():
      ref = m(input_ids=torch.tensor(ids, dtype=torch.long),
              pixel_values_videos=torch.tensor(inp["pixel_values_videos"]),
              video_grid_thw=torch.tensor(inp["video_grid_thw"]),
              second_per_grid_ts=torch.tensor(inp["second_per_grid_ts"]),
              mm_token_type_ids=torch.tensor(np.where(ids == cfg.video_token_id, 2, 0))
              ).logits.numpy()
    pos = q.host_position_ids(cfg, ids, inp["video_grid_thw"])
    ours = jax.jit(functools.partial(
        q.Qwen2_5_VL(cfg).apply, video_grid_thw=inp["video_grid_thw"]))(
            {"params": params}, ids, pixel_values_videos=inp["pixel_values_videos"],
            position_ids=pos)
    scale = np.abs(ref).max()
    assert scale > 1.0
    # Two summation orders (torch vs XLA) over the logits' chain of reductions, worst case
    # (tests/helpers/tolerances.py): vision over a 4 x 6 frame, text over the prompt.
    tol.assert_within(np.abs(np.asarray(ours) - ref).max(),
                      tol.model_rel(cfg, ids.shape[1], vision_seq=24) * scale,
                      "hf_io: transformers from_pretrained of our checkpoint")
