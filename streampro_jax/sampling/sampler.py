"""Streaming sampler: B samples x G rollouts (N = B * G rows) generated in lockstep, turn by turn.

Public face (docs/rollouts.md): a `StreamingSampler` holds the jitted functions of one model and
settings; its state between turns is a `SamplerState` pytree.

  state = sampler.init_state(params, num_prompts=B, group_size=G, capacity=..., user_chunk_len=...)
  state, out = sampler.step_turn(params, state, frames_bpd, user_text)   # one second, every row
  batch = sampler.sample(params, prompts, group_size=G, seed=...)        # whole rollouts

`init_state` writes the pinned system prefix (``<|im_start|>system\\n...<|im_end|>\\n``) into a
KV cache of N rows (models/kv_cache.py, sliding window of `window_turns` turns, default 200):
the prefix is the same for every row, so it is prefilled once, on one row, and copied to the N
rows. `step_turn` runs turn k on every row:
  1. extend every row with its user chunk
       [<|im_end|> "\\n" of the previous assistant message]        (turns k >= 1, see 3.)
       <|im_start|>user\\n[{question}\\n]<ks-(k+1)s>\\n<|vision_start|>{pads}<|vision_end|><|im_end|>\\n
       <|im_start|>assistant\\n
     with that second's frames: the vision tower runs once per sample (B rows of patches) and
     its tokens are repeated to the sample's G rows;
  2. sample the assistant message from the last logits: the decision token first, then (after
     </Response>) text tokens until <|im_end|> or `max_text_tokens`. The message is decoded on
     device (`decode.decode_message`: one jitted lax.while_loop over [N, 1] steps through the
     cache, a per-row chunk_mask so that rows that have finished feed nothing); the host reads
     the turn's messages once, after the loop, and parses them (`TurnOutput`).
  3. the final <|im_end|> of a message is not fed by a step of its own: it opens the next turn's
     user chunk together with the "\\n" of the chat format (one forward less per turn). For the
     sliding window those two tokens belong to turn k + 1 (they are evicted one turn after the
     rest of turn k) [choice]; without eviction the logits are exactly those of one full forward.
`sample` runs `init_state` and `step_turn` over the turns of B `StreamPrompt`s and lays the
rows out as a `RolloutBatch` (the teacher-forcing layout a GRPO step takes).

Compilation: three jitted functions with fixed shapes: the pinned prefix (one row, copied to
N), the user chunk and the message decode (a while loop of [N, 1] steps). The user chunk has two
buckets (rows padded with chunk_mask = 0): [N, C_user] for turns that carry a question (the
longest chunk) and a small one [N, C_small] for the turns whose chunks all fit it (time label,
frames, header: most turns of a stream), so a stream of K turns with one question runs K - 1
small chunks. Each is compiled once per sampler; `compile_counts()` gives {"prefix": 1,
"user": 2, "decode": 1} after a call that used both buckets.

Sampling (per row, inside the jitted functions): temperature 0 -> argmax; otherwise softmax of
logits / temperature restricted to the top-p nucleus (the smallest set of most likely tokens whose
probability reaches top_p; the most likely token is always kept). Randomness: a row's draw at
(turn k, step s) uses fold_in(fold_in(fold_in(key(seed), k), s), row), so a run is deterministic
for a seed.

Forced tokens (not sampled, loss_mask 0, `forced_mask` 1): <|im_end|> after `max_text_tokens`
text tokens; with `constrain_decision` (off by default) <|im_end|> right after </Silence>; the
</Response> decision on turns listed in `StreamPrompt.force_response_turns` (used to ask a
multiple-choice question at its time).

Log-probs returned (aligned with labels: entry t scores labels[t] = input_ids[t + 1]):
  old_logps[t]      = log softmax(logits_t / T')[labels[t]] with T' = temperature when it is > 0
                      and 1 for greedy decoding. This is the policy log-prob that a GRPO trainer
                      recomputes with losses.token_logps(..., temperature=T'); it ignores top-p and
                      the decision constraint. At temperature 1 and top_p 1 it IS the log-prob
                      under the sampling distribution.
  sampling_logps[t] = log-prob under the distribution actually sampled from (tempered, top-p and
                      constraint applied); 0 for greedy and for forced tokens.
Both are 0 on non-assistant positions; they are also filled on forced positions (old_logps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from streampro_jax import losses, models, prompts
from streampro_jax.data import batch as batch_lib
from streampro_jax.data import chat_format
from streampro_jax.models import common, kv_cache
from streampro_jax.sampling import decode, formats

__all__ = ["FORCED_TOKEN", "PROMPT_TOKEN", "RolloutBatch", "SAMPLED_TOKEN", "SamplerConfig",
           "SamplerState", "StreamingSampler", "TurnOutput", "sampler_step_fns",
           "teacher_forced_logps"]

# Token kinds of a recorded row (PROMPT_TOKEN: fed; SAMPLED_TOKEN / FORCED_TOKEN: the message).
PROMPT_TOKEN = 0
SAMPLED_TOKEN = 1
FORCED_TOKEN = 2


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Settings of the streaming sampler.

  Attributes:
    temperature: sampling temperature; 0 means greedy (argmax).
    top_p: nucleus mass in (0, 1]; 1 disables the filter.
    max_text_tokens: text tokens after the decision token before <|im_end|> is forced.
    window_turns: sliding window of the KV cache in turns (docs/method.md: 200).
    constrain_decision: sample the first token among {</Silence>, </Response>} only and force
      <|im_end|> after </Silence> (off: every token is sampled from the whole vocabulary, so a
      message can be invalid, which R_fmt measures).
    user_chunk_len: bucket C_user of the user chunks (0: the longest chunk of the call rounded
      up to `chunk_multiple`; set it to keep one compilation across calls of different data).
    chunk_multiple: rounding of the automatic buckets.
    small_chunk_len: the small user-chunk bucket C_small, used on the turns where every row's
      chunk fits it (0: the question-free chunk of the call's longest time label rounded up to
      `chunk_multiple`; set it to keep one compilation across calls; < 0: off, every turn is
      padded to C_user). Ignored when it is not below C_user.
    capacity: KV-cache slots per row (0: enough for the window, computed per call from the
      number of turns and rounded up to `capacity_multiple`; set it to keep one compilation).
    capacity_multiple: rounding of the automatic capacity.
    pad_multiple: the returned sequences are right-padded to a multiple of this.
  """
  temperature: float = 1.0
  top_p: float = 1.0
  max_text_tokens: int = 32
  window_turns: int = 200
  constrain_decision: bool = False
  user_chunk_len: int = 0
  chunk_multiple: int = 32
  small_chunk_len: int = 0
  capacity: int = 0
  capacity_multiple: int = 256
  pad_multiple: int = 64

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.max_text_tokens < 1:
      raise ValueError(f"max_text_tokens must be >= 1, got {self.max_text_tokens}")
    if self.window_turns < 1:
      raise ValueError(f"window_turns must be >= 1, got {self.window_turns}")

  @property
  def max_message_tokens(self) -> int:
    """Decision + text + <|im_end|>."""
    return self.max_text_tokens + 2


@dataclasses.dataclass
class RolloutBatch:
  """N = B * G rollouts in the teacher-forcing layout (docs/architecture.md#shared-interfaces).

  Rows b * G .. b * G + G - 1 are the G rollouts of sample b (groups contiguous, as
  grpo.group_advantages expects). T is padded to a multiple of `pad_multiple` (or `seq_len`).

  Attributes:
    input_ids: i32[N, T] system prefix, then per turn the user message and the assistant message
      (header, decision, text, <|im_end|>, "\\n"); pad id after the end.
    labels: i32[N, T] labels[t] = input_ids[t + 1] (pad id at the end).
    loss_mask: f32[N, T] 1 where labels[t] is a SAMPLED assistant token (decision, text,
      <|im_end|>); 0 on forced tokens, prompt tokens and padding.
    forced_mask: f32[N, T] 1 where labels[t] is a forced assistant token.
    decision_class: i32[N, T] 1 where labels[t] is a sampled </Silence>, 2 a sampled </Response>.
    attention_mask: i32[N, T] 1 on real tokens.
    position_ids: i32[3, N, T] the M-RoPE positions used while sampling (= get_rope_index of the
      row; 0 on padding).
    pixel_values_videos: f32[N, K*P, D] each row's turn patches (zeros after its last turn).
    video_grid_thw: i64[K, 3] the grid of each of the K turns (the same for every row).
    old_logps: f32[N, T] see the module docstring (aligned with labels).
    sampling_logps: f32[N, T] see the module docstring.
    turn_index: i32[N, T] turn of each token (-1 for the system prefix and padding).
    decisions: i32[N, K] per turn SILENCE 0 / RESPONSE 1 / INVALID 2 (NO_TURN -1 after the row's
      last turn).
    texts: [N][K_row] the response text of each turn ("" unless RESPONSE).
    messages: [N][K_row] each assistant message decoded with special tokens, <|im_end|> stripped
      (the input of rewards.format_inputs / predictions_from_messages).
    num_turns: i32[N] K of each row.
    lengths: i32[N] real tokens per row.
    sample_index: i32[N] the sample b of each row (row // G).
    group_size: G.
    sample_ids: [B] StreamPrompt.sample_id of each sample.
    overflow: bool[N] the KV cache overflowed (capacity too small; results are then wrong).
  """
  input_ids: np.ndarray
  labels: np.ndarray
  loss_mask: np.ndarray
  forced_mask: np.ndarray
  decision_class: np.ndarray
  attention_mask: np.ndarray
  position_ids: np.ndarray
  pixel_values_videos: np.ndarray
  video_grid_thw: np.ndarray
  old_logps: np.ndarray
  sampling_logps: np.ndarray
  turn_index: np.ndarray
  decisions: np.ndarray
  texts: list[list[str]]
  messages: list[list[str]]
  num_turns: np.ndarray
  lengths: np.ndarray
  sample_index: np.ndarray
  group_size: int
  sample_ids: list[str]
  overflow: np.ndarray

  def predictions(self, row: int) -> list[tuple[float, str]]:
    """[(Y = k + 1, text)] of the row's RESPONSE turns (the StreamPro-F1 / R_turn input)."""
    return [(float(k + 1), self.texts[row][k]) for k in range(int(self.num_turns[row]))
            if self.decisions[row, k] == formats.TURN_RESPONSE]

  def as_batch(self) -> batch_lib.Batch:
    """The rollouts as the Batch a GRPO step takes: the model inputs and old_logps (the host-side
    extras stay here; the rewards are added by the scorer's caller)."""
    return batch_lib.Batch(
        input_ids=self.input_ids, labels=self.labels, loss_mask=self.loss_mask,
        attention_mask=self.attention_mask, position_ids=self.position_ids,
        pixel_values_videos=self.pixel_values_videos, old_logps=self.old_logps)


@dataclasses.dataclass
class _Row:
  """Host-side record of one row: lists of per-chunk NumPy arrays, concatenated at the end."""
  ids: list = dataclasses.field(default_factory=list)        # i32[n] per chunk
  pos: list = dataclasses.field(default_factory=list)        # i32[3, n] per chunk
  logp: list = dataclasses.field(default_factory=list)       # log-prob of each token
  slogp: list = dataclasses.field(default_factory=list)
  kind: list = dataclasses.field(default_factory=list)       # PROMPT / SAMPLED / FORCED
  turn: list = dataclasses.field(default_factory=list)

  def add(self, ids, pos_3n, turn, kind=PROMPT_TOKEN, logp=None, slogp=None):
    ids = np.asarray(ids, np.int32).reshape(-1)
    n = ids.shape[0]
    self.ids.append(ids)
    self.pos.append(np.asarray(pos_3n, np.int32).reshape(3, n))
    self.kind.append(np.broadcast_to(np.asarray(kind, np.int32), (n,)))
    self.turn.append(np.full((n,), turn, np.int32))
    self.logp.append(np.zeros((n,), np.float32) if logp is None else np.asarray(logp, np.float32))
    self.slogp.append(np.zeros((n,), np.float32) if slogp is None
                      else np.asarray(slogp, np.float32))

  def __len__(self) -> int:
    return sum(x.shape[0] for x in self.ids)

  def arrays(self) -> dict[str, np.ndarray]:
    return {"ids": np.concatenate(self.ids), "pos": np.concatenate(self.pos, axis=1),
            "kind": np.concatenate(self.kind), "turn": np.concatenate(self.turn),
            "logp": np.concatenate(self.logp), "slogp": np.concatenate(self.slogp)}


@flax.struct.dataclass
class SamplerState:
  """The N = B * G streams between two turns (a pytree; rows b * G .. b * G + G - 1 are the G
  streams of sample b). Every per-row array has the row axis first, except the KV cache's
  scanned k / v stacks, which are [L, N, K, cap, H] (models/kv_cache.py).

  Attributes:
    cache: the KV cache of the N rows (device arrays; models/kv_cache.KVCache).
    next_position: i64[N] (host) the M-RoPE position of each row's next fed token.
    had_message: bool[N] (host) the row owes the "<|im_end|>\\n" that closes its last message to
      its next user chunk.
    key: the PRNG key of the run (replicated over the mesh across processes).
    next_turn: (static) the turn after the last one run; turns must increase.
    group_size: (static) G.
    user_chunk_len: (static) C_user, the largest user-chunk bucket of the run.
  """
  cache: kv_cache.KVCache
  next_position: np.ndarray
  had_message: np.ndarray
  key: Any
  next_turn: int = flax.struct.field(pytree_node=False, default=0)
  group_size: int = flax.struct.field(pytree_node=False, default=1)
  user_chunk_len: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def num_rows(self) -> int:
    return int(self.next_position.shape[0])


@dataclasses.dataclass(frozen=True)
class TurnOutput:
  """What one turn produced on the N rows (host arrays; C the turn's bucket, M =
  max_text_tokens + 2).

  Attributes:
    turn: k.
    active: bool[N] rows that ran this turn (the others fed nothing and have no message).
    chunk_ids: i32[N, C] each row's user chunk (real tokens first, pad id after).
    chunk_mask: i32[N, C] 1 on the chunk's real tokens.
    chunk_positions: i32[3, N, C] their M-RoPE positions.
    closes_previous: bool[N] the chunk opens with the "<|im_end|>" + "\\n" that close the row's
      previous message (the "\\n" belongs to turn k - 1 in the layout).
    message_start: i32[N] the position of the message's first token (text token i of the
      message sits at message_start + i on all three M-RoPE axes).
    tokens: i32[N, M] the message tokens, the final <|im_end|> included (0 past `lengths`).
    old_logps, sampling_logps: f32[N, M] their log-probs (see the module docstring).
    forced: bool[N, M] the token was forced.
    lengths: i32[N] tokens of each message (0 on inactive rows).
    decisions: i32[N] TURN_SILENCE / TURN_RESPONSE / TURN_INVALID (NO_TURN on inactive rows).
    texts: [N] the response text ("" unless TURN_RESPONSE or inactive).
    messages: [N] the message decoded with special tokens, <|im_end|> stripped ("" inactive).
    overflow: bool[N] the KV cache has overwritten a live slot (results are then wrong).
  """
  turn: int
  active: np.ndarray
  chunk_ids: np.ndarray
  chunk_mask: np.ndarray
  chunk_positions: np.ndarray
  closes_previous: np.ndarray
  message_start: np.ndarray
  tokens: np.ndarray
  old_logps: np.ndarray
  sampling_logps: np.ndarray
  forced: np.ndarray
  lengths: np.ndarray
  decisions: np.ndarray
  texts: list[str]
  messages: list[str]
  overflow: np.ndarray


def sampler_step_fns(model_config, cfg: SamplerConfig, video_grid: Sequence[int], *,
                     im_end_id: int, silence_id: int | None, response_id: int | None,
                     vision_token_ids: Sequence[int]) -> tuple[Callable, Callable]:
  """The sampler's user-chunk and decode step functions, un-jitted (StreamingSampler jits each
  with the cache donated; train/aot.py compiles them for a TPU topology).

  user_fn(params, cache, ids i32[N, C], pos i32[3, N, C], turn i32[], mask i32[N, C],
  pix f32[B, P, Dp], key, force i32[N], restrict bool[N]) -> ((token, old_logp, sampling_logp,
  forced) each [N], cache): the prefill of a turn's user chunk with its frames (vision tower on
  the B samples, features repeated G = N / B times) and the message's first token.
  decode_fn(params, cache, first, active, next_position, turn, key) -> (Message, cache):
  `decode.decode_message` with these settings.
  """
  mcfg = model_config
  grid = np.asarray([tuple(video_grid)], np.int64)
  sampling = functools.partial(
      decode.sample_tokens, temperature=float(cfg.temperature), top_p=float(cfg.top_p),
      allowed_ids=((int(silence_id), int(response_id)) if cfg.constrain_decision else ()),
      banned_ids=tuple(vision_token_ids))
  module = models.build(mcfg)
  encode_vision = type(module).encode_vision

  def user_fn(params, cache, ids, pos, turn, mask, pix_bpd, key, force, restrict):
    n = ids.shape[0]
    # The backbone's visual features: one array (Qwen2.5-VL) or (merged, deepstack tuple)
    # (Qwen3-VL), each leaf [B, P/4, D], computed once per sample and repeated to its G rows.
    feats = module.apply({"params": params}, pix_bpd, grid, method=encode_vision)
    reps = n // pix_bpd.shape[0]
    feats = jax.tree.map(lambda x: jnp.repeat(x, reps, axis=0), feats)
    logits, cache = kv_cache.extend(params, cache, ids, pos, config=mcfg, turn_id=turn,
                                    chunk_mask=mask, output="last",
                                    model_kwargs={"video_embeds": feats})
    tok, old, slp = sampling(logits, decode.row_keys(key, turn, 0, n), force, restrict)
    return (tok, old, slp, force >= 0), cache

  decode_fn = functools.partial(
      decode.decode_message, model_config=mcfg, sampling=sampling, end_id=int(im_end_id),
      max_sampled=cfg.max_text_tokens + 1,
      silence_id=(int(silence_id) if cfg.constrain_decision else -1))
  return user_fn, decode_fn


class StreamingSampler:
  """Samples B x G streaming rollouts with a KV cache (see the module docstring).

  Args:
    model_config: a backbone config (qwen2_5_vl.Qwen2_5_VLConfig or qwen3_vl.Qwen3_VLConfig; its
      special ids must be the tokenizer's).
    prompt_format: formats.StreamProFormat (default when a ChatFormat is given) or
      formats.WaitPromptFormat.
    config: SamplerConfig.
    video_grid: the grid (1, gh, gw) of one turn.
    mesh: None (the jitted functions take host arrays; the live page, the evaluation harness)
      or the training mesh (GRPOTrainer, one process or many): every process calls `sample`
      with its own prompts (the same number B on each, and the same group size, seed and turn
      count max), its rows become one global batch split over the mesh's (data, fsdp) devices
      in process order (global row = process * N + local row, parallel.rows_to_global): the KV
      cache (rows on dim 1 of the scanned [L, N, ...] k / v stacks, dim 0 elsewhere), the
      chunk, the frames and every per-row input and output are sharded by row; every jitted
      step runs once over the global batch with the parameters in the rules' layout, and each
      process reads back only its own rows (parallel.rows_to_local). The draws depend on the
      global row, so the rollouts equal one process sampling all prompts in process order with
      the same seed. `sample` pads B to a multiple of `row_multiple()` and drops the padding;
      `init_state` raises a ValueError for a B that does not split.
    rules: the logical-axis rules of the activation and KV-cache layouts under the mesh
      (parallel.DEFAULT_RULES when None; GRPOTrainer passes config.mesh.rules).
  """

  def __init__(self, model_config, prompt_format, config: SamplerConfig | None = None, *,
               video_grid: Sequence[int], mesh=None, rules=None):
    if isinstance(prompt_format, chat_format.ChatFormat):
      prompt_format = formats.StreamProFormat(prompt_format)
    self.model_config = model_config
    self.mesh = mesh
    self.rules = rules
    self.backbone = models.backbone_module(model_config)
    self.fmt = prompt_format
    self.cfg = config or SamplerConfig()
    self.grid = tuple(int(g) for g in video_grid)
    if len(self.grid) != 3 or self.grid[0] != 1:
      raise ValueError(f"video_grid must be (1, gh, gw), got {self.grid}")
    m = model_config.vision.spatial_merge_size
    self.patches_per_turn = self.grid[1] * self.grid[2]
    self.tokens_per_turn = self.patches_per_turn // (m * m)
    tok = prompt_format.tokenizer
    enc = lambda s: list(tok.encode(s, add_special_tokens=False))
    self.im_end_id = enc(prompts.IM_END)[0]
    self.newline_ids = enc("\n")
    self.pad_id = enc(prompts.PAD)[0]
    vocab = tok.get_vocab()
    self.silence_id = vocab.get(prompts.SILENCE_TOKEN)
    self.response_id = vocab.get(prompts.RESPONSE_TOKEN)
    if self.cfg.constrain_decision and (self.silence_id is None or self.response_id is None):
      raise ValueError("constrain_decision needs a tokenizer with </Silence> and </Response>")
    # Vision placeholders are never sampled (see decode.sample_tokens).
    self.vision_token_ids = tuple(sorted({
        int(i) for i in (getattr(model_config, name, None) for name in (
            "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"))
        if i is not None and 0 <= int(i) < model_config.text.vocab_size}))
    self.system_ids = np.asarray(prompt_format.system_ids(), np.int32)
    self.header_ids = np.asarray(prompt_format.header_ids(), np.int32)
    self.repeat_question = bool(getattr(prompt_format, "repeat_question", False))
    self._traces = {"prefix": 0, "user": 0, "decode": 0}
    self._build_fns()

  # -- jitted functions --------------------------------------------------------------------------

  def _build_fns(self):
    mcfg = self.model_config
    user_step, decode_step = sampler_step_fns(
        mcfg, self.cfg, self.grid, im_end_id=self.im_end_id, silence_id=self.silence_id,
        response_id=self.response_id, vision_token_ids=self.vision_token_ids)
    traces = self._traces
    ids1 = self.system_ids[None]
    mask1 = np.ones_like(ids1)
    pos1, _ = self._prefix_positions()
    window = self.cfg.window_turns

    def pin_fn(params, n, capacity):
      # One row holds the prefix; its slots are copied to the n rows (every row's prefix is
      # the same tokens at the same positions).
      traces["prefix"] += 1
      one = kv_cache.init_cache(mcfg, 1, capacity, window_turns=window)
      _, one = kv_cache.extend(params, one, ids1, pos1, config=mcfg, turn_id=0,
                               chunk_mask=mask1, pin=True, output="hidden", fresh=True)
      # Scanned k / v stacks are [L, 1, K, cap, H] (rows on dim 1); the other leaves rows first.
      return jax.tree.map(
          lambda x: jnp.broadcast_to(x, x.shape[:1] + (n,) + x.shape[2:]) if x.ndim == 5
          else jnp.broadcast_to(x, (n,) + x.shape[1:]), one)

    def user_fn(*args):
      traces["user"] += 1
      return user_step(*args)

    def decode_fn(*args):
      traces["decode"] += 1
      return decode_step(*args)

    self._pin_fn = pin_fn
    self._pin = jax.jit(pin_fn, static_argnums=(1, 2))
    self._pin_sharded = {}
    self._user = jax.jit(user_fn, donate_argnums=(1,))
    self._decode = jax.jit(decode_fn, donate_argnums=(1,))

  def compile_counts(self) -> dict[str, int]:
    """Traces (= compilations) of each jitted function (1 each after any number of calls of
    one set of shapes)."""
    return dict(self._traces)

  # -- rows on the mesh --------------------------------------------------------------------------

  def _layouts(self):
    """The mesh and logical-axis rules in scope while the jitted steps trace (the activation and
    KV-cache constraints of parallel.constrain); nothing without a mesh."""
    if self.mesh is None:
      return contextlib.nullcontext()
    from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(
        tuple(parallel.DEFAULT_RULES if self.rules is None else self.rules)))
    return stack

  def row_multiple(self) -> int:
    """The row shards of this process (the mesh's data x fsdp devices over the processes; 1
    without a mesh): its prompt count B, hence its N = B x G rows, must be a multiple of it."""
    if self.mesh is None:
      return 1
    return max(1, self.mesh.shape["data"] * self.mesh.shape["fsdp"] // jax.process_count())

  def _global(self, tree, row_dims=0):
    """Host row arrays -> the jitted functions' inputs (global arrays when sampling across
    processes, else unchanged)."""
    if self.mesh is None:
      return tree
    from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
    return parallel.rows_to_global(tree, self.mesh, row_dims)

  def _local(self, tree):
    """Device outputs with rows on dim 0 -> this process's rows as NumPy."""
    if self.mesh is None:
      return jax.device_get(tree)
    from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
    return parallel.rows_to_local(tree, self.mesh)

  def _key(self, seed: int):
    """The PRNG key of a call (replicated over the whole mesh across processes)."""
    if self.mesh is None:
      return jax.random.key(seed)
    return jax.jit(lambda: jax.random.key(seed), out_shardings=jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec()))()

  def _prefix_positions(self) -> tuple[np.ndarray, np.ndarray]:
    """(positions i32[3, 1, S], next position [1]) of the pinned system prefix of one row."""
    ids = self.system_ids[None]
    return self.backbone.chunk_position_ids(ids, np.zeros((1,), np.int64),
                                            config=self.model_config,
                                            chunk_mask=np.ones_like(ids))

  def _prefix_cache(self, params, n: int, capacity: int) -> kv_cache.KVCache:
    """A cache of n rows holding the pinned prefix (this process's rows of a global cache across
    processes)."""
    if self.mesh is None:
      return self._pin(params, n, capacity)
    from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
    n_global = n * jax.process_count()
    key = (n_global, capacity)
    if key not in self._pin_sharded:
      shapes = jax.eval_shape(lambda: kv_cache.init_cache(
          self.model_config, n_global, capacity, window_turns=self.cfg.window_turns))
      # Scanned k / v stacks are [L, B, K, cap, H] (rows on dim 1); every other leaf rows first.
      shard = jax.tree.map(lambda x: jax.sharding.NamedSharding(
          self.mesh, parallel.row_spec(x.ndim, 1 if x.ndim == 5 else 0)), shapes)
      self._pin_sharded[key] = jax.jit(self._pin_fn, static_argnums=(1, 2),
                                       out_shardings=shard)
    with self._layouts():
      return self._pin_sharded[key](params, n_global, capacity)

  # -- sizes -------------------------------------------------------------------------------------

  def turn_chunk_len(self, turn: int, question: str | None, *, after_message: bool = True
                     ) -> int:
    """Tokens of turn `turn`'s user chunk with that question text: the "<|im_end|>\\n" closing
    the previous message (after_message), the user message and the assistant header."""
    lead = 1 + len(self.newline_ids) if after_message else 0
    return lead + len(self.fmt.user_ids(int(turn), question)) + len(self.header_ids)

  def question_at(self, prompt: formats.StreamPrompt, turn: int) -> str | None:
    """The question text turn `turn` of a prompt shows: on its ask turn, and on every later turn
    for formats that repeat it (`repeat_question`)."""
    asked = turn == prompt.ask_turn or (self.repeat_question and turn > prompt.ask_turn)
    return prompt.question if (prompt.question is not None and asked) else None

  def user_chunk_len_for(self, prompts: Sequence[formats.StreamPrompt]) -> int:
    """The bucket C_user these prompts need (the longest user chunk, rounded up)."""
    need = 0
    for p in prompts:
      last = max(p.num_turns - 1, 0)   # the longest time label
      need = max(need, self.turn_chunk_len(last, None))
      if p.question is not None:
        need = max(need, self.turn_chunk_len(last, p.question))
    return self.cfg.user_chunk_len or common.round_up(need, self.cfg.chunk_multiple)

  def small_chunk_len_for(self, prompts: Sequence[formats.StreamPrompt],
                          user_chunk_len: int) -> int:
    """The small bucket C_small for these prompts (0 when off or not below C_user)."""
    small = self.cfg.small_chunk_len
    if small < 0:
      return 0
    if not small:
      last = max(max(p.num_turns for p in prompts) - 1, 0)
      small = common.round_up(self.turn_chunk_len(last, None), self.cfg.chunk_multiple)
    return small if small < user_chunk_len else 0

  def capacity_for(self, num_turns: int, user_chunk_len: int) -> int:
    """Cache slots for a stream of `num_turns` turns: prefix + window turns + one chunk."""
    if self.cfg.capacity:
      return self.cfg.capacity
    per_turn = user_chunk_len + self.cfg.max_message_tokens
    turns = min(int(num_turns), self.cfg.window_turns)
    return common.round_up(len(self.system_ids) + turns * per_turn + user_chunk_len,
                           self.cfg.capacity_multiple)

  def capacity_for_prompts(self, prompts: Sequence[formats.StreamPrompt],
                           user_chunk_len: int) -> int:
    """Cache slots these prompts need: the exact real-token count of the longest stream.

    The cache advances by real tokens only (padding slots are reused, kv_cache module), so a row
    needs the pinned prefix, the real tokens of the turns in its window (lead "<|im_end|>\\n",
    user message, assistant header, at most `max_message_tokens` fed message tokens per turn)
    and one padded chunk of slack; rounded up to `capacity_multiple`. Tighter than
    `capacity_for`, which assumes every user chunk fills its bucket although the question is
    asked on one turn only.
    """
    if self.cfg.capacity:
      return self.cfg.capacity
    need = 0
    for p in prompts:
      per_turn = [self.turn_chunk_len(k, self.question_at(p, k)) + self.cfg.max_message_tokens
                  for k in range(p.num_turns)]
      if per_turn:   # the most tokens any `window_turns` consecutive turns hold
        w = min(len(per_turn), self.cfg.window_turns)
        c = np.concatenate([[0], np.cumsum(per_turn)])
        need = max(need, int((c[w:] - c[:-w]).max()))
    return common.round_up(len(self.system_ids) + need + int(user_chunk_len),
                           self.cfg.capacity_multiple)

  # -- the streaming state -----------------------------------------------------------------------

  def init_state(self, params, num_prompts: int, group_size: int = 1, *,
                 capacity: int | None = None, user_chunk_len: int | None = None,
                 seed: int = 0) -> SamplerState:
    """The state of B = num_prompts samples x G = group_size rows after the pinned prefix.

    capacity: KV-cache slots per row (default SamplerConfig.capacity); user_chunk_len: the
    largest user-chunk bucket C_user of the run (default SamplerConfig.user_chunk_len); seed:
    the PRNG seed of every draw of the run.
    """
    capacity = int(self.cfg.capacity if capacity is None else capacity)
    c_user = int(self.cfg.user_chunk_len if user_chunk_len is None else user_chunk_len)
    if capacity <= 0 or c_user <= 0:
      raise ValueError(f"init_state needs capacity > 0 and user_chunk_len > 0 (arguments or "
                       f"SamplerConfig), got {capacity} and {c_user}")
    g = int(group_size)
    if num_prompts < 1 or g < 1:
      raise ValueError(f"need >= 1 prompt and group_size >= 1, got {num_prompts} prompts, "
                       f"G = {g}")
    m = self.row_multiple()
    if num_prompts % m:
      raise ValueError(f"init_state: {num_prompts} prompts on this process do not split over its "
                       f"{m} row shards of the mesh (data x fsdp); pad the prompts to a multiple "
                       f"of {m} (sample() does)")
    n = int(num_prompts) * g
    _, nxt = self._prefix_positions()
    return SamplerState(cache=self._prefix_cache(params, n, capacity),
                        next_position=np.full((n,), int(nxt[0]), np.int64),
                        had_message=np.zeros((n,), bool), key=self._key(int(seed)),
                        next_turn=0, group_size=g, user_chunk_len=c_user)

  def step_turn(self, params, state: SamplerState, frames, user_text=None, *,
                turn: int | None = None, active=None, force_response=None,
                chunk_len: int | None = None) -> tuple[SamplerState, TurnOutput]:
    """Runs one second of video on every row: the user chunk with its frames, then the message.

    Args:
      params: model parameters.
      state: the SamplerState after the previous turn (or init_state).
      frames: f32[B, P, D] this second's patches of each sample (models.process_turns), shared
        by the sample's G rows; rows of inactive samples are ignored.
      user_text: None, or one text for every sample, or B entries (str or None): the question
        text the turn's user message shows (`question_at` gives a prompt's).
      turn: the turn id k (default state.next_turn; a later one skips seconds: time labels and
        the sliding window count turn ids).
      active: bool[B] samples that have this turn (default all).
      force_response: bool[B] force </Response> as the decision token of the sample's rows.
      chunk_len: the turn's user-chunk bucket C (default state.user_chunk_len).

    Returns:
      (the state after the turn, TurnOutput).
    """
    k = state.next_turn if turn is None else int(turn)
    if k < state.next_turn:
      raise ValueError(f"turn {k} comes after turn {state.next_turn - 1}; turns must increase")
    n, g = state.num_rows, state.group_size
    b = n // g
    frames = np.asarray(frames, np.float32)
    if frames.shape[:2] != (b, self.patches_per_turn) or frames.ndim != 3:
      raise ValueError(f"frames of shape {frames.shape}; expected [{b}, {self.patches_per_turn}, "
                       f"D] (B samples, grid {self.grid})")
    if user_text is None or isinstance(user_text, str):
      user_text = [user_text] * b
    if len(user_text) != b:
      raise ValueError(f"user_text has {len(user_text)} entries for {b} samples")
    active_b = np.ones((b,), bool) if active is None else np.asarray(active, bool)
    force_b = np.zeros((b,), bool) if force_response is None else np.asarray(force_response,
                                                                             bool)
    c = int(state.user_chunk_len if chunk_len is None else chunk_len)
    active_n = np.repeat(active_b, g)
    if (force_b & active_b).any() and self.response_id is None:
      raise ValueError("force_response needs a tokenizer with </Response>")

    # The user chunks (host).
    ids = np.full((n, c), self.pad_id, np.int32)
    mask = np.zeros((n, c), np.int32)
    force = np.where(np.repeat(force_b, g) & active_n, self.response_id or -1, -1).astype(np.int32)
    lead = np.asarray([self.im_end_id] + self.newline_ids, np.int32)
    body = {i: np.concatenate([self.fmt.user_ids(k, user_text[i]), self.header_ids]).astype(
        np.int32) for i in np.nonzero(active_b)[0]}
    for r in np.nonzero(active_n)[0]:
      chunk = np.concatenate([lead, body[r // g]]) if state.had_message[r] else body[r // g]
      if len(chunk) > c:
        raise ValueError(f"turn {k}: the user chunk of row {r} has {len(chunk)} tokens, more "
                         f"than the turn's bucket {c}")
      ids[r, :len(chunk)] = chunk
      mask[r, :len(chunk)] = 1
    pos, nxt = self.backbone.chunk_position_ids(
        ids, state.next_position, config=self.model_config,
        video_grid_thw=np.asarray([self.grid], np.int64), chunk_mask=mask)
    start = np.where(active_n, nxt, state.next_position).astype(np.int32)
    pix = np.where(active_b[:, None, None], frames, 0.0).astype(np.float32)

    # The device: the chunk and the first token, then the rest of the message.
    restrict = active_n & bool(self.cfg.constrain_decision)
    g_ids, g_pos, g_mask, g_pix, g_force, g_restrict = self._global(
        (ids, pos, mask, pix, force, restrict), (0, 1, 0, 0, 0, 0))
    with self._layouts():
      first, cache = self._user(params, state.cache, g_ids, g_pos, np.int32(k), g_mask, g_pix,
                                state.key, g_force, g_restrict)
    g_active, g_start = self._global((active_n, start))
    turn_id = np.int32(k)
    if self.mesh is None:  # every input on device before the decode (no transfer inside it)
      g_active, g_start, turn_id = jax.device_put((g_active, g_start, turn_id))
    msg, cache = self._decode_message(params, cache, first, g_active, g_start, turn_id,
                                      state.key)
    msg, overflow = self._local((msg, cache.overflow))

    # The messages (host).
    decisions = np.full((n,), formats.NO_TURN, np.int32)
    texts, messages = [""] * n, [""] * n
    lengths = np.asarray(msg.length, np.int32)
    next_position = state.next_position.copy()
    for r in np.nonzero(active_n)[0]:
      toks = msg.tokens[r, :lengths[r]]
      text = self.fmt.tokenizer.decode(toks[:-1].tolist(), skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
      dec, said = self.fmt.parse(text)
      decisions[r], messages[r] = dec, text
      texts[r] = said if dec == formats.TURN_RESPONSE else ""
      # The final <|im_end|> sits at the running position; the next chunk feeds it.
      next_position[r] = int(start[r]) + int(lengths[r]) - 1
    out = TurnOutput(
        turn=k, active=active_n, chunk_ids=ids, chunk_mask=mask,
        chunk_positions=np.asarray(pos, np.int32), closes_previous=state.had_message & active_n,
        message_start=start, tokens=np.asarray(msg.tokens), old_logps=np.asarray(msg.old_logps),
        sampling_logps=np.asarray(msg.sampling_logps), forced=np.asarray(msg.forced),
        lengths=lengths, decisions=decisions, texts=texts, messages=messages,
        overflow=np.asarray(overflow, bool))
    state = state.replace(cache=cache, next_position=next_position,
                          had_message=state.had_message | active_n, next_turn=k + 1)
    return state, out

  def _decode_message(self, params, cache, first, active, next_position, turn, key):
    """The rest of the turn's message of every row: decode.decode_message under jit, device
    arrays in and out (no host transfer until the caller fetches the Message)."""
    with self._layouts():
      return self._decode(params, cache, first, active, next_position, turn, key)

  # -- whole rollouts ----------------------------------------------------------------------------

  def sample(self, params, prompts: Sequence[formats.StreamPrompt], *, group_size: int = 1,
             seed: int = 0, seq_len: int | None = None,
             on_turn: Callable[[int, int], Any] | None = None) -> RolloutBatch:
    """Generates G rollouts of each prompt, turn by turn in lockstep (init_state, then step_turn
    per turn).

    Args:
      params: model parameters.
      prompts: B samples (their K may differ; shorter ones stop early).
      group_size: G rollouts per sample.
      seed: PRNG seed (the run is deterministic for it).
      seq_len: pad the output to this T (ValueError when a row is longer); default: the longest
        row rounded up to pad_multiple.
      on_turn: optional callback(turn, num_turns) after each turn (progress bars).

    Returns:
      RolloutBatch.
    """
    g = int(group_size)
    self._check_prompts(prompts, g)
    # Rows split evenly over this process's row shards: the prompts are padded with copies of
    # the last one, sampled like the others and dropped before the batch is laid out (the kept
    # rows keep their indices, hence their draws).
    b_keep = len(prompts)
    prompts = list(prompts) + [prompts[-1]] * (-b_keep % self.row_multiple())
    k_row = np.repeat(np.asarray([p.num_turns for p in prompts], np.int32), g)
    k_max = int(k_row.max())
    c_user = self.user_chunk_len_for(prompts)
    cap = self.capacity_for_prompts(prompts, c_user)
    if self.mesh is not None:   # one turn count and one set of shapes for every process
      from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
      k_max, c_user, cap = (int(x) for x in parallel.process_max([k_max, c_user, cap]))
    widths = self._chunk_widths(prompts, k_max, c_user, self.small_chunk_len_for(prompts, c_user))
    state = self.init_state(params, len(prompts), g, capacity=cap, user_chunk_len=c_user,
                            seed=seed)
    n = state.num_rows
    pos1, _ = self._prefix_positions()
    rows = [_Row() for _ in range(n)]
    for row in rows:
      row.add(self.system_ids, pos1[:, 0], -1)
    decisions = np.full((n, k_max), formats.NO_TURN, np.int32)
    texts, messages = [[] for _ in range(n)], [[] for _ in range(n)]
    d = prompts[0].pixel_values.shape[2]
    for k in range(k_max):
      frames = np.zeros((len(prompts), self.patches_per_turn, d), np.float32)
      for i, p in enumerate(prompts):
        if k < p.num_turns:
          frames[i] = p.pixel_values[k]
      state, out = self.step_turn(
          params, state, frames, [self.question_at(p, k) for p in prompts], turn=k,
          active=[k < p.num_turns for p in prompts],
          force_response=[k in p.force_response_turns for p in prompts],
          chunk_len=int(widths[k]))
      self._record_turn(rows, out)
      for r in np.nonzero(out.active)[0]:
        decisions[r, k] = out.decisions[r]
        texts[r].append(out.texts[r])
        messages[r].append(out.messages[r])
      if on_turn is not None:
        on_turn(k, k_max)
    nl = len(self.newline_ids)
    for r, row in enumerate(rows):   # the trailing "\n" after the last <|im_end|> (never fed)
      s = int(state.next_position[r]) + 1
      row.add(self.newline_ids, np.broadcast_to(np.arange(s, s + nl), (3, nl)), int(k_row[r]) - 1)
    overflow = np.asarray(self._local(state.cache.overflow))
    keep = b_keep * g
    return self._assemble(rows[:keep], prompts[:b_keep], g, decisions[:keep], texts[:keep],
                          messages[:keep], k_row[:keep], k_max, seq_len, overflow[:keep])

  def _check_prompts(self, prompts: Sequence[formats.StreamPrompt], g: int) -> None:
    """ValueError unless the B prompts and G can be sampled together."""
    if not prompts or g < 1:
      raise ValueError(f"need >= 1 prompt and group_size >= 1, got {len(prompts)} prompts, "
                       f"G = {g}")
    p_, d_ = self.patches_per_turn, prompts[0].pixel_values.shape[-1]
    for p in prompts:
      if p.pixel_values.ndim != 3 or p.pixel_values.shape[1] != p_:
        raise ValueError(f"sample {p.sample_id!r}: pixel_values of shape {p.pixel_values.shape}; "
                         f"expected [K, {p_}, D] for grid {self.grid}")
      if p.pixel_values.shape[2] != d_:
        raise ValueError(f"patch dims differ across samples: {d_} vs {p.pixel_values.shape[2]}")
      if not 0 <= p.ask_turn < max(p.num_turns, 1):
        raise ValueError(f"sample {p.sample_id!r}: ask_turn {p.ask_turn} outside its "
                         f"{p.num_turns} turns")

  def _chunk_widths(self, prompts: Sequence[formats.StreamPrompt], k_max: int, c_user: int,
                    c_small: int) -> np.ndarray:
    """The bucket of each turn, i32[k_max]: C_small (when > 0) if every row's chunk of the turn
    fits it, else C_user; across processes the largest of any process (one shape per turn)."""
    widths = np.full((k_max,), c_user, np.int64)
    if c_small > 0:
      for k in range(k_max):
        need = max((self.turn_chunk_len(k, self.question_at(p, k), after_message=k > 0)
                    for p in prompts if k < p.num_turns), default=0)
        widths[k] = c_small if need <= c_small else c_user
    if self.mesh is not None:
      from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
      widths = parallel.process_max(widths)
    return widths

  def _record_turn(self, rows: list[_Row], out: TurnOutput) -> None:
    """Appends turn k of every active row to its record: the user chunk (the "\\n" closing the
    previous message belongs to turn k - 1) and the message."""
    nl, k = len(self.newline_ids), out.turn
    for r in np.nonzero(out.active)[0]:
      m, s = int(out.chunk_mask[r].sum()), int(out.closes_previous[r])
      row = rows[r]
      if s < m and out.closes_previous[r]:
        row.add(out.chunk_ids[r, s:s + nl], out.chunk_positions[:, r, s:s + nl], k - 1)
        s += nl
      row.add(out.chunk_ids[r, s:m], out.chunk_positions[:, r, s:m], k)
      length = int(out.lengths[r])
      position = int(out.message_start[r]) + np.arange(length)
      row.add(out.tokens[r, :length], np.broadcast_to(position, (3, length)), k,
              np.where(out.forced[r, :length], FORCED_TOKEN, SAMPLED_TOKEN),
              out.old_logps[r, :length], out.sampling_logps[r, :length])

  def _assemble(self, rows, prompts, g, decisions, texts, messages, k_row, k_max, seq_len,
                overflow) -> RolloutBatch:
    """The RolloutBatch of the recorded rows (padded to seq_len or pad_multiple)."""
    n = len(rows)
    rows = [r.arrays() for r in rows]
    lengths = np.asarray([len(r["ids"]) for r in rows], np.int32)
    longest = int(lengths.max())
    if seq_len is None:
      t = common.round_up(longest, self.cfg.pad_multiple)
    else:
      t = int(seq_len)
      if longest > t:
        raise ValueError(f"the longest rollout has {longest} tokens, more than seq_len {t}")
    input_ids = np.full((n, t), self.pad_id, np.int32)
    position_ids = np.zeros((3, n, t), np.int32)
    kind = np.zeros((n, t), np.int32)
    logp = np.zeros((n, t), np.float32)
    slogp = np.zeros((n, t), np.float32)
    turn_index = np.full((n, t), -1, np.int32)
    attention_mask = np.zeros((n, t), np.int32)
    for i, r in enumerate(rows):
      m = len(r["ids"])
      input_ids[i, :m] = r["ids"]
      position_ids[:, i, :m] = r["pos"]
      kind[i, :m] = r["kind"]
      logp[i, :m] = r["logp"]
      slogp[i, :m] = r["slogp"]
      turn_index[i, :m] = r["turn"]
      attention_mask[i, :m] = 1
    labels = np.full_like(input_ids, self.pad_id)
    labels[:, :-1] = input_ids[:, 1:]
    shift = lambda x: np.concatenate([x[:, 1:], np.zeros_like(x[:, :1])], axis=1)
    loss_mask = (shift(kind) == SAMPLED_TOKEN).astype(np.float32)
    forced_mask = (shift(kind) == FORCED_TOKEN).astype(np.float32)
    old_logps = shift(logp) * ((loss_mask + forced_mask) > 0)
    sampling_logps = shift(slogp) * (loss_mask > 0)
    decision_class = np.zeros_like(input_ids)
    if self.silence_id is not None:
      decision_class[(loss_mask > 0) & (labels == self.silence_id)] = 1
      decision_class[(loss_mask > 0) & (labels == self.response_id)] = 2
    b = len(prompts)
    d = prompts[0].pixel_values.shape[2]
    p_ = self.patches_per_turn
    pix = np.zeros((b, k_max * p_, d), np.float32)
    for i, prompt in enumerate(prompts):
      pix[i, :prompt.num_turns * p_] = prompt.pixel_values.reshape(-1, d)
    return RolloutBatch(
        input_ids=input_ids, labels=labels, loss_mask=loss_mask, forced_mask=forced_mask,
        decision_class=decision_class, attention_mask=attention_mask,
        position_ids=position_ids, pixel_values_videos=np.repeat(pix, g, axis=0),
        video_grid_thw=np.tile(np.asarray([self.grid], np.int64), (k_max, 1)),
        old_logps=old_logps.astype(np.float32), sampling_logps=sampling_logps.astype(np.float32),
        turn_index=turn_index, decisions=decisions, texts=texts, messages=messages,
        num_turns=k_row.astype(np.int32), lengths=lengths,
        sample_index=np.repeat(np.arange(b, dtype=np.int32), g), group_size=g,
        sample_ids=[p.sample_id for p in prompts], overflow=overflow.astype(bool))




def teacher_forced_logps(params, model_config, batch: RolloutBatch, *, temperature: float = 1.0
                         ) -> np.ndarray:
  """log softmax(logits / temperature)[labels] of one full forward over a RolloutBatch, f32[N, T]
  (the reference the rollout's old_logps must equal; also what a GRPO step recomputes)."""
  logits = models.build(model_config).apply(
      {"params": params}, jnp.asarray(batch.input_ids),
      pixel_values_videos=jnp.asarray(batch.pixel_values_videos),
      video_grid_thw=batch.video_grid_thw, attention_mask=jnp.asarray(batch.attention_mask),
      position_ids=jnp.asarray(batch.position_ids))
  return np.asarray(losses.token_logps(logits, jnp.asarray(batch.labels), temperature=temperature))

