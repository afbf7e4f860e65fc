"""Forward passes over evaluation sets larger than one batch (shared by every evaluator)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def batched_apply(apply: Callable, params: Any, batch: dict, batch_size: int) -> Any:
  """apply(params, ·) on N rows, batch_size at a time (lax.map keeps memory at one batch); outputs (any pytree)
  are concatenated back to N rows. N must be a multiple of batch_size (see `pad_rows`)."""
  n = jax.tree.leaves(batch)[0].shape[0]
  chunks = jax.tree.map(lambda x: x.reshape((n // batch_size, batch_size) + x.shape[1:]), batch)
  out = jax.lax.map(lambda b: apply(params, b), chunks)
  return jax.tree.map(lambda x: x.reshape((n,) + x.shape[2:]), out)


def pad_rows(x: np.ndarray, multiple: int, fill: Any = None) -> np.ndarray:
  """x with rows appended up to a multiple of `multiple`: copies of `fill`, or of the first row if None."""
  extra = -(-x.shape[0] // multiple) * multiple - x.shape[0]
  tail = np.repeat(x[:1], extra, 0) if fill is None else np.full((extra,) + x.shape[1:], fill, x.dtype)
  return np.concatenate([x, tail])
