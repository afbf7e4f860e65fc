"""The one cache root of the project: converted weights, tokenizers, datasets and compiled programs.

Everything derived from downloads or slow conversions lives under $ICLSCALE_CACHE (default ~/.cache/iclscale),
one folder per kind; deleting a folder only costs the time to rebuild it.
"""
from __future__ import annotations

import os
import pathlib


def cache_dir(sub: str = "", root: str | os.PathLike | None = None) -> pathlib.Path:
  """`root` (else $ICLSCALE_CACHE, else ~/.cache/iclscale) / `sub`, created if missing."""
  if root is None:
    root = os.environ.get("ICLSCALE_CACHE") or pathlib.Path.home() / ".cache" / "iclscale"
  out = pathlib.Path(root).expanduser() / sub
  out.mkdir(parents=True, exist_ok=True)
  return out
