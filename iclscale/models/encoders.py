"""Item encoders: map one input item (vector or image) to a width-d token.

Every encoder accepts arbitrary leading batch dims ([B, T, ...] -> [B, T, D]):
it flattens them, encodes, and restores them, so the sequence model never has
to reshape.

ResNet: DeepMind's ResNet-V1 with bottleneck blocks as used by Chan et al.
2022 / Singh et al. 2023 (`modules/resnet.py`, `SimpleResNet`): 7x7/2 conv
(64 ch) -> 3x3/2 max-pool -> 4 stages x 2 bottleneck blocks, channels
(16, 32, 32, 64), strides (1, 2, 2, 2), projection shortcut on each stage's
first block -> global spatial mean -> Dense(width).
Deliberate differences from the DeepMind module:
- No BatchNorm by default (`norm='none'`). Running statistics are mutable
  state that a jitted/scanned multi-step loop has to thread through, and
  train/eval behaviour would diverge; Chan et al. 2024's port (simple_icl,
  `use_batch_norm=False`) trains this encoder without any norm. `'group'`
  (GroupNorm, up to 4 groups) and `'layer'` (GroupNorm with 1 group, i.e.
  LayerNorm over H, W, C of each image) are stateless alternatives placed
  where DeepMind has BatchNorm, with the last norm of each residual branch
  zero-initialised as DeepMind does (`scale_init=zeros` on batchnorm_2).
- A final Dense maps the 64 pooled channels to `width` (DeepMind instead set
  the last stage's channels to the embedding width); `project=False` drops
  it, which then requires channels[-1] == width.
Convs have no bias and lecun-normal (truncated) init, as in Haiku's Conv2D.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NORMS = ('none', 'group', 'layer')


def _flatten_items(x: jax.Array, item_ndim: int):
  """[*lead, *item] -> ([N, prod(item)], lead)."""
  if x.ndim < item_ndim:
    raise ValueError(f'input of rank {x.ndim} has no item of rank {item_ndim}')
  lead = x.shape[:x.ndim - item_ndim]
  return x.reshape((math.prod(lead), -1)), lead


class Identity(nn.Module):
  """No parameters: the flattened item must already be `width` wide.

  Used where raw inputs enter the residual stream (Chan et al. 2024's frozen
  identity tokenizer); the width check catches a config/task mismatch early.
  """
  width: int
  item_ndim: int = 1  # 2 for [..., H, W] images

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x_NxF, lead = _flatten_items(x, self.item_ndim)
    if x_NxF.shape[-1] != self.width:
      raise ValueError(
          f'Identity encoder: item has {x_NxF.shape[-1]} features '
          f'(shape {x.shape[len(lead):]}), model width is {self.width}')
    return x_NxF.reshape(lead + (self.width,))


class Linear(nn.Module):
  """Flatten the item and apply one Dense layer (DeepMind's 'linear')."""
  width: int
  item_ndim: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x_NxF, lead = _flatten_items(x, self.item_ndim)
    y_NxD = nn.Dense(self.width, use_bias=self.use_bias, dtype=self.dtype)(x_NxF)
    return y_NxD.reshape(lead + (self.width,))


def _norm(kind: str, channels: int, name: str, zero_scale: bool = False):
  """Stateless normaliser, or None for norm='none'."""
  if kind == 'none':
    return None
  groups = math.gcd(channels, 4) if kind == 'group' else 1
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return nn.GroupNorm(num_groups=groups, epsilon=1e-5, scale_init=scale_init,
                      name=name)


class BottleneckBlockV1(nn.Module):
  """conv1x1(c/4) -> conv3x3(c/4, stride) -> conv1x1(c), + shortcut, relu."""
  channels: int
  stride: int
  use_projection: bool
  norm: str = 'none'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_NxHxWxC: jax.Array) -> jax.Array:
    conv = lambda c, k, s, name: nn.Conv(c, (k, k), strides=(s, s), padding='SAME',
                                         use_bias=False, dtype=self.dtype, name=name)
    shortcut = x_NxHxWxC
    if self.use_projection:
      shortcut = conv(self.channels, 1, self.stride, 'shortcut_conv')(shortcut)
      norm = _norm(self.norm, self.channels, 'shortcut_norm')
      shortcut = norm(shortcut) if norm else shortcut
    inner = self.channels // 4
    specs = ((inner, 1, 1), (inner, 3, self.stride), (self.channels, 1, 1))
    y = x_NxHxWxC
    for i, (c, k, s) in enumerate(specs):
      y = conv(c, k, s, f'conv_{i}')(y)
      last = i == len(specs) - 1
      norm = _norm(self.norm, c, f'norm_{i}', zero_scale=last)
      y = norm(y) if norm else y
      if not last:  # no relu before the residual add (ResNet V1)
        y = nn.relu(y)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """DeepMind-style bottleneck ResNet-V1 for [..., H, W] or [..., H, W, 1]."""
  width: int
  blocks_per_stage: Sequence[int] = (2, 2, 2, 2)
  channels: Sequence[int] = (16, 32, 32, 64)
  strides: Sequence[int] = (1, 2, 2, 2)
  initial_channels: int = 64
  norm: str = 'none'
  project: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm not in NORMS:
      raise ValueError(f'norm {self.norm!r} not in {NORMS}')
    if not len(self.blocks_per_stage) == len(self.channels) == len(self.strides):
      raise ValueError('blocks_per_stage, channels and strides differ in length')
    if any(c % 4 for c in self.channels):
      raise ValueError(f'bottleneck channels must be multiples of 4: {self.channels}')
    if not self.project and self.channels[-1] != self.width:
      raise ValueError(f'project=False needs channels[-1] == width ({self.width})')
    # A trailing singleton is the channel axis; otherwise the item is [H, W].
    if x.ndim >= 3 and x.shape[-1] == 1:
      x = x[..., 0]
    x_NxHxW, lead = _flatten_items(x, 2)
    x_NxHxWx1 = x_NxHxW.reshape((-1,) + x.shape[-2:] + (1,)).astype(self.dtype)

    y = nn.Conv(self.initial_channels, (7, 7), strides=(2, 2), padding='SAME',
                use_bias=False, dtype=self.dtype, name='initial_conv')(x_NxHxWx1)
    norm = _norm(self.norm, self.initial_channels, 'initial_norm')
    y = nn.relu(norm(y) if norm else y)
    y = nn.max_pool(y, (3, 3), strides=(2, 2), padding='SAME')
    stages = zip(self.blocks_per_stage, self.channels, self.strides)
    for g, (num_blocks, c, s) in enumerate(stages):
      for b in range(num_blocks):
        y = BottleneckBlockV1(c, stride=s if b == 0 else 1, use_projection=b == 0,
                              norm=self.norm, dtype=self.dtype,
                              name=f'stage{g}_block{b}')(y)
    y_NxC = jnp.mean(y, axis=(1, 2))
    if self.project:
      y_NxC = nn.Dense(self.width, dtype=self.dtype, name='projection')(y_NxC)
    return y_NxC.reshape(lead + (self.width,))


ENCODERS = {'identity': Identity, 'linear': Linear, 'resnet': ResNet}


def build_encoder(name: str, width: int, **kwargs) -> nn.Module:
  """ENCODERS[name](width=width, **kwargs), with a readable unknown-name error."""
  if name not in ENCODERS:
    raise ValueError(f'unknown encoder {name!r}; choose from {sorted(ENCODERS)}')
  return ENCODERS[name](width=width, **kwargs)


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
