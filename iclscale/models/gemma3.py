"""Gemma 3 text decoder in flax.linen (pure JAX, no dependency on the `gemma` library).

Architecture (Gemma 3 270M numbers in brackets):
  * tied token embedding (262144 x 640), input scaled by sqrt(D);
  * blocks: x + post_norm(attn(pre_norm(x))), then x + post_norm(mlp(pre_norm(x)));
  * RMSNorm computed in f32 as x * rsqrt(mean(x^2) + eps) * (1 + scale): the params hold
    `scale`, *not* 1 + scale (GGUF files store 1 + scale; the loader subtracts the 1);
  * attention: GQA (4 query heads, 1 kv head, head_dim 256), RMSNorm on q and k per head before
    split-halves RoPE, query scaled by query_pre_attn_scalar**-0.5 after RoPE, no soft-capping;
  * 5 local : 1 global layers (layer i is global iff (i + 1) % 6 == 0). Local layers use a
    sliding window (512) and RoPE base 10k, global layers full causal attention and base 1M;
  * GeGLU MLP: down(gelu_tanh(gate(x)) * up(x)).

The parameter tree follows `gm.nn.Gemma3_270M` of google-deepmind/gemma (so that numbers can be
cross-checked against it) except that every projection is an `Einsum` submodule holding `w`
(the gemma library stores the MLP weights as bare `mlp/gating_einsum`, `mlp/linear` arrays); the
uniform layout lets each projection carry optional LoRA factors next to its base weight.

Shape suffixes: B batch, T query time, S key time, D width, V vocab, H query heads, K kv heads,
G = H // K query heads per kv head, h head_dim, F ffn width, N selected positions, r LoRA rank.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec



@dataclasses.dataclass(frozen=True)
class Gemma3Config:
  """Architecture hyper-parameters. Frozen/hashable so it can be a flax module attribute."""

  vocab_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  ffn_dim: int
  sliding_window: int = 512
  # Layer i is global iff (i + 1) % global_every == 0 (Gemma 3: 5 local then 1 global).
  # 0 makes every layer local (used by tests of the sliding window).
  global_every: int = 6
  rope_base_local: float = 10_000.0
  rope_base_global: float = 1_000_000.0
  rms_eps: float = 1e-6
  # Queries are multiplied by query_pre_attn_scalar**-0.5 (Gemma 3: head_dim for all sizes up to
  # 12B, which includes 270M).
  query_pre_attn_scalar: float = 256.0
  # LoRA adapters on q/kv/attn-output/gating/linear when lora_rank > 0 (output scaled by
  # lora_alpha / lora_rank, the usual LoRA convention).
  lora_rank: int = 0
  lora_alpha: float = 16.0
  dtype: str = "float32"  # compute dtype; params stay in the dtype they are given in
  remat: bool = False  # rematerialise each block in the backward pass (saves activation memory)

  @classmethod
  def gemma3_270m(cls, **overrides: Any) -> "Gemma3Config":
    base = cls(vocab_size=262_144, embed_dim=640, num_layers=18, num_heads=4, num_kv_heads=1,
               head_dim=256, ffn_dim=2048, sliding_window=512, query_pre_attn_scalar=256.0)
    return dataclasses.replace(base, **overrides)

  @classmethod
  def tiny(cls, **overrides: Any) -> "Gemma3Config":
    """A small random-init config with the same code path (GQA 4:2, both layer types)."""
    base = cls(vocab_size=128, embed_dim=32, num_layers=6, num_heads=4, num_kv_heads=2,
               head_dim=8, ffn_dim=64, sliding_window=4, query_pre_attn_scalar=8.0)
    return dataclasses.replace(base, **overrides)

  def replace(self, **overrides: Any) -> "Gemma3Config":
    return dataclasses.replace(self, **overrides)

  def is_global(self, layer: int) -> bool:
    return self.global_every > 0 and (layer + 1) % self.global_every == 0

  @property
  def layer_types(self) -> tuple[str, ...]:
    return tuple("global" if self.is_global(i) else "local" for i in range(self.num_layers))

  def rope_base(self, layer: int) -> float:
    return self.rope_base_global if self.is_global(layer) else self.rope_base_local

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "Gemma3Config":
    return cls(**json.loads(text))


# --------------------------------------------------------------------------------------------
# Projections with optional LoRA.


class _Site(NamedTuple):
  """Einsum equations of one projection and of its LoRA factors A (input side) and B."""

  eqn: str  # "x,w->y" of the base projection
  lora_a: str  # letters of A ('r' is the rank)
  lora_b: str  # letters of B
  lora_in: str  # x, A -> low-rank activations
  lora_out: str  # low-rank activations, B -> y


# Adapters are the standard per-matrix LoRA (as HF peft on q/k/v/o/gate/up/down): the stacked
# kv and gating weights (leading axis C = 2) get one independent (A, B) pair per stacked matrix.
LORA_SITES: dict[str, _Site] = {
    "q_einsum": _Site("BTD,HDh->BTHh", "Dr", "rHh", "BTD,Dr->BTr", "BTr,rHh->BTHh"),
    "kv_einsum": _Site("BTD,CKDh->CBTKh", "CDr", "CrKh", "BTD,CDr->CBTr", "CBTr,CrKh->CBTKh"),
    "attn_vec_einsum": _Site("BTHh,HhD->BTD", "Hhr", "rD", "BTHh,Hhr->BTr", "BTr,rD->BTD"),
    "gating_einsum": _Site("BTD,CFD->CBTF", "CDr", "CrF", "BTD,CDr->CBTr", "CBTr,CrF->CBTF"),
    "linear": _Site("BTF,FD->BTD", "Fr", "rD", "BTF,Fr->BTr", "BTr,rD->BTD"),
}


def _weight_letters(site: _Site) -> tuple[str, str]:
  inputs, _ = site.eqn.split("->")
  x_letters, w_letters = inputs.split(",")
  return x_letters, w_letters


class Einsum(nn.Module):
  """A projection `einsum(site.eqn, x, w)`, plus `scale * (x A) B` when LoRA is enabled."""

  site: str
  shape: tuple[int, ...]
  cfg: Gemma3Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    site = LORA_SITES[self.site]
    x_letters, w_letters = _weight_letters(site)
    dims = dict(zip(w_letters, self.shape))
    fan_in = math.prod(dims[c] for c in w_letters if c in x_letters)
    init = nn.initializers.normal(stddev=fan_in**-0.5)
    dtype = self.cfg.compute_dtype
    x = x.astype(dtype)
    w = self.param("w", init, self.shape)
    y = jnp.einsum(site.eqn, x, w.astype(dtype))
    if self.cfg.lora_rank:
      dims["r"] = self.cfg.lora_rank
      a = self.param("lora_a", init, tuple(dims[c] for c in site.lora_a))
      # B = 0 at init, so a freshly initialised LoRA model equals its base model.
      b = self.param("lora_b", nn.initializers.zeros, tuple(dims[c] for c in site.lora_b))
      low = jnp.einsum(site.lora_in, x, a.astype(dtype))
      y = y + self.cfg.lora_scale * jnp.einsum(site.lora_out, low, b.astype(dtype))
    return y


def merge_lora(params: Any, cfg: Gemma3Config) -> Any:
  """Fold every LoRA pair into its base weight: w + scale * A B; returns a LoRA-free tree.

  The result runs in a model built with `cfg.replace(lora_rank=0)` and gives the same logits.
  `cfg` is needed for the alpha / rank scale, which is not stored in the params.
  """

  def merge(node: Any, name: str | None) -> Any:
    if not isinstance(node, dict):
      return node
    if "lora_a" in node:
      site = LORA_SITES[name]
      _, w_letters = _weight_letters(site)
      delta = jnp.einsum(f"{site.lora_a},{site.lora_b}->{w_letters}", node["lora_a"],
                         node["lora_b"], precision=jax.lax.Precision.HIGHEST)
      merged = {k: v for k, v in node.items() if k not in ("lora_a", "lora_b")}
      merged["w"] = (node["w"] + cfg.lora_scale * delta).astype(node["w"].dtype)
      return merged
    return {k: merge(v, k) for k, v in node.items()}

  return merge(_unfreeze(params), None)


def init_lora(params: Any, cfg: Gemma3Config, seed: int = 0) -> Any:
  """Add fresh LoRA factors (A ~ N(0, 1/fan_in), B = 0) to a LoRA-free tree such as loaded
  weights; the base weights are kept (flax's init would redraw all of them: slow, and 1 GB for
  270M). Returns the tree for a `Gemma3(cfg)` model, cfg.lora_rank > 0."""
  if not cfg.lora_rank:
    raise ValueError("cfg.lora_rank must be > 0")
  shapes = jax.eval_shape(Gemma3(cfg).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 1), jnp.int32))["params"]
  rng = np.random.default_rng(seed)
  base = _unfreeze(params)

  def fill(path, leaf):
    keys = [_key(k) for k in path]
    if keys[-1] == "lora_b":
      return jnp.zeros(leaf.shape, leaf.dtype)
    if keys[-1] == "lora_a":
      site = LORA_SITES[keys[-2]]
      x_letters, _ = _weight_letters(site)
      fan_in = math.prod(n for c, n in zip(site.lora_a, leaf.shape) if c in x_letters)
      return jnp.asarray(rng.normal(scale=fan_in**-0.5, size=leaf.shape), leaf.dtype)
    node = base
    for k in keys:
      node = node[k]
    return node

  return jax.tree_util.tree_map_with_path(fill, shapes)


# --------------------------------------------------------------------------------------------
# Layers.


class RMSNorm(nn.Module):
  """Gemma RMSNorm: normalise in f32, multiply by (1 + scale); scale is zero-initialised."""

  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.eps) * (1.0 + scale.astype(jnp.float32))
    return y.astype(x.dtype)


def apply_rope(x_BxTxNxh: jax.Array, positions_BxT: jax.Array, base: float) -> jax.Array:
  """Split-halves ("NEOX") rotary embedding, timescale base**(2j / h) for j < h / 2."""
  h = x_BxTxNxh.shape[-1]
  timescale_j = base ** (2.0 * jnp.arange(h // 2, dtype=jnp.float32) / h)
  angle_BxTx1xj = (positions_BxT.astype(jnp.float32)[:, :, None, None] / timescale_j)
  sin, cos = jnp.sin(angle_BxTx1xj), jnp.cos(angle_BxTx1xj)
  x1, x2 = jnp.split(x_BxTxNxh.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxh.dtype)


class Attention(nn.Module):
  cfg: Gemma3Config
  layer: int

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               mask_BxTxS: jax.Array) -> jax.Array:
    cfg = self.cfg
    H, K, h, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
    q_BxTxHxh = Einsum("q_einsum", (H, D, h), cfg, name="q_einsum")(x_BxTxD)
    k_BxSxKxh, v_BxSxKxh = Einsum("kv_einsum", (2, K, D, h), cfg, name="kv_einsum")(x_BxTxD)
    q_BxTxHxh = RMSNorm(cfg.rms_eps, name="_query_norm")(q_BxTxHxh)
    k_BxSxKxh = RMSNorm(cfg.rms_eps, name="_key_norm")(k_BxSxKxh)
    base = cfg.rope_base(self.layer)
    q_BxTxHxh = apply_rope(q_BxTxHxh, positions_BxT, base) * jnp.asarray(
        cfg.query_pre_attn_scalar**-0.5, q_BxTxHxh.dtype)
    k_BxSxKxh = apply_rope(k_BxSxKxh, positions_BxT, base)
    # GQA without repeating k/v (query head n = k * G + g uses kv head k); softmax in float32; a fully masked
    # row (e.g. a left-padding query) gets a uniform softmax, not NaNs. q is already scaled.
    enc_BxTxHxh = jax.nn.dot_product_attention(q_BxTxHxh, k_BxSxKxh, v_BxSxKxh, mask=mask_BxTxS[:, None],
                                               scale=1.0)
    return Einsum("attn_vec_einsum", (H, h, D), cfg, name="attn_vec_einsum")(enc_BxTxHxh)


class MLP(nn.Module):
  cfg: Gemma3Config

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    cfg = self.cfg
    gate_BxTxF, up_BxTxF = Einsum("gating_einsum", (2, cfg.ffn_dim, cfg.embed_dim), cfg,
                                  name="gating_einsum")(x_BxTxD)
    act_BxTxF = jax.nn.gelu(gate_BxTxF, approximate=True) * up_BxTxF
    return Einsum("linear", (cfg.ffn_dim, cfg.embed_dim), cfg, name="linear")(act_BxTxF)


class Block(nn.Module):
  cfg: Gemma3Config
  layer: int

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array,
               mask_BxTxS: jax.Array) -> jax.Array:
    eps = self.cfg.rms_eps
    a_BxTxD = Attention(self.cfg, self.layer, name="attn")(
        RMSNorm(eps, name="pre_attention_norm")(x_BxTxD), positions_BxT, mask_BxTxS)
    x_BxTxD = x_BxTxD + RMSNorm(eps, name="post_attention_norm")(a_BxTxD)
    m_BxTxD = MLP(self.cfg, name="mlp")(RMSNorm(eps, name="pre_ffw_norm")(x_BxTxD))
    return x_BxTxD + RMSNorm(eps, name="post_ffw_norm")(m_BxTxD)


class Embedder(nn.Module):
  """Tied embedding: `encode` looks tokens up (times sqrt(D)), `decode` is the output head."""

  cfg: Gemma3Config

  def setup(self):
    self.input_embedding = self.param("input_embedding", nn.initializers.normal(stddev=0.02),
                                      (self.cfg.vocab_size, self.cfg.embed_dim))

  def encode(self, tokens_BxT: jax.Array) -> jax.Array:
    dtype = self.cfg.compute_dtype
    x_BxTxD = jnp.take(self.input_embedding, tokens_BxT, axis=0).astype(dtype)
    return x_BxTxD * jnp.sqrt(jnp.asarray(self.cfg.embed_dim, dtype))

  def decode(self, x_BxNxD: jax.Array) -> jax.Array:
    dtype = self.cfg.compute_dtype
    return jnp.einsum("BND,VD->BNV", x_BxNxD.astype(dtype), self.input_embedding.astype(dtype))


def attention_masks(positions_BxT: jax.Array, input_mask_BxT: jax.Array,
                    sliding_window: int) -> tuple[jax.Array, jax.Array]:
  """(global, local) boolean masks [B, T, S]: causal & valid key, and additionally, for local
  layers, key position > query position - sliding_window."""
  T = positions_BxT.shape[1]
  causal_TxS = jnp.tril(jnp.ones((T, T), dtype=bool))
  global_BxTxS = causal_TxS[None] & input_mask_BxT[:, None, :]
  dist_BxTxS = positions_BxT[:, :, None] - positions_BxT[:, None, :]
  return global_BxTxS, global_BxTxS & (dist_BxTxS < sliding_window)


class Gemma3(nn.Module):
  """Gemma 3 decoder. `apply({'params': p}, tokens_BxT) -> logits_BxTxV` (f32 or cfg.dtype).

  Args of __call__:
    tokens_BxT: int token ids (prepend BOS = 2 yourself, as the tokenizer does).
    positions_BxT: RoPE positions; default cumsum(input_mask) - 1, right for right padding.
    input_mask_BxT: True on real tokens; padding keys are never attended to. Default all True.
    logits_at_BxN: optional int indices into T. Only these positions go through the tied
      262144-way head (the head dominates the cost; training on answer tokens only needs a few).
    return_hidden: return the final-normed hidden states [B, T, D] instead of logits.
  """

  cfg: Gemma3Config

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None,
               input_mask_BxT: jax.Array | None = None, logits_at_BxN: jax.Array | None = None,
               return_hidden: bool = False) -> jax.Array:
    cfg = self.cfg
    if input_mask_BxT is None:
      input_mask_BxT = jnp.ones(tokens_BxT.shape, dtype=bool)
    input_mask_BxT = input_mask_BxT.astype(bool)
    if positions_BxT is None:
      positions_BxT = jnp.cumsum(input_mask_BxT, axis=-1) - 1
    global_BxTxS, local_BxTxS = attention_masks(positions_BxT, input_mask_BxT,
                                                cfg.sliding_window)
    embedder = Embedder(cfg, name="embedder")
    x_BxTxD = embedder.encode(tokens_BxT)
    block_cls = nn.remat(Block) if cfg.remat else Block
    for i in range(cfg.num_layers):
      mask_BxTxS = global_BxTxS if cfg.is_global(i) else local_BxTxS
      x_BxTxD = block_cls(cfg, i, name=f"layer_{i}")(x_BxTxD, positions_BxT, mask_BxTxS)
    x_BxTxD = RMSNorm(cfg.rms_eps, name="final_norm")(x_BxTxD)
    if return_hidden:
      return x_BxTxD
    if logits_at_BxN is not None:
      x_BxTxD = jnp.take_along_axis(x_BxTxD, logits_at_BxN[:, :, None], axis=1)
    return embedder.decode(x_BxTxD)


# --------------------------------------------------------------------------------------------
# Sharding.

# Logical layout of each large weight, keyed by its (module, leaf) names: vocab and heads / ffn
# go over the tensor-parallel "model" axis, the width D over "fsdp" (as MaxText's
# vocab->tensor, embed->fsdp rules). Everything else (norm scales, LoRA factors) is tiny and
# replicated.
_PARTITION_RULES: dict[tuple[str, str], tuple[str | None, ...]] = {
    ("embedder", "input_embedding"): ("model", "fsdp"),  # (V, D)
    ("q_einsum", "w"): ("model", "fsdp", None),  # (H, D, h)
    ("kv_einsum", "w"): (None, "model", "fsdp", None),  # (2, K, D, h)
    ("attn_vec_einsum", "w"): ("model", None, "fsdp"),  # (H, h, D)
    ("gating_einsum", "w"): (None, "model", "fsdp"),  # (2, F, D)
    ("linear", "w"): ("model", "fsdp"),  # (F, D)
}


def param_partition_specs(params: Any, fsdp_axis: str | None = "fsdp",
                          model_axis: str | None = "model",
                          mesh: jax.sharding.Mesh | None = None) -> Any:
  """PartitionSpec pytree matching `params` (the contents of the 'params' collection).

  With `mesh` given, an axis is dropped (that dimension replicated) where the mesh lacks it or
  its size does not divide the dimension, e.g. the single kv head of 270M over model > 1.
  """
  names = {"fsdp": fsdp_axis, "model": model_axis}

  def spec(path, leaf) -> PartitionSpec:
    rule = _PARTITION_RULES.get(tuple(_key(k) for k in path[-2:]))
    if rule is None:
      return PartitionSpec()
    axes = []
    for dim, logical in zip(leaf.shape, rule):
      axis = names.get(logical) if logical else None
      if axis is not None and mesh is not None:
        if axis not in mesh.shape or dim % mesh.shape[axis]:
          axis = None
      axes.append(axis)
    return PartitionSpec(*axes)

  return jax.tree_util.tree_map_with_path(spec, _unfreeze(params))


def _key(k: Any) -> str:
  return str(getattr(k, "key", getattr(k, "name", k)))


def _unfreeze(tree: Any) -> Any:
  if hasattr(tree, "unfreeze"):
    return tree.unfreeze()
  if isinstance(tree, dict):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree
