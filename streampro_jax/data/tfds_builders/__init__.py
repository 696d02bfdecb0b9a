"""TFDS builders (array_record, no TensorFlow): SynthStream and JSONL annotations + videos.

Importing this package registers the builders with TFDS ("synth_stream", "jsonl_videos").
"""

from streampro_jax.data.tfds_builders.jsonl_videos import JsonlVideos, JsonlVideosConfig, build
from streampro_jax.data.tfds_builders.synth_stream import SynthStream, SynthStreamConfig

__all__ = ["JsonlVideos", "JsonlVideosConfig", "SynthStream", "SynthStreamConfig", "build"]
