"""streampro_jax.models."""
