"""Streaming sampler: B samples x G rollouts (N = B * G rows) generated in lockstep, turn by turn.

What one call of `StreamingSampler.sample` does (docs/method.md sections 1 and 3):

  1. write the pinned system prefix (``<|im_start|>system\\n...<|im_end|>\\n``) into a KV cache
     of N rows (models/kv_cache.py, sliding window of `window_turns` turns, default 200);
  2. per turn k = 0 .. K-1: extend every row with its user chunk
       [<|im_end|> "\\n" of the previous assistant message]        (turns k >= 1, see below)
       <|im_start|>user\\n[{question}\\n]<ks-(k+1)s>\\n<|vision_start|>{pads}<|vision_end|><|im_end|>\\n
       <|im_start|>assistant\\n
     with that second's frames, and sample the assistant message from the last logits: the
     decision token first, then (after </Response>) text tokens until <|im_end|> or
     `max_text_tokens`. The message is decoded on device (`decode_message`: one jitted
     lax.while_loop over [N, 1] steps through the cache, a per-row chunk_mask so that rows that
     have finished feed nothing); the host reads the turn's messages once, after the loop.
  3. the final <|im_end|> of a message is not fed by a step of its own: it opens the next turn's
     user chunk together with the "\\n" of the chat format (one forward less per turn). For the
     sliding window those two tokens belong to turn k + 1 (they are evicted one turn after the
     rest of turn k) [choice]; without eviction the logits are exactly those of one full forward.

Compilation: three jitted functions with fixed shapes: the pinned prefix [N, S], the user chunk
and the message decode (a while loop of [N, 1] steps). The user chunk has two buckets (rows
padded with chunk_mask = 0): [N, C_user] for turns that carry a question (the longest chunk) and
a small one [N, C_small] for the turns whose chunks all fit it (time label, frames, header: most
turns of a stream), so a stream of K turns with one question runs K - 1 small chunks. Each is
compiled once per sampler; `compile_counts()` gives {"prefix": 1, "user": 2, "decode": 1} after
a call that used both buckets.

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
                      recomputes with losses.token_logps(..., temperature=T'); it ignores top-p and
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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from streampro_jax import losses, models
from streampro_jax.data import chat_format
from streampro_jax.models import common, kv_cache

# Per-turn decisions of a rollout (the codes of RolloutBatch.decisions; the token strings are
# prompts.SILENCE_TOKEN / RESPONSE_TOKEN).
TURN_SILENCE = 0
TURN_RESPONSE = 1
TURN_INVALID = 2
SILENCE, RESPONSE, INVALID = TURN_SILENCE, TURN_RESPONSE, TURN_INVALID  # Short names (public).
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
  """Offline prompting of a plain video-LLM (docs/method.md section 4, baselines).

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

  BATCH_KEYS = ("input_ids", "labels", "loss_mask", "decision_class", "attention_mask",
                "position_ids", "pixel_values_videos", "old_logps")

  def predictions(self, row: int) -> list[tuple[float, str]]:
    """[(Y = k + 1, text)] of the row's RESPONSE turns (the StreamPro-F1 / R_turn input)."""
    return [(float(k + 1), self.texts[row][k]) for k in range(int(self.num_turns[row]))
            if self.decisions[row, k] == RESPONSE]

  def as_batch(self) -> dict[str, np.ndarray]:
    """The arrays a train step takes (batch keys of docs/architecture.md + old_logps)."""
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


_round_up = common.round_up


def row_keys(key: jax.Array, turn, step, n: int) -> jax.Array:
  """The N PRNG keys of draw `step` of turn `turn`: fold_in(fold_in(fold_in(key, turn), step), r)
  for rows r = 0 .. N-1 (step 0 is the message's first token, drawn from the user chunk)."""
  k = jax.random.fold_in(jax.random.fold_in(key, turn), step)
  return jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(n))


class Message(NamedTuple):
  """One assistant message of every row (device or host arrays), M = max_sampled + 1.

  tokens i32[N, M] (entries past `length` are 0); old_logps / sampling_logps f32[N, M] (see the
  module docstring); forced bool[N, M] the token was forced; length i32[N] tokens of the message,
  the final <|im_end|> included (0 for rows without this turn).
  """
  tokens: Any
  old_logps: Any
  sampling_logps: Any
  forced: Any
  length: Any


def decode_message(params, cache: kv_cache.KVCache, first: tuple, active: jax.Array,
                   next_position: jax.Array, turn: jax.Array, key: jax.Array, *, model_config,
                   sampling: Callable, end_id: int, max_sampled: int, silence_id: int = -1
                   ) -> tuple[Message, kv_cache.KVCache]:
  """Generates the rest of one assistant message of every row on device (one lax.while_loop).

  Args:
    params, cache: the model parameters and the KV cache after the turn's user chunk.
    first: (token i32[N], old_logp f32[N], sampling_logp f32[N], forced bool[N]) the message's
      first token, drawn from the user chunk's last logits.
    active: bool[N] rows that have this turn (the others feed nothing and get length 0).
    next_position: i32[N] the M-RoPE position of the first token; text token i of the message
      sits at next_position + i on all three axes.
    turn: i32[] the turn id (cache turn of the fed tokens and PRNG fold-in).
    key: the rollout's PRNG key.
    model_config: the backbone config (static); sampling: fn(logits f32[N, V], keys, force i32[N],
      restrict bool[N]) -> (token, old_logp, sampling_logp), e.g. a partial of `sample_tokens`.
    end_id: <|im_end|>; max_sampled: tokens after which <|im_end|> is forced; silence_id >= 0:
      <|im_end|> is also forced right after a first token equal to it (constrained decision).

  Step s = 1, 2, ...: every row that is not done feeds its token s - 1 through the cache
  ([N, 1] extend, chunk_mask = not done, position next_position + s - 1) and draws token s with
  `row_keys(key, turn, s, N)`; a row is done once it holds <|im_end|>. The loop stops when all
  rows are done (at most max_sampled steps). The final <|im_end|> is not fed (module docstring).

  Returns (Message, cache).
  """
  tok0, old0, slp0, forced0 = first
  n = tok0.shape[0]
  m = max_sampled + 1
  col = jnp.arange(m, dtype=jnp.int32)[None, :]

  def put(buf, value, where):   # buf[r, length[r]] = value[r] where where[r]
    return jnp.where(where, value[:, None].astype(buf.dtype), buf)

  at0 = (col == 0) & active[:, None]
  msg = Message(tokens=put(jnp.zeros((n, m), jnp.int32), tok0, at0),
                old_logps=put(jnp.zeros((n, m), jnp.float32), old0, at0),
                sampling_logps=put(jnp.zeros((n, m), jnp.float32), slp0, at0),
                forced=put(jnp.zeros((n, m), bool), forced0, at0),
                length=active.astype(jnp.int32))
  done = ~active | (tok0 == end_id)
  no_restrict = jnp.zeros((n,), bool)
  # Every step's row keys up front (the same keys as row_keys inside the loop): no key
  # derivation (three threefry hashes) per decoded token. keys[s]: the N keys of step s.
  keys = jax.vmap(lambda s: row_keys(key, turn, s, n))(jnp.arange(m, dtype=jnp.int32))

  def cond(carry):
    step, _, _, done = carry
    return (step <= max_sampled) & ~jnp.all(done)

  def body(carry):
    step, cache, msg, done = carry
    feed = ~done
    last = jnp.take_along_axis(msg.tokens, jnp.maximum(msg.length - 1, 0)[:, None], axis=1)
    pos = jnp.broadcast_to((next_position + msg.length - 1)[None, :, None], (3, n, 1))
    end_now = msg.length >= max_sampled
    if silence_id >= 0:
      end_now |= (msg.length == 1) & (msg.tokens[:, 0] == silence_id)
    force = jnp.where(feed & end_now, end_id, -1).astype(jnp.int32)
    logits, cache = kv_cache.extend(params, cache, last, pos.astype(jnp.int32),
                                    config=model_config, turn_id=turn,
                                    chunk_mask=feed[:, None].astype(jnp.int32), output="last")
    tok, old, slp = sampling(logits, keys[step], force, no_restrict)
    at = (col == msg.length[:, None]) & feed[:, None]
    msg = Message(tokens=put(msg.tokens, tok, at), old_logps=put(msg.old_logps, old, at),
                  sampling_logps=put(msg.sampling_logps, slp, at),
                  forced=put(msg.forced, force >= 0, at), length=msg.length + feed)
    return step + 1, cache, msg, done | (feed & (tok == end_id))

  _, cache, msg, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, msg, done))
  return msg, cache


def sampler_step_fns(model_config, cfg: SamplerConfig, video_grid: Sequence[int], *,
                     im_end_id: int, silence_id: int | None, response_id: int | None,
                     vision_token_ids: Sequence[int]) -> tuple[Callable, Callable, Callable]:
  """The sampler's three step functions, un-jitted (StreamingSampler jits each with the cache
  donated; train/aot.py compiles them for a TPU topology).

  pin_fn(params, cache, ids i32[N, S], pos i32[3, N, S], mask i32[N, S]) -> cache: the pinned
  system prefix.
  user_fn(params, cache, ids i32[N, C], pos i32[3, N, C], turn i32[], mask i32[N, C],
  pix f32[B, P, Dp], key, force i32[N], restrict bool[N]) -> ((token, old_logp, sampling_logp,
  forced) each [N], cache): the prefill of a turn's user chunk with its frames (vision tower on
  the B samples, features repeated G = N / B times) and the message's first token.
  decode_fn(params, cache, first, active, next_position, turn, key) -> (Message, cache):
  `decode_message` with this sampler's settings.
  """
  mcfg = model_config
  grid = np.asarray([tuple(video_grid)], np.int64)
  sampling = functools.partial(
      sample_tokens, temperature=float(cfg.temperature), top_p=float(cfg.top_p),
      allowed_ids=((int(silence_id), int(response_id)) if cfg.constrain_decision else ()),
      banned_ids=tuple(vision_token_ids))
  module = models.build(mcfg)
  encode_vision = type(module).encode_vision

  def pin_fn(params, cache, ids, pos, mask):
    _, cache = kv_cache.extend(params, cache, ids, pos, config=mcfg, turn_id=0,
                               chunk_mask=mask, pin=True, output="hidden", fresh=True)
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
    tok, old, slp = sampling(logits, row_keys(key, turn, 0, n), force, restrict)
    return (tok, old, slp, force >= 0), cache

  decode_fn = functools.partial(
      decode_message, model_config=mcfg, sampling=sampling, end_id=int(im_end_id),
      max_sampled=cfg.max_text_tokens + 1,
      silence_id=(int(silence_id) if cfg.constrain_decision else -1))
  return pin_fn, user_fn, decode_fn


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


@dataclasses.dataclass
class _Stream:
  """Host state of a `sample` call between turns (N rows)."""
  rows: list                  # [N] _Row
  next_position: np.ndarray   # i64[N] the rule's running M-RoPE position
  had_message: np.ndarray     # bool[N] the row owes "<|im_end|>\n" to its next user chunk
  decisions: np.ndarray       # i32[N, K]
  texts: list
  messages: list


@dataclasses.dataclass
class _UserChunk:
  """The user chunks of one turn (host arrays, N rows, bucket C)."""
  ids: np.ndarray          # i32[N, C]
  mask: np.ndarray         # i32[N, C]
  pos: np.ndarray          # i32[3, N, C]
  next_position: np.ndarray  # i32[N] after the chunk: the position of the message's first token
  new_start: np.ndarray    # i32[N] first chunk token not yet recorded (1 when the lead <|im_end|>
                           #   was recorded as the previous message's last token)
  pixels: np.ndarray       # f32[B, P, D] this turn's frames of each sample
  force: np.ndarray        # i32[N] forced first token (-1: drawn)
  active: np.ndarray       # bool[N] rows that have this turn


class StreamingSampler:
  """Samples B x G streaming rollouts with a KV cache (see the module docstring).

  Args:
    model_config: a backbone config (qwen2_5_vl.Qwen2_5_VLConfig or qwen3_vl.Qwen3VLConfig; its
      special ids must be the tokenizer's).
    prompt_format: StreamProFormat (default when a ChatFormat is given) or WaitPromptFormat.
    config: SamplerConfig.
    video_grid: the grid (1, gh, gw) of one turn.
    mesh: None (one process: the jitted functions take host arrays) or the training mesh, to
      sample across processes: every process calls `sample` with its own prompts (the same
      number B on each, and the same group size, seed and turn count max), its rows become
      one global batch split over the mesh's (data, fsdp) devices in process order (global row
      = process * N + local row, parallel.rows_to_global), every jitted step runs once over
      the global batch with the (globally sharded) parameters, and each process reads back
      only its own rows (parallel.rows_to_local). The draws depend on the global row, so the
      rollouts equal one process sampling all prompts in process order with the same seed.
      Each process's B and N must be divisible by its devices on (data, fsdp).
  """

  def __init__(self, model_config, prompt_format, config: SamplerConfig | None = None, *,
               video_grid: Sequence[int], mesh=None):
    if isinstance(prompt_format, chat_format.ChatFormat):
      prompt_format = StreamProFormat(prompt_format)
    self.model_config = model_config
    self.mesh = mesh
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
    pin_fn, user_fn, decode_fn = sampler_step_fns(
        self.model_config, self.cfg, self.grid, im_end_id=self.im_end_id,
        silence_id=self.silence_id, response_id=self.response_id,
        vision_token_ids=self.vision_token_ids)
    self._pin = jax.jit(pin_fn, donate_argnums=(1,))
    self._user = jax.jit(user_fn, donate_argnums=(1,))
    self._decode = jax.jit(decode_fn, donate_argnums=(1,))

  def compile_counts(self) -> dict[str, int]:
    """Compiled variants of each jitted function (1 each after any number of calls)."""
    return {"prefix": self._pin._cache_size(), "user": self._user._cache_size(),
            "decode": self._decode._cache_size()}

  # -- rows across processes -------------------------------------------------------------------

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

  def _init_cache(self, n: int, capacity: int) -> kv_cache.KVCache:
    """An empty cache of n rows (this process's rows of a global cache across processes)."""
    init = functools.partial(kv_cache.init_cache, self.model_config, capacity=capacity,
                             window_turns=self.cfg.window_turns)
    if self.mesh is None:
      return init(n)
    from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
    n_global = n * jax.process_count()
    shapes = jax.eval_shape(lambda: init(n_global))
    # Scanned k / v stacks are [L, B, K, cap, H] (rows on dim 1); every other leaf has rows first.
    shard = jax.tree.map(lambda x: jax.sharding.NamedSharding(
        self.mesh, parallel.row_spec(x.ndim, 1 if x.ndim == 5 else 0)), shapes)
    return jax.jit(lambda: init(n_global), out_shardings=shard)()

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

  def small_chunk_len_for(self, prompts: Sequence[StreamPrompt], user_chunk_len: int) -> int:
    """The small bucket C_small for these prompts (0 when off or not below C_user)."""
    small = self.cfg.small_chunk_len
    if small < 0:
      return 0
    if not small:
      last = max(max(p.num_turns for p in prompts) - 1, 0)
      need = (1 + len(self.newline_ids) + len(self.fmt.user_ids(last, None))
              + len(self._header))
      small = _round_up(need, self.cfg.chunk_multiple)
    return small if small < user_chunk_len else 0

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

    Steps: `_prefix` (pinned system prompt), then per turn `_user_chunk` (host: the chunk of
    every row), `_prefill_user` (device: chunk + frames, first token), `_decode_message`
    (device: the rest of the message, one while loop) and `_record_turn` (host: the turn's only
    device-to-host transfer); `_assemble` lays the rows out.
    """
    g = int(group_size)
    self._check_prompts(prompts, g)
    k_row = np.repeat(np.asarray([p.num_turns for p in prompts], np.int32), g)
    k_max = int(k_row.max())
    c_user = self.user_chunk_len_for(prompts)
    cap = self.capacity_for_prompts(prompts, c_user)
    if self.mesh is not None:   # one turn count and one set of shapes for every process
      from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
      k_max, c_user, cap = (int(x) for x in parallel.process_max([k_max, c_user, cap]))
    widths = self._chunk_widths(prompts, k_max, c_user, self.small_chunk_len_for(prompts, c_user))
    key = self._key(int(seed))
    cache, stream = self._prefix(params, len(k_row), cap, k_max)
    for k in range(k_max):
      chunk = self._user_chunk(prompts, g, k, stream, c_user, int(widths[k]))
      first, cache = self._prefill_user(params, cache, chunk, k, key)
      active, nxt = self._global((chunk.active, chunk.next_position))
      turn = np.int32(k)
      if self.mesh is None:  # every input on device before the decode (no transfer inside it)
        active, nxt, turn = jax.device_put((active, nxt, turn))
      msg, cache = self._decode_message(params, cache, first, active, nxt, turn, key)
      self._record_turn(stream, chunk, self._local(msg), k)
      if on_turn is not None:
        on_turn(k, k_max)
    self._close_rows(stream, k_row)
    overflow = np.asarray(self._local(cache.overflow))
    return self._assemble(stream.rows, prompts, g, stream.decisions, stream.texts,
                          stream.messages, k_row, k_max, seq_len, overflow)

  def _check_prompts(self, prompts: Sequence[StreamPrompt], g: int) -> None:
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

  def _prefix(self, params, n: int, capacity: int, k_max: int
              ) -> tuple[kv_cache.KVCache, _Stream]:
    """A cache of N rows holding the pinned system prefix, and the host state after it."""
    cache = self._init_cache(n, capacity)
    ids = np.tile(self._system[None], (n, 1))
    mask = np.ones_like(ids)
    pos, nxt = self.backbone.chunk_position_ids(ids, np.zeros((n,), np.int64),
                                                config=self.model_config, chunk_mask=mask)
    cache = self._pin(params, cache, *self._global((ids, pos, mask), (0, 1, 0)))
    rows = [_Row() for _ in range(n)]
    for r in range(n):
      rows[r].add(self._system, pos[:, r], -1)
    return cache, _Stream(rows=rows, next_position=nxt.astype(np.int64),
                          had_message=np.zeros((n,), bool),
                          decisions=np.full((n, k_max), NO_TURN, np.int32),
                          texts=[[] for _ in range(n)], messages=[[] for _ in range(n)])

  def _chunk_tokens(self, prompt: StreamPrompt, k: int) -> np.ndarray:
    """Turn k's user message of a prompt (time label, [question], frames)."""
    asked = k == prompt.ask_turn or (self._repeat and k > prompt.ask_turn)
    q = prompt.question if (prompt.question is not None and asked) else None
    return self.fmt.user_ids(k, q)

  def _chunk_widths(self, prompts: Sequence[StreamPrompt], k_max: int, c_user: int,
                    c_small: int) -> np.ndarray:
    """The bucket of each turn, i32[k_max]: C_small (when > 0) if every row's chunk of the turn
    fits it, else C_user; across processes the largest of any process (one shape per turn)."""
    widths = np.full((k_max,), c_user, np.int64)
    if c_small > 0:
      lead, head = 1 + len(self.newline_ids), len(self._header)
      for k in range(k_max):
        need = max((lead * (k > 0) + len(self._chunk_tokens(p, k)) + head
                    for p in prompts if k < p.num_turns), default=0)
        widths[k] = c_small if need <= c_small else c_user
    if self.mesh is not None:
      from streampro_jax import parallel  # pylint: disable=g-import-not-at-top
      widths = parallel.process_max(widths)
    return widths

  def _user_chunk(self, prompts: Sequence[StreamPrompt], g: int, k: int, stream: _Stream,
                  c_user: int, c: int | None = None) -> _UserChunk:
    """Turn k's user chunk of every row (host): ["<|im_end|>\\n" of the previous message] user
    message (time label, [question], frames) + assistant header; rows padded to the turn's
    bucket c (`_chunk_widths`; default C_user)."""
    n = len(stream.rows)
    active = np.asarray([k < prompts[r // g].num_turns for r in range(n)])
    force = np.full((n,), -1, np.int32)
    chunks = {}
    for r in np.nonzero(active)[0]:
      prompt = prompts[r // g]
      lead = ([self.im_end_id] + self.newline_ids) if stream.had_message[r] else []
      chunk = np.concatenate([np.asarray(lead, np.int32), self._chunk_tokens(prompt, k),
                              self._header]).astype(np.int32)
      if len(chunk) > c_user:
        raise ValueError(f"turn {k} of sample {prompt.sample_id!r} needs a user chunk of "
                         f"{len(chunk)} tokens but the bucket is {c_user}")
      chunks[r] = chunk
      if k in prompt.force_response_turns:
        force[r] = self.response_id
    c = c_user if c is None else c
    if max((len(x) for x in chunks.values()), default=0) > c:
      raise AssertionError(f"turn {k}: a chunk is longer than the turn's bucket {c}")
    ids = np.full((n, c), self.pad_id, np.int32)
    mask = np.zeros((n, c), np.int32)
    for r, chunk in chunks.items():
      ids[r, :len(chunk)] = chunk
      mask[r, :len(chunk)] = 1
    pos, nxt = self.backbone.chunk_position_ids(
        ids, stream.next_position, config=self.model_config,
        video_grid_thw=np.asarray([self.grid], np.int64), chunk_mask=mask)
    d = prompts[0].pixel_values.shape[2]
    pix = np.zeros((len(prompts), self.patches_per_turn, d), np.float32)
    for i, prompt in enumerate(prompts):
      if k < prompt.num_turns:
        pix[i] = prompt.pixel_values[k]
    return _UserChunk(ids=ids, mask=mask, pos=pos,
                      next_position=np.where(active, nxt, stream.next_position).astype(np.int32),
                      new_start=stream.had_message.astype(np.int32), pixels=pix, force=force,
                      active=active)

  def _prefill_user(self, params, cache, chunk: _UserChunk, k: int, key):
    """Writes the user chunks (and frames) into the cache; the message's first token of each row
    (token, old_logp, sampling_logp, forced), on device."""
    restrict = chunk.active & bool(self.cfg.constrain_decision)
    ids, pos, mask, pixels, force, restrict = self._global(
        (chunk.ids, chunk.pos, chunk.mask, chunk.pixels, chunk.force, restrict),
        (0, 1, 0, 0, 0, 0))
    return self._user(params, cache, ids, pos, np.int32(k), mask, pixels, key, force, restrict)

  def _decode_message(self, params, cache, first, active, next_position, turn, key):
    """The rest of the turn's message of every row: `decode_message` under jit, device arrays
    in and out (no host transfer until the caller fetches the Message)."""
    return self._decode(params, cache, first, active, next_position, turn, key)

  def _record_turn(self, stream: _Stream, chunk: _UserChunk, msg: Message, k: int) -> None:
    """Records turn k on the host: each active row's user chunk (the "\\n" closing the previous
    message belongs to turn k - 1) and its message; parses the message."""
    nl = len(self.newline_ids)
    for r in np.nonzero(chunk.active)[0]:
      m, s = int(chunk.mask[r].sum()), int(chunk.new_start[r])
      row = stream.rows[r]
      if s < m and stream.had_message[r]:
        row.add(chunk.ids[r, s:s + nl], chunk.pos[:, r, s:s + nl], k - 1)
        s += nl
      row.add(chunk.ids[r, s:m], chunk.pos[:, r, s:m], k)
      length = int(msg.length[r])
      toks = msg.tokens[r, :length]
      position = int(chunk.next_position[r]) + np.arange(length)
      row.add(toks, np.broadcast_to(position, (3, length)), k,
              np.where(msg.forced[r, :length], FORCED_TOKEN, SAMPLED_TOKEN),
              msg.old_logps[r, :length], msg.sampling_logps[r, :length])
      body = self.fmt.tokenizer.decode(toks[:-1].tolist(), skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
      dec, text = self.fmt.parse(body)
      stream.decisions[r, k] = dec
      stream.texts[r].append(text if dec == RESPONSE else "")
      stream.messages[r].append(body)
      stream.had_message[r] = True
      # The final <|im_end|> sits at the running position; the next chunk feeds it.
      stream.next_position[r] = int(chunk.next_position[r]) + length - 1

  def _close_rows(self, stream: _Stream, k_row: np.ndarray) -> None:
    """The trailing "\\n" after each row's last <|im_end|> (layout only; never fed)."""
    nl = len(self.newline_ids)
    for r, row in enumerate(stream.rows):
      start = int(stream.next_position[r]) + 1
      row.add(self.newline_ids, np.broadcast_to(np.arange(start, start + nl), (3, nl)),
              int(k_row[r]) - 1)

  def _assemble(self, rows, prompts, g, decisions, texts, messages, k_row, k_max, seq_len,
                overflow) -> RolloutBatch:
    """The RolloutBatch of the recorded rows (padded to seq_len or pad_multiple)."""
    n = len(rows)
    rows = [r.arrays() for r in rows]
    lengths = np.asarray([len(r["ids"]) for r in rows], np.int32)
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

