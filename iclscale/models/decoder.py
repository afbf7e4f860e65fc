"""A Llama-style token decoder trained from scratch (Russin et al. 2024's model): RMSNorm, RoPE, SwiGLU.

Pre-norm causal blocks over token embeddings, an untied output head read only at the answer positions (the
`answer_pos` of the batch), so the loss is the answer-token CE (losses.answer_ce). Grid: 12 layers,
8 heads, d 64, ffn 128; category: 4 layers, same widths (upstream jlrussin/icl-iwl-interplay, models.py). Sequences are unpadded.

`init_from` starts from another run's parameters (its newest checkpoint): the metalearned weights that
finetuning copies begin from. The loop reads that run's checkpoint (contracts.Model.init_from); it is only read.
"""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from iclscale import config as config_lib
from iclscale import contracts
from iclscale import losses
from iclscale.models import gemma3

DEFAULTS = dict(
    name="decoder",
    num_layers=12,       # decoder blocks (grid 12, category 4)
    num_heads=8,         # attention heads
    width=64,            # d_model
    ffn_dim=128,         # SwiGLU hidden width
    rope_base=10_000.0,  # RoPE timescale base (Llama's)
    init_from="",        # '' = random init; a run's workdir = start from its newest checkpoint's parameters
)
init_normal = nn.initializers.normal(0.02)   # Llama's initializer_range


class Block(nn.Module):
  num_heads: int
  ffn_dim: int
  rope_base: float

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    B, T, D = x_BxTxD.shape
    H, h = self.num_heads, D // self.num_heads
    pos_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
    qkv_BxTx3xHxh = nn.Dense(3 * D, use_bias=False, kernel_init=init_normal, name="qkv")(
        gemma3.RMSNorm(name="norm_attn")(x_BxTxD)).reshape(B, T, 3, H, h)
    q_BxTxHxh = gemma3.apply_rope(qkv_BxTx3xHxh[:, :, 0], pos_BxT, self.rope_base)
    k_BxTxHxh = gemma3.apply_rope(qkv_BxTx3xHxh[:, :, 1], pos_BxT, self.rope_base)
    out_BxTxHxh = jax.nn.dot_product_attention(q_BxTxHxh, k_BxTxHxh, qkv_BxTx3xHxh[:, :, 2], is_causal=True)
    x_BxTxD = x_BxTxD + nn.Dense(D, use_bias=False, kernel_init=init_normal, name="out")(out_BxTxHxh.reshape(B, T, D))
    gate_BxTxF, up_BxTxF = jnp.split(nn.Dense(2 * self.ffn_dim, use_bias=False, kernel_init=init_normal,
                                              name="gate_up")(gemma3.RMSNorm(name="norm_mlp")(x_BxTxD)), 2, -1)
    return x_BxTxD + nn.Dense(D, use_bias=False, kernel_init=init_normal, name="down")(
        jax.nn.silu(gate_BxTxF) * up_BxTxF)


class Decoder(nn.Module):
  vocab_size: int
  width: int = 64
  num_layers: int = 12
  num_heads: int = 8
  ffn_dim: int = 128
  rope_base: float = 10_000.0

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, logits_at_BxN: jax.Array) -> jax.Array:
    x_BxTxD = nn.Embed(self.vocab_size, self.width, embedding_init=init_normal, name="embed")(tokens_BxT)
    for i in range(self.num_layers):
      x_BxTxD = Block(self.num_heads, self.ffn_dim, self.rope_base, name=f"block_{i}")(x_BxTxD)
    x_BxNxD = jnp.take_along_axis(gemma3.RMSNorm(name="norm_final")(x_BxTxD), logits_at_BxN[..., None], axis=1)
    return nn.Dense(self.vocab_size, use_bias=False, kernel_init=init_normal, name="head")(x_BxNxD)


def validate(cfg, input_shape: tuple[int, ...]) -> None:
  del input_shape
  for f in ("num_layers", "num_heads", "width", "ffn_dim"):
    config_lib.check_positive(cfg, f, "model")
  config_lib.check(cfg.width % (2 * cfg.num_heads) == 0, "model.num_heads",
                   f"width {cfg.width} must split into {cfg.num_heads} heads of even size (RoPE)")
  config_lib.check(not cfg.init_from or os.path.isdir(os.path.join(cfg.init_from, "checkpoints")),
                   "model.init_from", f"{cfg.init_from!r} holds no checkpoints/ (train that run first)")


def build(cfg, task: contracts.Task) -> contracts.Model:
  module = Decoder(task.vocab_size, cfg.width, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.rope_base)

  def init(key, batch):
    return module.init(key, batch["tokens"], batch["answer_pos"])["params"]

  def apply(params, batch):
    return module.apply({"params": params}, batch["tokens"], batch["answer_pos"])

  return contracts.Model(module, init, apply, loss=losses.answer_ce, init_from=cfg.init_from)
