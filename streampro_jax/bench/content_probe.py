"""Teacher-forced probe of the content words of SynthStream answers: does a model see and read?

StreamPro-F1 with an exact-match judge scores any answer with one wrong word 0, so it cannot tell
"sees nothing" from "almost right". This probe reads, at every supervised answer token that is a
colour, a shape or a direction word, the model's probability of the right word renormalised over
its group (8 colours, 4 shapes, 4 directions; chance = 1 / group size), from one teacher-forced
forward pass. Colour and shape slots are also split by whether the right word appears earlier in
the unsupervised user text (the question names it: it can be copied) or not (it can only be seen
in the frames). benchmarks/demo_probe.py runs it on the demo's models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["probe_batches", "slot_groups"]

_DIRECTION_WORDS = ("left", "right", "top", "bottom")


def slot_groups(tokenizer) -> dict[str, list[int]]:
  """Token ids of the content words of SynthStream answers, by group."""
  from streampro_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  groups = {"colour": list(synthetic.COLORS), "shape": list(synthetic.SHAPES),
            "direction": list(_DIRECTION_WORDS)}
  out = {}
  for name, words in groups.items():
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    if tokenizer.unk_token_id in ids:
      raise ValueError(f"the tokenizer splits some {name} words {words} (not the synthetic one?)")
    out[name] = ids
  return out


def probe_batches(forward: Callable[[Any, Mapping[str, Any]], Any], params,
                  batches: Iterable[Mapping[str, Any]],
                  groups: Mapping[str, list[int]]) -> dict[str, dict[str, float]]:
  """Mean renormalised probability and argmax accuracy of the right word, per group (and for
  colour / shape, per "copyable" = the word appears earlier in unsupervised user text).

  Args:
    forward: (params, batch) -> logits f32[B, T, V]; ``labels[b, t]`` is the target of
      ``logits[b, t]`` (the pipeline's layout: labels are the inputs shifted left by one).
    batches: pipeline batches (data.batch.Batch: input_ids, labels, loss_mask [B, T], ...).
    groups: {name: [token ids]}.

  Returns:
    {group or "group (in the question | only on screen)": {"p_right", "accuracy", "chance",
    "slots"}}; only groups with at least one slot appear.
  """
  rows: dict[str, list[tuple[float, float]]] = {}
  for b in batches:
    logp = np.asarray(jax.nn.log_softmax(forward(params, b), axis=-1))
    ids, labels, sup = b.input_ids, b.labels, b.loss_mask > 0
    for name, gids in groups.items():
      gids = np.asarray(gids)
      for r, t in zip(*np.nonzero(sup & np.isin(labels, gids))):
        p = np.exp(logp[r, t, gids])
        p = p / p.sum()
        right = int(np.nonzero(gids == labels[r, t])[0][0])
        hit = float(np.argmax(p) == right)
        keys = [name]
        if name in ("colour", "shape"):
          # Input j is user text when the label before it (position j - 1) is unsupervised.
          user = ~np.concatenate([[False], sup[r, :t]])
          copyable = bool(np.any((ids[r, :t + 1] == labels[r, t]) & user))
          keys.append(f"{name} ({'in the question' if copyable else 'only on screen'})")
        for k in keys:
          rows.setdefault(k, []).append((float(p[right]), hit))
  out = {}
  for k, v in rows.items():
    a = np.asarray(v)
    n_words = len(groups[k.split(" ")[0]])
    out[k] = {"p_right": float(a[:, 0].mean()), "accuracy": float(a[:, 1].mean()),
              "chance": 1.0 / n_words, "slots": int(len(a))}
  return out
