"""streampro_jax.train."""
