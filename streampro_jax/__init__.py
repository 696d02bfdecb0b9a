"""streampro_jax: StreamPro (proactive streaming video-LLM) in JAX/Flax."""

__version__ = "0.1.0"
