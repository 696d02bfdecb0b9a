"""SynthStream: a procedurally rendered streaming benchmark covering the seven StreamPro tasks.

Every sample is one video (coloured shapes on a plain background, ``resolution`` x ``resolution``
pixels, ``fps`` = 2 frames per second = one temporal patch per turn) with one question. The scene
is a JSON spec stored in ``record.meta["synth"]``: objects with keyframes, static items (a box, a
hazard zone), background and noise. :func:`render_frames` draws it deterministically, so a record
alone reproduces its frames.

Timing (consistent with chat_format's turn rule). Frame i shows the world at time
tau_i = (i + 1) / fps, so turn k sees the times k + 0.5 and k + 1. Events are placed so that the
turn that must respond is the one whose frames first show the event:

* an instantaneous change (colour, shape, size, disappearance) happens at c = k + 0.75: frame 2k
  shows the state before, frame 2k + 1 the state after, and the answer time c falls on turn k;
* a motion runs from integer time s to integer time e (first displaced frame at s + 0.5, arrival
  visible in frame 2e - 1 at time e), and its answer time e falls on turn e - 1.

Tasks (answers are templated; the judge is exact match):

* EU: the named object performs steps (move to an edge, change colour, change shape); each step is
  an interval answer [start, end] described when it is complete.
* OU: "Is the <shape> <colour>?" -- a yes/no answer on the question's turn (due at its time
  Y = ask time + 1, see ``_ask_answer_time``), and a new answer each time the object's colour
  flips to or from that colour.
* AA: several objects bounce left and right; alert at the onset of an anomaly (an object
  disappears, falls, or grows).
* TP: "What happens after <object> moves to the <dir> edge?" -- the next event after that one
  (interval answer); events before the trigger are distractors.
* TG: "When does <object> move to the <dir> edge?" -- answered "<s>s-<e>s" when the motion ends.
* GP: shapes must go into the box in the order the question gives; the first instruction comes on
  the question's turn (due at ask time + 1), each next one when the previous shape lands in the
  box, then "all done".
* RF: objects fall toward the hazard zone at the bottom at a constant speed; warn 3 s before one
  reaches it (predictable from its position and speed).

The number of events scales with the video length so that silent turns per response turn is about
``silence_ratio`` (TP and TG have one answer by nature, so their ratio is about the number of
turns). Each sample carries 6 to 10 rubric checkpoints written in a small set of templates that
:func:`check_rubric` evaluates on a predicted trajectory (list of (time, text) responses).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any
from collections.abc import Iterator, Sequence

import numpy as np

from streampro_jax.data import chat_format, schema

__all__ = [
    "COLORS", "NarrationSource", "SHAPES", "SynthConfig", "check_rubric", "generate",
    "make_record", "render_frames", "silence_response_stats", "synthetic_vocabulary"
]

_SPLITS = ("train", "validation", "test")
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}

COLORS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (235, 215, 40),
    "white": (235, 235, 235), "purple": (155, 60, 205), "cyan": (40, 205, 215),
    "pink": (245, 130, 190),
}
SHAPES = ("circle", "square", "triangle", "diamond")
_DIRECTIONS = ("left", "right", "top", "bottom")
_BOX_COLOR = (150, 150, 150)
_HAZARD_COLORS = ((245, 140, 20), (20, 20, 20))
_SPEC_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """Options of the generator.

  Attributes:
    resolution: frame height = width in pixels.
    fps: frames per second (= temporal_patch_size, so one turn is one temporal patch).
    min_duration, max_duration: video length in whole seconds (= turns), drawn uniformly.
    difficulty: 0 (no distractors, clean), 1 or 2 (more distractor objects, pixel noise,
      background tint, speed jitter).
    silence_ratio: target silent turns per response turn (sets the number of events).
    tasks: tasks to generate, cycled by sample index.
  """
  resolution: int = 56
  fps: int = 2
  min_duration: int = 20
  max_duration: int = 30
  difficulty: int = 0
  silence_ratio: float = 12.0
  tasks: tuple[str, ...] = schema.BENCH_TASKS

  def __post_init__(self):
    if self.resolution < 24:
      raise ValueError(f"resolution must be >= 24, got {self.resolution}")
    if self.fps < 2:
      raise ValueError(f"fps must be >= 2 (two frames per turn), got {self.fps}")
    if not 12 <= self.min_duration <= self.max_duration:
      raise ValueError(f"need 12 <= min_duration <= max_duration, got {self.min_duration}, "
                       f"{self.max_duration}")
    if self.difficulty not in (0, 1, 2):
      raise ValueError(f"difficulty must be 0, 1 or 2, got {self.difficulty}")
    if self.silence_ratio <= 0:
      raise ValueError(f"silence_ratio must be > 0, got {self.silence_ratio}")
    for t in self.tasks:
      if t not in schema.BENCH_TASKS:
        raise ValueError(f"unknown task {t!r}; SynthStream covers {schema.BENCH_TASKS}")

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["tasks"] = list(self.tasks)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> SynthConfig:
    d = dict(d)
    if "tasks" in d:
      d["tasks"] = tuple(d["tasks"])
    return cls(**d)


# ------------------------------------------------------------------------------------------------
# Templates and vocabulary.

_Q = {
    "EU": "Describe each step of what the {obj} does.",
    "OU": "Is the {shape} {color}?",
    "AA": "Alert me when something unusual happens.",
    "TP": "What happens after the {obj} moves to the {dir} edge?",
    "TG": "When does the {obj} move to the {dir} edge?",
    "GP": "Tell me the next step to put the shapes into the box in this order: {order}.",
    "RF": "Warn me before any shape hits the hazard zone.",
}
_A_MOVE = "the {obj} moves to the {dir} edge"
_A_RECOLOR = "the {obj} turns {color}"
_A_RESHAPE = "the {obj} becomes a {shape}"
_A_ANOMALY = {"disappears": "alert: the {obj} disappears", "falls": "alert: the {obj} falls",
              "grows": "alert: the {obj} grows"}
_A_GP_STEP = "move the {obj} into the box"
_A_GP_DONE = "all done"
_A_RF = "warning: the {obj} will hit the zone"
_RUBRIC_WORDS = ("Responds at least once between and Does not respond before at most least "
                 "times time Mentions Never mentions Says")


def synthetic_vocabulary() -> list[str]:
  """Every word SynthStream's questions, answers and rubrics use (for the synthetic tokenizer)."""
  texts = list(COLORS) + list(SHAPES) + list(_DIRECTIONS) + list(_Q.values())
  texts += [_A_MOVE, _A_RECOLOR, _A_RESHAPE, _A_GP_STEP, _A_GP_DONE, _A_RF, "yes no",
            _RUBRIC_WORDS] + list(_A_ANOMALY.values())
  words, seen = [], set()
  for text in texts:
    for w in re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", text)):
      if w not in seen:
        seen.add(w)
        words.append(w)
  return words


def _name(color: str, shape: str) -> str:
  return f"{color} {shape}"


# ------------------------------------------------------------------------------------------------
# Scene building.


class _Scene:
  """Mutable scene under construction: objects with keyframes and static items."""

  def __init__(self, cfg: SynthConfig, rng: np.random.Generator, duration: int):
    self.cfg, self.rng, self.duration = cfg, rng, duration
    self.res = cfg.resolution
    self.size = max(5.0, round(0.16 * self.res))
    self.objects: list[dict] = []
    self.static: list[dict] = []
    self.used: set[tuple[str, str]] = set()

  # geometry
  def lo(self, size=None) -> float:
    return (size or self.size) / 2.0

  def hi(self, size=None) -> float:
    return self.res - (size or self.size) / 2.0

  def edge_coord(self, direction: str, size=None) -> tuple[str, float]:
    axis = "x" if direction in ("left", "right") else "y"
    return axis, (self.lo(size) if direction in ("left", "top") else self.hi(size))

  def new_identity(self, *, shape: str | None = None, exclude_shapes=(),
                   exclude_colors=()) -> tuple[str, str]:
    """A (color, shape) not used yet (shapes and colours drawn at random)."""
    colors = [c for c in COLORS if c not in exclude_colors]
    for _ in range(200):
      c = colors[self.rng.integers(len(colors))]
      s = shape or SHAPES[self.rng.integers(len(SHAPES))]
      if s in exclude_shapes or (c, s) in self.used:
        continue
      self.used.add((c, s))
      return c, s
    raise RuntimeError("ran out of object identities")

  def add(self, color: str, shape: str, x: float, y: float, t: float = 0.0,
          visible: bool = True, size: float | None = None) -> dict:
    obj = {"keys": [{"t": float(t), "x": float(x), "y": float(y), "color": color, "shape": shape,
                     "visible": bool(visible), "size": float(size or self.size)}]}
    self.objects.append(obj)
    return obj

  @staticmethod
  def last(obj: dict) -> dict:
    return obj["keys"][-1]

  @staticmethod
  def key(obj: dict, t: float, **changes) -> dict:
    """Appends a keyframe at time t (>= the last one), copying the last state with changes."""
    prev = obj["keys"][-1]
    if t < prev["t"]:
      raise ValueError(f"keyframe time {t} is before the previous one {prev['t']}")
    k = dict(prev)
    k.update(changes)
    k["t"] = float(t)
    obj["keys"].append(k)
    return k

  def random_position(self, margin: float = 0.0) -> tuple[float, float]:
    lo, hi = self.lo() + margin, self.hi() - margin
    return float(self.rng.uniform(lo, hi)), float(self.rng.uniform(lo, hi))

  def add_distractors(self, n: int, t_end: float, *, y_range=None, avoid=()) -> None:
    """n objects that wander between random points (no edges, no colour/shape changes)."""
    for _ in range(n):
      c, s = self.new_identity(exclude_colors=avoid)
      margin = self.size * 0.8
      x, y = self.random_position(margin)
      if y_range is not None:
        y = float(self.rng.uniform(*y_range))
      obj = self.add(c, s, x, y)
      t = 0.0
      while t < t_end:
        t += float(self.rng.integers(2, 5))
        nx, _ = self.random_position(margin)
        ny = y if y_range is not None else self.random_position(margin)[1]
        self.key(obj, t, x=nx, y=ny)

  def schedule(self, start: int, end: int, lengths: Sequence[int], min_gap: int = 1) -> list[int]:
    """Integer start times for events of the given lengths (turns) inside [start, end].

    Event i occupies [s_i, s_i + len_i]; consecutive events are at least min_gap apart; the slack
    is spread at random. Events that do not fit are dropped from the end.
    """
    lengths = list(lengths)
    while lengths:
      slack = (end - start) - sum(lengths) - min_gap * (len(lengths) - 1)
      if slack >= 0:
        break
      lengths.pop()
    if not lengths:
      return []
    gaps = self.rng.multinomial(slack, [1.0 / (len(lengths) + 1)] * (len(lengths) + 1))
    starts, t = [], start
    for i, n in enumerate(lengths):
      t += int(gaps[i]) + (min_gap if i else 0)
      starts.append(t)
      t += n
    return starts

  def spec(self) -> dict:
    d = self.cfg.difficulty
    base = np.asarray([30, 30, 34], float)
    if d:
      base = base + self.rng.uniform(-12, 12, size=3) * d
    return {
        "version": _SPEC_VERSION, "resolution": self.res, "fps": self.cfg.fps,
        "duration": self.duration, "background": [int(round(v)) for v in base],
        "noise": float(4.0 * d), "noise_seed": int(self.rng.integers(2**31 - 1)),
        "static": self.static, "objects": self.objects,
    }


def _state_at(obj: dict, t: float) -> dict | None:
  """Interpolated state of an object at time t (None before its first keyframe)."""
  keys = obj["keys"]
  if t < keys[0]["t"]:
    return None
  i = 0
  while i + 1 < len(keys) and keys[i + 1]["t"] <= t:
    i += 1
  k = dict(keys[i])
  if i + 1 < len(keys):
    nxt = keys[i + 1]
    frac = (t - k["t"]) / (nxt["t"] - k["t"])
    k["x"] = k["x"] + frac * (nxt["x"] - k["x"])
    k["y"] = k["y"] + frac * (nxt["y"] - k["y"])
  return k


def _rng_for(split: str, index: int, seed: int) -> np.random.Generator:
  if split not in _SPLIT_IDS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
  return np.random.default_rng([int(seed), _SPLIT_IDS[split], int(index)])


def _n_responses(cfg: SynthConfig, duration: int) -> int:
  return max(1, int(round(duration / (cfg.silence_ratio + 1.0))))


# Each task builder returns (question_text, ask_time, answers [dict], rubric_facts).
# rubric facts: list of (phrase, answer_time) for rubric generation, plus absent words.


def _ask_answer_time(ask: int) -> float:
  """Due time of an answer owed as soon as the question is asked (OU's first state, GP's first
  step): the time Y = ask + 1 of the question's turn, the earliest a response can be dated. Dating
  it at the ask time itself would put it one second before any possible response (a systematic
  1 s error; outside GP's [-3 s, 0] window, so never matchable)."""
  return chat_format.turn_time(chat_format.ask_turn(float(ask), ask + 1))


def _move_to_edge(scene: _Scene, obj: dict, direction: str, s: int, e: int) -> None:
  axis, value = scene.edge_coord(direction, scene.last(obj)["size"])
  scene.key(obj, float(s))
  scene.key(obj, float(e), **{axis: value})


def _edge_choices(scene: _Scene, obj: dict, min_dist: float) -> list[str]:
  k = scene.last(obj)
  out = []
  for d in _DIRECTIONS:
    axis, value = scene.edge_coord(d, k["size"])
    if abs(k[axis] - value) >= min_dist:
      out.append(d)
  return out


def _build_eu(scene: _Scene, n_resp: int, ask: int):
  rng = scene.rng
  c, s = scene.new_identity()
  x, y = scene.random_position(scene.size)
  obj = scene.add(c, s, x, y)
  n_steps = int(np.clip(n_resp, 1, 5))
  kinds = [("move", int(rng.integers(2, 5))) if rng.random() < 0.5 or i == 0 else
           (("recolor", "reshape")[int(rng.integers(2))], 1) for i in range(n_steps)]
  starts = scene.schedule(ask + 1, scene.duration - 1, [n for _, n in kinds])
  answers = []
  name0 = _name(c, s)
  for (kind, n), st in zip(kinds, starts):
    cur = scene.last(obj)
    cur_name = _name(cur["color"], cur["shape"])
    if kind == "move":
      dirs = _edge_choices(scene, obj, scene.size)
      direction = dirs[int(rng.integers(len(dirs)))]
      _move_to_edge(scene, obj, direction, st, st + n)
      answers.append({"start": float(st), "end": float(st + n),
                      "text": _A_MOVE.format(obj=cur_name, dir=direction)})
    elif kind == "recolor":
      new_c = [k for k in COLORS if k != cur["color"]][int(rng.integers(len(COLORS) - 1))]
      scene.key(obj, st + 0.75, color=new_c)
      answers.append({"start": st + 0.75, "end": st + 0.75,
                      "text": _A_RECOLOR.format(obj=cur_name, color=new_c)})
    else:
      new_s = [k for k in SHAPES if k != cur["shape"]][int(rng.integers(len(SHAPES) - 1))]
      scene.key(obj, st + 0.75, shape=new_s)
      answers.append({"start": st + 0.75, "end": st + 0.75,
                      "text": _A_RESHAPE.format(obj=cur_name, shape=new_s)})
  scene.add_distractors(scene.cfg.difficulty, scene.duration,
                        avoid=[k["color"] for k in obj["keys"]])
  return _Q["EU"].format(obj=name0), float(ask), answers


def _build_ou(scene: _Scene, n_resp: int, ask: int):
  rng = scene.rng
  c_query, s = scene.new_identity()
  other = [k for k in COLORS if k != c_query][int(rng.integers(len(COLORS) - 1))]
  scene.used.add((other, s))
  start_color = c_query if rng.random() < 0.5 else other
  x, y = scene.random_position(scene.size)
  obj = scene.add(start_color, s, x, y)
  n_flips = max(1, n_resp - 1)
  starts = scene.schedule(ask + 1, scene.duration - 1, [1] * n_flips, min_gap=2)
  answers = [{"time": _ask_answer_time(ask), "text": "yes" if start_color == c_query else "no"}]
  color = start_color
  for st in starts:
    color = other if color == c_query else c_query
    scene.key(obj, st + 0.75, color=color)
    answers.append({"time": st + 0.75, "text": "yes" if color == c_query else "no"})
  # Distractors have other shapes, so "the <shape>" names one object.
  for _ in range(scene.cfg.difficulty):
    c2, s2 = scene.new_identity(exclude_shapes=(s,))
    dx, dy = scene.random_position(scene.size)
    d = scene.add(c2, s2, dx, dy)
    for st2 in scene.schedule(1, scene.duration - 1, [1, 1], min_gap=3):
      scene.key(d, st2 + 0.75, color=[k for k in COLORS if k != c2][int(rng.integers(7))])
  return _Q["OU"].format(shape=s, color=c_query), float(ask), answers


def _bounce_keys(scene: _Scene, obj: dict, speed: float, t_end: float) -> None:
  k = scene.last(obj)
  lo, hi = scene.lo(), scene.hi()
  x, t = k["x"], k["t"]
  direction = 1 if scene.rng.random() < 0.5 else -1
  while t < t_end:
    target = hi if direction > 0 else lo
    dt = abs(target - x) / speed
    t += dt
    scene.key(obj, t, x=target)
    x, direction = target, -direction


def _truncate_at(obj: dict, t: float) -> None:
  """Cuts an object's keyframes after t, adding a keyframe at t with the interpolated state."""
  state = _state_at(obj, t)
  obj["keys"] = [k for k in obj["keys"] if k["t"] < t] + [dict(state, t=float(t))]


def _build_aa(scene: _Scene, n_resp: int, ask: int):
  rng = scene.rng
  n_anom = int(np.clip(n_resp, 1, 3))
  n_obj = max(2, n_anom) + scene.cfg.difficulty
  band = (scene.hi() - scene.lo() - scene.size) / max(n_obj - 1, 1)
  objs = []
  for i in range(n_obj):
    c, s = scene.new_identity()
    y = scene.lo() + scene.size / 2 + i * band if n_obj > 1 else scene.res / 2
    y = min(max(y, scene.lo()), scene.hi() - scene.size)   # keep room to fall
    obj = scene.add(c, s, float(rng.uniform(scene.lo(), scene.hi())), y)
    speed = scene.res / float(rng.uniform(3.0, 6.0))
    _bounce_keys(scene, obj, speed, scene.duration + 1.0)
    objs.append(obj)
  starts = scene.schedule(ask + 1, scene.duration - 1, [1] * n_anom, min_gap=2)
  order = rng.permutation(n_obj)
  answers = []
  for st, oi in zip(starts, order):
    obj = objs[int(oi)]
    c = obj["keys"][0]["color"]
    s = obj["keys"][0]["shape"]
    kind = ("disappears", "falls", "grows")[int(rng.integers(3))]
    t0 = st + 0.75
    _truncate_at(obj, t0)
    if kind == "disappears":
      scene.key(obj, t0, visible=False)
    elif kind == "falls":
      scene.key(obj, t0 + 0.5, y=scene.hi())
    else:
      scene.key(obj, t0, size=scene.size * 1.8)
    answers.append({"time": t0, "text": _A_ANOMALY[kind].format(obj=_name(c, s))})
  return _Q["AA"], float(ask), answers


def _random_event(scene: _Scene, obj: dict, st: int, n: int) -> tuple[str, tuple[float, float]]:
  """Applies a move (n > 1 turns) or an instant colour change to obj -> (answer text, span)."""
  rng = scene.rng
  cur = scene.last(obj)
  cur_name = _name(cur["color"], cur["shape"])
  dirs = _edge_choices(scene, obj, scene.size)
  if n > 1 and dirs:
    direction = dirs[int(rng.integers(len(dirs)))]
    _move_to_edge(scene, obj, direction, st, st + n)
    return _A_MOVE.format(obj=cur_name, dir=direction), (float(st), float(st + n))
  new_c = [k for k in COLORS if k != cur["color"]][int(rng.integers(len(COLORS) - 1))]
  scene.key(obj, st + 0.75, color=new_c)
  return _A_RECOLOR.format(obj=cur_name, color=new_c), (st + 0.75, st + 0.75)


def _build_tp(scene: _Scene, n_resp: int, ask: int):
  del n_resp
  rng = scene.rng
  ca, sa = scene.new_identity()
  cb, sb = scene.new_identity()
  a = scene.add(ca, sa, *scene.random_position(scene.size))
  b = scene.add(cb, sb, *scene.random_position(scene.size))
  n_pre = int(rng.integers(0, 2 + scene.cfg.difficulty))
  lengths = [int(rng.integers(1, 4)) for _ in range(n_pre)]
  trigger_len = int(rng.integers(2, 4))
  effect_len = int(rng.integers(1, 4))
  starts = scene.schedule(ask + 1, scene.duration - 1, lengths + [trigger_len, effect_len])
  while len(starts) < 2:   # always room for trigger + effect: drop distractors
    lengths = lengths[:-1]
    starts = scene.schedule(ask + 1, scene.duration - 1, lengths + [trigger_len, effect_len])
  n_pre = len(starts) - 2
  for st, n in zip(starts[:n_pre], lengths):
    # Distractor events: B acts, or A changes colour (A never moves to an edge before).
    if rng.random() < 0.5:
      _random_event(scene, b, st, n)
    else:
      _random_event(scene, a, st, 1)
  st_t, st_e = starts[n_pre], starts[n_pre + 1]
  dirs = _edge_choices(scene, a, scene.size)
  direction = dirs[int(rng.integers(len(dirs)))]
  trig_name = _name(scene.last(a)["color"], scene.last(a)["shape"])
  _move_to_edge(scene, a, direction, st_t, st_t + trigger_len)
  text, span = _random_event(scene, b, st_e, effect_len)
  scene.add_distractors(scene.cfg.difficulty, scene.duration,
                        avoid=[k["color"] for k in a["keys"] + b["keys"]])
  answers = [{"start": span[0], "end": span[1], "text": text}]
  return _Q["TP"].format(obj=trig_name, dir=direction), float(ask), answers


def _build_tg(scene: _Scene, n_resp: int, ask: int):
  del n_resp
  rng = scene.rng
  c, s = scene.new_identity()
  obj = scene.add(c, s, *scene.random_position(scene.size))
  n_pre = int(rng.integers(0, 1 + scene.cfg.difficulty))
  lengths = [int(rng.integers(2, 4)) for _ in range(n_pre)] + [int(rng.integers(2, 6))]
  starts = scene.schedule(ask + 1, scene.duration - 1, lengths)
  # The last scheduled event is the asked one.
  for st, n in zip(starts[:-1], lengths):
    dirs = _edge_choices(scene, obj, scene.size)
    _move_to_edge(scene, obj, dirs[int(rng.integers(len(dirs)))], st, st + n)
  st, n = starts[-1], lengths[len(starts) - 1]
  dirs = _edge_choices(scene, obj, scene.size)
  direction = dirs[int(rng.integers(len(dirs)))]
  _move_to_edge(scene, obj, direction, st, st + n)
  scene.add_distractors(scene.cfg.difficulty, scene.duration, avoid=(c,))
  answers = [{"time": float(st + n), "text": f"{st}s-{st + n}s"}]
  return _Q["TG"].format(obj=_name(c, s), dir=direction), float(ask), answers


def _build_gp(scene: _Scene, n_resp: int, ask: int):
  rng = scene.rng
  n_steps = int(np.clip(n_resp - 1, 2, 4))
  res, size = scene.res, scene.size
  box_y0 = res * 0.62
  scene.static.append({"kind": "box", "x0": 1.0, "y0": box_y0, "x1": res - 1.0,
                       "y1": res - 1.0})
  slots = np.linspace(size, res - size, n_steps)
  order = rng.permutation(n_steps)
  objs, names = [], []
  for i in range(n_steps):
    c, s = scene.new_identity()
    x = float(slots[order[i]])
    objs.append(scene.add(c, s, x, float(rng.uniform(scene.lo(), box_y0 - size * 1.2))))
    names.append(_name(c, s))
  lengths = [int(rng.integers(2, 4)) for _ in range(n_steps)]
  starts = scene.schedule(ask + 1, scene.duration - 1, lengths)
  while len(starts) < n_steps and max(lengths) > 1:   # shorter moves until all steps fit
    lengths = [max(1, n - 1) for n in lengths]
    starts = scene.schedule(ask + 1, scene.duration - 1, lengths)
  answers = [{"time": _ask_answer_time(ask), "text": _A_GP_STEP.format(obj=names[0])}]
  y_in = (box_y0 + res - 1.0) / 2.0
  for i, (st, n) in enumerate(zip(starts, lengths)):
    scene.key(objs[i], float(st))
    scene.key(objs[i], float(st + n), y=y_in)
    text = _A_GP_STEP.format(obj=names[i + 1]) if i + 1 < n_steps else _A_GP_DONE
    answers.append({"time": float(st + n), "text": text})
  return _Q["GP"].format(order=", ".join(names)), float(ask), answers


def _build_rf(scene: _Scene, n_resp: int, ask: int):
  rng = scene.rng
  res, size = scene.res, scene.size
  zone_h = max(3.0, round(res * 0.12))
  zone_top = res - zone_h
  scene.static.append({"kind": "hazard", "y0": float(zone_top), "y1": float(res)})
  speed0 = res / 8.0
  y_start = scene.lo()
  y_hit = zone_top - size / 2.0     # the object's bottom touches the zone
  n_obj = int(np.clip(n_resp, 1, 3))
  # Warnings on distinct turns k_w >= ask + 1; the object must be seen moving for >= 1 s first.
  answers = []
  used_turns: list[int] = []
  for _ in range(n_obj):
    speed = speed0 * (float(rng.uniform(0.75, 1.3)) if scene.cfg.difficulty else 1.0)
    travel = (y_hit - y_start) / speed
    earliest = max(ask + 1, int(math.ceil(travel - 3.0 + 1.0)))
    choices = [k for k in range(earliest, scene.duration - 4)
               if all(abs(k - u) >= 3 for u in used_turns)]
    if not choices:
      break
    k_w = int(choices[int(rng.integers(len(choices)))])
    used_turns.append(k_w)
    t_hit = k_w + 0.75 + 3.0
    t_appear = t_hit - travel
    c, s = scene.new_identity()
    x = float(rng.uniform(scene.lo(), scene.hi()))
    obj = scene.add(c, s, x, y_start, t=t_appear)
    scene.key(obj, t_hit, y=y_hit)
    scene.key(obj, t_hit, visible=False)
    answers.append({"time": k_w + 0.75, "text": _A_RF.format(obj=_name(c, s))})
  answers.sort(key=lambda a: a["time"])
  # Distractors move sideways in the upper part; they never approach the zone.
  for _ in range(scene.cfg.difficulty):
    c, s = scene.new_identity()
    obj = scene.add(c, s, float(rng.uniform(scene.lo(), scene.hi())),
                    float(rng.uniform(scene.lo(), zone_top * 0.5)))
    _bounce_keys(scene, obj, res / float(rng.uniform(3.0, 6.0)), scene.duration + 1.0)
  return _Q["RF"], float(ask), answers


_BUILDERS = {"EU": _build_eu, "OU": _build_ou, "AA": _build_aa, "TP": _build_tp,
             "TG": _build_tg, "GP": _build_gp, "RF": _build_rf}


# ------------------------------------------------------------------------------------------------
# Rubrics.

_NUM = r"(\d+(?:\.\d+)?)"
_RUBRIC_PATTERNS = [
    ("window", re.compile(rf"^Responds at least once between {_NUM}s and {_NUM}s\.$")),
    ("silent_before", re.compile(rf"^Does not respond before {_NUM}s\.$")),
    ("at_most", re.compile(r"^Responds at most (\d+) times?\.$")),
    ("at_least", re.compile(r"^Responds at least (\d+) times?\.$")),
    ("says", re.compile(rf'^Says "(.+)" between {_NUM}s and {_NUM}s\.$')),
    ("order", re.compile(r'^Mentions "(.+)" before "(.+)"\.$')),
    ("never", re.compile(r'^Never mentions "(.+)"\.$')),
    ("mentions", re.compile(r'^Mentions "(.+)"\.$')),
]


def _has(text: str, phrase: str) -> bool:
  return re.search(rf"(?<![A-Za-z0-9]){re.escape(phrase)}(?![A-Za-z0-9])", text,
                   re.IGNORECASE) is not None


def check_rubric(item: str, responses: Sequence[tuple[float, str]]) -> bool:
  """Evaluates one rubric checkpoint on a predicted trajectory.

  Args:
    item: a checkpoint in one of the templates (see ``_RUBRIC_PATTERNS``).
    responses: the trajectory's responses as (time, text), time = the turn's Y = k + 1.

  Phrases match case-insensitively as whole words. Raises ValueError on an unknown template.
  """
  for kind, pat in _RUBRIC_PATTERNS:
    m = pat.match(item)
    if not m:
      continue
    g = m.groups()
    if kind == "window":
      return any(float(g[0]) <= t <= float(g[1]) for t, _ in responses)
    if kind == "silent_before":
      return all(t >= float(g[0]) for t, _ in responses)
    if kind == "at_most":
      return len(responses) <= int(g[0])
    if kind == "at_least":
      return len(responses) >= int(g[0])
    if kind == "says":
      return any(float(g[1]) <= t <= float(g[2]) and _has(x, g[0]) for t, x in responses)
    if kind == "order":
      t1 = [t for t, x in responses if _has(x, g[0])]
      t2 = [t for t, x in responses if _has(x, g[1])]
      return bool(t1) and bool(t2) and min(t1) < min(t2)
    if kind == "never":
      return not any(_has(x, g[0]) for _, x in responses)
    if kind == "mentions":
      return any(_has(x, g[0]) for _, x in responses)
  raise ValueError(f"unknown rubric template: {item!r}")


def _rubric_score(items: Sequence[str], responses: Sequence[tuple[float, str]]) -> float:
  """Fraction of rubric checkpoints passed (R_traj with a programmatic judge)."""
  if not items:
    raise ValueError("empty rubric")
  return sum(check_rubric(i, responses) for i in items) / len(items)


def _fmt(t: float) -> str:
  return f"{t:g}"


def _make_rubric(task: str, record_answers: list[dict], ask: float, duration: int,
                 present_words: set[str], rng: np.random.Generator) -> list[str]:
  q_turn = chat_format.ask_turn(ask, duration)
  gt = []   # (Y, phrase) of each ground-truth answer, in time order
  for a in sorted(record_answers, key=lambda a: a.get("end", a.get("time"))):
    rt = a.get("end", a.get("time"))
    y = chat_format.turn_time(chat_format.answer_turn(rt, q_turn))
    gt.append((y, a["text"]))
  n_resp_turns = len({y for y, _ in gt})
  proactive = task in ("GP", "RF")
  items: list[str] = []
  first_y = gt[0][0]
  for y, phrase in gt:
    lo, hi = (y - 3.0, y) if proactive else (y, y + 3.0)
    lo = max(lo, chat_format.turn_time(q_turn))
    items.append(f'Says "{phrase}" between {_fmt(lo)}s and {_fmt(hi)}s.')
  if first_y - 3 > chat_format.turn_time(q_turn):
    items.append(f"Does not respond before {_fmt(first_y - 3)}s.")
  items.append(f"Responds at most {n_resp_turns + 2} times.")
  items.append(f"Responds at least {n_resp_turns} time{'s' if n_resp_turns > 1 else ''}.")
  phrases = []
  for _, p in gt:
    if p not in phrases:
      phrases.append(p)
  for p1, p2 in zip(phrases, phrases[1:]):
    if not (p1 in p2 or p2 in p1):
      items.append(f'Mentions "{p1}" before "{p2}".')
  absent = [c for c in list(COLORS) + list(SHAPES) if c not in present_words]
  rng.shuffle(absent)
  # Fill to at least 6 with hallucination checks, then cap at 10 (keeping the timed ones first).
  target = int(rng.integers(6, 9))
  for w in absent:
    if len(items) >= target:
      break
    items.append(f'Never mentions "{w}".')
  for y, _ in gt:
    if len(items) >= 6:
      break
    items.append(f"Responds at least once between {_fmt(y - 1)}s and {_fmt(y + 1)}s.")
  return items[:10]


# ------------------------------------------------------------------------------------------------
# Public API.


def make_record(split: str, index: int, *, seed: int = 0,
                config: SynthConfig | None = None) -> schema.Record:
  """The record of sample ``index`` of ``split`` (scene spec in ``meta["synth"]``), no frames."""
  cfg = config or SynthConfig()
  rng = _rng_for(split, index, seed)
  task = cfg.tasks[index % len(cfg.tasks)]
  duration = int(rng.integers(cfg.min_duration, cfg.max_duration + 1))
  scene = _Scene(cfg, rng, duration)
  ask = int(rng.integers(0, 3))
  q_text, ask_time, answers = _BUILDERS[task](scene, _n_responses(cfg, duration), ask)
  present = set()
  for obj in scene.objects:
    for k in obj["keys"]:
      present.update((k["color"], k["shape"]))
  rubric = _make_rubric(task, answers, ask_time, duration, present, rng)
  spec = scene.spec()
  spec.update({"split": split, "index": int(index), "seed": int(seed), "task": task,
               "config": cfg.to_dict()})
  obj = {"id": f"synth-{split}-{index:06d}", "video": f"{schema.SYNTH_PREFIX}{split}/{index}",
         "duration": float(duration),
         "questions": [{"id": "q0", "task": task, "ask_time": ask_time, "question": q_text,
                        "answers": answers, "rubric": rubric}],
         "meta": {"synth": spec}}
  return schema.parse_record(obj)


def _draw_shape(img: np.ndarray, xx: np.ndarray, yy: np.ndarray, state: dict) -> None:
  r = state["size"] / 2.0
  dx, dy = xx - state["x"], yy - state["y"]
  shape = state["shape"]
  if shape == "circle":
    mask = dx * dx + dy * dy <= r * r
  elif shape == "square":
    mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
  elif shape == "triangle":
    mask = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2.0)
  elif shape == "diamond":
    mask = np.abs(dx) + np.abs(dy) <= r
  else:
    raise ValueError(f"unknown shape {shape!r}")
  img[mask] = COLORS[state["color"]]


def render_frames(record_or_spec: schema.Record | dict) -> np.ndarray:
  """Draws a SynthStream video: uint8[T_frames, H, W, 3], T_frames = duration * fps.

  Frame i shows the scene at time (i + 1) / fps. Deterministic: same spec, same pixels.
  """
  if isinstance(record_or_spec, schema.Record):
    if not record_or_spec.meta or "synth" not in record_or_spec.meta:
      raise ValueError(f"record {record_or_spec.id!r} has no meta['synth'] scene spec")
    spec = record_or_spec.meta["synth"]
  else:
    spec = record_or_spec
  res, fps = int(spec["resolution"]), int(spec["fps"])
  n_frames = int(spec["duration"]) * fps
  yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) + 0.5
  base = np.empty((res, res, 3), np.float32)
  base[:] = spec["background"]
  for item in spec["static"]:
    if item["kind"] == "box":
      inside = (xx >= item["x0"]) & (xx <= item["x1"]) & (yy >= item["y0"]) & (yy <= item["y1"])
      core = ((xx >= item["x0"] + 1) & (xx <= item["x1"] - 1) & (yy >= item["y0"] + 1)
              & (yy <= item["y1"] - 1))
      base[inside & ~core] = _BOX_COLOR
    elif item["kind"] == "hazard":
      band = (yy >= item["y0"]) & (yy <= item["y1"])
      stripe = (np.floor((xx + yy) / 4.0) % 2).astype(int)
      base[band & (stripe == 0)] = _HAZARD_COLORS[0]
      base[band & (stripe == 1)] = _HAZARD_COLORS[1]
    else:
      raise ValueError(f"unknown static item {item['kind']!r}")
  noise_rng = np.random.default_rng(int(spec["noise_seed"]))
  frames = np.empty((n_frames, res, res, 3), np.uint8)
  for i in range(n_frames):
    t = (i + 1) / fps
    img = base.copy()
    for obj in spec["objects"]:
      state = _state_at(obj, t)
      if state is not None and state["visible"]:
        _draw_shape(img, xx, yy, state)
    if spec["noise"] > 0:
      img += noise_rng.normal(0.0, spec["noise"], size=img.shape).astype(np.float32)
    frames[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
  return frames


_NARRATION_QUESTION = "Describe the shapes."
_NARRATION_EMPTY = "no shapes"


def _narration_caption(spec: dict, t: float) -> str:
  """What the frame at time ``t`` shows, in SynthStream's words: every visible object, left to
  right, as "the <colour> <shape> <top|bottom> <left|right>" (the frame half that holds its
  centre), joined by ", "; "no shapes" when none is visible.

  Example: "the red square top left, the blue circle bottom right".
  """
  res = float(spec["resolution"])
  parts = []
  for obj in spec["objects"]:
    st = _state_at(obj, t)
    if st is None or not st["visible"]:
      continue
    vert = "top" if st["y"] < res / 2 else "bottom"
    horiz = "left" if st["x"] < res / 2 else "right"
    parts.append((st["x"], f"the {st['color']} {st['shape']} {vert} {horiz}"))
  return ", ".join(text for _, text in sorted(parts, key=lambda p: p[0])) or _NARRATION_EMPTY


def _narration_record(record: schema.Record, refer: int | None = None) -> schema.Record:
  """The dense-captioning ("narration") version of a SynthStream record: the same video with one
  question, ``_NARRATION_QUESTION`` (task "CAP") asked at 0 s, answered on EVERY turn k by
  ``_narration_caption`` at the turn's time k + 1 (the last frame it shows).

  With ``refer`` = i, the question names the i-th object that is ever visible (modulo their
  number) by its first colour and shape, "Describe the red square.", and every turn's caption
  covers that object only ("the red square top left", "no shapes" while it is not visible): the
  object's name must be read from the question, the rest from the frames.

  Dense-captioning data for pretraining a base model from scratch (``data.narration=True`` in a
  training config, see ``train.setup.make_data``): every turn supervises colours, shapes and
  positions, about 30x more visual supervision per row than the streaming tasks, whose rows hold
  one or two answers among ~12 silent turns. What a tiny model learns from it on a CPU is in
  docs/benchmarks.md#the-end-to-end-demo (position in ~200 steps, colour only after ~400).

  Raises:
    ValueError: the record is not a SynthStream record (no ``meta["synth"]`` scene spec).
  """
  spec = (record.meta or {}).get("synth")
  if spec is None:
    raise ValueError(f"record {record.id!r}: no meta['synth'] scene spec (not a SynthStream "
                     "record), cannot narrate it")
  text = _NARRATION_QUESTION
  if refer is not None:
    seen = [o for o in spec["objects"] if any(k["visible"] for k in o["keys"])]
    if seen:
      obj = seen[int(refer) % len(seen)]
      first = next(k for k in obj["keys"] if k["visible"])
      text = f"Describe the {_name(first['color'], first['shape'])}."
      spec = dict(spec, objects=[obj])
  turns = chat_format.num_turns(record.duration)
  answers = tuple(schema.Answer(text=_narration_caption(spec, chat_format.turn_time(k)),
                                time=chat_format.turn_time(k)) for k in range(turns))
  question = schema.Question(id="narration", task="CAP", ask_time=0.0, question=text,
                             answers=answers)
  return dataclasses.replace(record, questions=(question,))


def _answered_narration_record(record: schema.Record) -> schema.Record:
  """The record's own question, asked at 0 s and answered on EVERY turn: a turn on which a
  ground-truth answer is due (``chat_format.answer_turn``) carries that answer (the same Answer,
  so its time and text), every other turn the full narration caption at the turn's time.

  Offline question answering for the base model, the stand-in for a pretrained VLM that already
  answers questions about a video it has seen: each task's answer is tied to its question's
  words and to the frames, with no silent turn, so no decision between silence and response is
  learnt (that stays the SFT stage's). Asking at 0 s keeps every answer on its own turn.

  Raises:
    ValueError: not a SynthStream record, or it has no question.
  """
  spec = (record.meta or {}).get("synth")
  if spec is None or not record.questions:
    raise ValueError(f"record {record.id!r}: no meta['synth'] scene spec or no question, cannot "
                     "narrate its answers")
  q = record.questions[0]
  turns = chat_format.num_turns(record.duration)
  due = {min(chat_format.answer_turn(a.response_time), turns - 1) for a in q.answers}
  captions = tuple(schema.Answer(text=_narration_caption(spec, chat_format.turn_time(k)),
                                 time=chat_format.turn_time(k))
                   for k in range(turns) if k not in due)
  question = dataclasses.replace(q, ask_time=0.0, answers=tuple(q.answers) + captions)
  return dataclasses.replace(record, questions=(question,))


class NarrationSource:
  """Wraps a data source of SynthStream (record, frames) pairs (``pipeline.RecordSource``,
  ``pipeline.TfdsSource``, ...) so that each record is replaced by a narration; frames are
  unchanged. One trajectory per video. Without ``answers``: example i is the full narration
  when i is even, and the narration of one object named in the question (``refer`` = i // 2)
  when i is odd, so that both seeing (colours, shapes, positions) and reading the question are
  learnt. With ``answers``: the full narration when i % 4 is 0, one object's (``refer`` = i // 4)
  when it is 1, and the video's own question answered on every turn when it is 2 or 3
  (``_answered_narration_record``)."""

  def __init__(self, source, *, answers: bool = False):
    self.source = source
    self.answers = bool(answers)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> tuple[schema.Record, np.ndarray]:
    record, frames = self.source[i]
    if self.answers and i % 4 >= 2:
      return _answered_narration_record(record), frames
    kind, refer = (i % 4, i // 4) if self.answers else (i % 2, i // 2)
    return _narration_record(record, None if kind == 0 else refer), frames

  def question_counts(self) -> list[int]:
    return [1] * len(self)


def _iter_generate(split: str, num_videos: int, *, seed: int = 0,
                  config: SynthConfig | None = None, start: int = 0,
                  with_frames: bool = True) -> Iterator[tuple[schema.Record, np.ndarray | None]]:
  """Yields (record, frames) for indices start .. start + num_videos - 1 of a split."""
  for index in range(start, start + num_videos):
    record = make_record(split, index, seed=seed, config=config)
    yield record, (render_frames(record) if with_frames else None)


def generate(split: str, num_videos: int, *, seed: int = 0, config: SynthConfig | None = None,
             with_frames: bool = True) -> list[tuple[schema.Record, np.ndarray | None]]:
  """List of (record, frames uint8[T, H, W, 3]) for samples 0 .. num_videos - 1 of ``split``.

  Deterministic by (split, index, seed, config): sample i is the same whatever num_videos is.
  """
  return list(_iter_generate(split, num_videos, seed=seed, config=config,
                            with_frames=with_frames))


def _response_turns(record: schema.Record) -> list[int]:
  """Turns (0-based) that respond in the record's first question's ground truth."""
  plans = chat_format.plan_turns(record, record.questions[0])
  return [p.index for p in plans if p.decision == chat_format.DECISION_RESPONSE]


def silence_response_stats(records: Sequence[schema.Record]) -> dict[str, Any]:
  """Counts of silent and responding turns over records (all their questions).

  Returns a dict with "silent", "response", "ratio" (silent / response) and "per_task" ratios.
  """
  silent = response = 0
  per_task: dict[str, list[int]] = {}
  for r in records:
    for q in r.questions:
      plans = chat_format.plan_turns(r, q)
      n_r = sum(p.decision == chat_format.DECISION_RESPONSE for p in plans)
      n_s = len(plans) - n_r
      silent += n_s
      response += n_r
      acc = per_task.setdefault(q.task, [0, 0])
      acc[0] += n_s
      acc[1] += n_r
  return {"silent": silent, "response": response,
          "ratio": silent / max(response, 1),
          "per_task": {k: v[0] / max(v[1], 1) for k, v in per_task.items()}}
