"""streampro_jax: StreamPro (proactive streaming video-LLM) in JAX/Flax."""

__all__ = [
    "__version__",
    "bench",
    "cluster",
    "data",
    "demo",
    "grpo",
    "judges",
    "live",
    "losses",
    "models",
    "numerics",
    "parallel",
    "prompts",
    "rewards",
    "sampling",
    "spans",
    "train",
    "xla_presets",
]

__version__ = "0.1.0"
