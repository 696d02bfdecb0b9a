r"""Watch a checkpoint decide, live: stream a video one second per turn and print what it says.

  .venv/bin/python launch/stream.py --checkpoint=random --video=clip.mp4 \
      --question="What colour is the circle?@3" --question="Tell me when it moves"
  .venv/bin/python launch/stream.py --checkpoint=/ckpt/sft_run --video=rtsp://cam/stream \
      --question="Tell me when someone enters@0" --realtime

--checkpoint, --config, --tokenizer, --frame_size, --max_text_tokens, --window_turns,
--prompt_style and --constrain_decision are the model flags launch/evaluate.py has too
(launch/_model_flags.py: an HF folder, a training workdir or "random" = the tiny config with
random weights). --video: a file, a folder of frames (--folder_fps), a camera
(/dev/video0) or a stream PyAV opens (rtsp://, http://). --question (repeatable): "TEXT" (asked
at 0 s) or "TEXT@SECONDS" (a number >= 0, before the end of a video file; a question that holds
an "@" of its own ends with "@SECONDS"). --realtime paces files at one second per turn and
drops seconds the model has fallen behind on (saying so); without it the stream runs as fast as
it can (live sources are always paced by the source). Ctrl-C ends cleanly; the transcript is
kept (none is written when no turn ran). The video and the questions are checked before the
model loads.

Prints one line per second that has something to say (questions, </Response> answers, a
silence count every --silence_every seconds), then per-turn latency (median, p95) and the
real-time factor. The transcript (--transcript, JSONL, streampro_jax/live.py) is readable by the
evaluation scorers through live._transcript_results.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cli  # launch/_cli.py: one-line usage errors (exit 2)
import _model_flags  # launch/_model_flags.py: the model flags (shared with evaluate.py, serve.py)

_VIDEO = flags.DEFINE_string("video", None, "Video file, folder of frames, camera device or URL.")
_QUESTION = flags.DEFINE_multi_string("question", [], "A question, 'TEXT' or 'TEXT@SECONDS'.")
_REALTIME, _FORCE = _model_flags.define_live_flags()
_TRANSCRIPT = flags.DEFINE_string("transcript", "live_transcript.jsonl", "Transcript JSONL.")
_FOLDER_FPS = flags.DEFINE_float("folder_fps", 2.0, "Frames per second of a folder of frames.")
_SILENCE_EVERY = flags.DEFINE_integer("silence_every", 10, "Print a silence count every N "
                                      "seconds (0: never).")
_MAX_SECONDS = flags.DEFINE_integer("max_seconds", None, "Stop after this many seconds.")

_SECONDS_RE = re.compile(r"^\d+(?:\.\d*)?$")


def parse_question(spec: str) -> tuple[float, str]:
  """'TEXT@SECONDS' -> (seconds, text); 'TEXT' -> (0, text). A UsageError naming the flag for
  an empty question, text that is not UTF-8, or anything after the last "@" that is not a number
  of seconds >= 0 ('x@-3', 'x@abc')."""
  try:
    spec.encode("utf-8")
  except UnicodeEncodeError:
    raise app.UsageError(f"--question={spec.encode('utf-8', 'replace').decode()!r} is not UTF-8 "
                         "text") from None
  text, at, sec = spec.strip().rpartition("@")
  if not at:
    text, sec = sec, None
  text = text.strip()
  if not text:
    raise app.UsageError(f"--question={spec!r}: the question text is empty")
  if sec is None:
    return 0.0, text
  if not _SECONDS_RE.match(sec.strip()):
    raise app.UsageError(f"--question={spec!r}: {sec.strip()!r} after the last '@' is not a "
                         "time in seconds >= 0 (write 'TEXT@SECONDS', e.g. 'What now?@3')")
  return float(sec), text


def check_video(source: str, questions: list[tuple[float, str]]) -> float | None:
  """Checks --video before any model is loaded: a file PyAV opens (its duration returned, and
  every question asked before it ends) or a folder of frames; a camera or URL is not opened
  here (None). A UsageError naming the flag otherwise."""
  from streampro_jax import live  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import video  # pylint: disable=g-import-not-at-top
  if live.is_live_source(source):
    return None
  if os.path.isdir(source):
    if not any(os.path.isfile(os.path.join(source, n)) for n in os.listdir(source)):
      raise app.UsageError(f"--video={source}: the folder holds no frames")
    return None
  if not os.path.isfile(source):
    raise app.UsageError(f"--video={source}: no such file or folder")
  try:
    duration = video.probe(source).duration
  except video.VideoError as err:
    raise app.UsageError(f"--video={source} cannot be read as a video: {err}") from None
  for t, q in questions:
    if t >= duration:
      raise app.UsageError(f"--question={q}@{t:g} is asked after the video ends ({duration:.1f} "
                           "s); ask it earlier")
  return duration


def _discard(writer) -> None:
  """Closes and removes a transcript that holds no turn."""
  writer.close()
  try:
    os.remove(writer.path)
  except OSError:
    pass


def main(argv):
  del argv
  # Ctrl-C ends the stream cleanly (KeyboardInterrupt), even when the parent started us with
  # SIGINT ignored (Python then installs no handler: e.g. under a pytest-xdist worker).
  signal.signal(signal.SIGINT, signal.default_int_handler)
  if not _model_flags.CHECKPOINT.value or not _VIDEO.value:
    raise app.UsageError("--checkpoint and --video are required")
  _model_flags.check_checkpoint()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  from streampro_jax import live  # pylint: disable=g-import-not-at-top
  from streampro_jax.data import chat_format  # pylint: disable=g-import-not-at-top

  questions = sorted((parse_question(q) for q in _QUESTION.value), key=lambda x: x[0])
  check_video(_VIDEO.value, questions)   # before the model loads and compiles
  model = _model_flags.load_live_model(_FORCE.value)
  size = (model.config.frame_height, model.config.frame_width)
  source = _VIDEO.value
  paced_by_source = live.is_live_source(source)
  stream_id = os.path.splitext(os.path.basename(os.path.normpath(source)))[0] or "live"
  try:   # needs the tokenizer; before anything is compiled
    model.check_questions([(chat_format.ask_turn(t, 10 ** 9), q) for t, q in questions],
                          stream_id)
  except live.QuestionTooLong as err:
    raise app.UsageError(f"--question: {err}; ask a shorter question") from None
  session = model.new_session(stream_id)
  pace = "real time" if _REALTIME.value or paced_by_source else "as fast as possible"
  print(f"streaming {source} ({pace}); transcript {_TRANSCRIPT.value}", flush=True)
  print("compiling ...", flush=True)
  try:
    model.warm_up()
  except KeyboardInterrupt:
    print("\ninterrupted before the first turn: no transcript written", flush=True)
    sys.exit(130)
  # Opened once the model runs; removed again if no turn reaches it (no empty transcript).
  writer = live.TranscriptWriter(_TRANSCRIPT.value, stream_id)
  latencies, dropped_all, pending_drop = [], [], []
  silent, last_k, interrupted = 0, -1, False
  start = time.monotonic()
  try:
    for k, frames in live.iter_source(source, frames_per_turn=model.frames_per_turn, size=size,
                                      folder_fps=_FOLDER_FPS.value):
      if _MAX_SECONDS.value is not None and k >= _MAX_SECONDS.value:
        break
      if _REALTIME.value or paced_by_source:
        due = start + k + 1   # second k has fully arrived
        now = time.monotonic()
        if now < due and not paced_by_source:
          time.sleep(due - now)
        elif now - due >= 1.0:   # the next second is already here: drop this one
          pending_drop.append(k)
          dropped_all.append(k)
          print(f"[{k:>5d}s] dropped: the model is {now - due:.1f} s behind real time",
                flush=True)
          continue
      asked = [q for t, q in questions if chat_format.ask_turn(t, 10 ** 9) <= k]
      questions = [(t, q) for t, q in questions if chat_format.ask_turn(t, 10 ** 9) > k]
      result = session.step(frames, asked, turn=k)
      writer.turn(result, pending_drop)
      pending_drop = []
      latencies.append(result.latency_s)
      last_k = k
      for line in live.format_turn_line(result):
        print(line, flush=True)
      silent = 0 if result.decision == "response" else silent + 1
      if result.overflow:
        print(f"[{k:>5d}s] warning: KV cache overflow", flush=True)
      if _SILENCE_EVERY.value and silent and silent % _SILENCE_EVERY.value == 0:
        print(f"[{result.time:>5.0f}s] ... silent for {silent} s", flush=True)
  except KeyboardInterrupt:
    interrupted = True
    print("\ninterrupted: closing the transcript", flush=True)
  except BaseException:
    if last_k < 0:
      _discard(writer)
    raise
  if last_k < 0:
    _discard(writer)
    print(("interrupted" if interrupted else f"{source} gave no second of video") +
          " before the first turn: no transcript written", flush=True)
    sys.exit(130 if interrupted else 1)
  wall = time.monotonic() - start
  summary = live.latency_summary(latencies, stream_seconds=float(last_k + 1))
  summary.update(seconds=last_k + 1, dropped=len(dropped_all), wall_s=round(wall, 3),
                 interrupted=interrupted,
                 unasked=[q for _, q in questions])
  writer.summary(summary)
  writer.close()
  print(f"{summary['turns']} turns over {last_k + 1} s ({len(dropped_all)} dropped): latency "
        f"median {summary['median_ms']:.1f} ms, p95 {summary['p95_ms']:.1f} ms, real-time "
        f"factor {summary['real_time_factor']:.3f}; transcript {_TRANSCRIPT.value}", flush=True)


if __name__ == "__main__":
  _cli.run(main)
