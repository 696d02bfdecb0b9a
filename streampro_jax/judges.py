"""Judges for the GRPO rewards and the benchmark: one interface, three implementations.

A judge answers two batched questions (docs/method.md section 3, "Judges"):
  score_answers(items)                  -> [score in [0, 1] or None]     (S_acc; LLM score / 5)
  check_rubric(trajectory, checks, ...) -> [True/False or None]          (R_traj checkpoints)
LLM judges also write rubrics (offline, launch/write_rubrics.py): write_rubric_items(question,
answers) -> [{"rubric_id", "dimension", "rubric"}] or None (write_rubrics: batched).

Temporal Grounding (task "TG") items are scored by every judge as the IoU of the prediction's
"Xs-Ys" span with the reference's (spans.text_iou), never by an LLM (docs/method.md: whatever judge
is configured); a TG reference without a span is a failure (None, counted).

None means the judge failed on that item (timeout after the retries, HTTP error, malformed reply,
unparseable number). Failures are counted in `judge.stats` (a JudgeStats) and reported; they are
never turned into a silent 0 here. Callers decide what to do with them (rewards._turn_f1_inputs
counts them per sample).

Implementations:
  MatchJudge        exact / normalised match for templated answers (SynthStream); TG answers by the
                    IoU of their "Xs-Ys" spans. Deterministic, no I/O.
  OpenAIJudge       any OpenAI-compatible /chat/completions endpoint: asyncio with a concurrency
                    limit, per-request timeout, retries with exponential backoff, a cache by input
                    hash (memory plus optional JSONL file). The API key is read from the environment
                    variable named in the config at request time; it is never stored on the object,
                    logged, or put in a repr or an error message. Standard library only.
  LocalLMJudge      a local transformers causal-LM checkpoint directory (torch, greedy decoding).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import threading
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from streampro_jax import prompts, spans

__all__ = ["AnswerItem", "Judge", "JudgeStats", "LocalLMJudge", "MatchJudge", "OpenAIJudge",
           "OpenAIJudgeConfig", "build_judge", "Request"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AnswerItem:
  """One answer to score: the prediction against the reference, for a question of a task."""
  question: str
  prediction: str
  reference: str
  task: str = ""


class JudgeStats:
  """Thread-safe counters of a judge's work.

  requests    judgments asked for (answer items, rubric checks counted one each, rubrics written)
  cache_hits  judgments served from the cache (or duplicates inside one batch)
  calls       backend calls made (HTTP attempts, sequences generated)
  retries     HTTP attempts repeated after a timeout / 5xx / 429 / connection error
  timeouts    HTTP attempts that timed out
  malformed   replies received that could not be parsed
  failures    judgments returned as None
  """

  FIELDS = ("requests", "cache_hits", "calls", "retries", "timeouts", "malformed", "failures")

  def __init__(self):
    self._lock = threading.Lock()
    self._counts = dict.fromkeys(self.FIELDS, 0)

  def add(self, field: str, n: int = 1) -> None:
    if field not in self._counts:
      raise KeyError(f"unknown JudgeStats field {field!r}; fields are {self.FIELDS}")
    with self._lock:
      self._counts[field] += n

  def __getattr__(self, name: str) -> int:
    counts = self.__dict__.get("_counts")
    if counts is not None and name in counts:
      return counts[name]
    raise AttributeError(name)

  def as_dict(self) -> dict[str, int]:
    with self._lock:
      return dict(self._counts)

  def __repr__(self) -> str:
    return "JudgeStats(" + ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ")"


@runtime_checkable
class Judge(Protocol):
  """The interface every judge implements."""

  stats: JudgeStats

  def score_answers(self, items: Sequence[AnswerItem]) -> list[float | None]:
    """Scores in [0, 1] (None on failure), one per item, in order."""
    ...

  def check_rubric(self, trajectory_text: str, checks: Sequence[str],
                   question: str = "") -> list[bool | None]:
    """Pass/fail (None on failure) of each checkpoint on the whole trajectory."""
    ...


# ----------------------------------------------------------------------------------------------
# Exact / normalised-match judge.
# ----------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Words around a reference span that still leave it "a span and nothing else" (MatchJudge).
_SPAN_FRAME = frozenset({"from", "between", "at", "and", "to"})


# Words that turn a quoted-string checkpoint into "none of these occurs" (MatchJudge).
_NEGATIONS = frozenset({"never", "not", "without", "doesn", "don", "nothing"})


def _normalize_text(text: str) -> str:
  """Lower case, NFKC, punctuation -> space, articles (a, an, the) dropped, whitespace collapsed."""
  text = unicodedata.normalize("NFKC", text).lower()
  text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def _span_only(text: str) -> bool:
  """True when `text` holds a span (spans.SPAN_RE) and, besides it, only framing words
  ("from", "between", ...) and punctuation: "4s-8s", "From 4 to 8 seconds."."""
  if spans.parse_span(text) is None:
    return False
  rest = _normalize_text(spans.SPAN_RE.sub(" ", text, count=1)).split()
  return all(w in _SPAN_FRAME for w in rest)


class MatchJudge:
  """Exact match after normalisation (_normalize_text); TG by span IoU.

  score_answers: for task "TG", spans.text_iou (the IoU every judge and the metric use; 0 when
  a span is missing); whatever the task, a reference that is a span and nothing else ("4s-8s",
  "from 4 to 8 seconds"), the same spans.text_iou, so both sides are read by one span grammar
  ("from 4 to 8 seconds" against "4s-8s" scores 1); otherwise 1.0 when the normalised texts are
  equal, else 0.0.
  check_rubric: a checkpoint holding quoted strings ("..." or '...') passes when every quoted
  string occurs, normalised, in the normalised trajectory, or, when the words outside the quotes
  negate ("never", "not", "without", "nothing"; 'Never mentions "cyan".'), when none occurs;
  a checkpoint without quotes passes when the whole normalised checkpoint occurs in it. The judge
  sees only the trajectory's text, not its times: 'Says "x" between 3s and 6s.' passes whenever
  "x" is said, and counts or times ("Responds at most 4 times.") never pass. For SynthStream's
  timed rubrics use synthetic.check_rubric (the "synthetic" judge of the GRPO trainer).
  """

  def __init__(self):
    self.stats = JudgeStats()

  def __repr__(self) -> str:
    return "MatchJudge()"

  def score_one(self, item: AnswerItem) -> float:
    if item.task.upper() == "TG":
      iou = spans.text_iou(item.prediction, item.reference)
      return 0.0 if iou is None else iou
    if _span_only(item.reference):
      return spans.text_iou(item.prediction, item.reference)
    return float(_normalize_text(item.prediction) == _normalize_text(item.reference))

  def score_answers(self, items: Sequence[AnswerItem]) -> list[float | None]:
    self.stats.add("requests", len(items))
    self.stats.add("calls", len(items))
    return [self.score_one(it) for it in items]

  def check_rubric(self, trajectory_text: str, checks: Sequence[str],
                   question: str = "") -> list[bool | None]:
    del question
    self.stats.add("requests", len(checks))
    self.stats.add("calls", len(checks))
    traj = f" {_normalize_text(trajectory_text)} "
    out: list[bool | None] = []
    for check in checks:
      quoted = re.findall(r"\"([^\"]+)\"|'([^']+)'", check)
      needles = [_normalize_text(a or b) for a, b in quoted] or [_normalize_text(check)]
      found = [f" {n} " in traj for n in needles if n]
      outside = set(_normalize_text(re.sub(r"\"[^\"]+\"|'[^']+'", " ", check)).split())
      out.append(not any(found) if quoted and outside & _NEGATIONS else all(found))
    return out


# ----------------------------------------------------------------------------------------------
# Shared machinery of the LLM judges: prompts, cache, parsing, stats.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Request:
  """One chat request, hashable: each message is (role, content), content a string or, for a
  message with images, a tuple of ("text", text) and ("image_url", url) parts."""
  kind: str  # "score" | "rubric" | "write"
  messages: tuple[tuple[str, Any], ...]
  max_tokens: int

  @property
  def has_images(self) -> bool:
    return any(not isinstance(c, str) and any(k == "image_url" for k, _ in c)
               for _, c in self.messages)

  def as_messages(self) -> list[dict[str, Any]]:
    """OpenAI chat messages: string content as is, parts as [{"type": ..., ...}]."""
    out = []
    for role, content in self.messages:
      if not isinstance(content, str):
        content = [{"type": "text", "text": v} if k == "text"
                   else {"type": "image_url", "image_url": {"url": v}} for k, v in content]
      out.append({"role": role, "content": content})
    return out


def _freeze(messages: list[dict[str, Any]]) -> tuple[tuple[str, Any], ...]:
  def parts(content):
    if isinstance(content, str):
      return content
    return tuple(("text", p["text"]) if p["type"] == "text"
                 else ("image_url", p["image_url"]["url"]) for p in content)
  return tuple((m["role"], parts(m["content"])) for m in messages)


class _LLMJudge:
  """Base of the LLM judges. Subclasses implement _complete_many(requests) -> [reply or None];
  `sees_images` says whether a request may carry images (write_rubrics with frames)."""

  sees_images = False

  def __init__(self, *, backend_id: str, cache_path: str | None = None,
               score_max_tokens: int = 128, rubric_max_tokens: int = 256,
               write_max_tokens: int = 1024):
    self.stats = JudgeStats()
    self._backend_id = backend_id
    self._score_max_tokens = score_max_tokens
    self._rubric_max_tokens = rubric_max_tokens
    self._write_max_tokens = write_max_tokens
    self._cache: dict[str, Any] = {}
    self._cache_lock = threading.Lock()
    self._cache_path = cache_path
    if cache_path and os.path.exists(cache_path):
      self._load_cache(cache_path)

  # -- cache ---------------------------------------------------------------------------------

  def _key(self, req: Request) -> str:
    blob = json.dumps([self._backend_id, prompts.PROMPT_VERSION, req.kind, req.messages,
                       req.max_tokens], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()

  def _load_cache(self, path: str) -> None:
    bad = 0
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          row = json.loads(line)
          self._cache[row["key"]] = row["value"]
        except (json.JSONDecodeError, KeyError, TypeError):
          bad += 1
    if bad:
      _logger.warning("judge cache %s: skipped %d unreadable lines", path, bad)

  def _cache_put(self, key: str, value: Any) -> None:
    with self._cache_lock:
      self._cache[key] = value
      if self._cache_path:
        with open(self._cache_path, "a", encoding="utf-8") as f:
          f.write(json.dumps({"key": key, "value": value}) + "\n")

  @property
  def cache_size(self) -> int:
    return len(self._cache)

  # -- backend -------------------------------------------------------------------------------

  def _complete_many(self, requests: list[Request]) -> list[str | None]:
    raise NotImplementedError

  def _run(self, requests: list[Request], parse: Callable[[Request, str | None], Any],
           ok: Callable[[Any], bool]) -> list[Any]:
    """Cache lookup, de-duplication, backend calls for the misses, parsing, caching successes."""
    keys = [self._key(r) for r in requests]
    results: list[Any] = [None] * len(requests)
    todo: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
      if k in self._cache:
        self.stats.add("cache_hits")
        results[i] = self._cache[k]
      elif k in todo:
        self.stats.add("cache_hits")
        todo[k].append(i)
      else:
        todo[k] = [i]
    if todo:
      firsts = [idxs[0] for idxs in todo.values()]
      replies = self._complete_many([requests[i] for i in firsts])
      for (key, idxs), i, reply in zip(todo.items(), firsts, replies):
        value = parse(requests[i], reply)
        if ok(value):
          self._cache_put(key, value)
        elif reply is not None:
          self.stats.add("malformed")
        for j in idxs:
          results[j] = value
    return results

  # -- the judge interface ---------------------------------------------------------------------

  def score_answers(self, items: Sequence[AnswerItem]) -> list[float | None]:
    """0..5 LLM scores divided by 5; None (counted in stats.failures) when the judge failed.

    TG items are not sent to the model: their score is the span IoU (spans.text_iou).
    """
    self.stats.add("requests", len(items))
    out: list[float | None] = [None] * len(items)
    llm = []
    for i, it in enumerate(items):
      if it.task.upper() == "TG":
        out[i] = spans.text_iou(it.prediction, it.reference)
        if out[i] is None:
          _logger.warning("TG reference without an 'Xs-Ys' span; scored as a failure")
      else:
        llm.append(i)
    reqs = [Request("score", _freeze(prompts.answer_score_messages(
        items[i].question, items[i].reference, items[i].prediction)), self._score_max_tokens)
            for i in llm]
    if reqs:
      for i, v in zip(llm, self._run(reqs, lambda r, reply: prompts.parse_score(reply),
                                     lambda v: v is not None)):
        out[i] = v
    self.stats.add("failures", sum(v is None for v in out))
    return out

  def check_rubric(self, trajectory_text: str, checks: Sequence[str],
                   question: str = "") -> list[bool | None]:
    """One request per trajectory marking every checkpoint; None for unmarked checkpoints."""
    checks = list(checks)
    self.stats.add("requests", len(checks))
    if not checks:
      return []
    req = Request("rubric", _freeze(prompts.rubric_check_messages(
        trajectory_text, checks, question)), self._rubric_max_tokens)
    n = len(checks)
    (marks,) = self._run([req], lambda r, reply: prompts.parse_rubric_checks(reply, n),
                         lambda v: v is not None and all(m is not None for m in v))
    marks = list(marks)
    self.stats.add("failures", sum(m is None for m in marks))
    return marks

  def check_rubrics(self, trajectories: Sequence[str], checks: Sequence[Sequence[str]],
                    questions: Sequence[str] | None = None) -> list[list[bool | None]]:
    """Batched check_rubric over several trajectories (concurrent for the HTTP judge)."""
    questions = list(questions) if questions is not None else [""] * len(trajectories)
    reqs, sizes = [], []
    for traj, cs, q in zip(trajectories, checks, questions, strict=True):
      cs = list(cs)
      self.stats.add("requests", len(cs))
      sizes.append(len(cs))
      reqs.append(Request("rubric", _freeze(prompts.rubric_check_messages(traj, cs, q)),
                           self._rubric_max_tokens))
    by_key = {self._key(r): s for r, s in zip(reqs, sizes)}
    out = self._run(reqs, lambda r, reply: prompts.parse_rubric_checks(reply, by_key[self._key(r)]),
                    lambda v: v is not None and all(m is not None for m in v))
    out = [list(v) for v in out]
    self.stats.add("failures", sum(m is None for v in out for m in v))
    return out

  def write_rubrics(self, questions: Sequence[str],
                    answers: Sequence[Sequence[tuple[float, str]]], *, min_checks: int = 6,
                    max_checks: int = 10,
                    frames: Sequence[Sequence[tuple[float, str]]] | None = None
                    ) -> list[list[dict[str, Any]] | None]:
    """Rubric items (prompts.parse_rubric_items) for several (question, answers), in one batch
    (concurrent for the HTTP judge); None where the writer failed or replied malformed.

    frames: per question, [(time s, image URL)] of its clip (prompts.rubric_write_messages), as
    the paper's writer sees the video; None: the text-only writer. A judge that cannot take images
    (sees_images False) refuses frames with a ValueError rather than dropping them.
    """
    if frames is not None and not self.sees_images:
      raise ValueError(f"{type(self).__name__} cannot take images; write rubrics without frames "
                       "(text only) or use an OpenAI-compatible endpoint that takes images")
    frames = list(frames) if frames is not None else [()] * len(questions)
    reqs = []
    for q, ans, fr in zip(questions, answers, frames, strict=True):
      self.stats.add("requests")
      reqs.append(Request("write", _freeze(prompts.rubric_write_messages(
          q, ans, min_checks=min_checks, max_checks=max_checks, frames=fr)),
                           self._write_max_tokens))
    out = self._run(reqs, lambda r, reply: prompts.parse_rubric_items(
        reply, min_checks=min_checks, max_checks=max_checks), lambda v: v is not None)
    self.stats.add("failures", sum(v is None for v in out))
    return [None if v is None else [dict(it) for it in v] for v in out]

  def write_rubric_items(self, question: str, answers: Sequence[tuple[float, str]], *,
                         min_checks: int = 6, max_checks: int = 10
                         ) -> list[dict[str, Any]] | None:
    """Rubric items {"rubric_id", "dimension", "rubric"} for a question and its (time, text)
    answers (docs/method.md section 3: 6 to 10, all three dimensions), or None on failure."""
    return self.write_rubrics([question], [answers], min_checks=min_checks,
                              max_checks=max_checks)[0]

  def write_rubric(self, question: str, answers: Sequence[tuple[float, str]], *,
                   min_checks: int = 6, max_checks: int = 10) -> list[str] | None:
    """The rubric statements of write_rubric_items (None on failure)."""
    items = self.write_rubric_items(question, answers, min_checks=min_checks,
                                    max_checks=max_checks)
    return None if items is None else [it["rubric"] for it in items]


# ----------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP judge.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OpenAIJudgeConfig:
  """Settings of an OpenAI-compatible chat-completions judge.

  base_url: e.g. "http://127.0.0.1:8000/v1" (requests go to base_url + "/chat/completions").
  model: the served model name.
  api_key_env: name of the environment variable holding the API key (None: no Authorization
    header). The key itself is never part of the config.
  timeout_s: socket timeout of a request (an attempt is abandoned after 2 * timeout_s in all);
    max_retries: extra attempts after a timeout, a
    connection error, HTTP 429 or 5xx; backoff_s * 2**attempt (capped at backoff_max_s) between
    attempts. max_concurrency: requests in flight at once. cache_path: optional JSONL cache file.
  """
  base_url: str
  model: str
  api_key_env: str | None = "OPENAI_API_KEY"
  timeout_s: float = 60.0
  max_retries: int = 3
  backoff_s: float = 1.0
  backoff_max_s: float = 30.0
  max_concurrency: int = 16
  temperature: float = 0.0
  score_max_tokens: int = 128
  rubric_max_tokens: int = 256
  write_max_tokens: int = 1024
  cache_path: str | None = None


class _Retryable(Exception):
  pass


class _Timeout(_Retryable):
  pass


class _Fatal(Exception):
  pass


class OpenAIJudge(_LLMJudge):
  """Judge served by an OpenAI-compatible /chat/completions endpoint (see module docstring).
  Requests may carry images (OpenAI "image_url" content parts) when the served model takes them."""

  sees_images = True

  def __init__(self, config: OpenAIJudgeConfig):
    if config.api_key_env and config.api_key_env not in os.environ:
      raise ValueError(f"environment variable {config.api_key_env!r} (api_key_env) is not set")
    if config.max_concurrency < 1:
      raise ValueError(f"max_concurrency must be >= 1, got {config.max_concurrency}")
    super().__init__(backend_id=f"openai:{config.base_url}:{config.model}:{config.temperature}",
                     cache_path=config.cache_path, score_max_tokens=config.score_max_tokens,
                     rubric_max_tokens=config.rubric_max_tokens,
                     write_max_tokens=config.write_max_tokens)
    self.config = config
    self._url = config.base_url.rstrip("/") + "/chat/completions"
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=config.max_concurrency, thread_name_prefix="judge-http")

  def __repr__(self) -> str:
    c = self.config
    return (f"OpenAIJudge(base_url={c.base_url!r}, model={c.model!r}, "
            f"api_key_env={c.api_key_env!r}, stats={self.stats!r})")

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- one HTTP attempt (runs in a worker thread) ----------------------------------------------

  def _post(self, req: Request) -> str:
    body = json.dumps({
        "model": self.config.model,
        "messages": req.as_messages(),
        "temperature": self.config.temperature,
        "max_tokens": req.max_tokens,
    }).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if self.config.api_key_env:
      headers["Authorization"] = "Bearer " + os.environ.get(self.config.api_key_env, "")
    http_req = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
    try:
      with urllib.request.urlopen(http_req, timeout=self.config.timeout_s) as resp:
        raw = resp.read()
    except urllib.error.HTTPError as e:
      code = e.code
      e.close()
      if code == 429 or code >= 500 or code == 408:
        raise _Retryable(f"HTTP {code}") from None
      raise _Fatal(f"HTTP {code}") from None
    except TimeoutError:
      raise _Timeout(f"timed out after {self.config.timeout_s} s") from None
    except urllib.error.URLError as e:
      if isinstance(e.reason, (TimeoutError, socket.timeout)):
        raise _Timeout(f"timed out after {self.config.timeout_s} s") from None
      raise _Retryable(f"connection error ({type(e.reason).__name__})") from None
    except (ConnectionError, http.client.HTTPException, OSError) as e:
      raise _Retryable(f"connection error ({type(e).__name__})") from None
    try:
      payload = json.loads(raw)
      content = payload["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
      raise _Fatal("malformed chat-completions body") from None
    if not isinstance(content, str):
      raise _Fatal("malformed chat-completions body (content is not a string)")
    return content

  # -- asyncio driver ------------------------------------------------------------------------

  async def _attempts(self, req: Request, sem: asyncio.Semaphore) -> str | None:
    loop = asyncio.get_running_loop()
    cfg = self.config
    async with sem:
      for attempt in range(cfg.max_retries + 1):
        self.stats.add("calls")
        try:
          # The socket timeout bounds each read; the whole attempt is abandoned after twice that
          # (a server trickling bytes cannot hold a request forever).
          return await asyncio.wait_for(loop.run_in_executor(self._pool, self._post, req),
                                        timeout=2.0 * cfg.timeout_s)
        except _Timeout as e:
          self.stats.add("timeouts")
          reason = str(e)
        except TimeoutError:
          self.stats.add("timeouts")
          reason = f"attempt took longer than {2.0 * cfg.timeout_s} s"
        except _Retryable as e:
          reason = str(e)
        except _Fatal as e:
          if "malformed" in str(e):
            self.stats.add("malformed")
          _logger.warning("judge request failed (%s): %s; not retried", req.kind, e)
          return None
        if attempt < cfg.max_retries:
          self.stats.add("retries")
          delay = min(cfg.backoff_max_s, cfg.backoff_s * (2.0 ** attempt))
          _logger.info("judge request %s: %s; retry %d/%d in %.2f s", req.kind, reason,
                      attempt + 1, cfg.max_retries, delay)
          await asyncio.sleep(delay)
      _logger.warning("judge request %s failed after %d attempts: %s", req.kind,
                     cfg.max_retries + 1, reason)
      return None

  async def acomplete_many(self, requests: list[Request]) -> list[str | None]:
    sem = asyncio.Semaphore(self.config.max_concurrency)
    return list(await asyncio.gather(*(self._attempts(r, sem) for r in requests)))

  def _complete_many(self, requests: list[Request]) -> list[str | None]:
    coro_fn = lambda: self.acomplete_many(requests)  # noqa: E731
    try:
      asyncio.get_running_loop()
    except RuntimeError:
      return asyncio.run(coro_fn())
    # Called from inside a running event loop (e.g. a notebook): run on a helper thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
      return ex.submit(lambda: asyncio.run(coro_fn())).result()


# ----------------------------------------------------------------------------------------------
# Local transformers checkpoint judge.
# ----------------------------------------------------------------------------------------------


class LocalLMJudge(_LLMJudge):
  """Judge running a local transformers causal-LM checkpoint directory with greedy decoding.

  The prompt is rendered with the tokenizer's chat template when it has one, else as plain text
  (prompts.messages_to_text). Generation runs in batches of `batch_size` with left padding.
  A generation error fails (None) every item of its batch; all failures are counted.
  """

  def __init__(self, path: str, *, device: str = "cpu", dtype: str = "float32",
               batch_size: int = 8, score_max_tokens: int = 128, rubric_max_tokens: int = 256,
               write_max_tokens: int = 1024, cache_path: str | None = None):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top

    super().__init__(backend_id=f"local:{os.path.abspath(path)}", cache_path=cache_path,
                     score_max_tokens=score_max_tokens, rubric_max_tokens=rubric_max_tokens,
                     write_max_tokens=write_max_tokens)
    self.path = path
    self.batch_size = batch_size
    self._torch = torch
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    self.tokenizer.padding_side = "left"
    if self.tokenizer.pad_token is None:
      self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=getattr(torch, dtype)).to(device)
    self.model.eval()
    self.device = device

  def __repr__(self) -> str:
    return f"LocalLMJudge(path={self.path!r}, device={self.device!r}, stats={self.stats!r})"

  def _prompt(self, req: Request) -> str:
    messages = req.as_messages()
    if getattr(self.tokenizer, "chat_template", None):
      return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    return prompts.messages_to_text(messages)

  def _complete_many(self, requests: list[Request]) -> list[str | None]:
    out: list[str | None] = []
    torch = self._torch
    for start in range(0, len(requests), self.batch_size):
      batch = requests[start:start + self.batch_size]
      max_new = max(r.max_tokens for r in batch)
      self.stats.add("calls", len(batch))
      try:
        enc = self.tokenizer([self._prompt(r) for r in batch], return_tensors="pt",
                             padding=True).to(self.device)
        with torch.no_grad():
          gen = self.model.generate(**enc, do_sample=False, max_new_tokens=max_new,
                                    pad_token_id=self.tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        out.extend(self.tokenizer.batch_decode(new, skip_special_tokens=True))
      except Exception as e:  # pylint: disable=broad-except
        _logger.warning("local judge generation failed for %d requests: %s: %s", len(batch),
                       type(e).__name__, e)
        out.extend([None] * len(batch))
    return out


def build_judge(config: Any) -> Judge:
  """A judge from a config (ml_collections ConfigDict or dict) with `kind`:

  "match"  -> MatchJudge()
  "openai" -> OpenAIJudge(OpenAIJudgeConfig(**fields)) with the OpenAIJudgeConfig field names
  "local"  -> LocalLMJudge(path, **other fields)
  """
  cfg = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  kind = cfg.pop("kind", "match")
  if kind == "match":
    return MatchJudge()
  if kind == "openai":
    return OpenAIJudge(OpenAIJudgeConfig(**cfg))
  if kind == "local":
    return LocalLMJudge(cfg.pop("path"), **cfg)
  raise ValueError(f"unknown judge kind {kind!r}; expected 'match', 'openai' or 'local'")

