"""Mixed precision for every model: float32 parameters and optimizer state, a lower compute dtype inside the model.

With model.dtype = "bfloat16" the model's apply sees bfloat16 copies of the float32 parameters and of the batch's
floating inputs, so activations and matmuls run in bfloat16 (the TPU/GPU tensor-core format; Kalamkar et al.
2019), while the gradient of the cast returns float32 gradients to the float32 parameters and Adam state
(the params-in-f32 recipe of big_vision and MaxText). The outputs (logits) are cast back to float32, so the
softmax and the loss are float32; models keep their normalization statistics and attention softmax in float32.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

DEFAULTS = dict(
    dtype="float32",   # compute dtype of activations and matmuls: float32 | bfloat16 (parameters stay float32)
)
DTYPES = ("float32", "bfloat16")


def cast_floats(tree: Any, dtype) -> Any:
  """Floating leaves to `dtype`; integer and boolean leaves (labels, tokens, uint8 images) unchanged."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)


def mixed(apply: Callable, dtype: str, cast_inputs: bool = True) -> Callable:
  """(params, batch) -> outputs computed in `dtype`, floating outputs returned as float32.

  cast_inputs=False for models that cast their weights inside their layers (Gemma 3): only the outputs are cast.
  """
  if dtype == "float32":
    return apply
  compute = jnp.dtype(dtype)

  def apply_mixed(params, batch):
    if cast_inputs:
      params, batch = cast_floats(params, compute), cast_floats(batch, compute)
    return cast_floats(apply(params, batch), jnp.float32)

  return apply_mixed
