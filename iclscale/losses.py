"""Losses and answer scoring shared by models, evaluators and studies (one copy of each).

Two output formats exist in the project:
  query logits [B, K]        ICL classification (stylized, bursty): the prediction of the query's label
                             against batch['target'];
  answer logits [B, N, V]    token tasks (facts, grid, category): the next-token logits at the N answer positions
                             against batch['answer_tok'], with batch['answer_mask'] False on padding slots.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def query_ce(logits_BxK: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
  """Cross-entropy and accuracy of the query prediction (the default loss of a Model)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, batch["target"]).mean()
  acc = (jnp.argmax(logits_BxK, -1) == batch["target"]).mean()
  return ce, dict(loss=ce, accuracy=acc)


def answer_scores(logits_xNxV: jax.Array, batch: dict, slot: int = 0) -> dict[str, jax.Array]:
  """Per sequence (any leading dims x): log p(answer) summed over its real tokens (`logp`; its CE is -logp),
  exact greedy match of every real answer token (`exact`: greedy decoding emits the answer) and the rank of
  answer token `slot` in the vocabulary (`rank`, 0 = top; the first slot that tells candidate answers apart)."""
  logp_xNxV = jax.nn.log_softmax(logits_xNxV.astype(jnp.float32), -1)
  tok_xN, mask_xN = batch["answer_tok"], batch["answer_mask"]
  tok_logp_xN = jnp.take_along_axis(logp_xNxV, tok_xN[..., None], -1)[..., 0]
  return dict(logp=jnp.sum(jnp.where(mask_xN, tok_logp_xN, 0.0), -1),
              exact=jnp.all((jnp.argmax(logits_xNxV, -1) == tok_xN) | ~mask_xN, -1).astype(jnp.float32),
              rank=jnp.sum(logp_xNxV[..., slot, :] > tok_logp_xN[..., slot, None], -1).astype(jnp.float32))


def answer_ce(logits_BxNxV: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
  """Mean CE over the real answer tokens (the loss of token models); accuracy = the fraction of sequences whose
  answer is exact under greedy decoding."""
  mask_BxN = batch["answer_mask"]
  ce_BxN = optax.softmax_cross_entropy_with_integer_labels(logits_BxNxV.astype(jnp.float32), batch["answer_tok"])
  ce = jnp.sum(jnp.where(mask_BxN, ce_BxN, 0.0)) / jnp.maximum(mask_BxN.sum(), 1)
  hit_BxN = (jnp.argmax(logits_BxNxV, -1) == batch["answer_tok"]) | ~mask_BxN
  return ce, dict(loss=ce, accuracy=jnp.all(hit_BxN, -1).astype(jnp.float32).mean())
