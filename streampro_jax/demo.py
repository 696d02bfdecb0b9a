"""The end-to-end StreamPro demo on SynthStream: its stages over one workdir (flag-free).

launch/demo.py is the program (docs/components.md#the-end-to-end-demo lists the stages and what
each writes); benchmarks/demo_ablations.py runs more variants through the same stages. `Demo`
takes the demo's settings (configs/demo.py `get_config(budget)`) and that config module itself,
whose functions (sft_config, grpo_config, ...) build each stage's trainer config: the library
does not import configs/.
"""

from __future__ import annotations

import hashlib
import json
import logging as py_logging
import os
import time

from absl import logging

__all__ = [
    "Demo", "WorkdirMismatch", "apply_overrides", "banner", "eval_stage", "quiet_library_logs",
    "seed_stage", "set_compilation_cache", "start_cpu_process"
]

_SPLITS = ("validation", "test")


class WorkdirMismatch(ValueError):
  """The workdir holds a demo run with other settings (the message names every key)."""


def set_compilation_cache(workdir: str, flag_value: str):
  """JAX's persistent compilation cache in <workdir>/jax_cache ('' ), a given folder, or off
  ('none')."""
  import jax  # pylint: disable=g-import-not-at-top
  cache = flag_value or os.path.join(os.path.abspath(workdir), "jax_cache")
  if cache != "none":
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def quiet_library_logs():
  """Drops the INFO records of the noisy libraries (orbax, grain, ...) from absl's handler."""
  logging.get_absl_handler().addFilter(_QuietFilter())
  py_logging.getLogger().addFilter(_QuietFilter())


def start_cpu_process(pin_numerics: bool = True):
  """What a process that runs the demo's stages does before JAX starts its backend: the CPU
  backend only (an installed libtpu stays silent), no Hugging Face hub access, the demo's pinned
  CPU numerics (numerics.pin_cpu_numerics) unless pin_numerics is False, quiet library logs."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if pin_numerics:
    from streampro_jax import numerics  # pylint: disable=g-import-not-at-top
    numerics.pin_cpu_numerics()
  quiet_library_logs()

_DONE = "DONE.json"
# Library loggers whose INFO lines would drown the demo's progress lines.
_QUIET = ("/orbax/", "/grain/", "/tensorstore", "/etils/", "/tensorflow_datasets/", "/jax/")


class _QuietFilter(py_logging.Filter):
  """Drops INFO (and below) records emitted from the noisy libraries' files."""

  def filter(self, record):
    if record.levelno >= py_logging.WARNING:
      return True
    path = record.pathname.replace("\\", "/")
    return not any(p in path for p in _QUIET)


def banner(text: str):
  line = "=" * 78
  print(f"\n{line}\n== {text}\n{line}", flush=True)


class _StageTimer:
  """Wall and CPU seconds (user + system of all threads of this process) of a stage."""

  def __enter__(self):
    self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self.wall0
    self.cpu = time.process_time() - self.cpu0
    return False

  def as_dict(self):
    return {"wall_s": round(self.wall, 2), "cpu_s": round(self.cpu, 2)}


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _params_sha256(params) -> str:
  """SHA-256 of every parameter leaf's bytes (tree order): equal hashes, equal bits."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


class Demo:
  """The demo's stages over one workdir: the shared data and base model, then per seed."""

  def __init__(self, demo_cfg, workdir: str, *, configs, progress: bool = True):
    self.cfg = demo_cfg
    self.configs = configs
    self.workdir = os.path.abspath(workdir)
    self.progress = progress
    self.timings: dict[str, dict] = {}
    os.makedirs(self.workdir, exist_ok=True)
    self._check_config()

  # -- bookkeeping ---------------------------------------------------------------------------

  def identity(self) -> dict:
    """What the workdir's stages depend on: the settings (the seed aside: each seed has its own
    folder) and whether the numerics were pinned."""
    from streampro_jax import numerics  # pylint: disable=g-import-not-at-top
    mine = json.loads(self.cfg.to_json_best_effort())
    mine.pop("seed", None)
    mine["pinned_numerics"] = numerics.is_pinned()
    return mine

  def _check_config(self):
    """The workdir belongs to one set of settings: refuse to mix stages of different ones,
    naming every key that differs."""
    path = os.path.join(self.workdir, "demo_config.json")
    mine = self.identity()
    if os.path.exists(path):
      theirs = _read_json(path)
      if theirs != mine:
        from streampro_jax.train import config_check  # pylint: disable=g-import-not-at-top
        diff = config_check.config_diff(theirs, mine, ignore=())
        raise WorkdirMismatch(
            f"{self.workdir} holds a demo run with other settings ({'; '.join(diff)}); use "
            f"another workdir")
    else:
      _write_json(path, mine)

  def seed_cfg(self, seed: int):
    c = self.cfg.copy_and_resolve_references()
    c.seed = int(seed)
    return c

  def stage_dir(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def done(self, name: str) -> dict | None:
    path = os.path.join(self.stage_dir(name), _DONE)
    return _read_json(path) if os.path.exists(path) else None

  def run_stage(self, name: str, title: str, fn):
    """Runs fn() unless the stage finished before; records its timings."""
    prev = self.done(name)
    if prev is not None:
      banner(f"[skip] {name}: finished before ({title})")
      self.timings[name] = dict(prev.get("timing", {}), skipped=True)
      return prev
    banner(f"{name}: {title}")
    os.makedirs(self.stage_dir(name), exist_ok=True)
    with _StageTimer() as t:
      info = fn() or {}
    info = dict(info, timing=t.as_dict())
    _write_json(os.path.join(self.stage_dir(name), _DONE), info)
    self.timings[name] = dict(t.as_dict(), skipped=False)
    print(f"-- {name} done in {t.wall:.1f} s wall, {t.cpu:.1f} s CPU", flush=True)
    return info

  # -- shared objects ------------------------------------------------------------------------

  @property
  def data_dir(self) -> str:
    """The prepared TFDS builder directory (…/synth_stream/demo/1.0.0)."""
    return self.configs.data_dir(self.workdir)

  def tokenizer_and_model_config(self):
    from streampro_jax.train import setup as setup_lib  # pylint: disable=g-import-not-at-top
    cfg = self.configs.sft_config(self.cfg, "ce", self.data_dir)
    tokenizer = setup_lib.make_tokenizer(cfg, self.workdir)
    return tokenizer, setup_lib.make_model_config(cfg.model, tokenizer)

  def source(self, split: str):
    from streampro_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.tfds_source(self.data_dir, split)

  # -- shared stages -------------------------------------------------------------------------

  def stage_data(self):
    from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    from streampro_jax.data.tfds_builders import jsonl_videos, synth_stream  # pylint: disable=g-import-not-at-top
    d = self.cfg.data
    splits = {"train": int(d.num_train), "validation": int(d.num_validation),
              "test": int(d.num_test)}
    bcfg = synth_stream.SynthStreamConfig(
        name="demo", num_videos=splits, seed=int(d.synth_seed), synth=dict(d.synth),
        frames_per_turn=2)
    builder = synth_stream.SynthStream(config=bcfg, data_dir=self.stage_dir("data"),
                                       file_format="array_record")
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
    reports = jsonl_videos.build(builder)
    stats = {}
    for split in splits:
      src = self.source(split)
      records = [src[i][0] for i in range(len(src))]
      ratio = synthetic.silence_response_stats(records)
      stats[split] = {"videos": len(records), "silence_response": ratio}
      print(f"   {split}: {len(records)} videos; silence/response turns: {ratio}", flush=True)
    return {"reports": reports, "stats": stats}

  @property
  def base_hf_dir(self) -> str:
    """The base model as a Hugging Face folder (config.json + model.safetensors)."""
    return os.path.join(self.stage_dir("base"), "hf")

  def stage_base(self):
    from streampro_jax import models  # pylint: disable=g-import-not-at-top
    from streampro_jax.train import sft  # pylint: disable=g-import-not-at-top
    cfg = self.configs.base_config(self.cfg, self.data_dir)
    workdir = self.stage_dir("base")
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(cfg.to_json_best_effort(indent=2))
    what = ("narration (a caption on every turn; half the videos' own questions answered on "
            "their turns)" if cfg.data.narration_answers else "narration (a caption on every turn)")
    print(f"   {what}, cross-entropy: {cfg.total_steps} steps x batch {cfg.global_batch_size}, "
          f"lr {cfg.optim.lr}, seed {cfg.seed}", flush=True)
    state = sft.train(cfg, workdir)
    _, mcfg = self.tokenizer_and_model_config()
    models.backbone_module(mcfg).save_hf_checkpoint(mcfg, state.params, self.base_hf_dir)
    sha = _params_sha256(state.params)
    print(f"   base model written to {self.base_hf_dir} (parameters sha256 {sha[:16]}...)",
          flush=True)
    return {"last_metrics": _last_metrics(workdir), "hf_dir": self.base_hf_dir,
            "params_sha256": sha}

  # -- per-seed stages -----------------------------------------------------------------------

  def stage_sft(self, seed: int, variant: str, kind: str | None = None,
                overrides: dict | None = None):
    """SFT from the base model into stage seed_<seed>/<variant>. kind: the loss (default: the
    demo variant's, LOSS_OF_VARIANT); overrides: {"dotted.key": value} applied to the trainer
    config (benchmarks/demo_ablations.py)."""
    from streampro_jax.train import sft  # pylint: disable=g-import-not-at-top
    kind = kind or self.configs.LOSS_OF_VARIANT[variant]
    cfg = self.configs.sft_config(self.seed_cfg(seed), kind, self.data_dir,
                                  base_hf_dir=self.base_hf_dir)
    apply_overrides(cfg, overrides)
    workdir = self.stage_dir(seed_stage(seed, variant))
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(cfg.to_json_best_effort(indent=2))
    print(f"   loss {kind}: {cfg.total_steps} steps x batch {cfg.global_batch_size}, lr "
          f"{cfg.optim.lr}, seed {cfg.seed}", flush=True)
    sft.train(cfg, workdir)
    return {"loss": kind, "last_metrics": _last_metrics(workdir)}

  def grpo_rollout_sizes(self, cfg):
    """Fixed user-chunk bucket and KV capacity over every train sample (one compilation)."""
    from streampro_jax import sampling  # pylint: disable=g-import-not-at-top
    from streampro_jax.train import config_check, grpo_rollouts  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from streampro_jax.data import chat_format  # pylint: disable=g-import-not-at-top
    tokenizer, mcfg = self.tokenizer_and_model_config()
    f = int(self.cfg.frame_size)
    p = mcfg.vision.patch_size
    grid = (1, f // p, f // p)
    tokens = grid[1] * grid[2] // mcfg.vision.spatial_merge_size ** 2
    chat = chat_format.ChatFormat(tokenizer, tokens_per_turn=tokens,
                                  system_prompt=str(self.cfg.system_prompt))
    probe = sampling.StreamingSampler(
        mcfg, chat, grpo_rollouts.sampler_config(config_check.build(cfg, "grpo")),
        video_grid=grid)
    src = self.source("train")
    k_max = int(self.cfg.max_turns)
    fake = []
    for i in range(len(src)):
      rec = _pipeline_record(src, i)
      k = min(chat_format.num_turns(rec.duration), k_max)
      fake += [sampling.StreamPrompt(np.zeros((k, probe.patches_per_turn, 1), np.float32),
                                    q.question, chat_format.ask_turn(q.ask_time, k))
               for q in rec.questions]
    c_user = probe.user_chunk_len_for(fake)
    return c_user, probe.capacity_for_prompts(fake, c_user)

  def stage_grpo(self, seed: int, name: str = "grpo", overrides: dict | None = None,
                 sft_variant: str = "sft_cb_stream"):
    """GRPO from seed_<seed>/<sft_variant> into seed_<seed>/<name>; overrides as stage_sft's."""
    from streampro_jax.train import grpo_trainer  # pylint: disable=g-import-not-at-top
    cfg = self.configs.grpo_config(self.seed_cfg(seed),
                                   self.stage_dir(seed_stage(seed, sft_variant)), self.data_dir)
    apply_overrides(cfg, overrides)
    if not cfg.rollout.user_chunk_len or not cfg.rollout.capacity:
      c_user, cap = self.grpo_rollout_sizes(cfg)
      cfg.rollout.user_chunk_len = cfg.rollout.user_chunk_len or c_user
      cfg.rollout.capacity = cfg.rollout.capacity or cap
    workdir = self.stage_dir(seed_stage(seed, name))
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(cfg.to_json_best_effort(indent=2))
    print(f"   from {cfg.init.sft_workdir}: {cfg.total_steps} steps x {cfg.global_batch_size} "
          f"samples x G {cfg.grpo.group_size}, lr {cfg.optim.lr}, T {cfg.grpo.temperature}, "
          f"KL {cfg.grpo.beta}, tau {cfg.reward.tau}, rewards {tuple(cfg.reward.weights)}",
          flush=True)
    grpo_trainer.GRPOTrainer(cfg, workdir, source=self.source("train")).train()
    return {"last_metrics": _last_metrics(workdir)}

  def stage_eval(self, seed: int, run: str, split: str):
    """Streaming evaluation of seed_<seed>/<run> on a split into seed_<seed>/eval_<split>_<run>."""
    from streampro_jax import judges  # pylint: disable=g-import-not-at-top
    from streampro_jax.bench import harness  # pylint: disable=g-import-not-at-top
    if split not in _SPLITS:
      raise ValueError(f"split {split!r}: expected one of {_SPLITS}")
    tokenizer, mcfg = self.tokenizer_and_model_config()
    params = _restore_params(os.path.join(self.stage_dir(seed_stage(seed, run)), "checkpoints"))
    src = self.source(split)
    records = [_pipeline_record(src, i) for i in range(len(src))]
    e = self.cfg.eval
    hcfg = harness.HarnessConfig(
        batch_size=int(e.batch_size), frame_height=int(self.cfg.frame_size),
        frame_width=int(self.cfg.frame_size), max_text_tokens=int(e.max_text_tokens),
        window_turns=200, max_turns=int(self.cfg.max_turns),
        constrain_decision=bool(e.constrain_decision), progress=self.progress,
        system_prompt=str(self.cfg.system_prompt))
    out = harness.evaluate(params, mcfg, tokenizer, records, judges.MatchJudge(),
                           self.stage_dir(seed_stage(seed, eval_stage(split, run))), hcfg,
                           name=run)
    sc = out["scores"]["scores"]
    st = out["stats"]
    print(f"   seed {seed}, {run}, {split} split: W-Avg {100 * sc['W-Avg']:.1f}; "
          f"{st['response']} responses, {st['silence']} silences, {st['invalid']} invalid over "
          f"{st['turns']} turns", flush=True)
    return {"scores": sc, "decisions": {k: v for k, v in st.items() if k != "judge"}}

  def run_seed(self, seed: int):
    """The SFT variants, GRPO and the evaluations of one seed (finished stages skipped)."""
    for v in ("sft_ce", "sft_focal", "sft_cb_stream"):
      self.run_stage(seed_stage(seed, v),
                     f"seed {seed}: SFT with the {self.configs.LOSS_OF_VARIANT[v]} loss",
                     lambda v=v: self.stage_sft(seed, v))
    self.run_stage(seed_stage(seed, "grpo"), f"seed {seed}: GRPO from the CB-Stream SFT model",
                   lambda: self.stage_grpo(seed))
    for split in _SPLITS:
      for v in self.configs.VARIANTS:
        self.run_stage(seed_stage(seed, eval_stage(split, v)),
                       f"seed {seed}: streaming evaluation of {v} on the {split} split",
                       lambda v=v, split=split: self.stage_eval(seed, v, split))

  # -- report --------------------------------------------------------------------------------

  def seed_scores(self, seed: int, split: str) -> dict:
    """{variant: {W-Avg, Avg, PU, TR, PA, per_task, decisions}} of one seed and split."""
    out = {}
    for v in self.configs.VARIANTS:
      scored = _read_json(os.path.join(self.stage_dir(seed_stage(seed, eval_stage(split, v))),
                                       "scores.json"))
      sc = scored["scores"]
      out[v] = {"W-Avg": sc["W-Avg"], "Avg": sc["Avg"], "PU": sc["PU"], "TR": sc["TR"],
                "PA": sc["PA"],
                "per_task": {t: pt["f1"] for t, pt in scored["per_task"].items()},
                "decisions": {k: v for k, v in scored["decisions"].items() if k != "judge"}}
    return out

  def stage_report(self, seeds) -> dict:
    """Per-seed scores of both splits, their summary and findings, and the first seed's test
    figures (report/)."""
    from streampro_jax.bench import report  # pylint: disable=g-import-not-at-top
    from streampro_jax.bench import seeds as seeds_lib  # pylint: disable=g-import-not-at-top
    per_seed = {str(s): {split: self.seed_scores(s, split) for split in _SPLITS} for s in seeds}
    summary = {split: seeds_lib.summarize({s: r[split] for s, r in per_seed.items()},
                                          self.configs.VARIANTS) for split in _SPLITS}
    findings = {split: seeds_lib.findings(summary[split]) for split in _SPLITS}
    first = seeds[0]
    full = {v: _read_json(os.path.join(self.stage_dir(seed_stage(first, eval_stage("test", v))),
                                       "results.json"))["variants"][v]
            for v in self.configs.VARIANTS}
    paths = report.write_report(full, os.path.join(self.workdir, "report"))
    paths["seeds"] = report.plot_seeds({"seeds": seeds, "per_seed": per_seed},
                                       os.path.join(self.workdir, "report", "seeds.png"))
    return {"per_seed": per_seed, "summary": summary, "findings": findings, "report": paths}

  # -- all -----------------------------------------------------------------------------------

  def run(self, seeds) -> dict:
    from streampro_jax import numerics  # pylint: disable=g-import-not-at-top
    seeds = [int(s) for s in seeds]
    load0 = os.getloadavg()
    t0w, t0c = time.perf_counter(), time.process_time()
    d = self.cfg.data
    self.run_stage("data", f"SynthStream {d.num_train} train + {d.num_validation} validation + "
                   f"{d.num_test} test videos ({d.synth.min_duration}-{d.synth.max_duration} s, "
                   f"silence ratio {d.synth.silence_ratio}, {d.synth.resolution} px)",
                   self.stage_data)
    base = self.run_stage("base", f"base model: narration of the {d.num_train} training videos",
                          self.stage_base)
    for seed in seeds:
      self.run_seed(seed)
    # The report is cheap: always rebuilt from the evaluations.
    banner("report")
    rep = self.stage_report(seeds)
    total = {"wall_s": round(time.perf_counter() - t0w, 2),
             "cpu_s": round(time.process_time() - t0c, 2)}
    self.timings["total_this_run"] = total
    results = {"budget": self.cfg.budget, "seeds": seeds,
               "numerics": dict(numerics.fingerprint(),
                                base_params_sha256=base.get("params_sha256", "")),
               "per_seed": rep["per_seed"], "summary": rep["summary"],
               "findings": rep["findings"], "timings": self.timings,
               "load": {"before": [round(x, 2) for x in load0],
                        "after": [round(x, 2) for x in os.getloadavg()]},
               "figures": {k: v for k, v in rep["report"].items() if k not in ("json",)}}
    _write_json(os.path.join(self.workdir, "results.json"), results)
    table = _results_text(results)
    print(table, flush=True)
    with open(os.path.join(self.workdir, "table.md"), "w", encoding="utf-8") as f:
      f.write(table)
    print("\nStage timings (wall / CPU seconds; skipped = reused from an earlier run):")
    for name, t in self.timings.items():
      print(f"  {name:<36} {t.get('wall_s', 0):8.1f} {t.get('cpu_s', 0):8.1f}"
            f"{'  (skipped)' if t.get('skipped') else ''}")
    print(f"\nresults: {os.path.join(self.workdir, 'results.json')}\nfigures: "
          + ", ".join(v for k, v in rep["report"].items()
                      if k.endswith(("f1", "offsets", "pr", "seeds"))))
    return results


def seed_stage(seed: int, name: str) -> str:
  """The stage (folder) name of a per-seed stage."""
  return f"seed_{int(seed)}/{name}"


def eval_stage(split: str, run: str) -> str:
  return f"eval_{split}_{run}"


def apply_overrides(cfg, overrides: dict | None):
  """Sets {"dotted.key": value} in a ConfigDict (a trainer's, or the demo's own from
  configs/demo.get_config); a key it does not have is a KeyError naming it, never a silently
  added field."""
  for key, value in (overrides or {}).items():
    node, *path = cfg, *key.split(".")
    for part in path[:-1]:
      if part not in node:
        raise KeyError(f"override {key!r}: the config has no field {part!r}")
      node = node[part]
    if path[-1] not in node:
      raise KeyError(f"override {key!r}: the config has no field {path[-1]!r}")
    node[path[-1]] = value


def _pipeline_record(source, i: int):
  """The schema.Record of example i of a TfdsSource (without decoding its frames)."""
  from streampro_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.decode_record(source.data_source[i]["record"])


def _restore_params(ckpt_dir: str):
  """Params (host arrays) of the newest finished checkpoint ``<ckpt_dir>/<step>/state``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  if not steps:
    raise FileNotFoundError(f"no finished checkpoint in {ckpt_dir}")
  path = os.path.join(os.path.abspath(ckpt_dir), str(steps[-1]), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def _last_metrics(workdir: str) -> dict:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  from streampro_jax.train import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  rows = metrics_lib.read_jsonl(path)
  return rows[max(rows)] if rows else {}


def _results_text(results: dict) -> str:
  """The result tables printed at the end and kept in table.md (bench.seeds.demo_text)."""
  from streampro_jax.bench import seeds as seeds_lib  # pylint: disable=g-import-not-at-top
  return "\n" + seeds_lib.demo_text(results)
