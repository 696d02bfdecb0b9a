"""What a streaming sampler feeds and reads: the prompts and the two prompt formats.

`StreamPrompt` is one sample (the patches of its K turns and its question); `prompt_from_record`
builds one from an annotation record and its decoded frames. A prompt format gives the token
ids of the pinned system prefix, of turn k's user message and of the assistant header, and
parses a decoded assistant message into a decision code (`TURN_SILENCE`, `TURN_RESPONSE`,
`TURN_INVALID`) and its text: `StreamProFormat` (the trained chat format, decision tokens) and
`WaitPromptFormat` (offline prompting of a plain video-LLM).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from streampro_jax import models, prompts
from streampro_jax.data import chat_format

__all__ = ["DECISION_NAMES", "NO_TURN", "StreamProFormat", "StreamPrompt", "TURN_INVALID",
           "TURN_RESPONSE", "TURN_SILENCE", "WAIT_INSTRUCTION", "WAIT_SYSTEM_PROMPT",
           "WaitPromptFormat", "prompt_from_record"]


# Per-turn decisions of a rollout (the codes of RolloutBatch.decisions; the token strings are
# prompts.SILENCE_TOKEN / RESPONSE_TOKEN).
TURN_SILENCE = 0
TURN_RESPONSE = 1
TURN_INVALID = 2
NO_TURN = -1       # the row's sample has fewer turns than the batch
DECISION_NAMES = {TURN_SILENCE: "silence", TURN_RESPONSE: "response", TURN_INVALID: "invalid"}


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
      return TURN_SILENCE, ""
    if p.decision == "response" and p.valid:
      return TURN_RESPONSE, p.text
    return TURN_INVALID, p.text


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
    text = (f"{prompts.IM_START}user\n{chat_format.time_label(k)}\n"
            f"{prompts.VISION_START}{prompts.VIDEO_PAD * self.tokens_per_turn}"
            f"{prompts.VISION_END}")
    if question is not None:
      text += "\n" + self.instruction.format(question=question)
    return self._enc(text + f"{prompts.IM_END}\n")

  def header_ids(self) -> np.ndarray:
    return self._enc(chat_format.assistant_header_text())

  def parse(self, message: str) -> tuple[int, str]:
    s = message.strip()
    if not s:
      return TURN_INVALID, ""
    if s.lower().startswith("wait"):
      return TURN_SILENCE, ""
    return TURN_RESPONSE, s

