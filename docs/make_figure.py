"""Draws docs/architecture.png: the package's layers and the data flow of SFT and GRPO.

Run from the repository root: `.venv/bin/python docs/make_figure.py` (writes docs/architecture.png).
The figure is a drawing of docs/architecture.md's "Layers" and "Data flow" sections; edit both
together.
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent / "architecture.png"

# (name, modules), top to bottom: each layer imports only from the layers below it.
LAYERS = (
    ("launch/", "demo, train_sft, train_grpo, evaluate, import_data,\ncheck_data, "
     "convert_checkpoint, write_rubrics  (absl flags)"),
    ("bench/", "streampro_f1, streamingbench, ovo, pauc,\nharness, report"),
    ("train/", "step (sharded update, micro-batches), setup, loop,\n"
     "sft, grpo_trainer (recipes), checkpoint, optim, state, metrics"),
    ("math", "losses, rewards, judges, grpo, rollout"),
    ("data/", "prompts & special tokens, schema, chat_format, tokenizer,\n"
     "synthetic, video, tfds_builders, pipeline (grain), importers"),
    ("models/", "qwen2_5_vl, qwen3_vl, layers, kv_cache,\nprocessing, hf_io, common"),
)
BASE = "parallel (mesh, logical-axis rules, shardings), spans, _checks  (no package imports)"

SFT = ("JSONL / TFDS", "grain pipeline", "batch", "update step\n(CB-Stream loss)",
       "orbax\ncheckpoint")
GRPO = ("prompts", "rollout\n(KV cache,\nG per prompt)", "judges +\nrewards", "group\nadvantages",
        "update step\n(GRPO loss)", "evaluate\n(StreamPro-F1)")


def _box(ax, x, y, w, h, text, color, size=9, weight="normal"):
  ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                              fc=color, ec="#333333", lw=1.0))
  ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight)


def _arrow(ax, x0, y0, x1, y1):
  ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12,
                               lw=1.2, color="#333333"))


def draw(path: pathlib.Path = OUT) -> pathlib.Path:
  fig, ax = plt.subplots(figsize=(14, 8.2))
  ax.set_xlim(0, 14)
  ax.set_ylim(0, 8.2)
  ax.axis("off")

  # Left: layers.
  ax.text(3.4, 7.95, "Layers (each imports only downward)", ha="center", fontsize=12,
          weight="bold")
  colors = ("#f6d5a8", "#d9e7c5", "#c9dcf0", "#f3c7c7", "#e2d4ef", "#d5e8e8")
  h, gap, top = 0.86, 0.22, 7.55
  for i, ((name, mods), color) in enumerate(zip(LAYERS, colors)):
    y = top - (i + 1) * h - i * gap
    _box(ax, 0.2, y, 1.3, h, name, color, size=10, weight="bold")
    _box(ax, 1.6, y, 5.0, h, mods, color, size=8.5)
    if i < len(LAYERS) - 1:
      _arrow(ax, 0.85, y, 0.85, y - gap)
  y_base = top - len(LAYERS) * (h + gap) - 0.5
  _box(ax, 0.2, y_base, 6.4, 0.5, BASE, "#eeeeee", size=8.5)
  _arrow(ax, 0.85, y_base + 0.5 + gap, 0.85, y_base + 0.5)

  # Right: data flow.
  ax.text(10.4, 7.95, "Data flow", ha="center", fontsize=12, weight="bold")
  ax.text(7.1, 7.35, "Stage 1: SFT", fontsize=10, weight="bold")
  w, hh, x0, dx = 1.22, 0.8, 7.1, 1.38
  for j, text in enumerate(SFT):
    _box(ax, x0 + j * dx, 6.35, w, hh, text, "#c9dcf0", size=8)
    if j:
      _arrow(ax, x0 + j * dx - (dx - w), 6.75, x0 + j * dx, 6.75)
  ax.text(7.1, 5.55, "Stage 2: GRPO (initial and reference policy = the SFT checkpoint)",
          fontsize=10, weight="bold")
  w2, dx2 = 1.05, 1.15
  for j, text in enumerate(GRPO):
    _box(ax, x0 + j * dx2, 4.55, w2, hh, text, "#f3c7c7", size=7.5)
    if j:
      _arrow(ax, x0 + j * dx2 - (dx2 - w2), 4.95, x0 + j * dx2, 4.95)
  _arrow(ax, x0 + 4 * dx + w / 2, 6.35, x0 + dx2 + w2 / 2, 5.35)
  notes = (
      "batch: input_ids, labels, loss_mask, decision_class, attention_mask  [B, T]",
      "           position_ids [3, B, T], pixel_values_videos [B, K*P, D]",
      "mesh axes: data, fsdp, tensor; batch rows sharded over (data, fsdp)",
      "CB-Stream class counts and group statistics: computed inside jit on the global batch",
      "update step: jit, explicit in/out shardings, donated state, exact micro-batching",
  )
  for k, line in enumerate(notes):
    ax.text(7.1, 3.7 - 0.36 * k, line, fontsize=8.5, family="monospace")
  _box(ax, 7.1, 0.75, 6.4, 0.6, "configs/*.py: ml_collections ConfigDicts, data only;\n"
       "read by launch/ (--config=file:arg, --config.x=y), checked by train/config_check",
       "#fff7d6", size=8.5)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


if __name__ == "__main__":
  print(draw())
