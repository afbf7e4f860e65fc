"""Gemma 3 weight loading (iclscale/models/gemma3_weights.py): Hugging Face checkpoints and GGUF files written
here with a tiny random model, and the converted-weights cache."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

from gemma3_testing import forward, init_params, tiny_vocab
from iclscale import gguf_file, tokenizer
from iclscale.models import gemma3_weights
from iclscale.models.gemma3 import Gemma3Config


def _torch_layout(params, cfg: Gemma3Config, names: dict[str, str], norm_offset: float):
  """Inverse of gemma3_weights.params_from_torch_layout: flax tree -> {name: (out, in) array}."""
  H, K, h, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
  p = jax.tree.map(np.asarray, params)
  out = {names["embed"]: p["embedder"]["input_embedding"],
         names["final_norm"]: p["final_norm"]["scale"] + norm_offset}
  for i in range(cfg.num_layers):
    layer, n = p[f"layer_{i}"], {k: v.format(i=i) for k, v in names.items()}
    attn, mlp = layer["attn"], layer["mlp"]
    kv = attn["kv_einsum"]["w"]
    out[n["q"]] = attn["q_einsum"]["w"].transpose(0, 2, 1).reshape(H * h, D)
    out[n["k"]] = kv[0].transpose(0, 2, 1).reshape(K * h, D)
    out[n["v"]] = kv[1].transpose(0, 2, 1).reshape(K * h, D)
    out[n["o"]] = attn["attn_vec_einsum"]["w"].reshape(H * h, D).T
    out[n["gate"]], out[n["up"]] = mlp["gating_einsum"]["w"]
    out[n["down"]] = mlp["linear"]["w"].T
    out[n["q_norm"]] = attn["_query_norm"]["scale"] + norm_offset
    out[n["k_norm"]] = attn["_key_norm"]["scale"] + norm_offset
    for role in ("pre_attention_norm", "post_attention_norm", "pre_ffw_norm", "post_ffw_norm"):
      out[n[role]] = layer[role]["scale"] + norm_offset
  return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _random_norms(params, seed=3):
  """Non-zero norm scales, so that a missing or doubled +1 shows up. Multiples of 1/64, so that
  adding and subtracting the GGUF's 1 is exact in f32."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, x: np.round(64 * rng.normal(size=x.shape)).astype(np.float32) / 64
      if str(path[-1].key) == "scale" else np.asarray(x), params)


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str):
  import ml_dtypes

  np_dtype = {"F32": np.float32, "BF16": ml_dtypes.bfloat16}[dtype]
  header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
  for name, arr in tensors.items():
    blob = np.ascontiguousarray(arr.astype(np_dtype)).tobytes()
    header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset,
                                                                               offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  head = json.dumps(header).encode()
  head += b" " * (-len(head) % 8)
  path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


@pytest.mark.parametrize("fmt", ["F32", "BF16", "npz"])
def test_hf_checkpoint_loader(tmp_path, fmt):
  import ml_dtypes

  cfg = Gemma3Config.tiny()
  tokens, params = init_params(cfg)
  params = _random_norms(params)
  tensors = _torch_layout(params, cfg, gemma3_weights.HF_NAMES, norm_offset=0.0)
  if fmt == "npz":
    path = tmp_path / "model.npz"
    np.savez(path, **tensors)
  else:
    path = tmp_path / "model.safetensors"
    _write_safetensors(path, tensors, fmt)
  got_cfg, loaded = gemma3_weights.load_hf_checkpoint(path, cfg)
  assert got_cfg == cfg
  expected = params
  if fmt == "BF16":
    expected = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), params)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  np.testing.assert_allclose(forward(cfg, loaded, tokens), forward(cfg, expected, tokens),
                             rtol=1e-6, atol=1e-6)


def test_gguf_loader_and_cache(tmp_path, monkeypatch):
  gguf = pytest.importorskip("gguf", reason="the GGUF loader needs `pip install gguf`")
  pytest.importorskip("sentencepiece")
  pieces, scores, types = tiny_vocab()
  cfg = Gemma3Config.tiny(vocab_size=len(pieces))
  tokens, params = init_params(cfg)
  params = _random_norms(params)
  tensors = _torch_layout(params, cfg, gemma3_weights.GGUF_NAMES, norm_offset=1.0)

  path = tmp_path / "tiny.gguf"
  writer = gguf.GGUFWriter(str(path), "gemma3")
  writer.add_context_length(64)
  writer.add_embedding_length(cfg.embed_dim)
  writer.add_block_count(cfg.num_layers)
  writer.add_feed_forward_length(cfg.ffn_dim)
  writer.add_head_count(cfg.num_heads)
  writer.add_head_count_kv(cfg.num_kv_heads)
  writer.add_key_length(cfg.head_dim)
  writer.add_value_length(cfg.head_dim)
  writer.add_layer_norm_rms_eps(cfg.rms_eps)
  writer.add_rope_freq_base(cfg.rope_base_global)
  writer.add_sliding_window(cfg.sliding_window)
  writer.add_tokenizer_model("llama")
  writer.add_token_list(pieces)
  writer.add_token_scores(scores)
  writer.add_token_types(types)
  writer.add_unk_token_id(3)
  writer.add_bos_token_id(2)
  writer.add_eos_token_id(1)
  writer.add_pad_token_id(0)
  for name, arr in tensors.items():
    if name == "token_embd.weight":  # exercise dequantisation on one quantised tensor
      writer.add_tensor(name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0),
                        raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      writer.add_tensor(name, arr)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()

  got_cfg, loaded = gemma3_weights.load_gemma3(path, cache=tmp_path / "cache")
  assert got_cfg == cfg
  emb = params["embedder"]["input_embedding"]
  np.testing.assert_allclose(loaded["embedder"]["input_embedding"], emb,
                             atol=np.abs(emb).max() / 127)  # Q8_0 rounding
  # Every other tensor is F32, norms included (stored + 1, loaded - 1): exact.
  jax.tree.map(np.testing.assert_array_equal, dict(loaded, embedder=params["embedder"]), params)

  # Second load and the tokenizer come from the cache: the GGUF is not parsed again.
  monkeypatch.setattr(gguf_file, "open_gguf", lambda p: pytest.fail("cache miss"))
  cfg2, cached = gemma3_weights.load_gemma3(path, cache=tmp_path / "cache")
  assert cfg2 == cfg
  jax.tree.map(np.testing.assert_array_equal, cached, loaded)
  tok = tokenizer.load_tokenizer(path, cache=tmp_path / "cache")
  assert [tok.id_to_piece(i) for i in tok.encode("ab  hi")] == ["ab", "\u2581\u2581", "hi"]
