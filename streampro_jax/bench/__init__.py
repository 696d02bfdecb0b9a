"""streampro_jax.bench: StreamPro-Bench metric and the peer benchmarks' scorers.

Modules (import them by name; none is imported here, so that `import streampro_jax.bench` stays
light and matplotlib is only loaded by `report`):
  streampro_f1    StreamPro-F1 (score_qa, aggregate, score_benchmark) -- docs/method.md section 4
  streamingbench  StreamingBench RTVU and Proactive Output scoring (official count.py rules)
  ovo             OVO-Bench scoring (official OVOBenchOfflineScore rules)
  pauc            ProactiveVideoQA PAUC
  report          JSON, markdown table and PNG figures of StreamPro-Bench results
  seeds           paired gaps over seeds and the findings they support (the demo's claims)
"""

__all__ = [
    "checkpoints",
    "content_probe",
    "harness",
    "ovo",
    "pauc",
    "report",
    "seeds",
    "streamingbench",
    "streampro_f1",
]
