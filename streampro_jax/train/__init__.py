"""streampro_jax.train: the two training stages (SFT and GRPO) over one sharded update step,
with the training loop, checkpoints, optimizer, metrics and config checks."""

__all__ = [
    "aot",
    "checkpoint",
    "config_check",
    "grpo_step",
    "grpo_trainer",
    "loop",
    "metrics",
    "optim",
    "setup",
    "sft",
    "state",
    "step",
]
