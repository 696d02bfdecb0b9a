"""StreamPro stage 2 (GRPO, multi-grained rewards) of the Qwen2.5-VL-3B SFT model: paper settings.

  python launch/train_grpo.py \
      --config configs/qwen2_5_vl_3b_grpo.py:/ckpt/Qwen2.5-VL-3B-Instruct \
      --config.init.sft_workdir=/runs/sft3b --config.data.jsonl=/data/grpo_train.jsonl \
      --config.reward.judge.base_url=http://judge:8000/v1 --workdir /runs/grpo3b

The config string after ':' is the base Hugging Face folder of the SFT run (architecture and
tokenizer, with the decision tokens); the weights come from the newest checkpoint of
init.sft_workdir (a launch/train_sft.py run with configs/qwen2_5_vl_3b_sft.py). With an exported
SFT model instead: --config.init.sft_workdir= --config.model.hf_checkpoint=/path/to/export.

Paper (docs/method.md section 3): G = 8 rollouts per sample at temperature 1.0, lr 1e-6, global
batch 16, 1 epoch; R = 0.1 R_fmt + 0.45 R_turn + 0.45 R_traj with tau = 8 s for every task;
StreamPro-Bench W-Avg 16.3 (SFT) -> 28.1 (GRPO). Not given by the paper, docs/method.md's defaults:
clip epsilon 0.2, KL beta 0.04 with the k3 estimator, advantage (r - mean) / (std (ddof 1) + 1e-6),
loss = mean over sequences of the per-sequence token mean, one optimisation pass per batch
(on-policy; the behaviour log-probs are the sampler's). [choice] marks settings the paper does not
give. Every field is documented in configs/tiny_synthetic_grpo.py.
"""

import ml_collections

from configs import common


def get_config(hf_checkpoint: str = "/checkpoints/Qwen2.5-VL-3B-Instruct"):
  c = common.base_config()
  c.seed = 0
  c.global_batch_size = 16        # samples per step; x G 8 = 128 rollouts per update
  c.num_epochs = 1.0
  c.log_every_steps = 1
  c.tokenizer = hf_checkpoint
  c.init = ml_collections.ConfigDict(dict(sft_workdir="", sft_step=-1))
  # Scanned layer stacks, cuDNN attention on GPU; remat keeping the projection/MLP matmul outputs
  # and the attention output and softmax statistics ('dots_attn', the policy of MaxText's best
  # Hopper figure), the GPU XLA preset (latency-hiding scheduler): [choice] pending a GPU
  # measurement (benchmarks/gpu_suite.py; 'dots_no_batch' without the preset measured 0.94 s per
  # paper-shape step on one H200, docs/benchmarks.md#accelerator-training-h200).
  c.xla_preset = "gpu"
  c.model = common.model_config(hf_checkpoint=hf_checkpoint, dtype="bfloat16", remat=True,
                                remat_policy="dots_attn", scan_layers=True,
                                attention_impl="jax")
  c.model.reinit_decision_rows = False  # the SFT model's decision rows are trained
  # [choice] FSDP over all devices, as the SFT config.
  c.mesh = common.mesh_config(data=1, fsdp=-1, tensor=1)
  # [choice] The SFT config's frames (224 x 224, 64 visual tokens per turn) and turn limit.
  c.data = common.data_config(source="jsonl", jsonl="", frames_per_turn=2, seq_len=12288,
                              max_turns=120, frame_size=224, seed=0, shuffle=True)
  # lr 1e-6 (paper); [choice] constant after no warmup, clip 1, no weight decay.
  c.optim = common.optim_config(lr=1e-6, warmup_ratio=0.0, weight_decay=0.0, grad_clip_norm=1.0)
  c.optim.schedule = "constant"
  c.grpo = ml_collections.ConfigDict(dict(
      group_size=8, temperature=1.0, top_p=1.0,
      epsilon=0.2, beta=0.04, kl_estimator="k3", adv_eps=1e-6, adv_ddof=1,
      aggregation="sequence-mean-token-mean",
      old_logps="rollout",                 # [choice] the sampler's log-probs (at temperature 1)
      num_passes=1,                        # [choice] mu = 1 (on-policy)
      num_microbatches=8,                  # [choice] 128 rows / 8 per micro-batch
      logps_chunk_size=16384,              # chunked vocabulary (V = 151936)
      ref_param_dtype="bfloat16"))         # [choice] the frozen reference in the compute dtype
  c.reward = ml_collections.ConfigDict(dict(
      weights=(0.1, 0.45, 0.45), tau=8.0, matching="gt_first", max_answers=32,
      max_checks=16,
      # launch/write_rubrics.py's output (--config.reward.rubrics_file=...); "" = the records'
      # own rubrics. missing_rubric: "error" stops at a sample without one, "zero" scores it 0.
      rubrics_file="", missing_rubric="error",
      # [choice] an OpenAI-compatible judge server (e.g. vLLM serving an open judge model);
      # for a hosted endpoint: --config.reward.judge.api_key_env=OPENAI_API_KEY (the key is read
      # from that environment variable, never from the config).
      judge=ml_collections.ConfigDict(dict(
          kind="openai", base_url="http://localhost:8000/v1", model="judge",
          api_key_env=None, max_concurrency=64, timeout_s=60.0, max_retries=3))))
  c.rollout = ml_collections.ConfigDict(dict(
      window_turns=200, constrain_decision=False, user_chunk_len=160, capacity=16384,
      max_text_tokens=64))                 # [choice] text tokens after </Response>
  c.checkpoint = common.checkpoint_config(every_steps=20, keep=3)
  return c
