"""Tests of the chat format (streampro_jax.data.chat_format) and tokenizers (data.tokenizer)."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streampro_jax import prompts
from streampro_jax.data import chat_format as cf
from streampro_jax.data import schema
from streampro_jax.data import tokenizer as tk

_WORDS = ["the", "red", "circle", "moves", "right", "edge", "yes", "no", "When", "does", "it",
          "end", "Describe"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tk.build_synthetic_tokenizer(_WORDS, str(tmp_path_factory.mktemp("synth_tok")))


def _record(duration, ask_time, answers, task="TG", question="When does it end?"):
  return schema.parse_record({
      "id": "r", "video": "synth://x/0", "duration": duration,
      "questions": [{"id": "q", "task": task, "ask_time": ask_time, "question": question,
                     "answers": answers}]})


def _placement(duration, ask_time, answers):
  plans = cf.plan_turns(_record(duration, ask_time, answers))
  return ({p.label: p.text for p in plans if p.decision == cf.DECISION_RESPONSE},
          [p.label for p in plans if p.question is not None])


# ------------------------------------------------------------------------------------------------
# Turn timing, hand-checked.


def test_turn_rule_functions():
  assert cf.num_turns(20.0) == 20 and cf.num_turns(20.3) == 21 and cf.num_turns(0.2) == 1
  assert cf.num_turns(20.0000000001) == 20           # 1e-6 tolerance [choice]
  assert cf.ask_turn(5.0, 30) == 5 and cf.ask_turn(2.7, 30) == 2 and cf.ask_turn(30.0, 30) == 29
  assert cf.ask_turn(4.9999999999, 30) == 5
  assert cf.answer_turn(5.0) == 4 and cf.answer_turn(5.2) == 5 and cf.answer_turn(0.0) == 0
  assert cf.answer_turn(0.4) == 0 and cf.answer_turn(5.0, question_turn=5) == 5
  assert cf.answer_turn(5.0000000001) == 4
  assert cf.time_label(4) == "<4s-5s>" and cf._parse_time_label("<12s-13s>") == (12, 13)
  assert cf.turn_time(4) == 5.0


def test_answer_at_5_goes_on_turn_4():
  responses, q_turns = _placement(10.0, 0.0, [{"time": 5.0, "text": "a"}])
  assert responses == {"<4s-5s>": "a"} and q_turns == ["<0s-1s>"]


def test_question_and_answer_at_5_go_on_turn_5():
  responses, q_turns = _placement(10.0, 5.0, [{"time": 5.0, "text": "a"}])
  assert responses == {"<5s-6s>": "a"} and q_turns == ["<5s-6s>"]


def test_more_hand_checked_placements():
  # Fractional time: first turn whose end Y >= t.
  assert _placement(10.0, 0.0, [{"time": 5.2, "text": "a"}])[0] == {"<5s-6s>": "a"}
  # Answer at 0 goes on turn 0 (it cannot go on turn -1).
  assert _placement(10.0, 0.0, [{"time": 0.0, "text": "a"}])[0] == {"<0s-1s>": "a"}
  # Question at 2.7 -> turn 2; answer at 2.9 -> ceil(2.9) - 1 = 2, same turn.
  assert _placement(10.0, 2.7, [{"time": 2.9, "text": "a"}]) == ({"<2s-3s>": "a"}, ["<2s-3s>"])
  # Question at the very end is clipped to the last turn, and so is its answer.
  assert _placement(10.0, 10.0, [{"time": 10.0, "text": "a"}]) == ({"<9s-10s>": "a"},
                                                                  ["<9s-10s>"])
  # Interval answers use their end.
  assert _placement(10.0, 0.0, [{"start": 1.0, "end": 3.0, "text": "a"}])[0] == {"<2s-3s>": "a"}
  # Two answers on one turn: joined with "; " in time order (given order on ties).
  got = _placement(10.0, 1.0, [{"time": 7.0, "text": "late"}, {"time": 6.5, "text": "early"},
                               {"time": 7.0, "text": "tie"}])[0]
  assert got == {"<6s-7s>": "early; late; tie"}
  # Duration 9.5 -> 10 turns.
  assert len(cf.plan_turns(_record(9.5, 0.0, [{"time": 9.5, "text": "a"}]))) == 10


# ------------------------------------------------------------------------------------------------
# Rendering.


def test_render_small_trajectory_by_hand(tok):
  rec = _record(3.0, 1.0, [{"time": 2.0, "text": "the red circle"}], question="When does it end?")
  chat = cf.ChatFormat(tok, tokens_per_turn=2)
  traj = chat.render(rec)
  text = tok.decode(traj.input_ids.tolist(), skip_special_tokens=False)
  expected = (
      f"<|im_start|>system\n{prompts.STREAMING_SYSTEM_PROMPT}<|im_end|>\n"
      "<|im_start|>user\n<0s-1s>\n<|vision_start|><|video_pad|><|video_pad|><|vision_end|>"
      "<|im_end|>\n<|im_start|>assistant\n</Silence><|im_end|>\n"
      "<|im_start|>user\nWhen does it end?\n<1s-2s>\n<|vision_start|><|video_pad|><|video_pad|>"
      "<|vision_end|><|im_end|>\n<|im_start|>assistant\n</Response>the red circle<|im_end|>\n"
      "<|im_start|>user\n<2s-3s>\n<|vision_start|><|video_pad|><|video_pad|><|vision_end|>"
      "<|im_end|>\n<|im_start|>assistant\n</Silence><|im_end|>\n")
  assert text == expected == cf._render_text(rec, tokens_per_turn=2)
  # Supervised targets are exactly the assistant bodies and their <|im_end|>.
  sup = tok.decode(traj.labels[traj.loss_mask > 0].tolist(), skip_special_tokens=False)
  assert sup == ("</Silence><|im_end|></Response>the red circle<|im_end|>"
                 "</Silence><|im_end|>")
  assert traj.num_turns == 3 and list(traj.turn_decisions) == [1, 2, 1]
  assert (traj.decision_class == 1).sum() == 2 and (traj.decision_class == 2).sum() == 1
  assert (traj.input_ids == chat.video_pad_id).sum() == 6
  # Position predicting </Response> is the "\n" ending the second assistant header.
  (pos,) = np.nonzero(traj.decision_class == 2)[0]
  assert traj.input_ids[pos + 1] == chat.response_id
  assert tok.decode([int(traj.input_ids[pos])]) == "\n" and traj.turn_index[pos] == 1


def _check_trajectory(traj, chat, tok, rec):
  ids = traj.input_ids
  n = len(ids)
  assert ids.dtype == np.int32 and traj.labels.dtype == np.int32
  assert traj.loss_mask.dtype == np.float32 and traj.decision_class.dtype == np.int32
  assert all(a.shape == (n,) for a in (traj.labels, traj.loss_mask, traj.decision_class,
                                       traj.turn_index))
  assert np.array_equal(traj.labels[:-1], ids[1:]) and traj.labels[-1] == chat.pad_id
  # Whole-string tokenisation gives the same ids as the piecewise rendering.
  whole = tok.encode(cf._render_text(rec, tokens_per_turn=chat.tokens_per_turn,
                                    max_turns=traj.num_turns), add_special_tokens=False)
  assert list(ids) == list(whole)
  # The pieces concatenate to the trajectory.
  pieces = [chat.system_ids()]
  for p in traj.turns:
    pieces += [chat.user_turn_ids(p.index, p.question), chat.assistant_header_ids(),
               chat.assistant_body_ids(p.decision, p.text)]
  assert np.array_equal(np.concatenate(pieces), ids)
  # Spans and turn index.
  sys_len = len(chat.system_ids())
  assert (traj.turn_index[:sys_len] == -1).all()
  for k in range(traj.num_turns):
    us, ue = traj.user_spans[k]
    as_, ae = traj.assistant_spans[k]
    assert ue == as_ and (traj.turn_index[us:ae] == k).all()
    assert ids[us] == chat.im_start_id and ids[as_] == chat.im_start_id
    # Exactly one decision target per turn, at the end of the assistant header.
    hdr = as_ + len(chat.assistant_header_ids()) - 1
    assert traj.decision_class[hdr] == traj.turn_decisions[k]
    assert (traj.decision_class[us:ae] != 0).sum() == 1
    assert traj.loss_mask[us:hdr].sum() == 0
    # Supervised up to (and predicting) the message's <|im_end|>, not its newline.
    assert traj.loss_mask[hdr:ae - 2].all() and traj.loss_mask[ae - 2] == 0
    assert traj.labels[ae - 3] == chat.im_end_id
  assert (traj.decision_class[traj.loss_mask == 0] == 0).all()
  assert (traj.input_ids == chat.video_pad_id).sum() == traj.num_turns * chat.tokens_per_turn


def test_render_invariants_and_round_trip(tok):
  rec = _record(12.0, 2.5, [{"time": 4.0, "text": "yes"}, {"time": 9.25, "text": "no"},
                            {"start": 3.0, "end": 9.0, "text": "the red circle moves"}])
  chat = cf.ChatFormat(tok, tokens_per_turn=4)
  traj = chat.render(rec)
  _check_trajectory(traj, chat, tok, rec)
  decoded = cf._decode_turns(traj.input_ids, tok)
  assert [(d.index, d.label, d.question, d.decision, d.text, d.num_video_pads) for d in decoded] \
      == [(p.index, p.label, p.question, "response" if p.decision == 2 else "silence", p.text, 4)
          for p in traj.turns]
  assert [d.text for d in decoded if d.decision == "response"] == [
      "yes", "the red circle moves", "no"]
  assert decoded[3].time == 4.0


def test_max_turns(tok):
  rec = _record(12.0, 2.0, [{"time": 4.0, "text": "yes"}, {"time": 9.25, "text": "no"}])
  chat = cf.ChatFormat(tok, tokens_per_turn=1)
  traj = chat.render(rec, max_turns=6)
  assert traj.num_turns == 6 and list(traj.turn_decisions) == [1, 1, 1, 2, 1, 1]
  _check_trajectory(traj, chat, tok, rec)
  with pytest.raises(ValueError, match="past the max_turns cut"):
    chat.render(rec, max_turns=2)


def test_decode_generated_and_invalid(tok):
  chat = cf.ChatFormat(tok, tokens_per_turn=1)
  ids = list(chat.system_ids()) + list(chat.user_turn_ids(0, "When does it end?"))
  ids += list(chat.assistant_header_ids()) + tok.encode("</Silence>yes<|im_end|>\n")
  ids += list(chat.user_turn_ids(1)) + list(chat.assistant_header_ids())
  ids += tok.encode("</Response> <|im_end|>\n")
  ids += list(chat.user_turn_ids(2)) + list(chat.assistant_header_ids())
  ids += tok.encode("no decision<|im_end|>\n")
  ids += list(chat.user_turn_ids(3)) + list(chat.assistant_header_ids())
  ids += tok.encode("</Response>the red")                   # generation still going
  ids += list(chat.user_turn_ids(4))
  got = [(d.index, d.decision, d.text) for d in cf._decode_turns(ids, tok)]
  assert got == [(0, "invalid", "yes"), (1, "invalid", " "), (2, "invalid", "no decision"),
                 (3, "response", "the red"), (4, "missing", "")]


def test_question_selection(tok):
  obj = json.loads(_record(5.0, 0.0, [{"time": 3.0, "text": "a"}]).to_jsonl_line())
  obj["questions"].append(dict(obj["questions"][0], id="q2", ask_time=2.0))
  rec = schema.parse_record(obj)
  chat = cf.ChatFormat(tok, tokens_per_turn=1)
  with pytest.raises(ValueError, match="2 questions"):
    chat.render(rec)
  a, b = chat.render(rec, "q2"), chat.render(rec, 1)
  assert np.array_equal(a.input_ids, b.input_ids) and a.question_id == "q2"
  assert [p.index for p in a.turns if p.question] == [2]


# ------------------------------------------------------------------------------------------------
# Property-based: random valid records render and round-trip.


@st.composite
def _records(draw):
  duration = draw(st.floats(0.5, 40.0, allow_nan=False))
  ask = draw(st.floats(0.0, duration))
  answers = []
  words = st.lists(st.sampled_from(_WORDS + ["Xyz", "12s-15s", "a,b", "q?", "é"]), min_size=1,
                   max_size=4).map(" ".join)
  for _ in range(draw(st.integers(1, 5))):
    t = draw(st.floats(ask, duration))
    if draw(st.booleans()):
      answers.append({"time": t, "text": draw(words)})
    else:
      answers.append({"start": draw(st.floats(0.0, t)), "end": t, "text": draw(words)})
  question = draw(words)
  return _record(duration, ask, answers, question=question)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(_records(), st.integers(0, 3))
def test_property_render_round_trip(tok, rec, n_pad):
  chat = cf.ChatFormat(tok, tokens_per_turn=n_pad)
  traj = chat.render(rec)
  q = rec.questions[0]
  assert traj.num_turns == cf.num_turns(rec.duration)
  q_turn = cf.ask_turn(q.ask_time, traj.num_turns)
  assert [p.index for p in traj.turns if p.question is not None] == [q_turn]
  resp = [p.index for p in traj.turns if p.decision == cf.DECISION_RESPONSE]
  assert 1 <= len(resp) <= len(q.answers) and min(resp) >= q_turn
  assert (traj.decision_class == 2).sum() == len(resp)
  assert (traj.decision_class == 1).sum() == traj.num_turns - len(resp)
  if "é" in rec.to_jsonl_line():
    return       # non-ASCII maps to <unk> in the synthetic tokenizer
  _check_trajectory(traj, chat, tok, rec)
  decoded = cf._decode_turns(traj.input_ids, tok)
  assert [(d.label, d.question, d.text) for d in decoded] == [
      (p.label, p.question, p.text) for p in traj.turns]


# ------------------------------------------------------------------------------------------------
# Tokenizers.


def test_synthetic_tokenizer_files_and_specials(tok, tmp_path):
  from transformers import AutoTokenizer
  again = AutoTokenizer.from_pretrained(tok.name_or_path, local_files_only=True)
  assert len(again) == len(tok) < 400
  vocab = tok.get_vocab()
  for t in tk._QWEN_SPECIAL_TOKENS + prompts.DECISION_TOKENS:
    assert t in vocab and len(tok.encode(t, add_special_tokens=False)) == 1
  assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
  ids = [vocab[t]
         for t in tk._QWEN_SPECIAL_TOKENS + tk._QWEN_ADDED_NONSPECIAL + prompts.DECISION_TOKENS]
  assert ids == list(range(ids[0], ids[0] + 24))    # Qwen's order, decision tokens last
  silence, response = tk.decision_token_ids(tok)
  assert (silence, response) == (ids[-2], ids[-1])
  # load_tokenizer on a folder that already has the tokens adds nothing.
  tok2, needs_resize = tk.load_tokenizer(tok.name_or_path)
  assert len(tok2) == len(tok) and needs_resize is False


@pytest.mark.parametrize("text", [
    "<12s-13s>\n", "the red circle moves to the right edge; no", "Xyz  q?\tA,b.", "8s-12s",
    "alert: the blue square falls",
])
def test_synthetic_tokenizer_round_trip(tok, text):
  ids = tok.encode(text, add_special_tokens=False)
  assert tok.decode(ids, skip_special_tokens=False) == text
  assert tok.unk_token_id not in ids
  assert len(tok.encode("the red", add_special_tokens=False)) == 3   # words are single tokens


def test_load_tokenizer_adds_decision_tokens(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  raw = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>").save_pretrained(tmp_path)
  tok, needs_resize = tk.load_tokenizer(str(tmp_path))
  assert needs_resize is True and len(tok) == 5
  silence, response = tk.decision_token_ids(tok)
  assert tok.encode("a</Silence>b", add_special_tokens=False) == [1, silence, 2]
  (tmp_path / "config.json").write_text(json.dumps({"text_config": {"vocab_size": 8}}))
  assert tk.load_tokenizer(str(tmp_path))[1] is False    # padded embedding has room
  (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 4}))
  assert tk.load_tokenizer(str(tmp_path))[1] is True


def test_resize_vocab_rows():
  table = np.arange(12, dtype=np.float32).reshape(4, 3)
  out = tk._resize_vocab_rows(table, 6)
  assert out.shape == (6, 3) and np.array_equal(out[:4], table)
  np.testing.assert_allclose(out[4], [4.5, 5.5, 6.5])
  np.testing.assert_allclose(out[5], [4.5, 5.5, 6.5])
  # Re-initialising existing rows excludes them from the mean: mean of rows 0, 1 = [1.5, 2.5, 3.5].
  out = tk._resize_vocab_rows(table, 5, reinit_ids=[2, 3, 4])
  np.testing.assert_allclose(out[2:], np.tile([1.5, 2.5, 3.5], (3, 1)))
  # LM-head kernel [D, V]: vocabulary on axis 1; JAX input stays a JAX array.
  import jax.numpy as jnp
  kernel = jnp.asarray(table.T)
  out = tk._resize_vocab_rows(kernel, 5, axis=1)
  assert out.shape == (3, 5) and isinstance(out, type(kernel))
  np.testing.assert_allclose(np.asarray(out[:, 4]), [4.5, 5.5, 6.5])
  with pytest.raises(ValueError, match="smaller"):
    tk._resize_vocab_rows(table, 3)


def test_byte_level_bpe_piecewise_equals_whole(tmp_path):
  """With a Qwen-style byte-level BPE, per-piece ids equal whole-string ids."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  qwen_re = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
             r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
  raw = Tokenizer(models.BPE())
  raw.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(qwen_re), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  raw.decoder = decoders.ByteLevel()
  corpus = [prompts.STREAMING_SYSTEM_PROMPT, "user\nWhen does the red circle end?\n<3s-4s>\n",
            "assistant\n",
            "the red circle moves to the right edge; 12s-15s"] * 20
  raw.train_from_iterator(corpus, trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  specials = list(tk._QWEN_SPECIAL_TOKENS) + list(prompts.DECISION_TOKENS)
  raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<|endoftext|>",
                          clean_up_tokenization_spaces=False).save_pretrained(tmp_path)
  bpe, _ = tk.load_tokenizer(str(tmp_path))
  rec = _record(6.0, 1.3, [{"time": 2.0, "text": " the red circle moves"},
                           {"time": 5.5, "text": "12s-15s; right edge\n"}],
                question="When does the red circle end?")
  chat = cf.ChatFormat(bpe, tokens_per_turn=3)
  traj = chat.render(rec)
  _check_trajectory(traj, chat, bpe, rec)
  assert [(d.label, d.question, d.text) for d in chat.decode_turns(traj.input_ids)] == [
      (p.label, p.question, p.text) for p in traj.turns]
