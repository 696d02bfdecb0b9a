"""Streaming evaluation harness: a checkpoint over a benchmark, turn by turn, then the scores.

Flow (`evaluate`):
  records -> items, one per (record, question), id "<record id>/<question id>"
  -> `run_benchmark`: batches of `batch_size` items through sampling.StreamingSampler (greedy,
     temperature 0, G = 1, KV cache with a sliding window of `window_turns` = 200 turns); one
     JSON line per finished item appended to the results file (resumable: a rerun skips the ids
     already there; a torn last line is ignored and redone); tqdm progress over turns
  -> `_streampro_items`: StreamPro-F1 inputs, predictions [(Y = k + 1, text)] of the responding
     turns -> bench.streampro_f1.score_benchmark with a judge -> bench.report.write_report.

Result line (JSON): {"id", "record_id", "question_id", "task", "num_turns", "ask_turn",
  "prompt_style", "overflow", "predictions": [[time, text], ...],
  "turns": [{"turn": k, "time": k + 1, "decision": "silence" | "response" | "invalid",
             "text": ..., "message": ...}, ...]}.

Prompt styles: "streampro" (the StreamPro chat format with its decision tokens) and "wait" (a
plain video-LLM prompted every turn to reply "Wait" until it can answer; docs/method.md section 4
baselines; sampling.WaitPromptFormat).

Peer benchmarks (records from data/peer_loaders.py) go through the same run; the adapters at the
end of this file turn result lines into the inputs of the peer scorers (see each docstring for
the protocol differences from the official offline evaluations).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from streampro_jax import models, prompts, sampling
from streampro_jax.data import chat_format, schema

__all__ = ["HarnessConfig", "RESULTS_FILE", "ResultsMismatch", "benchmark_items", "evaluate",
           "item_id", "make_sampler", "ovo_results", "pauc_examples", "run_benchmark",
           "streamingbench_proactive_histories", "streamingbench_rtvu_responses", "Item"]

_logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
_IDENTITY_FILE = "results.identity.json"   # what made results.jsonl, next to it


class ResultsMismatch(ValueError):
  """An existing results file was made by another model / benchmark / decoding setting."""


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
  return {prefix: tree}


def _check_results_identity(results_path: str, identity: Mapping[str, Any], *,
                           overwrite: bool = False) -> None:
  """Makes sure the results in `results_path` were made by `identity`, and records it.

  identity: JSON-able dict of what determines the result lines (checkpoint identity, benchmark
  and its annotations, frames, decoding settings). Stored in _IDENTITY_FILE next to the results.
  An existing results file with another identity (or none recorded) raises ResultsMismatch
  naming every differing key, unless `overwrite`: then the old results and identity are moved
  to `<name>.replaced.<n>` and the run starts fresh. Never mixes two models' lines.
  """
  ident_path = os.path.join(os.path.dirname(os.path.abspath(results_path)), _IDENTITY_FILE)
  want = json.loads(json.dumps(identity, default=str))
  have_results = os.path.exists(results_path) and os.path.getsize(results_path) > 0
  diffs = []
  if have_results:
    if not os.path.exists(ident_path):
      diffs = [f"{results_path} records no identity ({_IDENTITY_FILE} missing)"]
    else:
      with open(ident_path, encoding="utf-8") as f:
        old = _flat(json.load(f))
      new = _flat(want)
      diffs = [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
               for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k,
                                                                                    "<absent>")]
  if diffs and not overwrite:
    raise ResultsMismatch(f"{results_path} holds results made by another run:\n  " +
                          "\n  ".join(diffs) + "\nuse another --workdir, or pass --overwrite "
                          "to set them aside and start fresh")
  if diffs:
    for path in (results_path, ident_path):
      if os.path.exists(path):
        n = 0
        while os.path.exists(f"{path}.replaced.{n}"):
          n += 1
        os.replace(path, f"{path}.replaced.{n}")
        _logger.warning("set aside %s as %s.replaced.%d (--overwrite)", path, path, n)
  os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
  with open(ident_path, "w", encoding="utf-8") as f:
    json.dump(want, f, indent=1, sort_keys=True)


def _decoding_identity(config: HarnessConfig) -> dict[str, Any]:
  """The HarnessConfig fields that change result lines (not batch_size, seed of greedy
  decoding aside, nor the progress bar)."""
  d = dataclasses.asdict(config)
  for key in ("batch_size", "progress"):
    d.pop(key)
  return d


@dataclasses.dataclass(frozen=True)
class HarnessConfig:
  """Settings of a streaming evaluation run.

  Attributes:
    batch_size: videos (items) run together in lockstep.
    frame_height, frame_width: every frame is resized to this size (multiples of patch * merge).
    max_text_tokens: response text tokens before <|im_end|> is forced.
    window_turns: sliding window of the KV cache (docs/method.md: 200 turns).
    max_turns: cut streams after this many turns (None: whole videos).
    prompt_style: "streampro" or "wait".
    constrain_decision: restrict the first token to the decision tokens (streampro style).
    force_response_at_ask: force </Response> on the ask turn (multiple-choice peers).
    seed: sampler seed (irrelevant for greedy decoding).
    progress: show a tqdm bar.
    system_prompt: the streampro-style system prompt (None: prompts.STREAMING_SYSTEM_PROMPT); use
      the one the model was trained with.
  """
  batch_size: int = 4
  frame_height: int = 224
  frame_width: int = 224
  max_text_tokens: int = 32
  window_turns: int = 200
  max_turns: int | None = None
  prompt_style: str = "streampro"
  constrain_decision: bool = False
  force_response_at_ask: bool = False
  seed: int = 0
  progress: bool = True
  system_prompt: str | None = None

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if self.prompt_style not in ("streampro", "wait"):
      raise ValueError(f"prompt_style must be 'streampro' or 'wait', got {self.prompt_style!r}")


@dataclasses.dataclass(frozen=True)
class Item:
  """One trajectory to evaluate."""
  record: schema.Record
  question: schema.Question

  @property
  def id(self) -> str:
    return item_id(self.record.id, self.question.id)

  @property
  def num_turns(self) -> int:
    return chat_format.num_turns(self.record.duration)


def item_id(record_id: str, question_id: str) -> str:
  return f"{record_id}/{question_id}"


def benchmark_items(records: Iterable[schema.Record], *, max_videos: int | None = None
                    ) -> list[Item]:
  """One item per (record, question) of the first `max_videos` records, in order."""
  records = list(records)
  if max_videos is not None:
    records = records[:int(max_videos)]
  return [Item(r, q) for r in records for q in r.questions]


def _load_frames(record: schema.Record, num_turns: int, *, frames_per_turn: int = 2,
                size: tuple[int, int] | None = None, base_dir: str | None = None) -> np.ndarray:
  """uint8 frames [num_turns * frames_per_turn, H, W, 3] of a record (SynthStream is rendered,
  files are decoded with data/video.py), resized to `size` (h, w) when given."""
  from streampro_jax.models import processing  # pylint: disable=g-import-not-at-top
  if record.is_synthetic:
    from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    frames = synthetic.render_frames(record)
    fps = int(record.meta["synth"]["fps"])
    if fps != frames_per_turn:
      idx = [min(int(math.floor((k + (i + 1) / frames_per_turn) * fps - 1e-6)), len(frames) - 1)
             for k in range(num_turns) for i in range(frames_per_turn)]
      frames = frames[idx]
    frames = frames[:num_turns * frames_per_turn]
    if size is not None and tuple(frames.shape[1:3]) != tuple(size):
      frames = processing.resize_frames(frames, int(size[0]), int(size[1]))
    return frames
  from streampro_jax.data import video  # pylint: disable=g-import-not-at-top
  resize = None if size is None else video.ResizePolicy(height=int(size[0]), width=int(size[1]))
  dec = video.decode_turns(record.video_path(base_dir), frames_per_turn=frames_per_turn,
                           num_turns=num_turns, resize=resize)
  return dec.frames.reshape(-1, *dec.frames.shape[2:])


# ------------------------------------------------------------------------------------------------
# Results file.


def _read_results(path: str) -> dict[str, dict]:
  """{id: result} of a results JSONL file (missing file: {}); an unparsable line (a run killed
  mid-write) is skipped with a warning, so its item is run again."""
  out: dict[str, dict] = {}
  if not os.path.exists(path):
    return out
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        res = json.loads(line)
        out[res["id"]] = res
      except (json.JSONDecodeError, KeyError, TypeError):
        _logger.warning("%s:%d: unreadable result line skipped (it will be run again)", path, n)
  return out


def _result_of(item: Item, batch: sampling.RolloutBatch, row: int, prompt_style: str) -> dict:
  """The JSON result of one row of a rollout batch."""
  k = int(batch.num_turns[row])
  turns = []
  for t in range(k):
    dec = int(batch.decisions[row, t])
    turns.append({"turn": t, "time": float(t + 1), "decision": sampling.DECISION_NAMES[dec],
                  "text": batch.texts[row][t], "message": batch.messages[row][t]})
  return {"id": item.id, "record_id": item.record.id, "question_id": item.question.id,
          "task": item.question.task, "num_turns": k,
          "ask_turn": chat_format.ask_turn(item.question.ask_time, item.num_turns),
          "prompt_style": prompt_style, "overflow": bool(batch.overflow[row]),
          "predictions": [[t, x] for t, x in batch.predictions(row)], "turns": turns}


# ------------------------------------------------------------------------------------------------
# Running.


def make_sampler(model_config, tokenizer, config: HarnessConfig, *, user_chunk_len: int = 0,
                 capacity: int = 0) -> sampling.StreamingSampler:
  """The greedy streaming sampler of a harness run."""
  v = model_config.vision
  factor = v.patch_size * v.spatial_merge_size
  if config.frame_height % factor or config.frame_width % factor:
    raise ValueError(f"frame size {config.frame_height}x{config.frame_width} is not a multiple "
                     f"of patch_size * merge_size = {factor}")
  grid = (1, config.frame_height // v.patch_size, config.frame_width // v.patch_size)
  tokens = grid[1] * grid[2] // (v.spatial_merge_size ** 2)
  if config.prompt_style == "streampro":
    fmt = sampling.StreamProFormat(chat_format.ChatFormat(
        tokenizer, tokens_per_turn=tokens,
        system_prompt=config.system_prompt or prompts.STREAMING_SYSTEM_PROMPT))
  else:
    fmt = sampling.WaitPromptFormat(tokenizer, tokens_per_turn=tokens)
  scfg = sampling.SamplerConfig(
      temperature=0.0, top_p=1.0, max_text_tokens=config.max_text_tokens,
      window_turns=config.window_turns, constrain_decision=config.constrain_decision,
      user_chunk_len=user_chunk_len, capacity=capacity)
  return sampling.StreamingSampler(model_config, fmt, scfg, video_grid=grid)


def run_benchmark(params, model_config, tokenizer, items: Sequence[Item], results_path: str,
                  config: HarnessConfig, *,
                  frames_fn: Callable[[schema.Record, int], np.ndarray] | None = None,
                  identity: Mapping[str, Any] | None = None, overwrite: bool = False
                  ) -> list[dict]:
  """Runs every item not yet in `results_path` and appends its result line.

  Args:
    params, model_config, tokenizer: the model under test.
    items: benchmark_items(...).
    results_path: JSONL file (created; existing lines are kept and their ids skipped).
    config: HarnessConfig.
    frames_fn: (record, num_turns) -> uint8 frames [num_turns * tp, H, W, 3]; default
      _load_frames at the configured size.
    identity: what made the results (_check_results_identity; the decoding settings of `config`
      are added): lines of another model or setting are never reused; None: no check.
    overwrite: with `identity`, set aside results of another identity instead of stopping.

  Returns:
    The results of all items, in item order.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if identity is not None:
    _check_results_identity(results_path, {**identity, "decoding": _decoding_identity(config)},
                           overwrite=overwrite)
  done = _read_results(results_path)
  todo = [it for it in items if it.id not in done]
  _logger.info("harness: %d items, %d already in %s, %d to run", len(items),
              len(items) - len(todo), results_path, len(todo))
  size = (config.frame_height, config.frame_width)
  if todo:
    if frames_fn is None:
      tp = model_config.vision.temporal_patch_size
      frames_fn = lambda rec, k: _load_frames(rec, k, frames_per_turn=tp, size=size)
    turns_of = lambda it: (it.num_turns if config.max_turns is None
                           else min(it.num_turns, int(config.max_turns)))
    probe = make_sampler(model_config, tokenizer, config)
    fake = [sampling.StreamPrompt(
        np.zeros((turns_of(it), probe.patches_per_turn, 1), np.float32), it.question.question,
        chat_format.ask_turn(it.question.ask_time, turns_of(it))) for it in todo]
    c_user = probe.user_chunk_len_for(fake)
    cap = probe.capacity_for_prompts(fake, c_user)
    sampler = make_sampler(model_config, tokenizer, config, user_chunk_len=c_user, capacity=cap)
    proc = models.video_processor_config(model_config)
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    bar = tqdm(total=sum(turns_of(it) for it in todo), unit="turn", desc="streaming",
               disable=not config.progress)
    b = min(config.batch_size, len(todo))   # every batch has b rows: one compilation
    with open(results_path, "a", encoding="utf-8") as f:
      for start in range(0, len(todo), b):
        batch_items = todo[start:start + b]
        prompts = []
        for it in batch_items:
          k = turns_of(it)
          frames = frames_fn(it.record, k)
          prompts.append(sampling.prompt_from_record(
              it.record, it.question, frames, proc, max_turns=k, frame_size=size,
              force_response_at_ask=config.force_response_at_ask))
        k_max = max(p.num_turns for p in prompts)
        live = sum(p.num_turns for p in prompts)
        prompts += [prompts[-1]] * (b - len(prompts))   # a short last batch repeats its last
        last = [0]

        real = prompts[:len(batch_items)]

        def on_turn(k, _, real=real, last=last):
          n_live = sum(1 for p in real if k < p.num_turns)
          bar.update(n_live)
          last[0] += n_live

        out = sampler.sample(params, prompts, group_size=1, seed=config.seed, on_turn=on_turn)
        if last[0] != live or out.decisions.shape[1] < k_max:
          raise RuntimeError(f"sampler ran {last[0]} of {live} turns")
        for row, it in enumerate(batch_items):
          res = _result_of(it, out, row, config.prompt_style)
          if res["overflow"]:
            _logger.warning("item %s: KV cache overflow (capacity %d)", it.id, cap)
          f.write(json.dumps(res, ensure_ascii=False) + "\n")
          done[it.id] = res
        f.flush()
    bar.close()
  return [done[it.id] for it in items]


# ------------------------------------------------------------------------------------------------
# StreamPro-F1.


def _streampro_items(results: Sequence[Mapping[str, Any]], items: Sequence[Item]) -> list[dict]:
  """score_benchmark inputs: {"id", "task", "question", "answers", "predictions"} per item."""
  by_id = {r["id"]: r for r in results}
  out = []
  for it in items:
    res = by_id.get(it.id)
    if res is None:
      raise KeyError(f"no result for item {it.id!r}")
    out.append({"id": it.id, "task": it.question.task, "question": it.question.question,
                "answers": [a.to_json() for a in it.question.answers],
                "predictions": [(float(t), str(x)) for t, x in res["predictions"]]})
  return out


def _decision_stats(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Counts of silence / response / invalid turns over all results."""
  counts = {"silence": 0, "response": 0, "invalid": 0}
  for r in results:
    for t in r["turns"]:
      counts[t["decision"]] += 1
  total = sum(counts.values())
  return dict(counts, turns=total, items=len(results),
              response_rate=counts["response"] / total if total else 0.0)


def evaluate(params, model_config, tokenizer, records: Sequence[schema.Record], judge,
             workdir: str, config: HarnessConfig, *, max_videos: int | None = None,
             frames_fn=None, name: str = "model", identity: Mapping[str, Any] | None = None,
             overwrite: bool = False) -> dict[str, Any]:
  """Runs, scores (StreamPro-F1) and writes the report into `workdir`.

  Writes <workdir>/results.jsonl, scores.json (score_benchmark output + decision stats) and the
  report files of bench/report.write_report (results.json, table.md, three PNG figures).
  Returns {"scores": score_benchmark output, "paths": report paths, "stats": _decision_stats}.
  identity / overwrite: see run_benchmark; scores.json records the identity and the judge.
  """
  from streampro_jax.bench import report, streampro_f1  # pylint: disable=g-import-not-at-top
  items = benchmark_items(records, max_videos=max_videos)
  results = run_benchmark(params, model_config, tokenizer, items,
                          os.path.join(workdir, RESULTS_FILE), config, frames_fn=frames_fn,
                          identity=identity, overwrite=overwrite)
  scored = [x for x in _streampro_items(results, items) if x["task"] in streampro_f1.TASK_SETTINGS]
  if len(scored) < len(items):
    _logger.info("StreamPro-F1 leaves out %d items whose task is not a StreamPro-Bench task",
                len(items) - len(scored))
  scores = streampro_f1.score_benchmark(scored, judge)
  stats = _decision_stats(results)
  if judge is not None and hasattr(judge, "stats"):
    stats["judge"] = judge.stats.as_dict()
  with open(os.path.join(workdir, "scores.json"), "w", encoding="utf-8") as f:
    json.dump({"scores": scores["scores"], "per_task": scores["per_task"],
               "judge_failures": scores["judge_failures"], "decisions": stats,
               "identity": identity, "judge": _describe_judge(judge)}, f, indent=1,
              default=str)
  paths = report.write_report({name: scores}, workdir)
  return {"scores": scores, "paths": paths, "stats": stats}


def _describe_judge(judge) -> dict[str, Any] | None:
  """{"class", and the judge's config fields without secrets} for scores.json."""
  if judge is None:
    return None
  out: dict[str, Any] = {"class": type(judge).__name__}
  cfg = getattr(judge, "config", None)
  if dataclasses.is_dataclass(cfg):
    out.update({k: v for k, v in dataclasses.asdict(cfg).items() if "key" not in k.lower()})
  return out


# ------------------------------------------------------------------------------------------------
# Peer benchmark adapters (records from data/peer_loaders.py; results from run_benchmark).


def _first_response_at_or_after(res: Mapping[str, Any], t_min: float, t_max: float = math.inf
                                ) -> tuple[float, str] | None:
  for t, text in res["predictions"]:
    if t_min <= float(t) <= t_max:
      return float(t), str(text)
  return None


def _ask_time_y(res: Mapping[str, Any]) -> float:
  """Y of the ask turn (the first time a response to the question can be dated)."""
  return float(res["ask_turn"] + 1)


def streamingbench_rtvu_responses(results: Sequence[Mapping[str, Any]]
                                  ) -> dict[tuple[int, int], str]:
  """{(video_index, question_index): response} for streamingbench.score_rtvu.

  The response of a question is the first response dated at or after its ask turn (run with
  force_response_at_ask=True so that the model answers exactly then). Items without a response
  are left out (the scorer counts them in n_missing). Keys come from the peer loader's question
  ids "e{entry}q{question}" (= load_questions' video_index, question_index).
  Difference from the official protocol: the official offline run shows the clip of the 60 s
  before the question; here the model streams from 0 s with its sliding window.
  """
  out = {}
  for res in results:
    qid = str(res["question_id"])
    if not (qid.startswith("e") and "q" in qid):
      raise ValueError(f"{qid!r} is not a StreamingBench question id 'e<entry>q<question>'")
    e, q = qid[1:].split("q", 1)
    hit = _first_response_at_or_after(res, _ask_time_y(res))
    if hit is not None:
      out[(int(e), int(q))] = hit[1]
  return out


def streamingbench_proactive_histories(results: Sequence[Mapping[str, Any]],
                                       questions: Sequence[Mapping[str, Any]]
                                       ) -> dict[tuple[int, int], list[dict]]:
  """{(video_index, question_index): [reply]} for streamingbench.score_proactive.

  The official protocol polls every second from question time + 1 to ground-truth time + 4 and
  stops at the first "yes"; the streaming analogue is the model's first response in that range,
  which becomes the only (hence last) reply {"time", "content"}; no response gives [].
  """
  by_key = {}
  for res in results:
    e, q = str(res["question_id"])[1:].split("q", 1)
    by_key[(int(e), int(q))] = res
  out = {}
  for qd in questions:
    key = (int(qd["video_index"]), int(qd["question_index"]))
    res = by_key.get(key)
    if res is None or "ground_truth_time_seconds" not in qd:
      continue
    hit = _first_response_at_or_after(res, float(qd["time_seconds"]) + 1,
                                      float(qd["ground_truth_time_seconds"]) + 4)
    out[key] = [] if hit is None else [{"time": hit[0], "content": hit[1]}]
  return out


def _latest_response(res: Mapping[str, Any], t: float) -> str | None:
  """The latest response dated at or before the turn that holds time t (None if none)."""
  y = float(chat_format.answer_turn(t) + 1)
  best = None
  for tp, text in res["predictions"]:
    if float(tp) <= y and float(tp) >= _ask_time_y(res):
      best = str(text)
  return best


def ovo_results(results: Sequence[Mapping[str, Any]], records: Sequence[schema.Record]
                ) -> dict[str, list]:
  """The official OVO-Bench results JSON ({"backward", "realtime", "forward"}) for ovo.score.

  Backward / real-time: "response" = the first response at or after the ask turn (None when
  silent). Forward: each probe's "response" = the latest response of its trajectory dated by
  the probe's turn (REC, CRR: the item's question; SSR: the question of the probe's step); the
  official protocol instead asks a fresh question at every probe time.
  """
  by_id = {r["id"]: r for r in results}
  out: dict[str, list] = {"backward": [], "realtime": [], "forward": []}
  for rec in records:
    items = (rec.meta or {}).get("items", {})
    seen_forward = set()
    for q in rec.questions:
      item = items.get(q.id)
      if item is None:
        raise KeyError(f"record {rec.id!r} has no meta item for question {q.id!r}")
      res = by_id.get(item_id(rec.id, q.id))
      cat = item["category"]
      if cat in ("backward", "realtime"):
        hit = None if res is None else _first_response_at_or_after(res, _ask_time_y(res))
        out[cat].append({"id": item["id"], "task": item["task"],
                         "ground_truth": chr(65 + int(item["gt"])),
                         "response": None if hit is None else hit[1]})
        continue
      iid = str(item["id"])
      if iid in seen_forward:
        continue
      seen_forward.add(iid)
      probes = []
      for p in item["test_info"]:
        qid = iid
        if item["task"] == "SSR":
          steps = list(dict.fromkeys(pp["step"] for pp in item["test_info"]))
          qid = f"{iid}/{steps.index(p['step'])}"
        r = by_id.get(item_id(rec.id, qid))
        probe = dict(p)
        probe["response"] = None if r is None else _latest_response(r, float(p["realtime"]))
        probes.append(probe)
      out["forward"].append({"id": item["id"], "task": item["task"], "test_info": probes})
  return out


def pauc_examples(results: Sequence[Mapping[str, Any]], records: Sequence[schema.Record],
                  grade_fn: Callable[[str, str, str], float | None]) -> list[dict]:
  """ProactiveVideoQA scored examples for pauc.score.

  Per ground-truth turn (interval answer = reply span [s, e], related span from the original
  item), the model's responses inside the span are judged with pauc.judge_inputs (each judged
  text = the distinct in-span replies so far) and grade_fn(question, reference, prediction) ->
  grade 0..2 (None: failed, left out). Official PAUC grades with an LLM judge (1..3 minus 1).
  """
  from streampro_jax.bench import pauc  # pylint: disable=g-import-not-at-top
  by_id = {r["id"]: r for r in results}
  examples = []
  for rec in records:
    items = (rec.meta or {}).get("items", {})
    for q in rec.questions:
      res = by_id.get(item_id(rec.id, q.id))
      if res is None:
        continue
      original = items.get(q.id, {})
      orig_answers = original.get("answer", [])
      replies = [(float(t), str(x)) for t, x in res["predictions"]]
      turns = []
      for j, a in enumerate(q.answers):
        span = (float(a.start if a.start is not None else a.response_time),
                float(a.end if a.end is not None else a.response_time))
        related = (orig_answers[j].get("related_timespan", list(span))
                   if j < len(orig_answers) else list(span))
        scores = {}
        for t, text in pauc.judge_inputs(replies, span):
          grade = grade_fn(q.question, a.text, text)
          if grade is not None:
            scores[t] = float(grade)
        turns.append({"reply_timespan": list(span), "related_timespan": list(related),
                      "judge_scores": scores})
      examples.append({"id": item_id(rec.id, q.id), "answer": turns})
  return examples
