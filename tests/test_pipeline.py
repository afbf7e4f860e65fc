"""Grain index pipeline: pure function of (seed, step), per-host rows, checkpointable state."""
import numpy as np

from iclscale import pipeline


def test_chunks_are_pure_functions_of_seed_and_step():
  a = pipeline.ChunkIndices(seed=1, dataset_size=50, batch_size=8, steps_per_chunk=4, rows=slice(0, 8))
  b = pipeline.ChunkIndices(seed=1, dataset_size=50, batch_size=8, steps_per_chunk=4, rows=slice(0, 8))
  np.testing.assert_array_equal(a(3), b(3))
  np.testing.assert_array_equal(a(3)[1], a.step_indices(13))  # chunk 3, row 1 = step 3*4+1
  assert a(3).shape == (4, 8) and a(3).dtype == np.uint32
  assert not np.array_equal(a(3), pipeline.ChunkIndices(2, 50, 8, 4, slice(0, 8))(3))


def test_finite_dataset_is_sampled_uniformly_with_replacement():
  f = pipeline.ChunkIndices(seed=0, dataset_size=10, batch_size=100, steps_per_chunk=100, rows=slice(0, 100))
  idx = f(0).ravel()
  assert idx.max() < 10
  np.testing.assert_allclose(np.bincount(idx, minlength=10) / idx.size, 0.1, atol=0.01)


def test_infinite_dataset_reads_fresh_consecutive_indices():
  f = pipeline.ChunkIndices(seed=0, dataset_size=None, batch_size=4, steps_per_chunk=2, rows=slice(0, 4))
  np.testing.assert_array_equal(f(1), [[8, 9, 10, 11], [12, 13, 14, 15]])


def test_hosts_read_disjoint_rows_of_the_same_global_batch():
  full = pipeline.ChunkIndices(5, 1000, 8, 2, slice(0, 8))(7)
  host0 = pipeline.ChunkIndices(5, 1000, 8, 2, slice(0, 4))(7)
  host1 = pipeline.ChunkIndices(5, 1000, 8, 2, slice(4, 8))(7)
  np.testing.assert_array_equal(np.concatenate([host0, host1], axis=1), full)


def test_iterator_state_restores_the_stream():
  it = pipeline.make_iterator(3, 100, 8, 2, 40, slice(0, 8), prefetch=2)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  fresh = pipeline.make_iterator(3, 100, 8, 2, 40, slice(0, 8), prefetch=2)
  fresh.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(fresh), e)

