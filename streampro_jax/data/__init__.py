"""streampro_jax.data."""
