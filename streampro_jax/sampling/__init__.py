"""The streaming sampler: KV-cached decoding of B samples x G rollouts, one second per turn.

A layer above `models` (the backbones and their KV cache) and below `grpo`, `train`, `bench` and
`live`, which call only the names below. Modules: `formats` (prompts, prompt formats, decision
codes), `decode` (token sampling and the on-device message loop), `sampler` (the sampler, its
state, whole rollouts).

  sampler = StreamingSampler(model_config, chat, SamplerConfig(...), video_grid=(1, gh, gw))
  state = sampler.init_state(params, num_prompts=B, group_size=G, capacity=..., user_chunk_len=...)
  state, out = sampler.step_turn(params, state, frames_bpd, user_text)   # TurnOutput
  batch = sampler.sample(params, prompts, group_size=G, seed=0)          # RolloutBatch
"""

from streampro_jax.sampling.decode import Message
from streampro_jax.sampling.decode import decode_message
from streampro_jax.sampling.decode import row_keys
from streampro_jax.sampling.decode import sample_tokens
from streampro_jax.sampling.decode import top_p_filter
from streampro_jax.sampling.formats import DECISION_NAMES
from streampro_jax.sampling.formats import NO_TURN
from streampro_jax.sampling.formats import TURN_INVALID
from streampro_jax.sampling.formats import TURN_RESPONSE
from streampro_jax.sampling.formats import TURN_SILENCE
from streampro_jax.sampling.formats import WAIT_INSTRUCTION
from streampro_jax.sampling.formats import WAIT_SYSTEM_PROMPT
from streampro_jax.sampling.formats import StreamProFormat
from streampro_jax.sampling.formats import StreamPrompt
from streampro_jax.sampling.formats import WaitPromptFormat
from streampro_jax.sampling.formats import prompt_from_record
from streampro_jax.sampling.sampler import FORCED_TOKEN
from streampro_jax.sampling.sampler import PROMPT_TOKEN
from streampro_jax.sampling.sampler import SAMPLED_TOKEN
from streampro_jax.sampling.sampler import RolloutBatch
from streampro_jax.sampling.sampler import SamplerConfig
from streampro_jax.sampling.sampler import SamplerState
from streampro_jax.sampling.sampler import StreamingSampler
from streampro_jax.sampling.sampler import TurnOutput
from streampro_jax.sampling.sampler import sampler_step_fns
from streampro_jax.sampling.sampler import teacher_forced_logps

__all__ = [
    "DECISION_NAMES", "FORCED_TOKEN", "Message", "NO_TURN", "PROMPT_TOKEN",
    "RolloutBatch", "SAMPLED_TOKEN", "SamplerConfig", "SamplerState",
    "StreamProFormat", "StreamPrompt", "StreamingSampler", "TURN_INVALID", "TURN_RESPONSE",
    "TURN_SILENCE", "TurnOutput", "WAIT_INSTRUCTION", "WAIT_SYSTEM_PROMPT", "WaitPromptFormat",
    "decode_message", "prompt_from_record", "row_keys", "sample_tokens", "sampler_step_fns",
    "teacher_forced_logps",
    "top_p_filter",
]
