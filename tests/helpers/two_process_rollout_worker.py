"""One process of the two-process rollout test (tests/test_rollout_multiprocess.py).

Usage: python two_process_rollout_worker.py PORT PROCESS_ID NUM_PROCESSES TOKENIZER_DIR OUT_NPZ

NUM_PROCESSES 1: the reference, one process with the plain sampler (no mesh) on all four
prompts. NUM_PROCESSES 2: two processes joined by jax.distributed on 127.0.0.1:PORT, 2 CPU
devices each, a (data 2, fsdp 2) mesh, the tiny model's parameters sharded over it by their
logical axes; process p samples prompts [2 p, 2 p + 2) with StreamingSampler(mesh=mesh). Every
run samples G = 2 rollouts of its prompts with seed 5 and writes its rows to OUT_NPZ.
"""

import functools
import os
import sys

NUM = int(sys.argv[3])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={2 if NUM > 1 else 1}"
os.environ["JAX_PLATFORMS"] = "cpu"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from streampro_jax import models, parallel, sampling  # noqa: E402
from streampro_jax.data import chat_format, synthetic  # noqa: E402
from streampro_jax.data import tokenizer as tok_lib  # noqa: E402
from streampro_jax.models import processing, qwen2_5_vl  # noqa: E402
from streampro_jax.train import setup  # noqa: E402

FRAME, GRID = 16, (1, 4, 4)


def main():
  port, pid, tok_dir, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4], sys.argv[5]
  mesh = None
  if NUM > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    parallel.initialize_distributed(parallel.DistributedConfig(
        coordinator_address=f"127.0.0.1:{port}", num_processes=NUM, process_id=pid))
    assert jax.process_count() == NUM and jax.device_count() == 2 * NUM
    mesh = parallel.make_mesh({"data": NUM, "fsdp": 2, "tensor": 1})
  tok = tok_lib.build_synthetic_tokenizer(synthetic.synthetic_vocabulary(), tok_dir)
  # The tiny backbone of tests/conftest.py's `tiny_backbone("qwen2_5_vl")` (test_rollout.py).
  cfg = models.config_from_section(dict(family="qwen2_5_vl", attention_impl="xla"), tok)
  init = functools.partial(qwen2_5_vl.init_params, cfg)
  if mesh is None:
    params = setup.random_params(cfg, seed=0)
  else:   # the globally sharded parameters (fsdp over the 4 devices of both processes)
    shardings = parallel.logical_shardings(jax.eval_shape(init, jax.random.key(0)), mesh)
    params = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(jax.random.key(0))
    assert any(not x.is_fully_addressable for x in jax.tree.leaves(params))
  chat = chat_format.ChatFormat(tok, tokens_per_turn=4)
  proc = processing.VideoProcessorConfig(patch_size=4, merge_size=2, temporal_patch_size=2,
                                         do_resize=False)
  sc = synthetic.SynthConfig(resolution=32, min_duration=12, max_duration=14)
  prompts = []
  for i, k in enumerate((5, 4, 6, 3)):
    rec = synthetic.make_record("test", i, config=sc)
    prompts.append(sampling.prompt_from_record(rec, rec.questions[0], synthetic.render_frames(rec),
                                              proc, max_turns=k, frame_size=(FRAME, FRAME)))
  mine = prompts if NUM == 1 else prompts[2 * pid:2 * pid + 2]
  # Every process loops over the same number of turns (the global longest stream): each turn's
  # jitted steps are collective programs.
  sampler = sampling.StreamingSampler(
      cfg, chat, sampling.SamplerConfig(temperature=1.0, max_text_tokens=5, user_chunk_len=96,
                                       small_chunk_len=32, capacity=1024), video_grid=GRID,
      mesh=mesh)
  rb = sampler.sample(params, mine, group_size=2, seed=5, seq_len=512)
  extra = {}
  if NUM == 1:   # the scale of the test's log-prob bound (tolerances.logp_bound)
    import tolerances  # pylint: disable=g-import-not-at-top
    extra = dict(logit_scale=tolerances.logit_scale(params, cfg, rb),
                 seq=max(rb.input_ids.shape[1], sampler.cfg.capacity))
  np.savez(out, input_ids=rb.input_ids, old_logps=rb.old_logps, loss_mask=rb.loss_mask,
           position_ids=rb.position_ids, decisions=rb.decisions,
           messages=np.asarray(["\x1f".join(m) for m in rb.messages]), **extra)
  if NUM > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
