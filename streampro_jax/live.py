"""Live streaming: one viewer's stream, one second at a time, on the benchmark's sampler.

A `LiveModel` holds the weights and ONE `sampling.StreamingSampler` built by
`bench.harness.make_sampler` (greedy, the harness's prompt format, KV cache with the sliding
window of `window_turns` = 200 turns and the pinned system prefix), so what a viewer watches is
what the benchmark measures. Its jitted functions compile once and are shared by every session.

A `LiveSession` (one per viewer) owns a `sampling.SamplerState` of one row and runs one
`StreamingSampler.step_turn` per second, the step `StreamingSampler.sample` repeats over a
whole stream: turn k's user chunk (time label, any question asked this second, the second's
frames), the decision token, the response text. Unlike `sample`, it does not know the frames of
later seconds, keeps no token history (memory stays flat over hours: the host keeps nothing per
turn, the cache is a fixed ring) and may skip seconds (real-time pacing drops turns when the
model falls behind; the turn ids keep counting seconds, so times stay right and the window
stays 200 seconds).

  model = LiveModel(params, model_config, tokenizer, LiveConfig(frame_height=16, frame_width=16))
  session = model.new_session()
  for k, frames in iter_source("clip.mp4", frames_per_turn=2, size=(16, 16)):   # [2, H, W, 3]
    turn = session.step(frames, questions=["What is on screen?"] if k == 3 else ())
    print(turn.time, turn.decision, turn.text, turn.latency_s)

Transcript (JSONL, `TranscriptWriter`): one line per turn
  {"kind": "turn", "stream_id", "turn": k, "time": k + 1, "decision", "text", "message",
   "questions": [...], "latency_s", "dropped": [skipped turn ids before this one]}
and a last {"kind": "summary", ...} line. `_transcript_results` is the adapter to the harness's
result lines (bench/harness.py: {"id", "record_id", "question_id", "task", "num_turns",
"ask_turn", "prompt_style", "overflow", "predictions", "turns"}), one per question, which the
scorers of launch/evaluate.py read (harness._streampro_items -> streampro_f1.score_benchmark).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from streampro_jax import models, prompts, sampling
from streampro_jax.bench import harness
from streampro_jax.models import common

__all__ = ["LiveConfig", "LiveModel", "LiveSession", "QuestionTooLong", "TranscriptWriter",
           "format_turn_line", "is_live_source", "iter_source", "latency_summary", "TurnResult"]

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_BIG_TURN = 10 ** 6 - 1   # the longest time label a live stream is sized for (11.6 days)


class QuestionTooLong(ValueError):
  """A question that does not fit the session's user-chunk bucket (max_question_tokens)."""


@dataclasses.dataclass(frozen=True)
class LiveConfig:
  """Settings of live sessions (decoding as harness.HarnessConfig; greedy).

  Attributes:
    frame_height, frame_width: every frame is resized to this size.
    max_text_tokens: response text tokens before <|im_end|> is forced.
    window_turns: sliding window of the KV cache in turns (seconds); docs/method.md: 200.
    prompt_style: "streampro" or "wait" (sampling.WaitPromptFormat).
    constrain_decision: restrict the first token to the decision tokens.
    system_prompt: None: prompts.STREAMING_SYSTEM_PROMPT.
    max_question_tokens: token budget of the questions asked in one second (sets the user-chunk
      bucket; a longer question raises QuestionTooLong).
    question_turns_in_window: questions the cache reserves room for inside one window.
    force_response_at_ask: force </Response> on a turn where a question is asked (as the
      harness does for multiple-choice peers; also lets a random model show answers).
    seed: sampler seed (irrelevant for greedy decoding).
  """
  frame_height: int = 224
  frame_width: int = 224
  max_text_tokens: int = 32
  window_turns: int = 200
  prompt_style: str = "streampro"
  constrain_decision: bool = False
  system_prompt: str | None = None
  max_question_tokens: int = 64
  question_turns_in_window: int = 8
  force_response_at_ask: bool = False
  seed: int = 0

  def harness_config(self) -> harness.HarnessConfig:
    return harness.HarnessConfig(
        batch_size=1, frame_height=self.frame_height, frame_width=self.frame_width,
        max_text_tokens=self.max_text_tokens, window_turns=self.window_turns,
        prompt_style=self.prompt_style, constrain_decision=self.constrain_decision,
        force_response_at_ask=self.force_response_at_ask, seed=self.seed, progress=False,
        system_prompt=self.system_prompt)


@dataclasses.dataclass(frozen=True)
class TurnResult:
  """What one second of a live stream produced.

  turn: k (the second [k, k+1)); time: k + 1, the time a response is dated by (as the harness);
  decision: "silence" | "response" | "invalid"; text: the response text ("" unless response);
  message: the raw assistant message; questions: asked on this turn; latency_s: wall time of the
  step (frames preprocessing, vision tower, prefill, decode); overflow: the KV cache had to
  overwrite a live slot (capacity too small; never expected).
  """
  turn: int
  time: float
  decision: str
  text: str
  message: str
  questions: tuple[str, ...]
  latency_s: float
  overflow: bool

  def to_json(self) -> dict[str, Any]:
    return {"turn": self.turn, "time": self.time, "decision": self.decision, "text": self.text,
            "message": self.message, "questions": list(self.questions),
            "latency_s": round(self.latency_s, 6), "overflow": self.overflow}


class LiveModel:
  """Weights + the shared greedy streaming sampler of the harness (see module docstring).

  Args:
    params, model_config, tokenizer: the model (bench/checkpoints.load_model's output).
    config: LiveConfig.
  """

  def __init__(self, params, model_config, tokenizer, config: LiveConfig | None = None):
    self.params = params
    self.model_config = model_config
    self.tokenizer = tokenizer
    self.config = config or LiveConfig()
    hcfg = self.config.harness_config()
    probe = harness.make_sampler(model_config, tokenizer, hcfg)
    self.user_chunk_len = self._chunk_len(probe)
    self.capacity = self._capacity(probe, self.user_chunk_len)
    self.sampler = harness.make_sampler(model_config, tokenizer, hcfg,
                                        user_chunk_len=self.user_chunk_len,
                                        capacity=self.capacity)
    self.processor = models.video_processor_config(model_config)
    self.frames_per_turn = int(self.processor.temporal_patch_size)
    self.lock = threading.Lock()   # one device: sessions take turns

  def _chunk_len(self, s: sampling.StreamingSampler) -> int:
    """The user-chunk bucket: a question-free chunk of the longest time label plus
    `max_question_tokens`, rounded up."""
    need = s.turn_chunk_len(_BIG_TURN, None) + int(self.config.max_question_tokens)
    return common.round_up(need, s.cfg.chunk_multiple)

  def _capacity(self, s: sampling.StreamingSampler, c_user: int) -> int:
    """Pinned prefix + the real tokens of `window_turns` turns (time labels of up to 6 digits,
    full-length messages) + room for `question_turns_in_window` questions + one padded chunk."""
    per_turn = s.turn_chunk_len(_BIG_TURN, None) + s.cfg.max_message_tokens
    questions = int(self.config.question_turns_in_window) * int(self.config.max_question_tokens)
    need = len(s.system_ids) + self.config.window_turns * per_turn + questions + c_user
    return common.round_up(need, s.cfg.capacity_multiple)

  def patches(self, frames_thwc: np.ndarray) -> np.ndarray:
    """uint8 frames [tp, H, W, 3] of one second -> f32 patches [P, D] (resized first)."""
    from streampro_jax.models import processing  # pylint: disable=g-import-not-at-top
    frames = np.asarray(frames_thwc)
    tp = self.frames_per_turn
    if frames.ndim != 4 or frames.shape[0] != tp or frames.shape[-1] != 3:
      raise ValueError(f"one turn takes uint8 frames [{tp}, H, W, 3], got {frames.dtype} "
                       f"{frames.shape}")
    size = (self.config.frame_height, self.config.frame_width)
    if tuple(frames.shape[1:3]) != size:
      frames = processing.resize_frames(frames.astype(np.uint8), *size)
    patches, _ = models.process_turns(frames[None], self.processor)
    return np.asarray(patches[0], np.float32)

  def chunk_problem(self, stream_id: str, turn: int, text: str | None) -> str | None:
    """Why the user text of second `turn` does not fit the session's user chunk, or None."""
    if text is None:
      return None
    need = self.sampler.turn_chunk_len(turn, text)
    if need <= self.user_chunk_len:
      return None
    return (f"stream {stream_id!r}, second {turn}: the question(s) take {need} tokens with the "
            f"turn's chunk, more than the {self.user_chunk_len} the session was sized for "
            f"(LiveConfig.max_question_tokens = {self.config.max_question_tokens})")

  def check_questions(self, asked: Sequence[tuple[int, str]], stream_id: str = "live") -> None:
    """Raises QuestionTooLong for the first of the (turn, question) pairs that would not fit its
    second's chunk, built as LiveSession.step builds it, before anything is compiled."""
    by_turn: dict[int, list[str]] = {}
    for k, q in sorted(asked):
      if q and q.strip():
        by_turn.setdefault(int(k), []).append(q.strip())
    shown: list[str] = []
    for k, qs in sorted(by_turn.items()):
      text = "\n".join(shown + qs if self.sampler.repeat_question else qs)
      problem = self.chunk_problem(stream_id, k, text)
      if problem:
        raise QuestionTooLong(problem)
      shown += qs

  def new_session(self, stream_id: str = "live") -> LiveSession:
    return LiveSession(self, stream_id)

  def warm_up(self) -> float:
    """Compiles the sampler's functions with one throw-away turn; returns the seconds it took."""
    t0 = time.perf_counter()
    s = self.new_session("warm-up")
    h, w = self.config.frame_height, self.config.frame_width
    s.step(np.zeros((self.frames_per_turn, h, w, 3), np.uint8), ["warm up"])
    return time.perf_counter() - t0


class LiveSession:
  """One viewer's stream: the sampler's state of one row (a KV cache and its positions)."""

  def __init__(self, model: LiveModel, stream_id: str = "live"):
    self.model = model
    self.stream_id = stream_id
    self._state = None
    self._asked: list[str] = []   # every question so far (for formats that repeat it)
    self.next_turn = 0
    self.turns_run = 0

  def step(self, frames_thwc: np.ndarray, questions: Sequence[str] = (), *,
           turn: int | None = None) -> TurnResult:
    """Runs one second: frames uint8 [tp, H, W, 3], the questions asked during it.

    turn: the second this is (default: the one after the last; a later one skips seconds,
    e.g. frames dropped by real-time pacing). Returns the TurnResult.
    """
    k = self.next_turn if turn is None else int(turn)
    if k < self.next_turn:
      raise ValueError(f"stream {self.stream_id!r}: turn {k} comes after turn "
                       f"{self.next_turn - 1}; turns must increase")
    questions = tuple(q.strip() for q in questions if q and q.strip())
    t0 = time.perf_counter()
    s = self.model.sampler
    pix = self.model.patches(frames_thwc)
    if questions or (s.repeat_question and self._asked):
      shown = list(self._asked) + list(questions) if s.repeat_question else list(questions)
      text = "\n".join(shown)
    else:
      text = None
    problem = self.model.chunk_problem(self.stream_id, k, text)
    if problem:
      raise QuestionTooLong(problem)
    force = bool(questions) and self.model.config.force_response_at_ask
    with self.model.lock:
      if self._state is None:
        self._state = s.init_state(self.model.params, 1, 1, capacity=self.model.capacity,
                                   user_chunk_len=self.model.user_chunk_len,
                                   seed=int(self.model.config.seed))
      self._state, out = s.step_turn(self.model.params, self._state, pix[None], text, turn=k,
                                     force_response=[force])
    self._asked.extend(questions)
    self.next_turn = k + 1
    self.turns_run += 1
    return TurnResult(turn=k, time=float(k + 1),
                      decision=sampling.DECISION_NAMES[int(out.decisions[0])],
                      text=out.texts[0], message=out.messages[0], questions=questions,
                      latency_s=time.perf_counter() - t0, overflow=bool(out.overflow[0]))


# ------------------------------------------------------------------------------------------------
# Sources: a video file, a folder of frames, or a live source PyAV opens.


def _sample_index(times: np.ndarray, t: float) -> int:
  """Index of the last frame shown at or before time t (0 before the first): data/video.py's
  rule."""
  return max(int(np.searchsorted(times, t + 1e-9, side="right")) - 1, 0)


def _iter_folder(folder: str, *, frames_per_turn: int, fps: float = 2.0,
                size: tuple[int, int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
  """(turn k, uint8 frames [tp, h, w, 3]) of a folder of images (sorted by name) shown at `fps`
  frames per second; frames sampled at k + (j + 0.5) / tp as in data/video.py."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from streampro_jax.models import processing  # pylint: disable=g-import-not-at-top
  files = sorted(f for f in glob.glob(os.path.join(folder, "*"))
                 if f.lower().endswith(_IMAGE_EXTENSIONS))
  if not files:
    raise ValueError(f"{folder}: no image files ({', '.join(_IMAGE_EXTENSIONS)})")
  if not fps > 0:
    raise ValueError(f"fps must be > 0, got {fps}")
  times = np.arange(len(files)) / float(fps)
  k_total = max(1, math.ceil(len(files) / float(fps) - 1e-6))

  def load(i):
    with Image.open(files[i]) as im:
      arr = np.asarray(im.convert("RGB"), np.uint8)
    if size is not None and arr.shape[:2] != tuple(size):
      arr = processing.resize_frames(arr[None], *size)[0]
    return arr

  for k in range(k_total):
    idx = [_sample_index(times, k + (j + 0.5) / frames_per_turn) for j in range(frames_per_turn)]
    yield k, np.stack([load(i) for i in idx])


def _open_container(source: str):
  """av.open for a file (data/video.py's checks and errors), a camera device (/dev/video*,
  v4l2) or a URL (rtsp://, http(s)://, ...)."""
  import av  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import video  # pylint: disable=g-import-not-at-top
  if "://" in source:
    try:
      return av.open(source, options={"rtsp_transport": "tcp"} if source.startswith("rtsp")
                     else None, timeout=10.0)
    except av.FFmpegError as e:
      raise video.VideoError(source, f"cannot open the stream: {e}") from e
  if source.startswith("/dev/video"):
    try:
      return av.open(source, format="v4l2")
    except av.FFmpegError as e:
      raise video.VideoError(source, f"cannot open the camera: {e}") from e
  return video.open_video(source)


def _iter_video(source: str, *, frames_per_turn: int, size: tuple[int, int] | None = None
               ) -> Iterator[tuple[int, np.ndarray]]:
  """(turn k, uint8 frames [tp, h, w, 3]) of a file or live source, decoded incrementally.

  Frame times come from the presentation timestamps (from the first frame); turn k's frames are
  the ones shown at k + (j + 0.5) / tp (data/video.py's rule). A turn is yielded once a frame
  past its second has arrived (at the end: the last, partial second too).
  """
  from streampro_jax.data import video  # pylint: disable=g-import-not-at-top
  import av  # pylint: disable=g-import-not-at-top
  resize = video.ResizePolicy() if size is None else video.ResizePolicy(height=size[0],
                                                                        width=size[1])
  container = _open_container(source)
  try:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    start_pts = None
    k = 0
    pending: list[tuple[float, np.ndarray]] = []   # (time, rgb) of the frames since turn k

    def rgb(frame):
      arr = frame.to_ndarray(format="rgb24")
      h, w = resize.target(arr.shape[0], arr.shape[1])
      if (h, w) != arr.shape[:2]:
        from streampro_jax.models import processing  # pylint: disable=g-import-not-at-top
        arr = processing.resize_frames(arr[None], h, w)[0]
      return arr

    def turn_frames(k, frames):
      times = np.asarray([t for t, _ in frames])
      return np.stack([frames[_sample_index(times, k + (j + 0.5) / frames_per_turn)][1]
                       for j in range(frames_per_turn)])

    n = 0
    try:
      for frame in container.decode(stream):
        if frame.pts is None:
          t = n / rate if rate else float(n)
        else:
          start_pts = frame.pts if start_pts is None else start_pts
          t = float((frame.pts - start_pts) * frame.time_base)
        n += 1
        while t >= k + 1 and pending:
          yield k, turn_frames(k, pending)
          k += 1
          before = [p for p in pending if p[0] < k]   # keep the frame shown at time k
          pending = before[-1:] + [p for p in pending if p[0] >= k]
        pending.append((t, rgb(frame)))
    except av.FFmpegError as e:
      raise video.VideoError(source, f"decoding failed after {n} frames: {e}") from e
    if n == 0:
      raise video.VideoError(source, "no frame could be decoded")
    if pending:
      yield k, turn_frames(k, pending)
  finally:
    container.close()


def iter_source(source: str, *, frames_per_turn: int, size: tuple[int, int] | None = None,
                folder_fps: float = 2.0) -> Iterator[tuple[int, np.ndarray]]:
  """A folder of frames (_iter_folder) or anything PyAV opens (_iter_video)."""
  if os.path.isdir(source):
    return _iter_folder(source, frames_per_turn=frames_per_turn, fps=folder_fps, size=size)
  return _iter_video(source, frames_per_turn=frames_per_turn, size=size)


def is_live_source(source: str) -> bool:
  """A camera or network stream (paced by the source itself)."""
  return "://" in source or source.startswith("/dev/video")


# ------------------------------------------------------------------------------------------------
# Transcript.


class TranscriptWriter:
  """Appends one JSON line per turn (flushed: a Ctrl-C keeps every finished turn)."""

  def __init__(self, path: str, stream_id: str):
    self.path = path
    self.stream_id = stream_id
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._f = open(path, "w", encoding="utf-8")   # pylint: disable=consider-using-with

  def turn(self, result: TurnResult, dropped: Sequence[int] = ()) -> None:
    line = {"kind": "turn", "stream_id": self.stream_id, **result.to_json(),
            "dropped": [int(d) for d in dropped]}
    self._f.write(json.dumps(line, ensure_ascii=False) + "\n")
    self._f.flush()

  def summary(self, summary: dict[str, Any]) -> None:
    self._f.write(json.dumps({"kind": "summary", "stream_id": self.stream_id, **summary},
                             ensure_ascii=False) + "\n")
    self._f.flush()

  def close(self) -> None:
    self._f.close()


def _read_transcript(path: str) -> tuple[list[dict], dict | None]:
  """(turn lines, summary line or None) of a transcript. A torn last line (a process killed
  mid-write) is skipped; any other bad line raises ValueError naming file, line and field."""
  turns, summary = [], None
  with open(path, encoding="utf-8") as f:
    lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
  for i, (n, line) in enumerate(lines):
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:
        break
      raise ValueError(f"{path}:{n}: not JSON ({e})") from e
    if obj.get("kind") == "turn":
      turns.append(obj)
    elif obj.get("kind") == "summary":
      summary = obj
    else:
      raise ValueError(f"{path}:{n}: field 'kind' must be 'turn' or 'summary', got "
                       f"{obj.get('kind')!r}")
  return turns, summary


def _transcript_results(turns: Sequence[dict], *, prompt_style: str = "streampro",
                       task: str = "live") -> list[dict]:
  """harness result lines (bench/harness.py) of a transcript's turn lines, one per question.

  Question n (the n-th asked, id "q<n>", asked on turn a) gets the turns from a on and the
  responses dated from then ("predictions": [[time, text]]), as the harness would have run it
  (one trajectory per question). A stream without questions gives one line with question_id
  "none" and every response. ask_turn is the question's turn; num_turns counts seconds
  (dropped ones included).
  """
  stream_id = turns[0]["stream_id"] if turns else "live"
  num_turns = (int(turns[-1]["turn"]) + 1) if turns else 0
  overflow = any(t.get("overflow", False) for t in turns)
  asked = [(int(t["turn"]), q) for t in turns for q in t.get("questions", [])]
  if not asked:
    asked = [(0, None)]
  out = []
  for n, (a, q) in enumerate(asked):
    mine = [t for t in turns if int(t["turn"]) >= a]
    qid = "none" if q is None else f"q{n}"
    out.append({
        "id": harness.item_id(stream_id, qid), "record_id": stream_id, "question_id": qid,
        "question": q, "task": task, "num_turns": num_turns, "ask_turn": a,
        "prompt_style": prompt_style, "overflow": overflow,
        "predictions": [[float(t["time"]), t["text"]] for t in mine
                        if t["decision"] == "response"],
        "turns": [{"turn": int(t["turn"]), "time": float(t["time"]), "decision": t["decision"],
                   "text": t["text"], "message": t["message"]} for t in mine]})
  return out


def latency_summary(latencies_s: Sequence[float], stream_seconds: float) -> dict[str, float]:
  """{"turns", "median_ms", "p95_ms", "mean_ms", "real_time_factor"}: rtf = compute time /
  stream time (< 1: faster than real time)."""
  lat = np.asarray(latencies_s, np.float64)
  if lat.size == 0:
    return {"turns": 0, "median_ms": math.nan, "p95_ms": math.nan, "mean_ms": math.nan,
            "real_time_factor": math.nan}
  return {"turns": int(lat.size), "median_ms": float(np.median(lat) * 1e3),
          "p95_ms": float(np.percentile(lat, 95) * 1e3), "mean_ms": float(lat.mean() * 1e3),
          "real_time_factor": float(lat.sum() / max(stream_seconds, 1e-9))}


def format_turn_line(result: TurnResult) -> list[str]:
  """The console lines of a turn that has something to say (questions, a response)."""
  lines = [f"[{result.turn:>5d}s] Q: {q}" for q in result.questions]
  if result.decision == "response":
    lines.append(f"[{result.time:>5.0f}s] {prompts.RESPONSE_TOKEN} {result.text}")
  return lines
