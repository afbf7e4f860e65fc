"""The token-embedding clustering rule on a small synthetic embedding matrix (no GGUF needed)."""
import numpy as np
import pytest

from iclscale.datasets import token_embeddings


def clustered_embeddings(num_clusters=12, per_cluster=30, dim=32, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((num_clusters, dim)) * 10
  emb = (centers[:, None] + rng.standard_normal((num_clusters, per_cluster, dim))).reshape(-1, dim)
  return emb.astype(np.float32), np.repeat(np.arange(num_clusters), per_cluster)


def test_clusters_become_classes_of_nearest_members():
  emb, truth = clustered_embeddings()
  keep = np.ones(len(emb), bool)
  keep[::7] = False  # dropped tokens (special/unused) never appear
  table, ids = token_embeddings.cluster_table(emb, keep, classes=6, exemplars=5, seed=1, oversample=2.0,
                                              iters=10, fit_rows=1000)
  assert table.shape == (6, 5, 32) and ids.shape == (6, 5)
  np.testing.assert_array_equal(table, emb[ids])
  assert keep[ids].all() and len(np.unique(ids)) == ids.size
  # each class is (nearly) one true cluster: random initialisation may leave a true cluster without a centroid
  assert all(np.bincount(truth[row]).max() >= 4 for row in ids)
  again, _ = token_embeddings.cluster_table(emb, keep, classes=6, exemplars=5, seed=1, oversample=2.0,
                                            iters=10, fit_rows=1000)
  np.testing.assert_array_equal(again, table)  # deterministic given the seed


def test_too_few_large_clusters_is_an_error():
  emb, _ = clustered_embeddings(num_clusters=3, per_cluster=4)
  with pytest.raises(ValueError, match="clusters"):
    token_embeddings.cluster_table(emb, np.ones(len(emb), bool), classes=3, exemplars=10, seed=0, oversample=1.0)


def test_missing_table_names_the_build_command(tmp_path, monkeypatch):
  monkeypatch.setenv("ICLSCALE_CACHE", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="python -m iclscale.datasets.token_embeddings"):
    token_embeddings.load(16, 4)
