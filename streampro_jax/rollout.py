"""Streaming sampler: B samples x G rollouts (N = B * G rows) generated in lockstep, turn by turn.

What one call of `StreamingSampler.sample` does (SPEC sections 1 and 3):

  1. write the pinned system prefix (``<|im_start|>system\\n...<|im_end|>\\n``) into a KV cache
     of N rows (models/kv_cache.py, sliding window of `window_turns` turns, default 200);
  2. per turn k = 0 .. K-1: extend every row with its user chunk
       [<|im_end|> "\\n" of the previous assistant message]        (turns k >= 1, see below)
       <|im_start|>user\\n[{question}\\n]<ks-(k+1)s>\\n<|vision_start|>{pads}<|vision_end|><|im_end|>\\n
       <|im_start|>assistant\\n
     with that second's frames, and sample the assistant message from the last logits: the
     decision token first, then (after </Response>) text tokens until <|im_end|> or
     `max_text_tokens`; each sampled token is fed back through the cache in a [N, 1] step with
     a per-row chunk_mask, so rows that have finished feed nothing.
  3. the final <|im_end|> of a message is not fed by a step of its own: it opens the next turn's
     user chunk together with the "\\n" of the chat format (one forward less per turn). For the
     sliding window those two tokens belong to turn k + 1 (they are evicted one turn after the
     rest of turn k) [choice]; without eviction the logits are exactly those of one full forward.

Compilation: three jitted functions with fixed shapes, each compiled once per sampler: the
pinned prefix [N, S], the user chunk [N, C_user] (one bucket; rows padded with chunk_mask = 0)
and the single-token step [N, 1]. Their cache sizes are `compile_counts()`.

Sampling (per row, inside the jitted functions): temperature 0 -> argmax; otherwise softmax of
logits / temperature restricted to the top-p nucleus (the smallest set of most likely tokens whose
probability reaches top_p; the most likely token is always kept). Randomness: a row's draw at
(turn k, step s) uses fold_in(fold_in(fold_in(key(seed), k), s), row), so a run is deterministic
for a seed. All G rollouts of a sample see the same frames (the vision tower runs once per sample
and its tokens are repeated G times).

Forced tokens (not sampled, loss_mask 0, `forced_mask` 1): <|im_end|> after `max_text_tokens`
text tokens; with `constrain_decision` (off by default) <|im_end|> right after </Silence>; the
</Response> decision on turns listed in `StreamPrompt.force_response_turns` (used to ask a
multiple-choice question at its time).

Log-probs returned (aligned with labels: entry t scores labels[t] = input_ids[t + 1]):
  old_logps[t]      = log softmax(logits_t / T')[labels[t]] with T' = temperature when it is > 0
                      and 1 for greedy decoding. This is the policy log-prob that a GRPO trainer
                      recomputes with grpo.token_logps(..., temperature=T'); it ignores top-p and
                      the decision constraint. At temperature 1 and top_p 1 it IS the log-prob
                      under the sampling distribution.
  sampling_logps[t] = log-prob under the distribution actually sampled from (tempered, top-p and
                      constraint applied); 0 for greedy and for forced tokens.
Both are 0 on non-assistant positions; they are also filled on forced positions (old_logps).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from streampro_jax import models
from streampro_jax.data import chat_format
from streampro_jax.models import kv_cache

# Per-turn decisions of a rollout (the codes of RolloutBatch.decisions).
SILENCE = 0
RESPONSE = 1
INVALID = 2
NO_TURN = -1       # the row's sample has fewer turns than the batch
DECISION_NAMES = {SILENCE: "silence", RESPONSE: "response", INVALID: "invalid"}

# Token kinds in RolloutBatch.token_kind.
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
    window_turns: sliding window of the KV cache in turns (SPEC: 200).
    constrain_decision: sample the first token among {</Silence>, </Response>} only and force
      <|im_end|> after </Silence> (off: every token is sampled from the whole vocabulary, so a
      message can be invalid, which R_fmt measures).
    user_chunk_len: bucket C_user of the user chunks (0: the longest chunk of the call rounded
      up to `chunk_multiple`; set it to keep one compilation across calls of different data).
    chunk_multiple: rounding of the automatic bucket.
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
class StreamPrompt:
  """One sample: the frames of its K turns and its question.

  Attributes:
    pixel_values: f32[K, P, D] patches of each turn (models.process_turns).
    question: the question text, prepended to the user message of turn `ask_turn`.
    ask_turn: the turn the question is asked on.
    force_response_turns: turns whose decision token is forced to </Response>.
    sample_id: free-form id carried to the output.
  """
  pixel_values: np.ndarray
  question: str | None = None
  ask_turn: int = 0
  force_response_turns: tuple[int, ...] = ()
  sample_id: str = ""

  @property
  def num_turns(self) -> int:
    return int(self.pixel_values.shape[0])


def prompt_from_record(record, question, frames_thwc: np.ndarray, processor_config, *,
                       max_turns: int | None = None, frame_size: tuple[int, int] | None = None,
                       force_response_at_ask: bool = False) -> StreamPrompt:
  """A StreamPrompt for (record, question) from its decoded frames uint8[K * tp, H, W, 3].

  processor_config: the backbone's per-turn processor settings
  (`models.video_processor_config(model_config)`: processing.VideoProcessorConfig for Qwen2.5-VL,
  processing_qwen3.Qwen3VideoProcessorConfig for Qwen3-VL); frame_size (h, w): frames are resized
  to it first (as the training pipeline does).
  """
  from streampro_jax.models import processing  # pylint: disable=g-import-not-at-top
  q = record.question(question) if isinstance(question, str) else question
  k = chat_format.num_turns(record.duration)
  if max_turns is not None:
    k = min(k, int(max_turns))
  tp = processor_config.temporal_patch_size
  frames = np.asarray(frames_thwc)
  if frames.shape[0] < k * tp:
    raise ValueError(f"record {record.id!r}: {k} turns need {k * tp} frames, got "
                     f"{frames.shape[0]}")
  frames = frames[:k * tp]
  if frame_size is not None and tuple(frames.shape[1:3]) != tuple(frame_size):
    frames = processing.resize_frames(frames, int(frame_size[0]), int(frame_size[1]))
  patches, _ = models.process_turns(frames.reshape(k, tp, *frames.shape[1:]), processor_config)
  ask = chat_format.ask_turn(q.ask_time, chat_format.num_turns(record.duration))
  if ask >= k:
    raise ValueError(f"question {q.id!r} of record {record.id!r} is asked on turn {ask}, past "
                     f"the cut at {k} turns")
  return StreamPrompt(pixel_values=np.asarray(patches, np.float32), question=q.question,
                      ask_turn=ask,
                      force_response_turns=(ask,) if force_response_at_ask else (),
                      sample_id=f"{record.id}/{q.id}")


# ------------------------------------------------------------------------------------------------
# Prompt formats: what the user chunks hold and how a message is read.


class StreamProFormat:
  """The StreamPro chat format (data/chat_format.py): decision tokens </Silence> / </Response>.

  parse(message) follows rewards.parse_message: exactly "</Silence>" -> silence; "</Response>"
  + non-empty text -> response; anything else invalid (a "</Response>" with empty text is
  invalid).
  """

  repeat_question = False   # the question goes on its ask turn only

  def __init__(self, chat: chat_format.ChatFormat):
    self.chat = chat
    self.tokenizer = chat.tokenizer

  def system_ids(self) -> np.ndarray:
    return self.chat.system_ids()

  def user_ids(self, k: int, question: str | None) -> np.ndarray:
    return self.chat.user_turn_ids(k, question)

  def header_ids(self) -> np.ndarray:
    return self.chat.assistant_header_ids()

  def parse(self, message: str) -> tuple[int, str]:
    from streampro_jax import rewards  # pylint: disable=g-import-not-at-top
    p = rewards.parse_message(message)
    if p.decision == "silence":
      return SILENCE, ""
    if p.decision == "response" and p.valid:
      return RESPONSE, p.text
    return INVALID, p.text


WAIT_SYSTEM_PROMPT = "You are a helpful assistant watching a live video stream."
WAIT_INSTRUCTION = (
    "Question: {question}\n"
    "You see the video up to now, one second per message. If the video so far does not yet show "
    "enough to answer, or the answer has not changed since your last answer, reply with the "
    "single word \"Wait\". Otherwise reply with the new answer only.")


class WaitPromptFormat:
  """Offline prompting of a plain video-LLM (SPEC section 4, baselines).

  Every user turn holds the time label, the frames and, from the ask turn on
  (`repeat_question`), the instruction `WAIT_INSTRUCTION` with the question; the model answers
  in free text. parse: an empty message is invalid, a message starting with "wait" (any case,
  after stripping) is silence, anything else is a response with that text.
  """

  repeat_question = True    # the instruction + question go on every turn from the ask turn on

  def __init__(self, tokenizer, *, tokens_per_turn: int, system_prompt: str = WAIT_SYSTEM_PROMPT,
               instruction: str = WAIT_INSTRUCTION):
    self.tokenizer = tokenizer
    self.tokens_per_turn = int(tokens_per_turn)
    self.system_prompt = system_prompt
    self.instruction = instruction

  def _enc(self, text: str) -> np.ndarray:
    return np.asarray(self.tokenizer.encode(text, add_special_tokens=False), np.int32)

  def system_ids(self) -> np.ndarray:
    return self._enc(chat_format.system_text(self.system_prompt))

  def user_ids(self, k: int, question: str | None) -> np.ndarray:
    text = (f"{chat_format.IM_START}user\n{chat_format.time_label(k)}\n"
            f"{chat_format.VISION_START}{chat_format.VIDEO_PAD * self.tokens_per_turn}"
            f"{chat_format.VISION_END}")
    if question is not None:
      text += "\n" + self.instruction.format(question=question)
    return self._enc(text + f"{chat_format.IM_END}\n")

  def header_ids(self) -> np.ndarray:
    return self._enc(chat_format.assistant_header_text())

  def parse(self, message: str) -> tuple[int, str]:
    s = message.strip()
    if not s:
      return INVALID, ""
    if s.lower().startswith("wait"):
      return SILENCE, ""
    return RESPONSE, s


# ------------------------------------------------------------------------------------------------
# The output.


@dataclasses.dataclass
class RolloutBatch:
  """N = B * G rollouts in the teacher-forcing layout of BUILD_NOTES.md (contributor conventions).

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

  BATCH_KEYS = ("input_ids", "labels", "loss_mask", "decision_class", "attention_mask",
                "position_ids", "pixel_values_videos", "old_logps")

  def predictions(self, row: int) -> list[tuple[float, str]]:
    """[(Y = k + 1, text)] of the row's RESPONSE turns (the StreamPro-F1 / R_turn input)."""
    return [(float(k + 1), self.texts[row][k]) for k in range(int(self.num_turns[row]))
            if self.decisions[row, k] == RESPONSE]

  def as_batch(self) -> dict[str, np.ndarray]:
    """The arrays a train step takes (CONVENTIONS batch keys + old_logps)."""
    return {k: getattr(self, k) for k in self.BATCH_KEYS}


# ------------------------------------------------------------------------------------------------
# Sampling math (pure, jittable).


def top_p_filter(logits_nv: jax.Array, top_p: float) -> jax.Array:
  """Sets logits outside the top-p nucleus to -inf.

  With p = softmax(logits) sorted descending, token i (rank r) is kept when
  sum_{r' < r} p_(r') < top_p, i.e. the smallest prefix whose mass reaches top_p; the top token
  is always kept; ties with the last kept logit are kept. logits_nv: f32[N, V].
  """
  if top_p >= 1.0:
    return logits_nv
  sorted_desc = -jnp.sort(-logits_nv, axis=-1)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep_sorted = mass_before < top_p
  n_keep = jnp.maximum(keep_sorted.sum(axis=-1), 1)
  cutoff = jnp.take_along_axis(sorted_desc, (n_keep - 1)[:, None], axis=-1)
  return jnp.where(logits_nv >= cutoff, logits_nv, -jnp.inf)


def sample_tokens(logits_nv: jax.Array, keys_n: jax.Array, force_n: jax.Array,
                  restrict_n: jax.Array, *, temperature: float, top_p: float,
                  allowed_ids: tuple[int, ...], banned_ids: tuple[int, ...] = ()
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One token per row.

  logits_nv f32[N, V]; keys_n: N PRNG keys; force_n i32[N] (>= 0: this token is taken instead of
  a draw); restrict_n bool[N] (draw only among allowed_ids); banned_ids are never drawn (the
  vision placeholders: a sampled <|video_pad|> would be replaced by visual features when the
  trajectory is teacher-forced, so its log-prob could not be reproduced).
  Returns (token i32[N], old_logp f32[N] = log softmax(logits / T')[token] with T' = temperature
  or 1 when greedy, sampling_logp f32[N] = log-prob under the distribution drawn from, 0 when
  greedy or forced).
  """
  logits = logits_nv.astype(jnp.float32)
  t_eff = temperature if temperature > 0 else 1.0
  lp_policy = jax.nn.log_softmax(logits / t_eff, axis=-1)
  if banned_ids:
    logits = logits.at[:, jnp.asarray(banned_ids)].set(-jnp.inf)
  if allowed_ids:
    allowed = jnp.zeros((logits.shape[-1],), bool).at[jnp.asarray(allowed_ids)].set(True)
    logits = jnp.where(restrict_n[:, None] & ~allowed[None, :], -jnp.inf, logits)
  if temperature == 0:
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    slp = jnp.zeros(tok.shape, jnp.float32)
  else:
    scaled = top_p_filter(logits / temperature, top_p)
    tok = jax.vmap(jax.random.categorical)(keys_n, scaled).astype(jnp.int32)
    slp = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tok[:, None], axis=-1)[:, 0]
  forced = force_n >= 0
  tok = jnp.where(forced, force_n, tok)
  slp = jnp.where(forced, 0.0, slp)
  old = jnp.take_along_axis(lp_policy, tok[:, None], axis=-1)[:, 0]
  return tok, old, slp


def _round_up(n: int, m: int) -> int:
  return -(-int(n) // int(m)) * int(m)


@dataclasses.dataclass
class _Row:
  """Host-side record of one row (lists of per-token values)."""
  ids: list = dataclasses.field(default_factory=list)
  pos: list = dataclasses.field(default_factory=list)        # [3] lists per token
  logp: list = dataclasses.field(default_factory=list)       # log-prob of this token
  slogp: list = dataclasses.field(default_factory=list)
  kind: list = dataclasses.field(default_factory=list)       # PROMPT / SAMPLED / FORCED
  turn: list = dataclasses.field(default_factory=list)

  def add(self, ids, pos_3n, turn, kind=PROMPT_TOKEN, logp=None, slogp=None):
    n = len(ids)
    self.ids.extend(int(i) for i in ids)
    self.pos.extend(np.asarray(pos_3n).T.tolist())
    self.kind.extend([kind] * n)
    self.turn.extend([turn] * n)
    self.logp.extend([0.0] * n if logp is None else [float(x) for x in logp])
    self.slogp.extend([0.0] * n if slogp is None else [float(x) for x in slogp])


class StreamingSampler:
  """Samples B x G streaming rollouts with a KV cache (see the module docstring).

  Args:
    model_config: a backbone config (qwen2_5_vl.Qwen2_5_VLConfig or qwen3_vl.Qwen3VLConfig; its
      special ids must be the tokenizer's).
    prompt_format: StreamProFormat (default when a ChatFormat is given) or WaitPromptFormat.
    config: SamplerConfig.
    video_grid: the grid (1, gh, gw) of one turn.
  """

  def __init__(self, model_config, prompt_format, config: SamplerConfig | None = None, *,
               video_grid: Sequence[int]):
    if isinstance(prompt_format, chat_format.ChatFormat):
      prompt_format = StreamProFormat(prompt_format)
    self.model_config = model_config
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
    self.im_end_id = enc(chat_format.IM_END)[0]
    self.newline_ids = enc("\n")
    self.pad_id = enc(chat_format.PAD)[0]
    vocab = tok.get_vocab()
    self.silence_id = vocab.get(chat_format.SILENCE)
    self.response_id = vocab.get(chat_format.RESPONSE)
    if self.cfg.constrain_decision and (self.silence_id is None or self.response_id is None):
      raise ValueError("constrain_decision needs a tokenizer with </Silence> and </Response>")
    # Vision placeholders are never sampled (see sample_tokens).
    self.vision_token_ids = tuple(sorted({
        int(i) for i in (getattr(model_config, name, None) for name in (
            "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"))
        if i is not None and 0 <= int(i) < model_config.text.vocab_size}))
    self._system = np.asarray(prompt_format.system_ids(), np.int32)
    self._header = np.asarray(prompt_format.header_ids(), np.int32)
    self._repeat = bool(getattr(prompt_format, "repeat_question", False))
    self._build_fns()

  # -- jitted functions --------------------------------------------------------------------------

  def _build_fns(self):
    mcfg = self.model_config
    grid = np.asarray([self.grid], np.int64)
    sampling = functools.partial(
        sample_tokens, temperature=float(self.cfg.temperature), top_p=float(self.cfg.top_p),
        allowed_ids=((int(self.silence_id), int(self.response_id))
                     if self.cfg.constrain_decision else ()),
        banned_ids=self.vision_token_ids)
    module = models.build(mcfg)
    encode_vision = type(module).encode_vision

    def keys_for(key, turn, step, n):
      k = jax.random.fold_in(jax.random.fold_in(key, turn), step)
      return jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(n))

    def pin_fn(params, cache, ids, pos, mask):
      _, cache = kv_cache.extend(params, cache, ids, pos, config=mcfg, turn_id=0,
                                 chunk_mask=mask, pin=True, output="hidden")
      return cache

    def user_fn(params, cache, ids, pos, turn, mask, pix_bpd, key, force, restrict):
      n = ids.shape[0]
      # The backbone's visual features: one array (Qwen2.5-VL) or (merged, deepstack tuple)
      # (Qwen3-VL), each leaf [B, P/4, D]; repeated G times along the row axis.
      feats = module.apply({"params": params}, pix_bpd, grid, method=encode_vision)
      reps = n // pix_bpd.shape[0]
      feats = jax.tree.map(lambda x: jnp.repeat(x, reps, axis=0), feats)
      logits, cache = kv_cache.extend(params, cache, ids, pos, config=mcfg, turn_id=turn,
                                      chunk_mask=mask, output="last",
                                      model_kwargs={"video_embeds": feats})
      return sampling(logits, keys_for(key, turn, 0, n), force, restrict), cache

    def step_fn(params, cache, ids, pos, turn, step, mask, key, force, restrict):
      n = ids.shape[0]
      logits, cache = kv_cache.extend(params, cache, ids, pos, config=mcfg, turn_id=turn,
                                      chunk_mask=mask, output="last")
      return sampling(logits, keys_for(key, turn, step, n), force, restrict), cache

    self._pin = jax.jit(pin_fn, donate_argnums=(1,))
    self._user = jax.jit(user_fn, donate_argnums=(1,))
    self._step = jax.jit(step_fn, donate_argnums=(1,))

  def compile_counts(self) -> dict[str, int]:
    """Compiled variants of each jitted function (1 each after any number of calls)."""
    return {"prefix": self._pin._cache_size(), "user": self._user._cache_size(),
            "step": self._step._cache_size()}

  # -- sizes -------------------------------------------------------------------------------------

  def user_chunk_len_for(self, prompts: Sequence[StreamPrompt]) -> int:
    """The bucket C_user these prompts need (the longest user chunk, rounded up)."""
    longest = 0
    for p in prompts:
      last = max(p.num_turns - 1, 0)   # the longest time label
      q_len = len(self.fmt.user_ids(last, p.question)) if p.question is not None else 0
      plain = len(self.fmt.user_ids(last, None))
      longest = max(longest, q_len, plain)
    need = 1 + len(self.newline_ids) + longest + len(self._header)
    return self.cfg.user_chunk_len or _round_up(need, self.cfg.chunk_multiple)

  def capacity_for(self, num_turns: int, user_chunk_len: int) -> int:
    """Cache slots for a stream of `num_turns` turns: prefix + window turns + one chunk."""
    if self.cfg.capacity:
      return self.cfg.capacity
    per_turn = user_chunk_len + self.cfg.max_message_tokens
    turns = min(int(num_turns), self.cfg.window_turns)
    return _round_up(len(self._system) + turns * per_turn + user_chunk_len,
                     self.cfg.capacity_multiple)

  def capacity_for_prompts(self, prompts: Sequence[StreamPrompt], user_chunk_len: int) -> int:
    """Cache slots these prompts need: the exact real-token count of the longest stream.

    The cache advances by real tokens only (padding slots are reused, kv_cache module), so a row
    needs the pinned prefix, the real tokens of the turns in its window (lead "<|im_end|>\\n",
    user message, assistant header, at most `max_message_tokens` fed message tokens per turn)
    and one padded chunk of slack; rounded up to `capacity_multiple`. Tighter than
    `capacity_for`, which assumes every user chunk fills its bucket although the question is
    asked on one turn only (the demo's SynthStream rollouts: 1024 slots instead of 2048).
    """
    if self.cfg.capacity:
      return self.cfg.capacity
    lead = 1 + len(self.newline_ids)
    need = 0
    for p in prompts:
      per_turn = []
      for k in range(p.num_turns):
        asked = k == p.ask_turn or (self._repeat and k > p.ask_turn)
        q = p.question if (p.question is not None and asked) else None
        per_turn.append(lead + len(self.fmt.user_ids(k, q)) + len(self._header)
                        + self.cfg.max_message_tokens)
      if per_turn:   # the most tokens any `window_turns` consecutive turns hold
        w = min(len(per_turn), self.cfg.window_turns)
        c = np.concatenate([[0], np.cumsum(per_turn)])
        need = max(need, int((c[w:] - c[:-w]).max()))
    return _round_up(len(self._system) + need + int(user_chunk_len), self.cfg.capacity_multiple)

  # -- the sampler -------------------------------------------------------------------------------

  def sample(self, params, prompts: Sequence[StreamPrompt], *, group_size: int = 1, seed: int = 0,
             seq_len: int | None = None,
             on_turn: Callable[[int, int], Any] | None = None) -> RolloutBatch:
    """Generates G rollouts of each prompt, turn by turn in lockstep.

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
    cfg = self.cfg
    b, g = len(prompts), int(group_size)
    if b == 0 or g < 1:
      raise ValueError(f"need >= 1 prompt and group_size >= 1, got {b} prompts, G = {g}")
    n = b * g
    p_, d_ = self.patches_per_turn, None
    for p in prompts:
      if p.pixel_values.ndim != 3 or p.pixel_values.shape[1] != p_:
        raise ValueError(f"sample {p.sample_id!r}: pixel_values of shape {p.pixel_values.shape}; "
                         f"expected [K, {p_}, D] for grid {self.grid}")
      d_ = p.pixel_values.shape[2] if d_ is None else d_
      if p.pixel_values.shape[2] != d_:
        raise ValueError(f"patch dims differ across samples: {d_} vs {p.pixel_values.shape[2]}")
      if not 0 <= p.ask_turn < max(p.num_turns, 1):
        raise ValueError(f"sample {p.sample_id!r}: ask_turn {p.ask_turn} outside its "
                         f"{p.num_turns} turns")
    k_row = np.repeat(np.asarray([p.num_turns for p in prompts], np.int32), g)
    k_max = int(k_row.max())
    c_user = self.user_chunk_len_for(prompts)
    cap = self.capacity_for_prompts(prompts, c_user)
    key = jax.random.key(int(seed))
    mcfg = self.model_config
    grid = np.asarray([self.grid], np.int64)

    # Pinned system prefix.
    cache = kv_cache.init_cache(mcfg, n, cap, window_turns=cfg.window_turns)
    sys_ids = np.tile(self._system[None], (n, 1))
    sys_mask = np.ones_like(sys_ids)
    sys_pos, host_next = self.backbone.chunk_position_ids(sys_ids, np.zeros((n,), np.int64),
                                                          config=mcfg, chunk_mask=sys_mask)
    cache = self._pin(params, cache, sys_ids, sys_pos, sys_mask)
    host_next = host_next.astype(np.int64)
    rows = [_Row() for _ in range(n)]
    for r in range(n):
      rows[r].add(self._system, sys_pos[:, r], -1)

    decisions = np.full((n, k_max), NO_TURN, np.int32)
    texts: list[list[str]] = [[] for _ in range(n)]
    messages: list[list[str]] = [[] for _ in range(n)]
    had_message = np.zeros((n,), bool)   # the row owes "<|im_end|>\n" to the next chunk
    max_sampled = cfg.max_text_tokens + 1
    tok = self.fmt.tokenizer

    for k in range(k_max):
      active = k < k_row
      # ---- user chunk
      ids = np.full((n, c_user), self.pad_id, np.int32)
      mask = np.zeros((n, c_user), np.int32)
      new_start = np.zeros((n,), np.int32)   # where the not-yet-recorded tokens start
      for r in np.nonzero(active)[0]:
        prompt = prompts[r // g]
        asked = k == prompt.ask_turn or (self._repeat and k > prompt.ask_turn)
        q = prompt.question if (prompt.question is not None and asked) else None
        lead = ([self.im_end_id] + self.newline_ids) if had_message[r] else []
        chunk = np.concatenate([np.asarray(lead, np.int32), self.fmt.user_ids(k, q),
                                self._header]).astype(np.int32)
        if len(chunk) > c_user:
          raise ValueError(f"turn {k} of sample {prompt.sample_id!r} needs a user chunk of "
                           f"{len(chunk)} tokens but the bucket is {c_user}")
        ids[r, :len(chunk)] = chunk
        mask[r, :len(chunk)] = 1
        new_start[r] = 1 if had_message[r] else 0   # the <|im_end|> was recorded when sampled
      pos, nxt = self.backbone.chunk_position_ids(ids, host_next, config=mcfg,
                                                  video_grid_thw=grid, chunk_mask=mask)
      pix = np.zeros((b, p_, d_), np.float32)
      for i, prompt in enumerate(prompts):
        if k < prompt.num_turns:
          pix[i] = prompt.pixel_values[k]
      force = np.full((n,), -1, np.int32)
      for r in np.nonzero(active)[0]:
        if k in prompts[r // g].force_response_turns:
          force[r] = self.response_id
      restrict = active & bool(cfg.constrain_decision)
      (t_dev, lp_dev, slp_dev), cache = self._user(
          params, cache, ids, pos, np.int32(k), mask, pix, key, force, restrict)
      for r in np.nonzero(active)[0]:
        m = int(mask[r].sum())
        s = int(new_start[r])
        turn_of_lead = k - 1   # "\n" closing the previous message belongs to that turn
        if s < m and had_message[r]:
          nl = len(self.newline_ids)
          rows[r].add(ids[r, s:s + nl], pos[:, r, s:s + nl], turn_of_lead)
          s += nl
        rows[r].add(ids[r, s:m], pos[:, r, s:m], k)
      host_next = np.where(active, nxt, host_next).astype(np.int64)
      toks, lps, slps = (np.asarray(x) for x in jax.device_get((t_dev, lp_dev, slp_dev)))

      # ---- assistant message, one token per step
      msg = [[] for _ in range(n)]
      done = ~active.copy()
      for r in np.nonzero(active)[0]:
        self._take(rows[r], msg[r], toks[r], lps[r], slps[r], force[r] >= 0, host_next[r], k)
        done[r] = toks[r] == self.im_end_id
      step = 0
      while not done.all():
        step += 1
        feed = ~done
        ids1 = np.full((n, 1), self.pad_id, np.int32)
        force = np.full((n,), -1, np.int32)
        for r in np.nonzero(feed)[0]:
          ids1[r, 0] = msg[r][-1]
          if len(msg[r]) >= max_sampled or (cfg.constrain_decision and len(msg[r]) == 1
                                            and msg[r][0] == self.silence_id):
            force[r] = self.im_end_id
        pos1 = np.broadcast_to(host_next.astype(np.int32)[None, :, None], (3, n, 1))
        (t_dev, lp_dev, slp_dev), cache = self._step(
            params, cache, ids1, np.ascontiguousarray(pos1), np.int32(k), np.int32(step),
            feed.astype(np.int32)[:, None], key, force, np.zeros((n,), bool))
        toks, lps, slps = (np.asarray(x) for x in jax.device_get((t_dev, lp_dev, slp_dev)))
        host_next = host_next + feed
        for r in np.nonzero(feed)[0]:
          self._take(rows[r], msg[r], toks[r], lps[r], slps[r], force[r] >= 0, host_next[r], k)
          done[r] = toks[r] == self.im_end_id
      for r in np.nonzero(active)[0]:
        body = tok.decode(msg[r][:-1], skip_special_tokens=False,
                          clean_up_tokenization_spaces=False)
        dec, text = self.fmt.parse(body)
        decisions[r, k] = dec
        texts[r].append(text if dec == RESPONSE else "")
        messages[r].append(body)
        had_message[r] = True
      if on_turn is not None:
        on_turn(k, k_max)

    # Trailing "\n" after each row's last <|im_end|> (layout only; never fed).
    for r in range(n):
      nl = len(self.newline_ids)
      start = int(host_next[r]) + 1   # the deferred <|im_end|> sits at host_next
      pos_nl = np.broadcast_to(np.arange(start, start + nl)[None], (3, nl))
      rows[r].add(self.newline_ids, pos_nl, int(k_row[r]) - 1)

    overflow = np.asarray(jax.device_get(cache.overflow))
    return self._assemble(rows, prompts, g, decisions, texts, messages, k_row, k_max, seq_len,
                          overflow)

  def _take(self, row: _Row, msg: list, token, logp, slogp, forced: bool, position, turn):
    """Records one sampled (or forced) token at the row's next position."""
    msg.append(int(token))
    row.add([int(token)], np.full((3, 1), int(position)), turn,
            FORCED_TOKEN if forced else SAMPLED_TOKEN, [logp], [slogp])

  def _assemble(self, rows, prompts, g, decisions, texts, messages, k_row, k_max, seq_len,
                overflow) -> RolloutBatch:
    n = len(rows)
    lengths = np.asarray([len(r.ids) for r in rows], np.int32)
    longest = int(lengths.max())
    if seq_len is None:
      t = _round_up(longest, self.cfg.pad_multiple)
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
      m = len(r.ids)
      input_ids[i, :m] = r.ids
      position_ids[:, i, :m] = np.asarray(r.pos, np.int32).T
      kind[i, :m] = r.kind
      logp[i, :m] = r.logp
      slogp[i, :m] = r.slogp
      turn_index[i, :m] = r.turn
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
  from streampro_jax import grpo  # pylint: disable=g-import-not-at-top
  logits = models.build(model_config).apply(
      {"params": params}, jnp.asarray(batch.input_ids),
      pixel_values_videos=jnp.asarray(batch.pixel_values_videos),
      video_grid_thw=batch.video_grid_thw, attention_mask=jnp.asarray(batch.attention_mask),
      position_ids=jnp.asarray(batch.position_ids))
  return np.asarray(grpo.token_logps(logits, jnp.asarray(batch.labels), temperature=temperature))

