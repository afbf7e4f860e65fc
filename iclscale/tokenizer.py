"""Gemma 3 SentencePiece tokenizer rebuilt from GGUF metadata (used by the facts task and the Gemma 3 model).

The GGUF carries the full vocabulary (pieces, scores, piece types); the `gemma` wheel ships no
tokenizer and the official one lives on gs://, so the SentencePiece ModelProto is rebuilt here.
It is written directly in protobuf wire format, which needs neither `protobuf` nor
sentencepiece_model_pb2 (avoiding protobuf runtime-version conflicts).

llama.cpp's converter changed three things that must be undone:
  1. `<unk>` (id 3) is typed CONTROL; SentencePiece then has no unknown piece (unk_id() == -1).
     Re-typed UNKNOWN.
  2. User-defined whitespace-run pieces ('  ', '   ', ...) had '▁' turned into ' '. SentencePiece
     matches user-defined pieces after whitespace escaping, so they would never match (a double
     space would split into '▁' + '▁word' instead of the piece '▁▁'). Spaces -> '▁'.
  3. `<start_of_turn>` / `<end_of_turn>` are typed CONTROL, which SentencePiece never produces
     from text; re-typed USER_DEFINED so chat-style prompts encode them.
The built .model file (5 MB) is cached next to the converted weights, keyed by the GGUF hash.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from iclscale import cache as cache_lib
from iclscale import gguf_file

# SentencePiece piece types; GGUF's token_type enum uses the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BOS_ID = 2
# The padding id of the Gemma tokenizer (and of the tasks' byte tokenizer): never attended to.
PAD_ID = 0
_TURN_MARKERS = ("<start_of_turn>", "<end_of_turn>")
_CACHE_FORMAT = 1


# --------------------------------------------------------------------------------------------
# Minimal protobuf wire-format writer.


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # negative int32/int64 are encoded as 10-byte two's complement
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _int_field(field: int, value: int) -> bytes:  # wire type 0: int32, enum, bool
  return _varint(field << 3) + _varint(int(value))


def _float_field(field: int, value: float) -> bytes:  # wire type 5: fixed32
  return _varint(field << 3 | 5) + struct.pack("<f", value)


def _bytes_field(field: int, value: bytes | str) -> bytes:  # wire type 2: length-delimited
  if isinstance(value, str):
    value = value.encode("utf-8")
  return _varint(field << 3 | 2) + _varint(len(value)) + value


# --------------------------------------------------------------------------------------------
# ModelProto.


def fix_vocab(pieces: Sequence[str], types: Sequence[int]) -> tuple[list[str], list[int]]:
  """Apply the three fixes of the module docstring; returns new (pieces, types)."""
  pieces, types = list(pieces), [int(t) for t in types]
  for i, (piece, kind) in enumerate(zip(pieces, types)):
    if piece == "<unk>":
      types[i] = UNKNOWN
    elif piece in _TURN_MARKERS:
      types[i] = USER_DEFINED
    elif kind == USER_DEFINED and piece and set(piece) == {" "}:
      pieces[i] = piece.replace(" ", "\u2581")
  return pieces, types


def build_model_proto(pieces: Sequence[str], scores: Sequence[float], types: Sequence[int], *,
                      unk_id: int = 3, bos_id: int = 2, eos_id: int = 1, pad_id: int = 0) -> bytes:
  """Serialized sentencepiece ModelProto for Gemma's BPE vocabulary (pieces already fixed)."""
  if not len(pieces) == len(scores) == len(types):
    raise ValueError("pieces, scores and types must have equal lengths")
  out = bytearray()
  for piece, score, kind in zip(pieces, scores, types):  # ModelProto.pieces = 1
    out += _bytes_field(1, _bytes_field(1, piece) + _float_field(2, float(score)) +
                        _int_field(3, kind))
  trainer = b"".join([
      _int_field(3, 2),  # model_type = BPE
      _int_field(4, len(pieces)),  # vocab_size
      _int_field(25, 1),  # split_digits: digits are one token each
      _int_field(26, 1),  # allow_whitespace_only_pieces
      _int_field(35, 1),  # byte_fallback: unknown characters become <0xXX> byte pieces
      _int_field(40, unk_id), _int_field(41, bos_id), _int_field(42, eos_id),
      _int_field(43, pad_id),
      _bytes_field(45, pieces[unk_id]), _bytes_field(46, pieces[bos_id]),
      _bytes_field(47, pieces[eos_id]), _bytes_field(48, pieces[pad_id]),
  ])
  normalizer = b"".join([
      _bytes_field(1, "identity"),  # no NFKC: text is kept byte for byte
      _int_field(3, 0),  # add_dummy_prefix = false (GGUF add_space_prefix = False)
      _int_field(4, 0),  # remove_extra_whitespaces = false
      _int_field(5, 1),  # escape_whitespaces: ' ' <-> '▁'
  ])
  out += _bytes_field(2, trainer) + _bytes_field(3, normalizer)
  return bytes(out)


def model_proto_from_gguf(reader) -> bytes:
  fields = reader.fields
  kind = fields["tokenizer.ggml.model"].contents()
  if kind != "llama":
    raise ValueError(f"expected a SentencePiece ('llama') GGUF tokenizer, got {kind!r}")
  pieces, types = fix_vocab(fields["tokenizer.ggml.tokens"].contents(),
                            fields["tokenizer.ggml.token_type"].contents())
  ids = {name: int(fields[f"tokenizer.ggml.{name}_token_id"].contents())
         for name in ("unknown", "bos", "eos", "padding")}
  return build_model_proto(pieces, np.asarray(fields["tokenizer.ggml.scores"].contents(),
                                              dtype=np.float32), types,
                           unk_id=ids["unknown"], bos_id=ids["bos"], eos_id=ids["eos"],
                           pad_id=ids["padding"])


# --------------------------------------------------------------------------------------------
# Cache and loading.


def _cached_model_path(key: str, cache: str | os.PathLike | None) -> Path:
  return cache_lib.cache_dir("", cache) / f"gemma3_tokenizer_{key}_v{_CACHE_FORMAT}.model"


def cache_tokenizer_from_reader(reader, key: str,
                                cache: str | os.PathLike | None = None) -> Path:
  """Write the .model built from an open GGUFReader under `key`; returns its path."""
  path = _cached_model_path(key, cache)
  if not path.exists():
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(model_proto_from_gguf(reader))
    os.replace(tmp, path)
  return path


def tokenizer_model_path(gguf_path: str | os.PathLike | None = None, *,
                         cache: str | os.PathLike | None = None) -> Path:
  """Path of the cached SentencePiece .model for a GGUF (default: the 270M package)."""
  path = (Path(gguf_path) if gguf_path is not None
          else gguf_file.default_gguf_path(cache))
  key = gguf_file.gguf_cache_key(path)
  model = _cached_model_path(key, cache)
  if model.exists():
    return model
  return cache_tokenizer_from_reader(gguf_file.open_gguf(path), key, cache)


def load_tokenizer(gguf_path: str | os.PathLike | None = None, *,
                   cache: str | os.PathLike | None = None):
  """`sentencepiece.SentencePieceProcessor` for a Gemma 3 GGUF (default: the 270M package).

  Note: `encode` does not add BOS; use `encode(tok, text)` below or prepend BOS_ID (2).
  """
  import sentencepiece as spm

  return spm.SentencePieceProcessor(
      model_file=str(tokenizer_model_path(gguf_path, cache=cache)))


def encode(tokenizer, text: str, add_bos: bool = True) -> list[int]:
  """Token ids of `text`, with Gemma's BOS (id 2) prepended by default."""
  ids = tokenizer.encode(text)
  return [BOS_ID, *ids] if add_bos else list(ids)

