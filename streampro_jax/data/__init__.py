"""streampro_jax.data: annotation records, the chat layout of a trajectory, SynthStream, video
decoding, the TFDS builders, the grain pipeline and the importers of public data sets."""

__all__ = [
    "batch",
    "chat_format",
    "importers",
    "peer_loaders",
    "pipeline",
    "pipeline_config",
    "schema",
    "synthetic",
    "tfds_builders",
    "tokenizer",
    "video",
]
