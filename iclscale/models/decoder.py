"""A Llama-style token decoder trained from scratch (Russin et al. 2024's model): RMSNorm, RoPE, SwiGLU.

Pre-norm causal blocks over token embeddings, an untied output head read only at the answer positions (the
`answer_pos` of the batch), so the loss is the answer-token CE of models/gemma3_lm.answer_ce. Grid: 12 layers,
8 heads, d 64, ffn 128; category: 4 layers, same widths (reference §4). Sequences are unpadded.

`init_from` starts from another run's parameters (its newest checkpoint): the metalearned weights that
finetuning copies begin from; that run's checkpoints are only read.
"""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from iclscale import config as config_lib
from iclscale.models import gemma3
from iclscale.models import gemma3_lm

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
    # Softmax in float32 whatever the compute dtype (models/precision.py)
    logits_BxHxTxT = jnp.einsum("bthk,bshk->bhts", q_BxTxHxh, k_BxTxHxh).astype(jnp.float32) / np.sqrt(h)
    logits_BxHxTxT = jnp.where(jnp.tril(jnp.ones((T, T), bool)), logits_BxHxTxT, jnp.finfo(jnp.float32).min)
    v_BxTxHxh = qkv_BxTx3xHxh[:, :, 2]
    out_BxTxHxh = jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(logits_BxHxTxT, -1).astype(v_BxTxHxh.dtype), v_BxTxHxh)
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


def load_params(workdir: str) -> dict:
  """The parameters of the newest checkpoint under workdir (host arrays); the checkpoint is only read."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), item_names=("state",)) as mngr:
    step = mngr.latest_step()
    config_lib.check(step is not None, "model.init_from", f"{workdir} has no complete checkpoint")
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  return jax.tree.map(np.asarray, state["params"])


def build(cfg, task):
  module = Decoder(task.vocab_size, cfg.width, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.rope_base)

  def init(key, batch):
    return module.init(key, batch["tokens"], batch["answer_pos"])["params"]

  def apply(params, batch):
    return module.apply({"params": params}, batch["tokens"], batch["answer_pos"])

  def load():
    params = load_params(cfg.init_from)
    example = task.example_batch()
    if getattr(task, "num_copies", 1) > 1:  # one copy's batch: models.with_copies stacks the copies
      example = jax.tree.map(lambda x: x[0], example)
    want = jax.eval_shape(init, jax.random.key(0), example)
    same = jax.tree.structure(want) == jax.tree.structure(params) and all(
        a.shape == b.shape for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(params)))
    config_lib.check(same, "model.init_from", f"{cfg.init_from} holds parameters of another architecture")
    return params

  from iclscale.models import Model  # pylint: disable=g-import-not-at-top  # the registry imports this module
  return Model(module, init, apply, loss=gemma3_lm.answer_ce, load=load if cfg.init_from else None)
