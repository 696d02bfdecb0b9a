r"""A web page to watch a checkpoint decide: upload or pick a video, ask questions while it plays.

  .venv/bin/python launch/serve.py --checkpoint=random        # then open http://127.0.0.1:8000

FastAPI + server-sent events on uvicorn, bound to 127.0.0.1 only (docs/live.md says why). The
model flags (--checkpoint, --config, --frame_size, ...) are launch/_model_flags.py's, shared
with launch/evaluate.py and launch/stream.py. Each viewer gets its own
streampro_jax.live.LiveSession (its own KV cache) on the one shared model; at most
--max_viewers at once, the next one gets HTTP 503 with a message. The server streams the video
at one second per turn (--realtime, default) so the timeline keeps pace with the playing video;
seconds the model falls behind on are dropped and marked.

API: GET / (the page); GET /healthz {"ready", "error", "viewers", "max_viewers"}; GET
/api/videos (the --video_dir files); POST /api/sessions (body: the video bytes, or ?video=<name
in --video_dir>) -> {"id"}, or 503 while the model is not ready (still compiling, or "error" says
why it failed) or the server is full; POST /api/sessions/{id}/questions {"text"}; GET
/api/sessions/{id}/events (text/event-stream of the transcript's turn lines, then {"kind":
"done", ...});
DELETE /api/sessions/{id}.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import time
import uuid

from absl import flags
from absl import logging
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cli  # launch/_cli.py: one-line usage errors (exit 2)
import _model_flags  # launch/_model_flags.py: the model flags (shared with evaluate.py, stream.py)

_REALTIME, _FORCE = _model_flags.define_live_flags()
_PORT = flags.DEFINE_integer("port", 8000, "Port on 127.0.0.1.")
_MAX_VIEWERS = flags.DEFINE_integer("max_viewers", 4, "Streams served at once.")
_VIDEO_DIR = flags.DEFINE_string("video_dir_pick", None, "Folder of videos offered to pick.")
_MAX_UPLOAD_MB = flags.DEFINE_integer("max_upload_mb", 200, "Largest upload.")
_IDLE_S = flags.DEFINE_integer("idle_timeout_s", 120, "Drop a finished stream, or one never "
                               "opened, after this many seconds.")
_UNWATCHED_S = flags.DEFINE_integer(
    "unwatched_timeout_s", 10, "Stop a playing stream nobody has watched (its page closed) for "
    "this many seconds, freeing its viewer slot.")

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi")


def viewer_message(err: BaseException, uploaded: bool) -> str:
  """What the page says when a stream fails: the reason in plain words, never the server's
  temporary file path or an errno."""
  from streampro_jax.data import video  # pylint: disable=g-import-not-at-top
  what = "the uploaded video" if uploaded else "the video"
  if isinstance(err, video.VideoError):   # PyAV's reason may quote the path and an errno
    reason = re.sub(r"\[Errno -?\d+\]\s*", "", err.reason.replace(err.path, what))
    return f"{what} could not be played: {reason}"
  if isinstance(err, OSError):
    return f"{what} could not be read: {(err.strerror or 'input/output error').lower()}"
  return f"the stream stopped: {err}"


class Viewer:
  """One viewer's stream: a LiveSession stepped by its own thread, events kept for the page."""

  def __init__(self, model, path: str, *, realtime: bool, owns_file: bool):
    self.id = uuid.uuid4().hex[:12]
    self.model = model
    self.session = model.new_session(self.id)
    self.path = path
    self.owns_file = owns_file
    self.realtime = realtime
    self.events: list[dict] = []
    self.questions: list[str] = []
    self.cond = threading.Condition()
    self.done = False
    self.stop = threading.Event()
    self.started = threading.Event()
    self.last_seen = time.monotonic()
    self.thread = threading.Thread(target=self._run, daemon=True, name=f"viewer-{self.id}")

  def ask(self, text: str) -> int:
    with self.cond:
      self.questions.append(text)
      return self.session.next_turn

  def _emit(self, event: dict) -> None:
    with self.cond:
      self.events.append(event)
      self.cond.notify_all()

  def _run(self) -> None:
    from streampro_jax import live  # pylint: disable=g-import-not-at-top
    latencies, dropped, last_k = [], [], -1
    self.started.wait(timeout=60)
    start = time.monotonic()
    try:
      size = (self.model.config.frame_height, self.model.config.frame_width)
      for k, frames in live.iter_source(self.path, frames_per_turn=self.model.frames_per_turn,
                                        size=size):
        if self.stop.is_set():
          break
        if self.realtime:
          due = start + k + 1
          now = time.monotonic()
          if now < due:
            time.sleep(due - now)
          elif now - due >= 1.0:
            dropped.append(k)
            self._emit({"kind": "dropped", "turn": k, "time": float(k + 1),
                        "behind_s": round(now - due, 2)})
            continue
        with self.cond:
          asked, self.questions = self.questions, []
        try:
          result = self.session.step(frames, asked, turn=k)
        except live.QuestionTooLong as err:
          self._emit({"kind": "error", "message": str(err)})
          result = self.session.step(frames, (), turn=k)
        latencies.append(result.latency_s)
        last_k = k
        self._emit({"kind": "turn", **result.to_json()})
      summary = live.latency_summary(latencies, float(last_k + 1))
      self._emit({"kind": "done", "dropped": len(dropped), **summary})
    except Exception as err:  # pylint: disable=broad-except
      logging.exception("viewer %s failed", self.id)
      self._emit({"kind": "done", "error": viewer_message(err, self.owns_file)})
    finally:
      self.done = True
      if self.owns_file:
        try:
          os.remove(self.path)
        except OSError:
          pass


def make_app(model, *, max_viewers: int = 4, realtime: bool = True, video_dir: str | None = None,
             max_upload_mb: int = 200, idle_timeout_s: int = 120, unwatched_timeout_s: int = 10):
  """The FastAPI app serving `model` (a streampro_jax.live.LiveModel).

  A viewer slot is held by a stream that plays and is watched: a playing stream whose event feed
  nobody has read for `unwatched_timeout_s` (the tab was closed) is stopped and dropped; a
  finished stream, or one never opened, is dropped after `idle_timeout_s`.
  """
  from streampro_jax import live  # pylint: disable=g-import-not-at-top

  api = FastAPI(title="streampro_jax live")
  viewers: dict[str, Viewer] = {}
  lock = threading.Lock()
  state = {"ready": False, "error": None}
  page = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "live_page.html"),
              encoding="utf-8").read()

  def warm():
    try:
      t = model.warm_up()
    except Exception as err:  # pylint: disable=broad-except
      state["error"] = f"{type(err).__name__}: {err}"
      logging.exception("the model failed to compile; every new stream is refused (503)")
      return
    state["ready"] = True
    logging.info("model compiled in %.1f s; serving", t)

  threading.Thread(target=warm, daemon=True).start()

  def reap():
    now = time.monotonic()
    with lock:
      for vid, v in list(viewers.items()):
        idle = now - v.last_seen
        unwatched = v.started.is_set() and not v.done and idle > unwatched_timeout_s
        if unwatched or ((v.done or not v.started.is_set()) and idle > idle_timeout_s):
          v.stop.set()
          del viewers[vid]

  def get(vid: str) -> Viewer:
    v = viewers.get(vid)
    if v is None:
      raise HTTPException(404, f"no stream {vid!r} (finished and dropped, or never made)")
    v.last_seen = time.monotonic()
    return v

  @api.get("/", response_class=HTMLResponse)
  def index():
    return page

  @api.get("/healthz")
  def healthz():
    reap()
    return {"ready": state["ready"], "error": state["error"],
            "viewers": sum(1 for v in viewers.values() if not v.done),
            "max_viewers": max_viewers}

  @api.get("/api/videos")
  def videos():
    if not video_dir:
      return {"videos": []}
    return {"videos": sorted(f for f in os.listdir(video_dir)
                             if f.lower().endswith(VIDEO_EXTENSIONS))}

  @api.get("/api/videos/{name}")
  def video_file(name: str):
    if not video_dir or name not in videos()["videos"]:
      raise HTTPException(404, f"no video {name!r}")
    return FileResponse(os.path.join(video_dir, name))

  @api.post("/api/sessions", status_code=201)
  async def create(request: Request, video: str | None = None):
    if not state["ready"]:
      why = (f"the model failed to load ({state['error']}); restart the server with a working "
             "--checkpoint" if state["error"] else
             "the model is still compiling; try again in a moment")
      return JSONResponse(status_code=503, content={"detail": why})
    reap()
    with lock:
      busy = sum(1 for v in viewers.values() if not v.done)
    if busy >= max_viewers:
      return JSONResponse(status_code=503, content={
          "detail": f"server busy: {busy} streams are playing, the most this server runs at "
                    "once; try again when one ends"})
    if video is not None:
      if video not in videos()["videos"]:
        raise HTTPException(404, f"no video {video!r} in the server's folder")
      path, owns = os.path.join(video_dir, video), False
    else:
      body = await request.body()
      if not body:
        raise HTTPException(400, "no video was sent: choose a video file, or one of the "
                                 "server's videos")
      if len(body) > max_upload_mb * 2 ** 20:
        raise HTTPException(413, f"video larger than {max_upload_mb} MB")
      fd, path = tempfile.mkstemp(prefix="live_", suffix=".video")
      with os.fdopen(fd, "wb") as f:
        f.write(body)
      owns = True
    v = Viewer(model, path, realtime=realtime, owns_file=owns)
    with lock:
      viewers[v.id] = v
    v.thread.start()
    return {"id": v.id}

  @api.post("/api/sessions/{vid}/questions")
  async def question(vid: str, request: Request):
    v = get(vid)
    try:
      text = str((await request.json())["text"]).strip()
    except (ValueError, KeyError, TypeError) as err:
      raise HTTPException(400, 'send {"text": "..."}') from err
    if not text:
      raise HTTPException(400, "empty question")
    if v.done:
      raise HTTPException(409, "this stream has ended")
    try:   # the question must fit the next second's chunk, or it is refused now, not mid-stream
      model.check_questions([(v.session.next_turn, text)], v.id)
    except live.QuestionTooLong:
      raise HTTPException(400, "this question is too long for the model's question budget; "
                          "ask a shorter one") from None
    return {"turn": v.ask(text)}

  @api.delete("/api/sessions/{vid}")
  def delete(vid: str):
    v = get(vid)
    v.stop.set()
    with lock:
      viewers.pop(vid, None)
    return {"deleted": vid}

  @api.get("/api/sessions/{vid}/events")
  async def events(vid: str):
    v = get(vid)
    v.started.set()

    async def gen():
      i = 0
      while True:
        with v.cond:
          new = v.events[i:]
        i += len(new)
        for e in new:
          yield f"data: {json.dumps(e, ensure_ascii=False)}\n\n"
          if e["kind"] == "done":
            return
        v.last_seen = time.monotonic()
        await asyncio.sleep(0.05)

    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})

  api.state.viewers = viewers
  return api


def main(argv):
  del argv
  import uvicorn  # pylint: disable=g-import-not-at-top
  _model_flags.check_checkpoint()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  model = _model_flags.load_live_model(_FORCE.value)
  api = make_app(model, max_viewers=_MAX_VIEWERS.value, realtime=_REALTIME.value,
                 video_dir=_VIDEO_DIR.value, max_upload_mb=_MAX_UPLOAD_MB.value,
                 idle_timeout_s=_IDLE_S.value, unwatched_timeout_s=_UNWATCHED_S.value)
  print(f"open http://127.0.0.1:{_PORT.value}/", flush=True)
  uvicorn.run(api, host="127.0.0.1", port=_PORT.value, log_level="warning")


if __name__ == "__main__":
  flags.FLAGS.set_default("realtime", True)
  _cli.run(main)
