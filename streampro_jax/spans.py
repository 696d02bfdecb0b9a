"""Time spans in answer texts ("12s-18s") and their IoU: the one S_acc rule of Temporal Grounding.

TG answers are scored by the IoU of the predicted span with the ground-truth span, in the RL reward
(rewards.group_turn_f1_inputs), in every judge (judges.*) and in the benchmark metric
(bench/streampro_f1), never by an LLM (docs/method.md sections 3 and 4). All three use these
functions, so one reply gets one S_acc everywhere. No dependencies.
"""

from __future__ import annotations

import re

__all__ = ["SPAN_RE", "parse_span", "span_iou", "text_iou"]

_NUM = r"(\d+(?::\d{1,2}){0,2}(?:\.\d+)?)"
_UNIT = r"\s*(?:seconds|second|secs|sec|s)?\.?"  # longest first: the match covers the unit
_SEP = r"\s*(?:-|–|—|~|to|until|and)\s*"
SPAN_RE = re.compile(_NUM + _UNIT + _SEP + _NUM + _UNIT, re.IGNORECASE)


def _to_seconds(token: str) -> float:
  value = 0.0
  for p in token.split(":"):
    value = value * 60.0 + float(p)
  return value


def parse_span(text: str) -> tuple[float, float] | None:
  """Parses the first time span "Xs-Ys" in `text`; None when there is none.

  Accepted: "12s-18s", "12.5 s - 18 s", "12-18 seconds", "from 12s to 18s", "12 ~ 18",
  "0:12-0:18" (m:ss or h:mm:ss), en/em dashes. A reversed span (18s-12s) is reordered.
  """
  if not isinstance(text, str):
    return None
  m = SPAN_RE.search(text)
  if m is None:
    return None
  a, b = _to_seconds(m.group(1)), _to_seconds(m.group(2))
  return (a, b) if a <= b else (b, a)


def span_iou(pred: tuple[float, float] | None, gt: tuple[float, float]) -> float:
  """IoU of two closed spans: |intersection| / |union|; 0 for pred None.

  Two identical zero-length spans give 1; a zero-length union otherwise gives 0.
  """
  if pred is None:
    return 0.0
  (ps, pe), (gs, ge) = pred, gt
  inter = max(0.0, min(pe, ge) - max(ps, gs))
  union = max(pe, ge) - min(ps, gs)
  if union <= 0.0:
    return 1.0 if (ps, pe) == (gs, ge) else 0.0
  return inter / union


def text_iou(prediction: str, reference: str) -> float | None:
  """IoU of the first span of `prediction` with that of `reference` (0 when the prediction holds
  none); None when the reference holds no span (a malformed TG reference)."""
  ref = parse_span(reference)
  if ref is None:
    return None
  return span_iou(parse_span(prediction), ref)
