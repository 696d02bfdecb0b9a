"""Tokenizers: the backbone's Hugging Face tokenizer, and a tiny word-level one for SynthStream.

* :func:`load_tokenizer` loads a checkpoint's tokenizer (local files only) and adds the decision
  tokens ``</Silence>`` and ``</Response>`` as special tokens when they are missing.
* :func:`_resize_vocab_rows` grows an embedding (or LM-head) parameter to the new vocabulary,
  filling new rows with the mean of the old ones.
* :func:`build_synthetic_tokenizer` writes a small word-level tokenizer directory (a
  ``PreTrainedTokenizerFast`` that ``AutoTokenizer.from_pretrained`` loads) with the same special
  tokens as Qwen2.5-VL plus the two decision tokens, so the synthetic path runs the real code.

The synthetic tokenizer's pre-tokenizer isolates, in this order of preference, whole known words
(``[A-Za-z]+`` runs that are in the vocabulary), single ASCII letters, single digits, single
whitespace characters and single punctuation characters; its decoder concatenates tokens. So any
ASCII text round-trips exactly (``decode(encode(x)) == x``): unknown words are spelled letter by
letter, and time labels ``<12s-13s>`` become ``< 1 2 s - 1 3 s >``. Non-ASCII characters map to
``<unk>``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from streampro_jax import prompts

__all__ = [
    "build_synthetic_tokenizer", "decision_token_ids", "load_tokenizer",
    "require_tokenizer_files", "resize_param_vocab"
]

# Qwen2.5-VL's added tokens, in its id order (151643...). The first 14 are special.
_QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
_QWEN_ADDED_NONSPECIAL = (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
_UNK_TOKEN = "<unk>"

_ROLE_WORDS = ("system", "user", "assistant")


def _load_model_vocab_size(checkpoint_dir: str) -> int | None:
  path = os.path.join(checkpoint_dir, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    cfg = json.load(f)
  if "vocab_size" in cfg:
    return int(cfg["vocab_size"])
  text_cfg = cfg.get("text_config") or {}
  if "vocab_size" in text_cfg:
    return int(text_cfg["vocab_size"])
  return None


# A folder holds a tokenizer when it has one of these (fast tokenizer.json, or the slow BPE
# vocabulary files that transformers converts, or a sentencepiece model).
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def require_tokenizer_files(checkpoint_dir: str) -> None:
  """Raises FileNotFoundError naming the folder when it holds no tokenizer files (transformers
  would otherwise build a near-empty tokenizer and the decision tokens would take ids of real
  vocabulary rows)."""
  if not os.path.isdir(checkpoint_dir):
    raise FileNotFoundError(f"tokenizer folder {checkpoint_dir} does not exist")
  if not any(os.path.isfile(os.path.join(checkpoint_dir, n)) for n in _TOKENIZER_FILES):
    raise FileNotFoundError(
        f"{checkpoint_dir} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); copy the "
        "tokenizer files of the original checkpoint into it")


def load_tokenizer(checkpoint_dir: str, *, model_vocab_size: int | None = None):
  """Loads a HF tokenizer from a local folder and makes sure the decision tokens exist.

  ``</Silence>`` and ``</Response>`` are added as special tokens when missing.

  Args:
    checkpoint_dir: a folder with tokenizer files (and usually ``config.json``).
    model_vocab_size: rows of the model's embedding; default read from ``config.json``
      (``vocab_size`` or ``text_config.vocab_size``).

  Returns:
    ``(tokenizer, needs_resize)``: ``needs_resize`` is True when the tokenizer now has more
    tokens than the embedding has rows (with no known embedding size: when tokens were added).
    Qwen2.5-VL's embedding is padded to 151936 rows, so adding the two tokens (ids 151665 and
    151666) needs no resize; those rows are untrained padding and should be re-initialised with
    :func:`_resize_vocab_rows` ``(..., reinit_ids=decision_token_ids(tokenizer))``.
  """
  from tokenizers import AddedToken  # pylint: disable=g-import-not-at-top
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top

  require_tokenizer_files(checkpoint_dir)
  tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, local_files_only=True)
  vocab = tokenizer.get_vocab()
  missing = [t for t in prompts.DECISION_TOKENS if t not in vocab]
  if missing:
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, lstrip=False,
                                     rstrip=False, single_word=False) for t in missing],
                         special_tokens=True)
  for t in prompts.DECISION_TOKENS:
    ids = tokenizer.encode(t, add_special_tokens=False)
    if len(ids) != 1:
      raise ValueError(f"{t} encodes to {len(ids)} tokens {ids}; it must be one special token")
  if model_vocab_size is None:
    model_vocab_size = _load_model_vocab_size(checkpoint_dir)
  if model_vocab_size is None:
    needs_resize = bool(missing)
  else:
    needs_resize = len(tokenizer) > model_vocab_size
  return tokenizer, needs_resize


def decision_token_ids(tokenizer) -> tuple[int, int]:
  """``(silence_id, response_id)`` of a tokenizer that has both decision tokens."""
  out = []
  for t in prompts.DECISION_TOKENS:
    tid = tokenizer.convert_tokens_to_ids(t)
    if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
      raise ValueError(f"tokenizer has no {t} token; load it with load_tokenizer()")
    out.append(int(tid))
  return out[0], out[1]


def _resize_vocab_rows(table, new_vocab_size: int, *, axis: int = 0,
                      reinit_ids: Iterable[int] = ()):
  """Grows a vocabulary-indexed parameter to ``new_vocab_size`` rows, mean-initialising new rows.

  new[i] = table[i] for old rows i not in reinit_ids;
  new[i] = mean_j table[j] over old rows j not in reinit_ids, for i >= V_old or i in reinit_ids.

  Args:
    table: the parameter, ``[V_old, D]`` for an embedding (``axis=0``) or ``[D, V_old]`` for a
      Flax LM-head kernel (``axis=1``); NumPy or JAX array (the result has the same kind).
    new_vocab_size: V_new >= V_old.
    axis: the vocabulary axis.
    reinit_ids: existing rows to overwrite with the mean too (for example untrained padding rows
      that the new tokens took over).

  Returns:
    The table with ``V_new`` entries along ``axis``, same dtype (mean computed in float32).
  """
  is_np = isinstance(table, np.ndarray)
  if is_np:
    xp = np
  else:
    import jax.numpy as xp  # pylint: disable=g-import-not-at-top
  axis = axis % table.ndim
  v_old = table.shape[axis]
  if new_vocab_size < v_old:
    raise ValueError(f"new_vocab_size {new_vocab_size} is smaller than the table's {v_old} rows")
  reinit = sorted({int(i) for i in reinit_ids})
  for i in reinit:
    if not 0 <= i < new_vocab_size:
      raise ValueError(f"reinit id {i} is outside [0, {new_vocab_size})")
  keep = np.ones(v_old, dtype=bool)
  keep[[i for i in reinit if i < v_old]] = False
  if not keep.any():
    raise ValueError("no old rows left to average")
  moved = xp.moveaxis(table, axis, 0)
  mean = xp.mean(moved[np.nonzero(keep)[0]].astype(xp.float32), axis=0).astype(table.dtype)
  extra = xp.broadcast_to(mean, (new_vocab_size - v_old,) + moved.shape[1:])
  out = xp.concatenate([moved, extra], axis=0)
  old_reinit = [i for i in reinit if i < v_old]
  if old_reinit:
    idx = np.asarray(old_reinit)
    if is_np:
      out = out.copy()
      out[idx] = mean
    else:
      out = out.at[idx].set(mean)
  return xp.moveaxis(out, 0, axis)


# ------------------------------------------------------------------------------------------------
# Synthetic word-level tokenizer.

_WORD_RE = re.compile(r"[A-Za-z]+")
_ASCII_SINGLES = tuple(chr(c) for c in range(33, 127)) + (" ", "\n", "\t")


def resize_param_vocab(params, new_vocab_size: int, *, reinit_ids: Iterable[int] = ()):
  """A backbone's params with the embedding (``embed_tokens``, ``[V, D]``) and, when untied, the
  LM head (``lm_head``, ``[D, V]``) grown to ``new_vocab_size`` rows (_resize_vocab_rows)."""
  params = dict(params)
  params["embed_tokens"] = {"embedding": _resize_vocab_rows(
      params["embed_tokens"]["embedding"], new_vocab_size, axis=0, reinit_ids=reinit_ids)}
  if "lm_head" in params:
    params["lm_head"] = {"kernel": _resize_vocab_rows(
        params["lm_head"]["kernel"], new_vocab_size, axis=1, reinit_ids=reinit_ids)}
  return params


def _pre_tokenizer_pattern(words: Sequence[str]) -> str:
  alts = "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))
  word_part = f"(?<![A-Za-z])(?:{alts})(?![A-Za-z])|" if alts else ""
  return word_part + r"[A-Za-z]|\d|\s|[^A-Za-z\d\s]"


def build_synthetic_tokenizer(words: Iterable[str], out_dir: str, *,
                              extra_texts: Iterable[str] = ()):
  """Builds and saves a small word-level tokenizer with Qwen2.5-VL's special tokens.

  Vocabulary (ids in this order): ``<unk>``; every printable ASCII character, space, newline and
  tab; the words (letter runs of length >= 2 found in ``words``, in ``extra_texts``, in the
  system prompt and the role names, deduplicated, in first-seen order); Qwen2.5-VL's 22 added
  tokens in their order; ``</Silence>``; ``</Response>``.

  Args:
    words: vocabulary words (strings holding several words are split into letter runs).
    out_dir: folder to write (``tokenizer.json``, ``tokenizer_config.json``, ...).
    extra_texts: more texts whose words join the vocabulary.

  Returns:
    The ``PreTrainedTokenizerFast`` as ``AutoTokenizer.from_pretrained(out_dir)`` loads it.
  """
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top,g-multiple-import
  from transformers import AutoTokenizer, PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top,g-multiple-import

  vocab_words: list[str] = []
  seen = set()
  sources = list(words) + list(extra_texts) + [prompts.STREAMING_SYSTEM_PROMPT] + list(_ROLE_WORDS)
  for text in sources:
    for w in _WORD_RE.findall(text):
      if len(w) >= 2 and w not in seen:
        seen.add(w)
        vocab_words.append(w)
  tokens = [_UNK_TOKEN] + list(_ASCII_SINGLES) + vocab_words
  added = list(_QWEN_SPECIAL_TOKENS) + list(_QWEN_ADDED_NONSPECIAL) + list(prompts.DECISION_TOKENS)
  vocab = {t: i for i, t in enumerate(tokens + added)}

  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=_UNK_TOKEN))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex(_pre_tokenizer_pattern(vocab_words)),
                                           behavior="isolated")
  tok.decoder = decoders.Fuse()
  special = set(_QWEN_SPECIAL_TOKENS) | set(prompts.DECISION_TOKENS)
  tok.add_tokens([AddedToken(t, special=t in special, normalized=False) for t in added
                  if t not in special])
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added
                          if t in special])
  for t in added:
    if tok.token_to_id(t) != vocab[t]:
      raise RuntimeError(f"added token {t} got id {tok.token_to_id(t)}, expected {vocab[t]}")

  extra_special = [t for t in _QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")]
  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token=_UNK_TOKEN, pad_token="<|endoftext|>",
      eos_token="<|im_end|>",
      additional_special_tokens=extra_special + list(prompts.DECISION_TOKENS),
      clean_up_tokenization_spaces=False, model_max_length=1 << 20)
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(out_dir)
  return AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
