"""Decoder-only transformer for few-shot sequences [x_1, y_1, ..., x_L, y_L, x_q] read out at the query.

Pre-LN blocks, causal multi-head attention, GELU MLP, sinusoidal positions with a short period (30, as in Chan et
al. 2022/2024 and Singh et al. 2023) where an item and its label share a position. The 2-layer/1-head and the
12-layer/8-head models of the papers are configs of this one module.

Context labels enter through a Dense layer on one-hot labels, as in Chan et al. 2024's code (chanb/simple_icl,
branch iclr_2025, src/models.py: `output_tokenizer = nn.Dense(embed_dim)`): kernel from flax's `lecun_normal` (a
truncated normal rescaled to standard deviation 1/sqrt(K)) plus a zero-initialized trainable bias. A Dense layer on
a one-hot vector is a row lookup plus the bias, which is how it is computed here.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def sinusoid(pos_T: jax.Array, width: int, period: float) -> jax.Array:
  """sin on the first half of the features, cos on the second, frequencies period^(-2k/width)."""
  freq_H = period ** (-2.0 * jnp.arange(width // 2) / width)
  angle_TxH = pos_T[:, None].astype(jnp.float32) * freq_H[None]
  return jnp.concatenate([jnp.sin(angle_TxH), jnp.cos(angle_TxH)], axis=-1)


def interleave_positions(context_len: int) -> jax.Array:
  """Item i and label i share position i; the query takes position L."""
  return jnp.concatenate([jnp.repeat(jnp.arange(context_len), 2), jnp.array([context_len])])


class LayerNorm(nn.Module):
  """LayerNorm with eps 1e-5 and the two-pass variance E[(x - mean)^2], as upstream's GPT blocks (chanb/simple_icl,
  src/modules.py), with flax LayerNorm's parameters (`scale`, `bias`) and its float32 statistics.

  Why not nn.LayerNorm(use_fast_variance=False): its two chained mean-reductions halve the 12-layer model's speed
  on XLA:CPU (11.7 against 22.8 steps/s, benchmarks/throughput.py). Both means here are matrix-vector products
  with a 1/D vector (HIGHEST precision, so TPUs do not round them to bfloat16), which XLA runs as fast as the
  one-pass variance; the result matches flax's two-pass form to float32 rounding (tests/test_transformer.py).
  """
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    D = x_BxTxD.shape[-1]
    scale_D = self.param("scale", nn.initializers.ones_init(), (D,))
    bias_D = self.param("bias", nn.initializers.zeros_init(), (D,))
    x32 = x_BxTxD.astype(jnp.promote_types(x_BxTxD.dtype, jnp.float32))
    mean_of = lambda v: jnp.dot(v, jnp.full((D,), 1.0 / D, v.dtype), precision=jax.lax.Precision.HIGHEST)[..., None]
    centered = x32 - mean_of(x32)
    var = mean_of(centered * centered)
    mul = jax.lax.rsqrt(var + self.epsilon) * scale_D.astype(x32.dtype)
    out = centered * mul + bias_D.astype(x32.dtype)
    return out.astype(jnp.result_type(x_BxTxD.dtype, scale_D.dtype))


def layer_norm(name: str) -> LayerNorm:
  return LayerNorm(name=name)


# label_embed kind -> kernel initializer of the given standard deviation (see LabelEmbed).
LABEL_INITS = {
    # flax's lecun_normal, as upstream's Dense: a truncated normal rescaled so its real std is `std`.
    "dense_lecun": lambda std, k: nn.initializers.variance_scaling(std * std * k, "fan_in", "truncated_normal"),
    # flax's truncated_normal(std): std is that of the normal before truncation at +-2, real std ~0.88*std.
    "truncnorm": lambda std, k: nn.initializers.truncated_normal(std),
    # a plain normal with std `std` (DeepMind's emergent_in_context_learning embeds labels with such a table).
    "normal": lambda std, k: nn.initializers.normal(std),
}


class LabelEmbed(nn.Module):
  """one_hot(y) @ kernel_KxD (+ bias_D): a Dense layer on one-hot labels, computed as a row lookup."""
  num_classes: int
  width: int
  kind: str = "dense_lecun"   # a key of LABEL_INITS
  init_std: float = 0.0       # 0 = 1/sqrt(num_classes), lecun_normal's std for fan_in K
  use_bias: bool = True       # upstream's Dense has a bias (zeros at init, trained)

  @nn.compact
  def __call__(self, y_BxL: jax.Array) -> jax.Array:
    K = self.num_classes
    if self.kind == "dense_lecun" and not self.init_std:
      init = nn.initializers.lecun_normal()   # exactly flax Dense's default kernel init
    else:
      init = LABEL_INITS[self.kind](self.init_std or K ** -0.5, K)
    kernel_KxD = self.param("kernel", init, (K, self.width))
    out_BxLxD = jnp.take(kernel_KxD, y_BxL, axis=0)
    if self.use_bias:
      out_BxLxD = out_BxLxD + self.param("bias", nn.initializers.zeros_init(), (self.width,))
    return out_BxLxD


class CausalSelfAttention(nn.Module):
  num_heads: int

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    B, T, D = x_BxTxD.shape
    H = self.num_heads
    qkv_BxTx3xHxK = nn.Dense(3 * D, name="qkv")(x_BxTxD).reshape(B, T, 3, H, D // H)
    # Scaled by 1/sqrt(head dim), causal, softmax in float32 whatever the compute dtype (jax.nn's XLA path).
    out_BxTxHxK = jax.nn.dot_product_attention(qkv_BxTx3xHxK[:, :, 0], qkv_BxTx3xHxK[:, :, 1],
                                               qkv_BxTx3xHxK[:, :, 2], is_causal=True)
    return nn.Dense(D, name="out")(out_BxTxHxK.reshape(B, T, D))


class Block(nn.Module):
  num_heads: int
  mlp_ratio: int

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    D = x_BxTxD.shape[-1]
    x_BxTxD = x_BxTxD + CausalSelfAttention(self.num_heads, name="attn")(layer_norm("ln_attn")(x_BxTxD))
    h_BxTxD = layer_norm("ln_mlp")(x_BxTxD)
    if self.mlp_ratio:  # mlp_ratio = 0 gives an attention-only model (the coopetition setting)
      mlp = nn.Sequential([nn.Dense(self.mlp_ratio * D, name="up"), nn.gelu, nn.Dense(D, name="down")], name="mlp")
      x_BxTxD = x_BxTxD + mlp(h_BxTxD)
    return x_BxTxD


class ICLTransformer(nn.Module):
  num_classes: int
  width: int = 64
  num_layers: int = 2
  num_heads: int = 1
  mlp_ratio: int = 4
  pos_period: float = 30.0
  encoder: nn.Module | None = None   # maps an item [..., *input_shape] to [..., width]; None = identity
  label_embed: str = "dense_lecun"   # label-embedding kernel init: dense_lecun (upstream) | truncnorm | normal
  label_init_std: float = 0.0        # its std (truncnorm: before truncation); 0 = 1/sqrt(num_classes)
  label_bias: bool = True            # trainable label-embedding bias (upstream's Dense has one)

  @nn.compact
  def __call__(self, x_BxSx: jax.Array, ctx_labels_BxL: jax.Array) -> jax.Array:
    B, L = ctx_labels_BxL.shape
    items_BxSxD = x_BxSx if self.encoder is None else self.encoder(x_BxSx)
    labels_BxLxD = LabelEmbed(self.num_classes, self.width, self.label_embed, self.label_init_std, self.label_bias,
                              name="label_embed")(ctx_labels_BxL)
    pairs_BxLx2xD = jnp.stack([items_BxSxD[:, :L], labels_BxLxD.astype(items_BxSxD.dtype)], axis=2)
    h_BxTxD = jnp.concatenate([pairs_BxLx2xD.reshape(B, 2 * L, self.width), items_BxSxD[:, L:]], axis=1)
    h_BxTxD = h_BxTxD + sinusoid(interleave_positions(L), self.width, self.pos_period)[None].astype(h_BxTxD.dtype)
    for i in range(self.num_layers):
      h_BxTxD = Block(self.num_heads, self.mlp_ratio, name=f"block_{i}")(h_BxTxD)
    query_BxD = layer_norm("ln_final")(h_BxTxD[:, -1])
    return nn.Dense(self.num_classes, name="head")(query_BxD)


def apply_fn(module: nn.Module):
  """The loop's model interface: (params, batch) -> query logits [B, K]."""
  def apply(params: Any, batch: dict) -> jax.Array:
    return module.apply({"params": params}, batch["x"], batch["ctx_labels"])
  return apply
