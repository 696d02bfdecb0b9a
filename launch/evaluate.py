r"""Streaming evaluation of a checkpoint on a benchmark (StreamPro-Bench, SynthStream, peers).

  .venv/bin/python launch/evaluate.py --benchmark=synthstream --checkpoint=/path/hf_dir \
      --workdir=/tmp/eval --batch_size=4 --max_videos=20 --judge=exact
  .venv/bin/python launch/evaluate.py --benchmark=streampro --annotations=bench.jsonl \
      --checkpoint=/tmp/sft_run --config=configs/tiny_synthetic.py \
      --judge=openai:Qwen2.5-72B-Instruct@http://127.0.0.1:8000/v1

--checkpoint is one of
  * a Hugging Face checkpoint folder (config.json + safetensors + tokenizer files); the backbone
    (Qwen2.5-VL or Qwen3-VL) is read from config.json's model_type;
  * an SFT / GRPO workdir written by streampro_jax.train (``<dir>/checkpoints/<step>/state``,
    the newest complete step), read with the workdir's own config.json (--config overrides it;
    the backbone is its model.family, qwen2_5_vl by default);
  * "random": a randomly initialised model of --config (default: the tiny synthetic config), for
    smoke tests of the pipeline.
--judge: exact | openai:<model>@<base_url> | local:<dir>.

Writes into --workdir: results.jsonl (resumable) with results.identity.json (the checkpoint's
identity, benchmark, annotations, frames and decoding settings that made it: a rerun with any of
them changed stops and names the difference, or with --overwrite sets the old results aside and
starts fresh), scores.json (with the identity and the judge), and the report of
bench/report.write_report (results.json, table.md, f1_by_task.png, response_offsets.png,
precision_recall.png). For streamingbench / ovo / proactivevideoqa the peer scores go to
peer_scores.json (StreamPro-F1 of the converted records is written as well).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _cli  # launch/_cli.py: one-line usage errors (exit 2)
import _model_flags  # launch/_model_flags.py: --checkpoint, --config, ... (shared with stream.py)

BENCHMARKS = ("synthstream", "streampro", "streamingbench", "ovo", "proactivevideoqa")

_BENCHMARK = flags.DEFINE_enum("benchmark", "synthstream", BENCHMARKS, "Benchmark to run.")
_JUDGE = flags.DEFINE_string("judge", "exact", "exact | openai:<model>@<base_url> | local:<dir>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.")
_ANNOTATIONS = flags.DEFINE_string(
    "annotations", None, "Annotation file: StreamPro JSONL, StreamingBench / OVO-Bench / "
    "ProactiveVideoQA JSON (synthstream: unused).")
_VIDEO_DIR = flags.DEFINE_string("video_dir", None, "Folder of relative video paths.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "Videos streamed together.")
_MAX_VIDEOS = flags.DEFINE_integer("max_videos", None, "Evaluate only the first N videos.")
_MAX_TURNS = flags.DEFINE_integer("max_turns", None, "Cut streams after N turns.")
_SYNTH_SPLIT = flags.DEFINE_string("synth_split", "test", "SynthStream split.")
_SYNTH_NUM = flags.DEFINE_integer("synth_num_videos", 50, "SynthStream videos to generate.")
_SYNTH_SEED = flags.DEFINE_integer("synth_seed", 0, "SynthStream seed.")
_SYNTH_RES = flags.DEFINE_integer("synth_resolution", 0, "SynthStream resolution (0: default / "
                                  "the config's data.synth.resolution).")
_NO_PROGRESS = flags.DEFINE_boolean("noprogress_bar", False, "Hide the progress bar.")
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "When --workdir holds results of another checkpoint, benchmark or "
    "decoding setting, set them aside (results.jsonl.replaced.<n>) and start fresh; without it "
    "the run stops and names what differs.")

def _annotations_identity() -> dict | None:
  path = _ANNOTATIONS.value
  if not path:
    return None
  from streampro_jax.bench import checkpoints  # pylint: disable=g-import-not-at-top
  return {"path": os.path.abspath(path), **checkpoints.file_id(path)}


def make_judge(spec: str):
  from streampro_jax import judges  # pylint: disable=g-import-not-at-top
  if spec == "exact":
    return judges.MatchJudge()
  kind, _, rest = spec.partition(":")
  if kind == "openai":
    model, at, base_url = rest.partition("@")
    if not model or not at or not base_url:
      raise ValueError(f"--judge={spec!r}: expected openai:<model>@<base_url>")
    return judges.build_judge({"kind": "openai", "model": model, "base_url": base_url})
  if kind == "local" and rest:
    return judges.build_judge({"kind": "local", "path": rest})
  raise ValueError(f"--judge={spec!r}: expected exact, openai:<model>@<base_url> or local:<dir>")


def load_records(benchmark: str, train_cfg):
  """(records, loader extras) of --benchmark."""
  from streampro_jax.data import peer_loaders, schema, synthetic  # pylint: disable=g-import-not-at-top
  if benchmark == "synthstream":
    synth = dict(train_cfg.data.get("synth", {})) if train_cfg is not None else {}
    if _SYNTH_RES.value:
      synth["resolution"] = _SYNTH_RES.value
    cfg = synthetic.SynthConfig.from_dict(synth)
    n = _SYNTH_NUM.value if _MAX_VIDEOS.value is None else min(_SYNTH_NUM.value,
                                                                 _MAX_VIDEOS.value)
    return [synthetic.make_record(_SYNTH_SPLIT.value, i, seed=_SYNTH_SEED.value, config=cfg)
            for i in range(n)]
  if not _ANNOTATIONS.value:
    raise app.UsageError(f"--benchmark={benchmark} needs --annotations")
  path = _ANNOTATIONS.value
  if benchmark == "streampro":
    records, report = schema.load_jsonl(path, on_error="skip")
    if report.num_skipped:
      logging.warning("%s", report.summary())
    if _VIDEO_DIR.value:
      import dataclasses  # pylint: disable=g-import-not-at-top
      records = [dataclasses.replace(r, video=os.path.join(_VIDEO_DIR.value, r.video))
                 if not os.path.isabs(r.video) else r for r in records]
    return records
  loader = {"streamingbench": peer_loaders.load_streamingbench,
            "ovo": peer_loaders.load_ovo_bench,
            "proactivevideoqa": peer_loaders.load_proactivevideoqa}[benchmark]
  records, report = loader(path, video_dir=_VIDEO_DIR.value, on_error="skip")
  if report.errors:
    logging.warning("%s: %d bad items skipped", path, len(report.errors))
  return records


def peer_scores(benchmark: str, results, records, judge) -> dict:
  """The peer benchmark's own scores from the harness results (bench/harness.py adapters)."""
  from streampro_jax import judges  # pylint: disable=g-import-not-at-top
  from streampro_jax.bench import harness, ovo, pauc, streamingbench  # pylint: disable=g-import-not-at-top
  if benchmark == "streamingbench":
    questions = streamingbench.load_questions(_ANNOTATIONS.value)
    out = {}
    rtvu_q = [q for q in questions if q["task_type"] != "Proactive Output"]
    if rtvu_q:
      out["rtvu"] = streamingbench.score_rtvu(rtvu_q, harness.streamingbench_rtvu_responses(
          results))
    pro_q = [q for q in questions if q["task_type"] == "Proactive Output"]
    if pro_q:
      out["proactive"] = streamingbench.score_proactive(
          pro_q, harness.streamingbench_proactive_histories(results, pro_q))
    return out
  if benchmark == "ovo":
    return {"ovo": ovo.score(harness.ovo_results(results, records))}
  if benchmark == "proactivevideoqa":
    def grade(question, reference, prediction):
      s = judge.score_answers([judges.AnswerItem(question, prediction, reference)])[0]
      return None if s is None else 2.0 * float(s)
    return {"pauc": pauc.score(harness.pauc_examples(results, records, grade))}
  return {}


def main(argv):
  del argv
  if not _model_flags.CHECKPOINT.value or not _WORKDIR.value:
    raise app.UsageError("--checkpoint and --workdir are required")
  _model_flags.check_checkpoint()   # a UsageError naming a missing / unrecognised folder
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  from streampro_jax.bench import checkpoints, harness  # pylint: disable=g-import-not-at-top

  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  params, model_config, tokenizer, train_cfg = _model_flags.load_model(workdir)
  frame, origin = _model_flags.frame_size(train_cfg)
  logging.info("frames %d x %d (from %s)", frame, frame, origin)
  benchmark = _BENCHMARK.value
  hcfg = harness.HarnessConfig(
      batch_size=_BATCH_SIZE.value, frame_height=frame, frame_width=frame,
      max_text_tokens=_model_flags.MAX_TEXT_TOKENS.value,
      window_turns=_model_flags.WINDOW_TURNS.value,
      max_turns=_MAX_TURNS.value, prompt_style=_model_flags.PROMPT_STYLE.value,
      constrain_decision=_model_flags.CONSTRAIN.value,
      force_response_at_ask=benchmark in ("streamingbench", "ovo"),
      progress=not _NO_PROGRESS.value)
  records = load_records(benchmark, train_cfg)
  judge = make_judge(_JUDGE.value)
  logging.info("evaluate %s on %s: %d videos, batch %d, frames %dx%d, window %d turns",
               _model_flags.CHECKPOINT.value, benchmark, len(records), hcfg.batch_size, frame,
               frame, hcfg.window_turns)
  identity = {"checkpoint": checkpoints.checkpoint_identity(_model_flags.CHECKPOINT.value,
                                                           config_path=_model_flags.CONFIG.value),
              "benchmark": benchmark, "annotations": _annotations_identity(),
              "video_dir": _VIDEO_DIR.value, "tokenizer": _model_flags.TOKENIZER.value,
              "synth": ({"split": _SYNTH_SPLIT.value, "seed": _SYNTH_SEED.value,
                         "resolution": _SYNTH_RES.value} if benchmark == "synthstream" else None)}
  try:
    out = harness.evaluate(params, model_config, tokenizer, records, judge, workdir, hcfg,
                           max_videos=_MAX_VIDEOS.value,
                           name=os.path.basename(os.path.normpath(_model_flags.CHECKPOINT.value)),
                           identity=identity, overwrite=_OVERWRITE.value)
  except harness.ResultsMismatch as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
  scores = out["scores"]["scores"]
  logging.info("StreamPro-F1: %s", {k: v for k, v in scores.items() if v is not None})
  if benchmark in ("streamingbench", "ovo", "proactivevideoqa"):
    items = harness.benchmark_items(records, max_videos=_MAX_VIDEOS.value)
    results = harness.run_benchmark(params, model_config, tokenizer, items,
                                    os.path.join(workdir, harness.RESULTS_FILE), hcfg,
                                    identity=identity)
    peer = peer_scores(benchmark, results, records[:len(records) if _MAX_VIDEOS.value is None
                                                   else _MAX_VIDEOS.value], judge)
    with open(os.path.join(workdir, "peer_scores.json"), "w", encoding="utf-8") as f:
      json.dump(peer, f, indent=1, default=str)
    logging.info("peer scores: %s", json.dumps(peer, default=str)[:2000])
  print(open(out["paths"]["table"], encoding="utf-8").read())


if __name__ == "__main__":
  _cli.run(main)
