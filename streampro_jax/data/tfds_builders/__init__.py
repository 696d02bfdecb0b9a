"""streampro_jax.data.tfds_builders."""
