"""streampro_jax.bench."""
