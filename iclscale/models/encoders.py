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

Gradients (`grads='auto'`, the default: 'cpu' on a CPU, JAX's own elsewhere):
the forward pass is the same `lax.conv_general_dilated` and `reduce_window`
max as flax's, but the backward pass is written out. JAX's transposed
convolutions (kernel gradient `f01b_i01o->01bf`, input gradient
`b01f_01oi->b01f` with lhs dilation) are rewritten by XLA:CPU into fast
NHWC x HWIO (XNNPACK/YNNPACK) kernels in a plain jit, but not inside a
`lax.scan` body, which is what the training loop's K-step chunk is: there
they fall to the naive loop emitter, and the 7x7/2 stem's kernel gradient
alone took 1.0 s of a 1.6 s step at 28 px (`python -m
benchmarks.resnet_encoder --scan 2 --grads xla`). With 'cpu' a kernel
gradient is one matmul of input patches with dy, an input gradient a
forward convolution of the zero-interleaved dy with the flipped kernel, and
the max-pool's gradient K*K strided compares instead of select_and_scatter.
Same values up to float rounding (tests/test_encoders.py).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

NORMS = ('none', 'group', 'layer')
GRADS = ('auto', 'xla', 'cpu')  # backward of the convolutions and the max-pool; auto: cpu on a CPU
_NHWC = ('NHWC', 'HWIO', 'NHWC')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_nhwc(x_NxHxWxC, w_KxKxCxO, strides, pads):
  """A padded, strided NHWC x HWIO convolution whose gradients are NHWC x HWIO convolutions too."""
  return lax.conv_general_dilated(x_NxHxWxC, w_KxKxCxO, strides, pads, dimension_numbers=_NHWC)


def _conv_nhwc_fwd(x_NxHxWxC, w_KxKxCxO, strides, pads):
  return _conv_nhwc(x_NxHxWxC, w_KxKxCxO, strides, pads), (x_NxHxWxC, w_KxKxCxO)


def _patches(x_NxHxWxC, size_k, size_out, strides, pads):
  """[K*K, N, P, Q, C]: the padded input under each kernel tap (i, j). Taps lead, so for the one-channel stem the
  kernel gradient's matmul reads [K*K, N*P*Q] rows as they are written, with no transpose."""
  x_pad = lax.pad(x_NxHxWxC, jnp.zeros((), x_NxHxWxC.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
  n, c = x_NxHxWxC.shape[0], x_NxHxWxC.shape[3]
  taps = [lax.slice(x_pad, (0, i, j, 0), (n, i + (size_out[0] - 1) * strides[0] + 1,
                                          j + (size_out[1] - 1) * strides[1] + 1, c), (1, *strides, 1))
          for i in range(size_k[0]) for j in range(size_k[1])]
  return jnp.stack(taps)


def _conv_nhwc_bwd(strides, pads, res, dy_NxPxQxO):
  """The two gradients of y[n,p,q,o] = sum x_pad[n, p*s+i, q*s+j, c] w[i,j,c,o] in XLA:CPU's fast forms.

  Kernel gradient: one matmul of the input patches [K*K, N*P*Q, C] with dy [N*P*Q, O] (as a convolution whose
  window is the whole image, even the NHWC form ran at a few GFLOP/s: 0.6 s for a 1x1 kernel at 105 px).
  Input gradient: dy with stride-1 zeros between its pixels, padded, against the flipped kernel (O <-> C), an
  NHWC x HWIO convolution; same padding arithmetic as JAX's transpose rule (jax/_src/lax/convolution.py,
  _conv_general_vjp_lhs_padding).
  """
  x_NxHxWxC, w_KxKxCxO = res
  size_in, size_out, size_k = x_NxHxWxC.shape[1:3], dy_NxPxQxO.shape[1:3], w_KxKxCxO.shape[:2]
  patches_TxNxPxQxC = _patches(x_NxHxWxC, size_k, size_out, strides, pads)
  dw_TxCxO = lax.dot_general(patches_TxNxPxQxC, dy_NxPxQxO.astype(x_NxHxWxC.dtype), (((1, 2, 3), (0, 1, 2)), ((), ())))
  lo = [k - p[0] - 1 for k, p in zip(size_k, pads)]
  edges = [(b, n + k - 1 - ((o - 1) * s + 1) - b, s - 1)
           for b, n, k, o, s in zip(lo, size_in, size_k, size_out, strides)]
  dy_pad = lax.pad(dy_NxPxQxO, jnp.zeros((), dy_NxPxQxO.dtype), [(0, 0, 0), *edges, (0, 0, 0)])
  w_flip_KxKxOxC = jnp.transpose(jnp.flip(w_KxKxCxO, (0, 1)), (0, 1, 3, 2))
  dx_NxHxWxC = lax.conv_general_dilated(dy_pad, w_flip_KxKxOxC.astype(dy_pad.dtype), (1, 1), 'VALID',
                                        dimension_numbers=_NHWC)
  return dx_NxHxWxC.astype(x_NxHxWxC.dtype), dw_TxCxO.reshape(w_KxKxCxO.shape).astype(w_KxKxCxO.dtype)


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def canonical_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` as flax's nn.Conv calls it, with NHWC x HWIO gradients (see the module doc).

  Anything but an undilated, ungrouped 2-D NHWC x HWIO convolution goes to lax unchanged.
  """
  plain = (lhs.ndim == 4 and feature_group_count == 1 and precision is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)) + tuple(rhs_dilation or (1, 1)))
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  return _conv_nhwc(lhs, rhs, tuple(window_strides), tuple(tuple(int(v) for v in p) for p in padding))


def cpu_grads(kind: str) -> bool:
  """Whether ResNet(grads=kind) uses the gradients written for XLA:CPU (module doc)."""
  if kind not in GRADS:
    raise ValueError(f'grads {kind!r} not in {GRADS}')
  return kind == 'cpu' or (kind == 'auto' and jax.default_backend() == 'cpu')


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_nhwc(x_NxHxWxC, window, strides):
  """flax's nn.max_pool(x, window, strides, padding='SAME'): the same reduce_window."""
  return lax.reduce_window(x_NxHxWxC, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), 'SAME')


def _max_pool_fwd(x_NxHxWxC, window, strides):
  y_NxPxQxC = _max_pool_nhwc(x_NxHxWxC, window, strides)
  return y_NxPxQxC, (x_NxHxWxC, y_NxPxQxC)


def _max_pool_bwd(window, strides, res, dy_NxPxQxC):
  """dy goes to the first maximum of each window in row-major order, as XLA's select_and_scatter with JAX's
  `ge` select (the rule of jax.grad through reduce_window max), written as K*K strided compares and zero-
  interleaving pads that fuse into one loop: XLA:CPU expands select_and_scatter into a reduce_window over four
  index iotas plus a scatter, 2.2 s of a 105 px step."""
  x_NxHxWxC, y_NxPxQxC = res
  n, h, w, c = x_NxHxWxC.shape
  size_out = y_NxPxQxC.shape[1:3]
  pads = lax.padtype_to_pads((h, w), window, strides, 'SAME')
  x_pad = lax.pad(x_NxHxWxC, jnp.array(-jnp.inf, x_NxHxWxC.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads),
                                                                      (0, 0, 0)])
  size_pad = x_pad.shape[1:3]
  taken = jnp.zeros(y_NxPxQxC.shape, bool)
  zero = jnp.zeros((), dy_NxPxQxC.dtype)
  dx_pad = jnp.zeros(x_pad.shape, dy_NxPxQxC.dtype)
  for i in range(window[0]):
    for j in range(window[1]):
      ends = [o + (q - 1) * s + 1 for o, q, s in zip((i, j), size_out, strides)]
      tap = lax.slice(x_pad, (0, i, j, 0), (n, *ends, c), (1, *strides, 1))
      hit = (tap == y_NxPxQxC) & ~taken
      taken = taken | hit
      edges = [(o, p - e, s - 1) for o, p, e, s in zip((i, j), size_pad, ends, strides)]
      dx_pad = dx_pad + lax.pad(jnp.where(hit, dy_NxPxQxC, zero), zero, [(0, 0, 0), *edges, (0, 0, 0)])
  return (lax.slice(dx_pad, (0, pads[0][0], pads[1][0], 0), (n, pads[0][0] + h, pads[1][0] + w, c)),)


_max_pool_nhwc.defvjp(_max_pool_fwd, _max_pool_bwd)


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
  grads: str = 'auto'

  @nn.compact
  def __call__(self, x_NxHxWxC: jax.Array) -> jax.Array:
    conv = lambda c, k, s, name: nn.Conv(c, (k, k), strides=(s, s), padding='SAME',
                                         use_bias=False, dtype=self.dtype, name=name,
                                         conv_general_dilated=canonical_conv if cpu_grads(self.grads) else None)
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
  grads: str = 'auto'  # backward of the convs and the max-pool: auto | xla | cpu (see the module doc)

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
                use_bias=False, dtype=self.dtype, name='initial_conv',
                conv_general_dilated=canonical_conv if cpu_grads(self.grads) else None)(x_NxHxWx1)
    norm = _norm(self.norm, self.initial_channels, 'initial_norm')
    y = nn.relu(norm(y) if norm else y)
    if cpu_grads(self.grads):
      y = _max_pool_nhwc(y, (3, 3), (2, 2))
    else:
      y = nn.max_pool(y, (3, 3), strides=(2, 2), padding='SAME')
    stages = zip(self.blocks_per_stage, self.channels, self.strides)
    for g, (num_blocks, c, s) in enumerate(stages):
      for b in range(num_blocks):
        y = BottleneckBlockV1(c, stride=s if b == 0 else 1, use_projection=b == 0,
                              norm=self.norm, dtype=self.dtype, grads=self.grads,
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
