"""streampro_jax.train: the two training stages (SFT and GRPO) over one sharded update step,
with the run builder, the training loop, checkpoints, optimizer, metrics and the config tree."""

__all__ = [
    "aot",
    "checkpoint",
    "config_check",
    "grpo_data",
    "grpo_learner",
    "grpo_policy",
    "grpo_rewards",
    "grpo_rollouts",
    "grpo_step",
    "grpo_trainer",
    "loop",
    "metrics",
    "optim",
    "run",
    "setup",
    "sft",
    "state",
    "step",
]
