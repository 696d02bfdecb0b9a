"""The streaming chat format: one (record, question) -> token ids, labels and masks.

Layout (Qwen2.5-VL chat template; docs/architecture.md#shared-interfaces), for turns k = 0 .. K-1::

  <|im_start|>system\\n{prompts.STREAMING_SYSTEM_PROMPT}<|im_end|>\\n
  <|im_start|>user\\n[{question}\\n]<ks-(k+1)s>\\n
      <|vision_start|>{<|video_pad|> x n}<|vision_end|><|im_end|>\\n     (one line, split here)
  <|im_start|>assistant\\n</Silence><|im_end|>\\n        (or </Response>{answer text})

Turn timing (docs/method.md section 1, docs/architecture.md):
  * K = ceil(duration); turn k covers <ks-(k+1)s> and happens at time Y = k + 1;
  * a question asked at time a goes on turn floor(a), clipped to K - 1;
  * an answer with response time t goes on turn max(ceil(t) - 1, 0, ask_turn);
  * several answers on one turn: their texts joined with "; " in time order [choice];
  * every other turn is </Silence> (including the turns before the question is asked).
  floor/ceil use a 1e-6 tolerance (t = 5.0000000001 counts as 5.0) so that times read from
  float durations land on the intended turn [choice].

Supervision: the tokens of each assistant message after its header (the decision token, the
answer text, and the closing <|im_end|>) are the targets. ``labels`` are shifted
(``labels[t] = input_ids[t + 1]``, and the pad id at the last position); ``loss_mask[t] = 1`` when
``input_ids[t + 1]`` is such a target; ``decision_class[t]`` is 1 where the target is </Silence>,
2 where it is </Response>, else 0.

Tokenisation is done per piece (each piece starts or ends next to a special token), which gives
the same ids as tokenising the whole rendered string (special tokens are split out before the
text model runs); ``_render_text`` builds that whole string and the tests check the equality.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

from streampro_jax import prompts
from streampro_jax.data import schema

__all__ = ["ANSWER_JOINER", "ChatFormat", "DECISION_RESPONSE", "answer_turn", "ask_turn",
           "assistant_header_text", "num_turns", "plan_turns", "system_text", "time_label",
           "turn_time", "DecodedTurn", "Trajectory", "TurnPlan"]

ANSWER_JOINER = "; "
"""Texts of several answers that fall on the same turn are joined with this [choice]."""

_DECISION_NONE = 0
_DECISION_SILENCE = 1
DECISION_RESPONSE = 2

_TIME_EPS = 1e-6

# ------------------------------------------------------------------------------------------------
# Turn timing (pure functions of times).


def num_turns(duration: float) -> int:
  """K = ceil(duration) (at least 1)."""
  return max(1, int(math.ceil(float(duration) - _TIME_EPS)))


def ask_turn(ask_time: float, n_turns: int) -> int:
  """Turn of a question asked at ``ask_time``: min(floor(ask_time), K - 1)."""
  return int(min(max(math.floor(float(ask_time) + _TIME_EPS), 0), n_turns - 1))


def answer_turn(response_time: float, question_turn: int = 0) -> int:
  """Turn of an answer due at ``response_time``: max(ceil(t) - 1, 0, question_turn)."""
  return int(max(math.ceil(float(response_time) - _TIME_EPS) - 1, 0, question_turn))


def turn_time(k: int) -> float:
  """Time Y = k + 1 at which turn k happens (a response on turn k is dated Y)."""
  return float(k + 1)


def time_label(k: int) -> str:
  """"<ks-(k+1)s>"."""
  return f"<{k}s-{k + 1}s>"


_LABEL_RE = re.compile(r"^<(\d+)s-(\d+)s>$")


def _parse_time_label(label: str) -> tuple[int, int]:
  """"<4s-5s>" -> (4, 5)."""
  m = _LABEL_RE.match(label)
  if not m:
    raise ValueError(f"not a time label: {label!r}")
  return int(m.group(1)), int(m.group(2))


@dataclasses.dataclass(frozen=True)
class TurnPlan:
  """What turn ``index`` holds: the question (on its ask turn), the decision and answer text."""
  index: int
  decision: int                 # _DECISION_SILENCE or DECISION_RESPONSE
  text: str = ""                # answer text ("" for silence)
  question: str | None = None

  @property
  def label(self) -> str:
    return time_label(self.index)


def _resolve_question(record: schema.Record,
                      question: schema.Question | str | int | None) -> schema.Question:
  if isinstance(question, schema.Question):
    return question
  if question is None:
    if len(record.questions) != 1:
      raise ValueError(f"record {record.id!r} has {len(record.questions)} questions; say which")
    return record.questions[0]
  if isinstance(question, int):
    return record.questions[question]
  return record.question(question)


def plan_turns(record: schema.Record, question: schema.Question | str | int | None = None,
               *, max_turns: int | None = None) -> list[TurnPlan]:
  """The per-turn content of one trajectory (no tokenizer needed).

  Args:
    record: the video's record.
    question: a Question, its id, its index, or None when the record has exactly one.
    max_turns: keep only turns [0, max_turns) (answers due later are dropped).

  Raises:
    ValueError: the question is asked after the ``max_turns`` cut.
  """
  q = _resolve_question(record, question)
  k_total = num_turns(record.duration)
  q_turn = ask_turn(q.ask_time, k_total)
  k_keep = k_total if max_turns is None else min(k_total, int(max_turns))
  if k_keep < 1:
    raise ValueError(f"max_turns must be >= 1, got {max_turns}")
  if q_turn >= k_keep:
    raise ValueError(f"question {q.id!r} of record {record.id!r} is asked on turn {q_turn}, "
                     f"past the max_turns cut of {k_keep} turns")
  texts: dict[int, list[str]] = {}
  for a in q.sorted_answers():
    k = min(answer_turn(a.response_time, q_turn), k_total - 1)
    texts.setdefault(k, []).append(a.text)
  plans = []
  for k in range(k_keep):
    question_text = q.question if k == q_turn else None
    if k in texts:
      plans.append(TurnPlan(k, DECISION_RESPONSE, ANSWER_JOINER.join(texts[k]), question_text))
    else:
      plans.append(TurnPlan(k, _DECISION_SILENCE, "", question_text))
  return plans


# ------------------------------------------------------------------------------------------------
# Text pieces.


def system_text(system_prompt: str = prompts.STREAMING_SYSTEM_PROMPT) -> str:
  return f"{prompts.IM_START}system\n{system_prompt}{prompts.IM_END}\n"


def _user_turn_text(k: int, question: str | None = None, *, tokens_per_turn: int) -> str:
  q = "" if question is None else f"{question}\n"
  return (f"{prompts.IM_START}user\n{q}{time_label(k)}\n"
          f"{prompts.VISION_START}{prompts.VIDEO_PAD * tokens_per_turn}"
          f"{prompts.VISION_END}{prompts.IM_END}\n")


def assistant_header_text() -> str:
  return f"{prompts.IM_START}assistant\n"


def _assistant_body_text(decision: int, text: str = "") -> str:
  """The supervised part of an assistant message plus its trailing newline."""
  if decision == _DECISION_SILENCE:
    return f"{prompts.SILENCE_TOKEN}{prompts.IM_END}\n"
  if decision == DECISION_RESPONSE:
    return f"{prompts.RESPONSE_TOKEN}{text}{prompts.IM_END}\n"
  raise ValueError(f"decision must be {_DECISION_SILENCE} or {DECISION_RESPONSE}, got {decision}")


def _render_text(record: schema.Record, question=None, *, tokens_per_turn: int,
                max_turns: int | None = None,
                system_prompt: str = prompts.STREAMING_SYSTEM_PROMPT) -> str:
  """The whole trajectory as one string (what the token ids decode to)."""
  parts = [system_text(system_prompt)]
  for p in plan_turns(record, question, max_turns=max_turns):
    parts.append(_user_turn_text(p.index, p.question, tokens_per_turn=tokens_per_turn))
    parts.append(assistant_header_text())
    parts.append(_assistant_body_text(p.decision, p.text))
  return "".join(parts)


# ------------------------------------------------------------------------------------------------
# Token ids.


@dataclasses.dataclass
class Trajectory:
  """One rendered trajectory. Arrays have length L (number of tokens) unless said otherwise.

  Attributes:
    input_ids: i32[L].
    labels: i32[L], labels[t] = input_ids[t+1]; labels[L-1] = pad id.
    loss_mask: f32[L], 1 where labels[t] is an assistant target.
    decision_class: i32[L], 1 for a </Silence> target, 2 for </Response>, else 0.
    turn_index: i32[L], turn of each token, -1 for the system prompt.
    num_turns: K.
    user_spans: i32[K, 2], [start, end) of each user message (from <|im_start|> to after "\\n").
    assistant_spans: i32[K, 2], [start, end) of each assistant message (header included).
    turn_decisions: i32[K], 1 silence / 2 response per turn.
    turns: the TurnPlan of each turn.
    record_id, question_id, task: where it came from.
    tokens_per_turn: <|video_pad|> tokens per user turn.
  """
  input_ids: np.ndarray
  labels: np.ndarray
  loss_mask: np.ndarray
  decision_class: np.ndarray
  turn_index: np.ndarray
  num_turns: int
  user_spans: np.ndarray
  assistant_spans: np.ndarray
  turn_decisions: np.ndarray
  turns: tuple[TurnPlan, ...]
  record_id: str = ""
  question_id: str = ""
  task: str = ""
  tokens_per_turn: int = 0

  def __len__(self) -> int:
    return int(self.input_ids.shape[0])


@dataclasses.dataclass(frozen=True)
class DecodedTurn:
  """One turn parsed back from token ids.

  ``decision`` is "silence", "response", "invalid" (the assistant message is not a lone
  </Silence> nor </Response> + non-empty text) or "missing" (no assistant message yet).
  """
  index: int
  label: str
  question: str | None
  decision: str
  text: str
  num_video_pads: int

  @property
  def time(self) -> float:
    return turn_time(self.index)


def _encode(tokenizer, text: str) -> list[int]:
  return list(tokenizer.encode(text, add_special_tokens=False))


def _token_id(tokenizer, token: str) -> int:
  ids = _encode(tokenizer, token)
  if len(ids) != 1:
    raise ValueError(f"{token} is not a single token in this tokenizer (got ids {ids}); "
                     "load it with tokenizer.load_tokenizer()")
  return ids[0]


class ChatFormat:
  """Renders trajectories and their pieces with one tokenizer and one video-pad count.

  Args:
    tokenizer: a HF tokenizer holding Qwen's special tokens and the decision tokens.
    tokens_per_turn: <|video_pad|> tokens per user turn (= gh * gw / 4 for grid (1, gh, gw)).
    system_prompt: the system prompt (default prompts.STREAMING_SYSTEM_PROMPT).
  """

  def __init__(self, tokenizer, *, tokens_per_turn: int,
               system_prompt: str = prompts.STREAMING_SYSTEM_PROMPT):
    if tokens_per_turn < 0:
      raise ValueError(f"tokens_per_turn must be >= 0, got {tokens_per_turn}")
    self.tokenizer = tokenizer
    self.tokens_per_turn = int(tokens_per_turn)
    self.system_prompt = system_prompt
    self.im_start_id = _token_id(tokenizer, prompts.IM_START)
    self.im_end_id = _token_id(tokenizer, prompts.IM_END)
    self.vision_start_id = _token_id(tokenizer, prompts.VISION_START)
    self.vision_end_id = _token_id(tokenizer, prompts.VISION_END)
    self.video_pad_id = _token_id(tokenizer, prompts.VIDEO_PAD)
    self.silence_id = _token_id(tokenizer, prompts.SILENCE_TOKEN)
    self.response_id = _token_id(tokenizer, prompts.RESPONSE_TOKEN)
    self.pad_id = _token_id(tokenizer, prompts.PAD)
    self.newline_ids = _encode(tokenizer, "\n")
    self._system = np.asarray(_encode(tokenizer, system_text(system_prompt)), np.int32)
    self._header = np.asarray(_encode(tokenizer, assistant_header_text()), np.int32)
    self._silence_body = np.asarray(self._body(_DECISION_SILENCE, ""), np.int32)
    self._user_cache: dict[int, np.ndarray] = {}
    self._vision = ([self.vision_start_id] + [self.video_pad_id] * self.tokens_per_turn
                    + [self.vision_end_id, self.im_end_id] + self.newline_ids)

  # -- pieces ------------------------------------------------------------------------------------

  def system_ids(self) -> np.ndarray:
    """i32 ids of "<|im_start|>system\\n{prompt}<|im_end|>\\n"."""
    return self._system.copy()

  def user_turn_ids(self, k: int, question: str | None = None) -> np.ndarray:
    """i32 ids of turn k's user message (question prepended when given), trailing "\\n" included."""
    if question is None and k in self._user_cache:
      return self._user_cache[k].copy()
    q = "" if question is None else f"{question}\n"
    head = _encode(self.tokenizer, f"{prompts.IM_START}user\n{q}{time_label(k)}\n")
    ids = np.asarray(head + self._vision, np.int32)
    if question is None:
      self._user_cache[k] = ids
    return ids.copy()

  def assistant_header_ids(self) -> np.ndarray:
    """i32 ids of "<|im_start|>assistant\\n" (what the sampler feeds before decoding)."""
    return self._header.copy()

  def _body(self, decision: int, text: str) -> list[int]:
    if decision == _DECISION_SILENCE:
      return [self.silence_id, self.im_end_id] + self.newline_ids
    if decision == DECISION_RESPONSE:
      return ([self.response_id] + _encode(self.tokenizer, text) + [self.im_end_id]
              + self.newline_ids)
    raise ValueError(f"decision must be {_DECISION_SILENCE} or {DECISION_RESPONSE}, got {decision}")

  def assistant_body_ids(self, decision: int, text: str = "") -> np.ndarray:
    """i32 ids of the supervised assistant part: decision token, text, <|im_end|>, then "\\n"."""
    if decision == _DECISION_SILENCE:
      return self._silence_body.copy()
    return np.asarray(self._body(decision, text), np.int32)

  # -- whole trajectories ------------------------------------------------------------------------

  def render(self, record: schema.Record, question=None, *,
             max_turns: int | None = None) -> Trajectory:
    """Renders one (record, question) trajectory; see the module docstring for the layout."""
    q = _resolve_question(record, question)
    plans = plan_turns(record, q, max_turns=max_turns)
    pieces = [self._system]
    turn_of_piece = [-1]
    supervised_piece = [False]
    n_turns = len(plans)
    user_spans = np.zeros((n_turns, 2), np.int32)
    asst_spans = np.zeros((n_turns, 2), np.int32)
    pos = len(self._system)
    n_nl = len(self.newline_ids)
    for p in plans:
      user = self.user_turn_ids(p.index, p.question)
      body = self.assistant_body_ids(p.decision, p.text)
      user_spans[p.index] = (pos, pos + len(user))
      pos += len(user)
      asst_spans[p.index] = (pos, pos + len(self._header) + len(body))
      pos += len(self._header) + len(body)
      # The body's trailing newline is not supervised.
      pieces += [user, self._header, body[:len(body) - n_nl], body[len(body) - n_nl:]]
      turn_of_piece += [p.index] * 4
      supervised_piece += [False, False, True, False]
    input_ids = np.concatenate(pieces).astype(np.int32)
    lengths = [len(x) for x in pieces]
    turn_index = np.repeat(np.asarray(turn_of_piece, np.int32), lengths)
    is_target = np.repeat(np.asarray(supervised_piece, bool), lengths)
    labels = np.empty_like(input_ids)
    labels[:-1] = input_ids[1:]
    labels[-1] = self.pad_id
    loss_mask = np.zeros(input_ids.shape, np.float32)
    loss_mask[:-1] = is_target[1:]
    decision_class = np.zeros(input_ids.shape, np.int32)
    supervised = loss_mask > 0
    decision_class[supervised & (labels == self.silence_id)] = _DECISION_SILENCE
    decision_class[supervised & (labels == self.response_id)] = DECISION_RESPONSE
    return Trajectory(
        input_ids=input_ids, labels=labels, loss_mask=loss_mask, decision_class=decision_class,
        turn_index=turn_index, num_turns=n_turns, user_spans=user_spans,
        assistant_spans=asst_spans,
        turn_decisions=np.asarray([p.decision for p in plans], np.int32), turns=tuple(plans),
        record_id=record.id, question_id=q.id, task=q.task, tokens_per_turn=self.tokens_per_turn)

  # -- parsing back ------------------------------------------------------------------------------

  def decode_turns(self, ids: Sequence[int]) -> list[DecodedTurn]:
    """Parses ids (a rendered or generated trajectory) back into turns; see ``_decode_turns``."""
    return _decode_turns(ids, self.tokenizer)


_USER_RE = re.compile(r"^user\n(?:(?P<q>.*)\n)?(?P<label><\d+s-\d+s>)\n$", re.DOTALL)


def _decode_turns(ids: Sequence[int], tokenizer) -> list[DecodedTurn]:
  """Parses token ids back into per-turn (time label, question, decision, text).

  The system message is skipped. Each user message opens a turn; the assistant message that
  follows closes it (a final assistant message without <|im_end|>, as in generation, is parsed as
  far as it goes; a turn with no assistant message has decision "missing").

  Raises:
    ValueError: a user message does not have the "<ks-(k+1)s>" layout.
  """
  ids = [int(i) for i in ids]
  im_start = _token_id(tokenizer, prompts.IM_START)
  im_end = _token_id(tokenizer, prompts.IM_END)
  video_pad = _token_id(tokenizer, prompts.VIDEO_PAD)
  vision_start = _token_id(tokenizer, prompts.VISION_START)
  vision_end = _token_id(tokenizer, prompts.VISION_END)
  messages = []   # (content ids)
  i, n = 0, len(ids)
  while i < n:
    if ids[i] != im_start:
      i += 1
      continue
    j = i + 1
    while j < n and ids[j] != im_end and ids[j] != im_start:
      j += 1
    messages.append(ids[i + 1:j])
    i = j + 1 if j < n and ids[j] == im_end else j   # an unclosed message ends at <|im_start|>

  def text_of(piece: list[int]) -> str:
    return tokenizer.decode(piece, skip_special_tokens=False, clean_up_tokenization_spaces=False)

  turns: list[DecodedTurn] = []
  pending = None   # (index, label, question, pads)
  for content in messages:
    n_pads = sum(1 for t in content if t == video_pad)
    if vision_start in content:
      vs = content.index(vision_start)
      ve = content.index(vision_end, vs) if vision_end in content[vs:] else len(content)
      rest_after = content[ve + 1:]
      content_text = text_of(content[:vs]) + text_of(rest_after)
    else:
      content_text = text_of(content)
    role, _, body = content_text.partition("\n")
    if role == "user":
      if pending is not None:
        turns.append(DecodedTurn(*pending[:3], "missing", "", pending[3]))
      m = _USER_RE.match(content_text)
      if not m:
        raise ValueError(f"user message does not hold a time label: {content_text!r:.200}")
      start, _ = _parse_time_label(m.group("label"))
      pending = (start, m.group("label"), m.group("q"), n_pads)
    elif role == "assistant" and pending is not None:
      if body.startswith(prompts.SILENCE_TOKEN):
        decision = "silence" if body == prompts.SILENCE_TOKEN else "invalid"
        text = body[len(prompts.SILENCE_TOKEN):]
      elif body.startswith(prompts.RESPONSE_TOKEN):
        text = body[len(prompts.RESPONSE_TOKEN):]
        decision = "response" if text.strip() else "invalid"
      else:
        decision, text = "invalid", body
      turns.append(DecodedTurn(pending[0], pending[1], pending[2], decision, text, pending[3]))
      pending = None
  if pending is not None:
    turns.append(DecodedTurn(*pending[:3], "missing", "", pending[3]))
  return turns
