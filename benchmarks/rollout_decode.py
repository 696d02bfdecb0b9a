"""Decode throughput: our on-device message decode against transformers `generate`, same work.

Both sides start from the same one-turn prefix (`one_turn_prefix`: random text tokens around one
video turn <|vision_start|> <|video_pad|> x tokens <|vision_end|>, with random frames), the same
weights and the same number of new tokens per row, with no early stop:

  decode_throughput(model_config, params, *, rows, prefix_len, new_tokens, seed=0, ...)
    ours: one jitted prefill (kv_cache.extend(fresh=True) of the prefix with its frames into
    the empty cache: causal attention over the prefix only, as a forward; first token drawn
    from the last logits), then one jitted sampling.decode_message (lax.while_loop, [rows, 1]
    steps through the KV cache). <|im_end|> is never drawn; the length limit forces it as token
    new_tokens, so every row has exactly new_tokens tokens after new_tokens - 1 decode steps.
  hf_generate_throughput(model_config, params, *, rows, prefix_len, new_tokens, seed=0, ...)
    transformers Qwen2_5_VLForConditionalGeneration.generate(do_sample=True, use_cache=True,
    min_new_tokens = max_new_tokens = new_tokens) on a torch copy of the same params, on
    `device` (default: cuda when available), float32 or bfloat16; hf_mode "eager" (a dynamic
    cache) or "static_compiled" (a static cache and torch.compile'd decode steps, the CLI's
    default: transformers as its docs advise running it for speed).

Both return dict(tokens_per_s, seconds, ...): tokens_per_s = rows * new_tokens / seconds, where
seconds is the median over `repeats` timed calls (after one untimed call that compiles / warms
up) of prefill + decode. compare_throughput(...) -> (ours, theirs) times the two interleaved
(the CLI does, unless --skip_hf), so that the machine's load hits both alike. Ours also
reports the decode loop alone (decode_seconds, decode_step_s), the parameter bytes and, given
`hbm_bytes_per_s` (H200: 4.8e12), the bandwidth bound of a decode step: the bytes it must read
(`decode_step_bytes`, averaged over the steps) over the HBM rate, and the fraction of it reached,

  step_bytes(L) = W_dec + W_head + rows * E + 2 * layers * rows * K * D * L * c
  bound_step_s  = mean over steps s = 1 .. new_tokens - 1 of step_bytes(prefix_len + s) / HBM
  bandwidth_fraction = bound_step_s / decode_step_s

where W_dec is the decoder layers' and final norm's parameter bytes, W_head the lm_head's (the
embedding table when the embeddings are tied), rows * E the embedding rows of the fed tokens
(E = hidden * parameter itemsize), K kv heads of width D, L the tokens in the cache the step
attends to (the prefix and the tokens fed so far), c the cache's itemsize. The vision tower is
not read by a decode step, and the embedding table only at the fed tokens' rows.

Imports: jax, numpy, torch and transformers (inside the transformers functions only) and
streampro_jax.sampling / streampro_jax.models (none of grain, tensorflow_datasets, av,
ml_collections, tensorboardX).

  .venv/bin/python benchmarks/rollout_decode.py --tiny             # CPU, well under a minute
  .venv/bin/python benchmarks/rollout_decode.py --model=3b --rows=16 --new_tokens=64 \\
      --dtype=bfloat16 --hbm_bytes_per_s=4.8e12                     # Qwen2.5-VL-3B shapes
  .venv/bin/python benchmarks/rollout_decode.py --hbm_bytes_per_s=4.8e12 \\
      --rebound=benchmarks/results/rollout_decode_h200_run1.log      # a recorded run's bound
  .venv/bin/python benchmarks/rollout_decode.py --tiny --torch_threads 1 --hf_mode eager \\
      --rounds 5 --out benchmarks/results/cpu_decode_vs_transformers_eager_1thread.jsonl

The last is the CPU method (benchmarks/cpu_rounds.py, `rounds_sides`): `--rounds` (at least 5)
interleaved rounds of ours against transformers, each side's turn the median of `--repeats`
calls, the sampled tokens counted from both sides' outputs and checked equal every round, the
load average around every turn, one raw JSON-lines file.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


from streampro_jax import models
from streampro_jax import sampling
from streampro_jax.models import hf_io, kv_cache


def default_grid(model_config) -> tuple[int, int, int]:
  """One frame of 4 x 4 merged tokens: (1, 4 m, 4 m) patches with m the spatial merge size."""
  m = model_config.vision.spatial_merge_size
  return (1, 4 * m, 4 * m)


def one_turn_prefix(model_config, *, rows: int, prefix_len: int, grid=None, seed: int = 0
                    ) -> dict[str, np.ndarray]:
  """The shared prefix: text, one video turn, text; `prefix_len` tokens, the same for every row.

  Returns input_ids i32[L] (L = prefix_len), pixel_values f32[P, Dp] (P = prod(grid)),
  video_grid_thw i64[1, 3], end_id (the token forced at the length limit, a text id).
  """
  grid = tuple(default_grid(model_config) if grid is None else grid)
  m = model_config.vision.spatial_merge_size
  n_vis = int(np.prod(grid)) // (m * m)
  if prefix_len < n_vis + 4:
    raise ValueError(f"prefix_len {prefix_len} < {n_vis} visual tokens + 4")
  rng = np.random.default_rng(seed)
  special = [model_config.image_token_id, model_config.video_token_id,
             model_config.vision_start_token_id, model_config.vision_end_token_id]
  low = min(special + [model_config.text.vocab_size])
  text = rng.integers(0, low, prefix_len - n_vis - 2)
  half = len(text) // 2
  ids = np.concatenate([text[:half], [model_config.vision_start_token_id],
                        [model_config.video_token_id] * n_vis,
                        [model_config.vision_end_token_id], text[half:]]).astype(np.int32)
  pix = rng.standard_normal((int(np.prod(grid)), model_config.vision.patch_dim))
  del rows
  return dict(input_ids=ids, pixel_values=pix.astype(np.float32),
              video_grid_thw=np.asarray([grid], np.int64), end_id=int(low - 1))


def _banned(model_config, end_id: int) -> tuple[int, ...]:
  ids = {int(i) for i in (model_config.image_token_id, model_config.video_token_id,
                          model_config.vision_start_token_id, model_config.vision_end_token_id)
         if 0 <= int(i) < model_config.text.vocab_size}
  return tuple(sorted(ids | {int(end_id)}))


def make_decode_fns(model_config, *, rows: int, capacity: int, new_tokens: int, grid,
                    end_id: int, temperature: float = 1.0, top_p: float = 1.0):
  """(prefill, decode) jitted functions of our rollout path (see the module docstring).

  prefill(params, ids i32[rows, L], pos i32[3, rows, L], pix f32[rows, P, Dp], key)
    -> (first token tuple, cache); decode(params, cache, first, active, next_position, turn,
    key) -> (sampling.Message, cache) = sampling.decode_message with max_sampled = new_tokens - 1
    and <|im_end|> (end_id) banned from the draws.
  """
  draw = functools.partial(sampling.sample_tokens, temperature=float(temperature),
                   top_p=float(top_p), allowed_ids=(),
                   banned_ids=_banned(model_config, end_id))
  grid_t = tuple(tuple(int(x) for x in g) for g in np.asarray(grid).reshape(-1, 3))

  def prefill(params, ids, pos, pix, key):
    cache = kv_cache.init_cache(model_config, rows, capacity)
    logits, cache = kv_cache.extend(params, cache, ids, pos, config=model_config, turn_id=0,
                                    pixel_values=pix, video_grid_thw=grid_t, output="last",
                                    fresh=True)
    none = -jnp.ones((rows,), jnp.int32)
    tok, old, slp = draw(logits, sampling.row_keys(key, 0, 0, rows), none,
                         jnp.zeros((rows,), bool))
    return (tok, old, slp, jnp.zeros((rows,), bool)), cache

  decode = functools.partial(sampling.decode_message, model_config=model_config,
                             sampling=draw, end_id=int(end_id),
                             max_sampled=int(new_tokens) - 1)
  return jax.jit(prefill), jax.jit(decode, donate_argnums=(1,))


def _param_bytes(params) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)))


def _ours_runner(model_config, params, *, rows: int, prefix_len: int, new_tokens: int,
                 seed: int = 0, grid=None, temperature: float = 1.0):
  """run(i) -> (prefill_s, decode_s, message) of our path with the key seed + i.

  The prefill's time includes the host-side position ids (the backbone's chunk_position_ids, as
  `generate` computes its rope index inside the call) and their transfer; the token ids and
  frames are put on device once, as the transformers side builds its tensors once.
  """
  if new_tokens < 2:
    raise ValueError(f"new_tokens must be >= 2, got {new_tokens}")
  pre = one_turn_prefix(model_config, rows=rows, prefix_len=prefix_len, grid=grid, seed=seed)
  grid = pre["video_grid_thw"]
  ids_np = np.tile(pre["input_ids"][None], (rows, 1))
  positions = functools.partial(models.backbone_module(model_config).chunk_position_ids,
                                config=model_config, video_grid_thw=grid)
  pix = np.tile(pre["pixel_values"][None], (rows, 1, 1))
  capacity = -(-(prefix_len + new_tokens) // 128) * 128
  prefill, decode = make_decode_fns(model_config, rows=rows, capacity=capacity,
                                    new_tokens=new_tokens, grid=grid, end_id=pre["end_id"],
                                    temperature=temperature)
  ids, pix, active, turn = jax.device_put((ids_np, pix, np.ones((rows,), bool), np.int32(0)))
  zeros = np.zeros((rows,), np.int64)

  def run(i):
    key = jax.random.key(seed + i)
    t0 = time.perf_counter()
    pos, nxt = jax.device_put(positions(ids_np, zeros))
    first, cache = jax.block_until_ready(prefill(params, ids, pos, pix, key))
    t1 = time.perf_counter()
    msg, cache = jax.block_until_ready(decode(params, cache, first, active, nxt, turn, key))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, msg

  return run


def _check_lengths(msg, new_tokens: int) -> None:
  length = np.asarray(jax.device_get(msg.length))
  if not (length == new_tokens).all():
    raise AssertionError(f"rows decoded {sorted(set(length.tolist()))} tokens, not {new_tokens}")


def decode_step_bytes(model_config, params, *, rows: int, cache_len: int,
                      cache_itemsize: int | None = None) -> int:
  """Bytes one decode step must read from memory: the decoder's weights, the lm_head, the fed
  tokens' embedding rows and the KV cache up to `cache_len` tokens (formula in the module
  docstring). cache_itemsize: default the compute dtype's (the cache is kept in it)."""
  def nbytes(tree):
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
  t = model_config.text
  embed = params["embed_tokens"]["embedding"]
  head = embed if model_config.tie_word_embeddings else params["lm_head"]
  decoder = {k: v for k, v in params.items() if k not in ("visual", "embed_tokens", "lm_head")}
  c = cache_itemsize or jnp.dtype(model_config.compute_dtype).itemsize
  head_dim = t.hidden_size // t.num_attention_heads
  kv = 2 * t.num_hidden_layers * rows * t.num_key_value_heads * head_dim * cache_len * c
  return nbytes(decoder) + nbytes(head) + rows * embed.shape[1] * embed.dtype.itemsize + kv


def bandwidth_bound(model_config, params, *, rows: int, prefix_len: int, new_tokens: int,
                    hbm_bytes_per_s: float) -> tuple[float, float]:
  """(mean bytes read per decode step, bound_step_s) over the new_tokens - 1 decode steps."""
  steps = [decode_step_bytes(model_config, params, rows=rows, cache_len=prefix_len + s)
           for s in range(1, new_tokens)]
  mean = float(np.mean(steps))
  return mean, mean / float(hbm_bytes_per_s)


def _ours_summary(times, *, model_config, params, rows, prefix_len, new_tokens, compile_s,
                  hbm_bytes_per_s=None) -> dict:
  pre_s = float(np.median([a for a, _ in times]))
  dec_s = float(np.median([b for _, b in times]))
  tot_s = float(np.median([a + b for a, b in times]))
  out = dict(tokens_per_s=rows * new_tokens / tot_s, seconds=tot_s, prefill_seconds=pre_s,
             decode_seconds=dec_s, decode_step_s=dec_s / (new_tokens - 1),
             decode_tokens_per_s=rows * (new_tokens - 1) / dec_s,
             param_bytes=_param_bytes(params), compile_seconds=compile_s, rows=rows,
             prefix_len=prefix_len, new_tokens=new_tokens, device=str(jax.devices()[0]))
  if hbm_bytes_per_s:
    step_bytes, bound = bandwidth_bound(model_config, params, rows=rows, prefix_len=prefix_len,
                                        new_tokens=new_tokens, hbm_bytes_per_s=hbm_bytes_per_s)
    out.update(decode_step_bytes=step_bytes, bandwidth_bound_step_s=bound,
               bandwidth_fraction=bound / out["decode_step_s"])
  return out


def decode_throughput(model_config, params, *, rows: int, prefix_len: int, new_tokens: int,
                      seed: int = 0, grid=None, repeats: int = 3, temperature: float = 1.0,
                      hbm_bytes_per_s: float | None = None) -> dict:
  """Times our prefill + on-device message decode: rows x new_tokens after a one-turn prefix.

  params: the model's parameters (on device; their dtype is what the decode reads).
  Returns dict(tokens_per_s, seconds, prefill_seconds, decode_seconds, decode_step_s,
  decode_tokens_per_s, param_bytes, [decode_step_bytes, bandwidth_bound_step_s,
  bandwidth_fraction], compile_seconds, rows, prefix_len, new_tokens, device). Timings are
  medians over `repeats`; prefill_seconds includes the host-side position ids.
  """
  run = _ours_runner(model_config, params, rows=rows, prefix_len=prefix_len,
                     new_tokens=new_tokens, seed=seed, grid=grid, temperature=temperature)
  t = time.perf_counter()
  _, _, msg = run(0)
  compile_s = time.perf_counter() - t
  _check_lengths(msg, new_tokens)
  times = [run(i + 1)[:2] for i in range(repeats)]
  return _ours_summary(times, model_config=model_config, params=params, rows=rows,
                       prefix_len=prefix_len,
                       new_tokens=new_tokens, compile_s=compile_s,
                       hbm_bytes_per_s=hbm_bytes_per_s)


def _runners(model_config, params, *, rows, prefix_len, new_tokens, seed, grid, temperature,
             device, dtype, model, hf_mode):
  """(ours_run, hf_run, hf_meta): both sides' runners of the same decode work."""
  ours_run = _ours_runner(model_config, params, rows=rows, prefix_len=prefix_len,
                          new_tokens=new_tokens, seed=seed, grid=grid, temperature=temperature)
  hf_run, hf_meta = _hf_runner(model_config, params, rows=rows, prefix_len=prefix_len,
                               new_tokens=new_tokens, seed=seed, grid=grid,
                               temperature=temperature, device=device, dtype=dtype, model=model,
                               hf_mode=hf_mode)
  return ours_run, hf_run, hf_meta


def compare_throughput(model_config, params, *, rows: int, prefix_len: int, new_tokens: int,
                       seed: int = 0, grid=None, repeats: int = 5, temperature: float = 1.0,
                       device=None, dtype: str = "float32", model=None,
                       hbm_bytes_per_s: float | None = None, hf_mode: str = "eager"
                       ) -> tuple[dict, dict]:
  """(ours, transformers) as `decode_throughput` and `hf_generate_throughput` return them, timed
  interleaved: after both warm up, each of the `repeats` rounds runs ours (prefill + decode),
  then `generate` with one new token (its prefill), then `generate` with new_tokens, so that a
  change of machine load hits both sides alike. Medians over the rounds."""
  ours_run, hf_run, hf_meta = _runners(
      model_config, params, rows=rows, prefix_len=prefix_len, new_tokens=new_tokens, seed=seed,
      grid=grid, temperature=temperature, device=device, dtype=dtype, model=model,
      hf_mode=hf_mode)
  t = time.perf_counter()
  _, _, msg = ours_run(0)
  compile_s = time.perf_counter() - t
  _check_lengths(msg, new_tokens)
  hf_run(0)
  hf_run(0, 1)
  ours_t, hf_t = [], []
  for i in range(repeats):
    ours_t.append(ours_run(i + 1)[:2])
    hf_t.append((hf_run(i + 1, 1), hf_run(i + 1)))
  ours = _ours_summary(ours_t, model_config=model_config, params=params, rows=rows,
                       prefix_len=prefix_len, new_tokens=new_tokens, compile_s=compile_s,
                       hbm_bytes_per_s=hbm_bytes_per_s)
  return ours, _hf_summary(hf_t, rows=rows, prefix_len=prefix_len, new_tokens=new_tokens,
                           **hf_meta)


def rounds_sides(model_config, params, *, rows: int, prefix_len: int, new_tokens: int,
                 calls: int = 3, seed: int = 0, grid=None, temperature: float = 1.0,
                 device=None, dtype: str = "float32", model=None, hf_mode: str = "eager"):
  """The two sides of the CPU method's decode figure (benchmarks/cpu_rounds.run_rounds), each
  warmed up: [("ours", fn), ("transformers", fn)]. One call of a side's fn is one round's turn:
  `calls` timed runs of prefill + decode (transformers: `generate` with one new token, then with
  new_tokens), medians, and the work done -- rows, new tokens per row and the sampled tokens
  counted from the outputs (equal on both sides: checked every round by run_rounds)."""
  ours_run, hf_run, hf_meta = _runners(
      model_config, params, rows=rows, prefix_len=prefix_len, new_tokens=new_tokens, seed=seed,
      grid=grid, temperature=temperature, device=device, dtype=dtype, model=model,
      hf_mode=hf_mode)
  _, _, msg = ours_run(0)
  _check_lengths(msg, new_tokens)
  hf_run(0)
  hf_run(0, 1)
  state = {"ours": 0, "transformers": 0}
  work = dict(rows=rows, new_tokens_per_row=new_tokens, prefix_len=prefix_len)

  def ours():
    times, tokens = [], []
    for _ in range(calls):
      state["ours"] += 1
      pre_s, dec_s, m = ours_run(state["ours"])
      _check_lengths(m, new_tokens)
      times.append((pre_s, dec_s))
      tokens.append(int(np.asarray(jax.device_get(m.length)).sum()))
    pre = float(np.median([a for a, _ in times]))
    tot = float(np.median([a + b for a, b in times]))
    return dict(seconds=tot, prefill_seconds=pre, decode_seconds=tot - pre, calls=calls,
                tokens_per_s=rows * new_tokens / tot, sampled_tokens=tokens[-1], **work)

  def transformers():
    pres, tots, tokens = [], [], []
    for _ in range(calls):
      state["transformers"] += 1
      pres.append(hf_run(state["transformers"], 1))
      tots.append(hf_run(state["transformers"], counts=tokens))
    pre, tot = float(np.median(pres)), float(np.median(tots))
    return dict(seconds=tot, prefill_seconds=pre, decode_seconds=tot - pre, calls=calls,
                tokens_per_s=rows * new_tokens / tot, sampled_tokens=tokens[-1],
                hf_mode=hf_meta["hf_mode"], torch_threads=hf_meta["torch_threads"], **work)

  return [("ours", ours), ("transformers", transformers)]


# ------------------------------------------------------------------------------------------------
# transformers


def hf_state_dict(model_config, params) -> dict[str, np.ndarray]:
  """transformers' in-memory state dict (names of Qwen2_5_VLForConditionalGeneration) of our
  params (the unstacked per-layer layout of `hf_key_map`)."""
  key_map = models.backbone_module(model_config).hf_key_map(model_config)
  out = {}
  for key, (path, transform) in key_map.items():
    value = np.asarray(jax.device_get(hf_io.get_path(params, path)))
    if key.startswith("model."):
      key = "model.language_model." + key[len("model."):]
    elif key.startswith("visual."):
      key = "model." + key
    out[key] = hf_io.to_hf(value, transform)
  return out


def torch_model(model_config, params, *, device=None, dtype: str = "float32"):
  """transformers Qwen2_5_VLForConditionalGeneration holding our params, on `device`."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  if model_config.model_type != "qwen2_5_vl":
    raise NotImplementedError(f"transformers reference for {model_config.model_type}")
  device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  hf = transformers.Qwen2_5_VLConfig(**model_config.to_hf(), attn_implementation="sdpa")
  with torch.device("meta"):
    model = transformers.Qwen2_5_VLForConditionalGeneration(hf)
  sd = {}
  for k, v in hf_state_dict(model_config, params).items():
    if v.dtype not in (np.float32, np.float64, np.float16):   # ml_dtypes bfloat16: via float32
      v = v.astype(np.float32)
    sd[k] = torch.from_numpy(np.array(v, copy=True)).to(tdtype)
  if model_config.tie_word_embeddings:
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]
  model.load_state_dict(sd, strict=True, assign=True)
  # Non-persistent buffers (rotary inv_freq) stay on meta after assign: rebuild them.
  for _name, mod in model.named_modules():
    if hasattr(mod, "inv_freq") and mod.inv_freq.is_meta:
      if hasattr(mod, "rope_init_fn"):
        inv, _ = mod.rope_init_fn(mod.config, torch.device("cpu"))
      else:   # the vision rotary embedding: 1 / theta^(2i / dim)
        dim = mod.inv_freq.shape[0] * 2
        inv = 1.0 / (float(getattr(mod, "theta", 10000.0))
                     ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
      mod.register_buffer("inv_freq", inv, persistent=False)
      if hasattr(mod, "original_inv_freq"):
        mod.original_inv_freq = inv
  if model_config.tie_word_embeddings:
    model.tie_weights()
  return model.to(device).eval()


HF_MODES = ("eager", "static_compiled")


def _hf_generate_kwargs(hf_mode: str) -> dict:
  """`generate` arguments of a transformers decode mode: "eager" (a dynamic cache, no compile)
  or "static_compiled" (a static cache; the runner compiles the model's forward with
  torch.compile, as transformers' docs advise for fast generation, and generate's own
  automatic compile is turned off so that one compile serves both CPU and GPU)."""
  if hf_mode == "eager":
    return {}
  if hf_mode != "static_compiled":
    raise ValueError(f"hf_mode {hf_mode!r}: expected one of {HF_MODES}")
  return dict(cache_implementation="static", disable_compile=True)


def _hf_runner(model_config, params, *, rows: int, prefix_len: int, new_tokens: int,
               seed: int = 0, grid=None, temperature: float = 1.0, device=None,
               dtype: str = "float32", model=None, hf_mode: str = "eager"):
  """(run(i, n_new=new_tokens) -> seconds of one `generate` call, meta dict)."""
  import torch  # pylint: disable=g-import-not-at-top
  t = time.perf_counter()
  if model is None:
    model = torch_model(model_config, params, device=device, dtype=dtype)
  setup_s = time.perf_counter() - t
  dev = next(model.parameters()).device
  pre = one_turn_prefix(model_config, rows=rows, prefix_len=prefix_len, grid=grid, seed=seed)
  ids = torch.tensor(np.tile(pre["input_ids"][None].astype(np.int64), (rows, 1)), device=dev)
  types = torch.where(ids == model_config.video_token_id, 2, 0)
  kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types,
            pixel_values_videos=torch.tensor(np.tile(pre["pixel_values"], (rows, 1)),
                                             device=dev).to(next(model.parameters()).dtype),
            video_grid_thw=torch.tensor(np.tile(pre["video_grid_thw"], (rows, 1)), device=dev),
            second_per_grid_ts=torch.ones(rows, device=dev))
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  mode_kw = _hf_generate_kwargs(hf_mode)
  if hf_mode == "static_compiled":
    model.forward = torch.compile(model.forward, mode="reduce-overhead")

  def run(i, n_new=new_tokens, counts=None):
    torch.manual_seed(seed + i)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
      gen = model.generate(**kw, do_sample=True, temperature=float(temperature), top_k=0,
                           top_p=1.0, max_new_tokens=n_new, min_new_tokens=n_new,
                           use_cache=True, eos_token_id=None, pad_token_id=0, **mode_kw)
    sync()
    if gen.shape[1] - prefix_len != n_new:
      raise AssertionError(f"generate made {gen.shape[1] - prefix_len} tokens, not {n_new}")
    if counts is not None:   # the new tokens of every row, as generated
      counts.append(int(gen[:, prefix_len:].numel()))
    return time.perf_counter() - t0

  return run, dict(setup_seconds=setup_s, device=str(dev), dtype=dtype, hf_mode=hf_mode,
                   torch_threads=torch.get_num_threads())


def _hf_summary(times, *, rows, prefix_len, new_tokens, **meta) -> dict:
  pre_s = float(np.median([a for a, _ in times]))
  secs = float(np.median([b for _, b in times]))
  dec_s = max(secs - pre_s, 1e-9)
  return dict(tokens_per_s=rows * new_tokens / secs, seconds=secs, prefill_seconds=pre_s,
              decode_seconds=dec_s, decode_step_s=dec_s / (new_tokens - 1),
              decode_tokens_per_s=rows * (new_tokens - 1) / dec_s, rows=rows,
              prefix_len=prefix_len, new_tokens=new_tokens, **meta)


def hf_generate_throughput(model_config, params, *, rows: int, prefix_len: int,
                           new_tokens: int, seed: int = 0, grid=None, repeats: int = 3,
                           temperature: float = 1.0, device=None, dtype: str = "float32",
                           model=None, hf_mode: str = "eager") -> dict:
  """Times transformers `generate` (sampling, KV cache, exactly new_tokens per row) on a torch
  copy of `params` from the same prefix as `decode_throughput`.

  device: torch device (default cuda when available, else cpu); dtype "float32" | "bfloat16";
  hf_mode: "eager" (dynamic cache) or "static_compiled" (static cache, compiled decode steps);
  model: an already built `torch_model(...)` to reuse. Returns dict(tokens_per_s, seconds,
  prefill_seconds, decode_seconds, decode_step_s, decode_tokens_per_s, setup_seconds, rows,
  prefix_len, new_tokens, device, dtype, hf_mode, torch_threads): prefill_seconds is the median of
  `generate` with max_new_tokens = 1 (the prefix forward and the first token), decode_seconds
  = seconds - prefill_seconds (the new_tokens - 1 cached steps), as ours splits them.
  """
  run, meta = _hf_runner(model_config, params, rows=rows, prefix_len=prefix_len,
                         new_tokens=new_tokens, seed=seed, grid=grid, temperature=temperature,
                         device=device, dtype=dtype, model=model, hf_mode=hf_mode)
  run(0)
  run(0, 1)
  times = [(run(i + 1, 1), run(i + 1)) for i in range(repeats)]   # interleaved
  return _hf_summary(times, rows=rows, prefix_len=prefix_len, new_tokens=new_tokens, **meta)


# ------------------------------------------------------------------------------------------------


def tiny_model(seed: int = 0, *, dtype: str = "float32"):
  """(config, params): a random tiny Qwen2.5-VL (qwen2_5_vl.tiny_config; the demo's widths,
  vocabulary 320) for the --tiny path."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl  # pylint: disable=g-import-not-at-top
  cfg = qwen2_5_vl.tiny_config(text=dict(vocab_size=320, intermediate_size=192),
                               attention_impl="xla", dtype=dtype)
  params = nn.unbox(jax.jit(functools.partial(qwen2_5_vl.init_params, cfg))(
      jax.random.key(seed)))
  return cfg, params


def qwen2_5_vl_3b(seed: int = 0, *, dtype: str = "bfloat16", attention_impl: str = "jax",
                  layers: int = 0, scan_layers: bool = False, abstract: bool = False):
  """(config, params): the Qwen2.5-VL-3B architecture (the config defaults), random weights in
  `dtype` (parameters and compute); layers > 0: only that many decoder layers and vision blocks
  (a smoke test of the path on CPU); abstract: jax.ShapeDtypeStruct leaves, no weights."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import qwen2_5_vl  # pylint: disable=g-import-not-at-top
  cfg = qwen2_5_vl.Qwen2_5_VLConfig(dtype=dtype, param_dtype=dtype,
                                    attention_impl=attention_impl, scan_layers=scan_layers)
  if layers:
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, num_hidden_layers=layers),
                      vision=dataclasses.replace(cfg.vision, depth=layers,
                                                 fullatt_block_indexes=(layers - 1,)))
  init = functools.partial(qwen2_5_vl.init_params, cfg)
  if abstract:  # shapes and dtypes only (the bandwidth bound needs nothing else)
    return cfg, nn.unbox(jax.eval_shape(init, jax.random.key(seed)))
  params = nn.unbox(jax.jit(init)(jax.random.key(seed)))
  return cfg, params


def rebound(raw_log: str, *, hbm_bytes_per_s: float) -> dict:
  """The bandwidth bound of a recorded 3B run (the `ours: {...}` line of its log), recomputed with
  `bandwidth_bound` on the abstract 3B parameters: the run's decode_step_s is kept as measured."""
  import ast  # pylint: disable=g-import-not-at-top
  with open(raw_log) as f:
    line = next(l for l in f if l.startswith("ours: "))
  ours = ast.literal_eval(line[len("ours: "):])
  cfg, params = qwen2_5_vl_3b(abstract=True)
  step_bytes, bound = bandwidth_bound(cfg, params, rows=ours["rows"], prefix_len=ours["prefix_len"],
                                      new_tokens=ours["new_tokens"],
                                      hbm_bytes_per_s=hbm_bytes_per_s)
  return dict(raw_log=raw_log, rows=ours["rows"], prefix_len=ours["prefix_len"],
              new_tokens=ours["new_tokens"], decode_step_s=ours["decode_step_s"],
              hbm_bytes_per_s=hbm_bytes_per_s, all_param_bytes=ours["param_bytes"],
              decode_step_bytes=step_bytes, bandwidth_bound_step_s=bound,
              bandwidth_fraction=bound / ours["decode_step_s"],
              old_bandwidth_fraction=ours.get("bandwidth_fraction"))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="tiny random model on CPU (the default)")
  p.add_argument("--model", choices=("tiny", "3b"), default="tiny")
  p.add_argument("--rows", type=int, default=8)
  p.add_argument("--prefix_len", type=int, default=0, help="0: 275 (tiny) / 512 (3b)")
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="", help="float32 | bfloat16 (default: f32 tiny, bf16 3b)")
  p.add_argument("--hbm_bytes_per_s", type=float, default=0.0)
  p.add_argument("--skip_hf", action="store_true")
  p.add_argument("--hf_mode", choices=HF_MODES, default="static_compiled",
                 help="transformers' decode: a static cache with compiled steps (as its docs "
                      "advise for speed) or eager with a dynamic cache")
  p.add_argument("--attention_impl", default="jax", help="3b: jax | cudnn | xla")
  p.add_argument("--layers", type=int, default=0, help="3b: keep only this many layers (smoke)")
  p.add_argument("--scan_layers", action="store_true", help="3b: scanned layer stacks")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch.set_num_threads for the transformers side (0: torch's default); "
                      "set it to the cores XLA uses for a like-for-like CPU comparison")
  p.add_argument("--rounds", type=int, default=0,
                 help="the CPU method (benchmarks/cpu_rounds.py): this many interleaved rounds "
                      "(at least 5) of ours against transformers, `--repeats` calls a side per "
                      "round, written to --out as one raw JSON-lines file (0: the one-shot "
                      "comparison)")
  p.add_argument("--out", default="", help="with --rounds: the raw JSON-lines file")
  p.add_argument("--rebound", default="",
                 help="a recorded 3B run's log: recompute its bandwidth bound (no model run), "
                      "print it as one JSON line")
  args = p.parse_args()
  if args.rebound:
    import json  # pylint: disable=g-import-not-at-top
    print(json.dumps(rebound(args.rebound, hbm_bytes_per_s=args.hbm_bytes_per_s or 4.8e12)))
    return
  if args.torch_threads and not args.skip_hf:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.torch_threads)
  model = "tiny" if args.tiny else args.model
  dtype = args.dtype or ("float32" if model == "tiny" else "bfloat16")
  cfg, params = (tiny_model(dtype=dtype) if model == "tiny" else qwen2_5_vl_3b(
      dtype=dtype, attention_impl=args.attention_impl, layers=args.layers,
      scan_layers=args.scan_layers))
  prefix_len = args.prefix_len or (275 if model == "tiny" else 512)
  kw = dict(rows=args.rows, prefix_len=prefix_len, new_tokens=args.new_tokens,
            repeats=args.repeats)
  print(f"devices: {jax.devices()}  model {model} {dtype}  load {os.getloadavg()}", flush=True)
  if args.skip_hf:
    ours = decode_throughput(cfg, params, hbm_bytes_per_s=args.hbm_bytes_per_s or None, **kw)
    print(f"ours: {ours}", flush=True)
    return
  hf_cfg, hf_params = cfg, params
  if cfg.scan_layers:  # the torch copy is built from the unrolled layout
    hf_cfg, hf_params = cfg.replace(scan_layers=False), models.unscan_params(params)
  hf = torch_model(hf_cfg, hf_params, dtype=dtype)
  del hf_params
  if args.rounds:
    import cpu_rounds  # pylint: disable=g-import-not-at-top  (benchmarks/cpu_rounds.py)
    import torch  # pylint: disable=g-import-not-at-top
    if not args.out:
      p.error("--rounds needs --out")
    sides = rounds_sides(cfg, params, rows=args.rows, prefix_len=prefix_len,
                         new_tokens=args.new_tokens, calls=args.repeats, dtype=dtype, model=hf,
                         hf_mode=args.hf_mode)
    cpu_rounds.run_rounds(
        f"decode_vs_transformers_{args.hf_mode}_torch_threads_{torch.get_num_threads()}",
        sides, rounds=args.rounds, out=args.out,
        work_keys=("rows", "new_tokens_per_row", "prefix_len", "sampled_tokens"),
        extra=dict(model=model, dtype=dtype, hf_mode=args.hf_mode,
                   torch_threads=torch.get_num_threads(),
                   devices=[str(d) for d in jax.devices()]))
    return
  ours, theirs = compare_throughput(cfg, params, dtype=dtype, model=hf,   # interleaved
                                    hbm_bytes_per_s=args.hbm_bytes_per_s or None,
                                    hf_mode=args.hf_mode, **kw)
  print(f"ours: {ours}", flush=True)
  print(f"transformers: {theirs}")
  print(f"ratio ours / transformers (tokens/s, prefill + decode): "
        f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x; prefill only "
        f"{theirs['prefill_seconds'] / ours['prefill_seconds']:.2f}x; decode only "
        f"{ours['decode_tokens_per_s'] / theirs['decode_tokens_per_s']:.2f}x  "
        f"(interleaved, {args.repeats} rounds; load {os.getloadavg()})")


if __name__ == "__main__":
  main()
