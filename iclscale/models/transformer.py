"""Decoder-only transformer for few-shot sequences [x_1, y_1, ..., x_L, y_L, x_q] read out at the query.

Pre-LN blocks, causal multi-head attention, GELU MLP, sinusoidal positions with a short period (30, as in Chan et
al. 2022/2024 and Singh et al. 2023) where an item and its label share a position. The 2-layer/1-head and the
12-layer/8-head models of the papers are configs of this one module.
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


class CausalSelfAttention(nn.Module):
  num_heads: int

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    B, T, D = x_BxTxD.shape
    H = self.num_heads
    qkv_BxTx3xHxK = nn.Dense(3 * D, name="qkv")(x_BxTxD).reshape(B, T, 3, H, D // H)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
    logits_BxHxTxT = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxTxHxK) / jnp.sqrt(D // H).astype(x_BxTxD.dtype)
    causal_TxT = jnp.tril(jnp.ones((T, T), bool))
    logits_BxHxTxT = jnp.where(causal_TxT, logits_BxHxTxT, jnp.finfo(logits_BxHxTxT.dtype).min)
    attn_BxHxTxT = jax.nn.softmax(logits_BxHxTxT.astype(jnp.float32), axis=-1).astype(v_BxTxHxK.dtype)  # f32 softmax
    out_BxTxHxK = jnp.einsum("bhts,bshk->bthk", attn_BxHxTxT, v_BxTxHxK)
    return nn.Dense(D, name="out")(out_BxTxHxK.reshape(B, T, D))


class Block(nn.Module):
  num_heads: int
  mlp_ratio: int

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    D = x_BxTxD.shape[-1]
    x_BxTxD = x_BxTxD + CausalSelfAttention(self.num_heads, name="attn")(nn.LayerNorm(1e-5, name="ln_attn")(x_BxTxD))
    h_BxTxD = nn.LayerNorm(1e-5, name="ln_mlp")(x_BxTxD)
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
  label_init_std: float = 0.0        # label-embedding init std; 0 = 1/sqrt(num_classes), as a Dense on one-hots

  @nn.compact
  def __call__(self, x_BxSx: jax.Array, ctx_labels_BxL: jax.Array) -> jax.Array:
    B, L = ctx_labels_BxL.shape
    items_BxSxD = x_BxSx if self.encoder is None else self.encoder(x_BxSx)
    std = self.label_init_std or self.num_classes ** -0.5
    labels_BxLxD = nn.Embed(self.num_classes, self.width, embedding_init=nn.initializers.truncated_normal(std),
                            name="label_embed")(ctx_labels_BxL)
    pairs_BxLx2xD = jnp.stack([items_BxSxD[:, :L], labels_BxLxD.astype(items_BxSxD.dtype)], axis=2)
    h_BxTxD = jnp.concatenate([pairs_BxLx2xD.reshape(B, 2 * L, self.width), items_BxSxD[:, L:]], axis=1)
    h_BxTxD = h_BxTxD + sinusoid(interleave_positions(L), self.width, self.pos_period)[None].astype(h_BxTxD.dtype)
    for i in range(self.num_layers):
      h_BxTxD = Block(self.num_heads, self.mlp_ratio, name=f"block_{i}")(h_BxTxD)
    query_BxD = nn.LayerNorm(1e-5, name="ln_final")(h_BxTxD[:, -1])
    return nn.Dense(self.num_classes, name="head")(query_BxD)


def apply_fn(module: nn.Module):
  """The loop's model interface: (params, batch) -> query logits [B, K]."""
  def apply(params: Any, batch: dict) -> jax.Array:
    return module.apply({"params": params}, batch["x"], batch["ctx_labels"])
  return apply
