"""Config sections shared by the SFT (and GRPO) configs. Plain data: every function returns a
ConfigDict, and nothing here imports the trainer (streampro_jax.train); the trainers build their
config tree from it (streampro_jax/train/config_check.build), whose dataclasses hold the defaults
that the sections below write out in full (tests/test_config_defaults.py pins them equal), so
that every key is on the command line's menu (--config.loss.beta=...).

Sections:
  model       which backbone and how it computes (dtype = compute dtype, param_dtype = master
              weights), random tiny architecture or a Hugging Face checkpoint folder.
  mesh        device mesh axis sizes (data, fsdp, tensor; -1 fills the rest) and the
              logical-axis sharding rules (rules: [logical name, mesh axes] pairs, by default
              streampro_jax.parallel.DEFAULT_RULES; docs/architecture.md#mesh-rules).
  data        the grain pipeline (streampro_jax.data.pipeline_config.PipelineConfig fields) plus its
              source: "synth" (SynthStream generated in memory), "tfds" (data.tfds_dir, a
              prepared builder directory such as /data/tfds/jsonl_videos/train/1.0.0) or
              "jsonl" (data.jsonl, videos decoded on demand); every source's keys are present
              (pipeline_config.SOURCE_KEYS), the ones of the other sources at their unset values.

The trainers check every section when they load it (streampro_jax/train/config_check.py): a key
that no field of the tree declares is an error naming it and the nearest valid key.
  tokenizer   "synthetic" (word-level SynthStream tokenizer, built in the workdir) or a folder.
  optim       AdamW, schedule, clipping, frozen-parameter regex (streampro_jax.train.optim.
              OptimConfig).
  loss        kind = cb_stream | ce | focal, its hyper-parameters and the vocabulary chunking.
  checkpoint  orbax keep-N asynchronous checkpoints.
"""

import dataclasses

import ml_collections

from streampro_jax import parallel
from streampro_jax.data import pipeline_config

# Vision tower frozen, patch merger and LLM trained (docs/method.md section 1).
FROZEN_VISION = r"^visual/(?!merger/)"


def model_config(*, hf_checkpoint: str = "", dtype: str = "bfloat16", remat: bool = False,
                 remat_policy: str = "full", scan_layers: bool = False,
                 attention_impl: str = "jax", matmul_dtype: str = "default",
                 tiny_text=None, tiny_vision=None
                 ) -> ml_collections.ConfigDict:
  """Model section. With ``hf_checkpoint`` the architecture comes from its config.json; else a
  random tiny Qwen2.5-VL (qwen2_5_vl.tiny_config with ``tiny_text`` / ``tiny_vision`` overrides;
  vocabulary size and special token ids are taken from the tokenizer). ``scan_layers`` runs the
  layer stacks under nn.scan (fast init and compile; the accelerator configs turn it on),
  ``remat_policy`` names what a rematerialised layer keeps (layers._REMAT_POLICIES),
  ``matmul_dtype`` the decoder projections' and MLP's matmul precision ('default' | 'fp8',
  layers._MATMUL_DTYPES)."""
  return ml_collections.ConfigDict(dict(
      family="qwen2_5_vl",
      hf_checkpoint=hf_checkpoint,
      dtype=dtype,              # compute dtype
      param_dtype="float32",    # master weights
      attention_impl=attention_impl,
      # splash attention's query / key block targets (TPU; layers._splash_block)
      attention_block_q=512,
      attention_block_kv=512,
      remat=remat,
      remat_policy=remat_policy,
      scan_layers=scan_layers,
      matmul_dtype=matmul_dtype,
      tiny_text=dict(tiny_text or {}),
      tiny_vision=dict(tiny_vision or {}),
      reinit_decision_rows=True,  # HF checkpoint: re-initialise the </Silence>, </Response> rows
  ))


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1,
                rules=parallel.DEFAULT_RULES) -> ml_collections.ConfigDict:
  """Mesh section: the axis sizes and the rules mapping each logical axis name of the parameters
  to mesh axes (None: replicated), e.g. ``("embed", "fsdp")``; read by the trainers
  (parallel.rules_from_config). On the command line a rule table is a Python literal:
  ``--config.mesh.rules="(('embed', None), ('mlp', 'tensor'), ...)"``. ``rules`` may name a
  set of parallel._RULE_SETS (e.g. "tensor_in_host_fsdp_across"); the section stores its table."""
  if isinstance(rules, str):
    rules = parallel.rules_from_config({"rules": rules})
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor,
                                        rules=tuple(tuple(r) for r in rules)))


def data_config(*, source: str, seq_len: int, max_turns: int, frame_size: int,
                **kw) -> ml_collections.ConfigDict:
  """Data section: PipelineConfig fields (batch_size is set from config.global_batch_size by the
  trainer) plus the source spec (see pipeline.make_train_iterator; "synth" adds num_videos,
  split, synth = SynthConfig fields). narration=True (SynthStream sources) trains on the
  narration of each video instead of its questions, narration_answers=True with it narrates
  half the videos' own answers (train/setup.make_data)."""
  d = dict(source=source, seq_len=seq_len, max_turns=max_turns, frame_height=frame_size,
           frame_width=frame_size, seed=0, shuffle=True, num_threads=4,
           prefetch_buffer_size=8, narration=False, narration_answers=False)
  # Every source's keys at their unset values, so that any source can be chosen on the
  # command line (--config.data.source=jsonl --config.data.jsonl=/data/train.jsonl).
  for keys in pipeline_config.SOURCE_KEYS.values():
    for key, value in keys.items():
      d.setdefault(key, value)
  unknown = set(kw) - set(d) - {f.name for f in dataclasses.fields(pipeline_config.PipelineConfig)}
  if unknown:
    raise ValueError(f"data_config: unknown keys {sorted(unknown)}")
  d.update(kw)
  return ml_collections.ConfigDict(d)


def _section(name: str, defaults: dict, given: dict) -> ml_collections.ConfigDict:
  unknown = set(given) - set(defaults)
  if unknown:
    raise ValueError(f"{name}: unknown keys {sorted(unknown)}")
  return ml_collections.ConfigDict({**defaults, **given})


def optim_config(*, lr: float, frozen: str = FROZEN_VISION, **kw) -> ml_collections.ConfigDict:
  """Optim section: every streampro_jax.train.optim.OptimConfig field, at its default unless
  given in ``kw`` (warmup_ratio, weight_decay, grad_clip_norm, end_lr_factor, schedule, ...);
  ``frozen`` is the vision tower unless given."""
  return _section("optim_config", dict(
      lr=lr, warmup_steps=-1, warmup_ratio=0.0, schedule="cosine", end_lr_factor=0.0, b1=0.9,
      b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0, frozen=frozen), kw)


def loss_config(kind: str = "cb_stream", **kw) -> ml_collections.ConfigDict:
  """Loss section: every streampro_jax.train.config_check.LossConfig field, at its default unless
  given. kind: cb_stream | ce | focal. chunk_size > 0: chunked-vocabulary loss from hidden
  states. count_scope: global | microbatch | device, where the decision-class counts n_k are
  taken (config_check._COUNT_SCOPES; docs/components.md#count-scope has the weight-ratio table)."""
  return _section("loss_config", dict(kind=kind, beta=0.9999, text_weight=2.0, gamma=2.0,
                                      chunk_size=0, count_scope="global"), kw)


def checkpoint_config(**kw) -> ml_collections.ConfigDict:
  """Checkpoint section: every streampro_jax.train.checkpoint.CheckpointConfig field (every_steps,
  keep, async_save), at its default unless given."""
  return _section("checkpoint_config", dict(every_steps=1000, keep=3, async_save=True), kw)


def base_config() -> ml_collections.ConfigDict:
  """Top-level fields every training config has."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.global_batch_size = 8
  c.num_microbatches = 1     # gradient accumulation steps per optimizer step (exact)
  c.num_epochs = 1.0
  c.total_steps = -1         # > 0 overrides num_epochs
  c.log_every_steps = 10
  c.tokenizer = "synthetic"
  c.tensorboard = True
  # Fault injection for the resume test: SIGKILL this process right after this step (-1: never).
  c.debug_kill_after_step = -1
  # With it: the SIGKILL comes while that step's asynchronous checkpoint is being written (the
  # crash-during-save test) instead of after the writes finish.
  c.debug_kill_mid_save = False
  # Named XLA flags (streampro_jax/xla_presets.py) the trainers set before JAX starts, unless
  # --xla_preset is given on the command line.
  c.xla_preset = "none"
  return c


# GRPO settings selectable by name (streampro_jax.grpo.GRPO_PRESETS): "spec" (beta 0.04, k3,
# sequence-mean-token-mean), "verl" (KL loss coefficient 0.001, k3, token-mean), "verl-no-kl".
GRPO_PRESET_NAMES = ("spec", "verl", "verl-no-kl")


def with_grpo_preset(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets config.grpo.preset = name (read by grpo.GRPOStepConfig.from_config; the preset's
  beta, kl_estimator and aggregation win over the section's own). Returns the config."""
  if name not in GRPO_PRESET_NAMES:
    raise ValueError(f"GRPO preset {name!r}; expected one of {GRPO_PRESET_NAMES}")
  with config.unlocked():
    config.grpo.preset = name
  return config
