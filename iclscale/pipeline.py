"""The input pipeline: Grain yields which sequence indices each step reads; the device builds the sequences.

Sequences are pure functions of (seed, index) computed inside the jitted step (see tasks/), so the host only has
to produce small integer arrays. One Grain element is a chunk of K steps of indices [K, B_host]; per-element
Python overhead is then paid once per K steps, which keeps the host far ahead of even a 2-layer model at
hundreds of steps/s. The iterator state (the next chunk) is checkpointed with the run through Orbax.

Sampling: with a finite dataset of N sequences each batch row draws an index uniformly with replacement from
[0, N) (Chan et al. 2024's sampler); with N = 0 (infinite) step t reads the fresh indices t*B .. t*B+B-1.
"""
from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np

DEFAULTS = dict(
    pipeline="grain",   # grain: host Grain iterator of indices; device: indices drawn inside the jitted step
    prefetch=4,         # Grain chunks buffered ahead of the device
)


class ChunkIndices:
  """Grain map: chunk c -> the uint32 indices [K, rows] this host reads at steps c*K .. c*K+K-1."""

  def __init__(self, seed: int, dataset_size: int | None, batch_size: int, steps_per_chunk: int, rows: slice):
    self.seed, self.n, self.batch, self.k, self.rows = seed, dataset_size, batch_size, steps_per_chunk, rows

  def step_indices(self, step: int) -> np.ndarray:
    if self.n:
      idx = np.random.default_rng([self.seed, 0x1D5, step]).integers(0, self.n, self.batch)
    else:
      idx = step * self.batch + np.arange(self.batch)
    return (idx[self.rows] % 2**32).astype(np.uint32)

  def __call__(self, chunk: int) -> np.ndarray:
    return np.stack([self.step_indices(chunk * self.k + i) for i in range(self.k)])


def make_iterator(seed: int, dataset_size: int | None, batch_size: int, steps_per_chunk: int, num_steps: int,
                  rows: slice, prefetch: int) -> grain.DatasetIterator:
  num_chunks = -(-num_steps // steps_per_chunk)
  ds = grain.MapDataset.range(num_chunks).map(ChunkIndices(seed, dataset_size, batch_size, steps_per_chunk, rows))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)))


def device_indices(seed_key: jax.Array, dataset_size: int | None, batch_size: int, step: jax.Array) -> jax.Array:
  """The same sampling done on the device (the upper bound the Grain pipeline is measured against)."""
  if dataset_size:
    return jax.random.randint(jax.random.fold_in(seed_key, step), (batch_size,), 0, dataset_size).astype(jnp.uint32)
  return (step * batch_size + jnp.arange(batch_size)).astype(jnp.uint32)
