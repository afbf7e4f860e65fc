"""The input pipeline: Grain yields which sequence indices each step reads; the device builds the sequences.

Sequences are pure functions of (seed, index) computed inside the jitted step (see tasks/), so the host only has
to produce small integer arrays. One Grain element is a chunk of K steps of indices [K, B_host]; per-element
Python overhead is then paid once per K steps, which keeps the host far ahead of even a 2-layer model at
hundreds of steps/s. The iterator state (the next chunk) is checkpointed with the run through Orbax.

Sampling: with a finite dataset of N sequences each batch row draws an index uniformly with replacement from
[0, N) (Chan et al. 2024's sampler); with N = 0 (infinite) step t reads the fresh indices t*B .. t*B+B-1.

Infinite indices outgrow 32 bits (t*B passes 2^32 after 1.7e7 steps at batch 256, and the transience runs go to
5e7), and JAX has no 64-bit integers by default, so an infinite stream's index is the pair (hi, lo) of 32-bit
words of the 64-bit t*B + row: collision-free for any t < 2^32 and any batch. `index_keys` folds an index into
a key: hi = 0 folds lo alone, exactly as a flat uint32 index, so every stream below 2^32 is unchanged.
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


def index_shape(dataset_size: int | None, batch_size: int) -> tuple[int, ...]:
  """One step's global index array: [B] (finite: row -> index < N) or [B, 2] (infinite: row -> (hi, lo))."""
  return (batch_size,) if dataset_size else (batch_size, 2)


def index_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
  """Per-row keys of an index array [B] (uint32) or [B, 2] (hi, lo words of a 64-bit index)."""
  fold = jax.vmap(jax.random.fold_in, (None, 0))
  if indices.ndim == 1:
    return fold(key, indices)
  hi, lo = indices[:, 0], indices[:, 1]
  keys_B = fold(key, lo)
  # A second fold for hi > 0 only: indices below 2^32 keep the keys of a flat uint32 index.
  return jnp.where(hi == 0, keys_B, jax.vmap(jax.random.fold_in)(keys_B, hi))


class ChunkIndices:
  """Grain map: chunk c -> the uint32 indices [K, rows] (finite) or [K, rows, 2] (infinite) of steps c*K .. c*K+K-1."""

  def __init__(self, seed: int, dataset_size: int | None, batch_size: int, steps_per_chunk: int, rows: slice):
    self.seed, self.n, self.batch, self.k, self.rows = seed, dataset_size, batch_size, steps_per_chunk, rows

  def step_indices(self, step: int) -> np.ndarray:
    if self.n:
      idx = np.random.default_rng([self.seed, 0x1D5, step]).integers(0, self.n, self.batch)
      return idx[self.rows].astype(np.uint32)
    rows = np.arange(*self.rows.indices(self.batch), dtype=np.uint64)  # only this host's rows
    flat = np.uint64(step) * np.uint64(self.batch) + rows
    return np.stack([flat >> np.uint64(32), flat & np.uint64(0xFFFFFFFF)], -1).astype(np.uint32)

  def __call__(self, chunk: int) -> np.ndarray:
    return np.stack([self.step_indices(chunk * self.k + i) for i in range(self.k)])


class MemberChunkIndices:
  """Grain map for a population: chunk c -> indices [K, members, rows(, 2)], member m drawn exactly as its solo
  run's ChunkIndices (its own seed and dataset size), for this host's members and rows only."""

  def __init__(self, streams: list[tuple[int, int | None]], batch_size: int, steps_per_chunk: int, rows: slice):
    self.members = [ChunkIndices(seed, n, batch_size, steps_per_chunk, rows) for seed, n in streams]

  def __call__(self, chunk: int) -> np.ndarray:
    return np.stack([m(chunk) for m in self.members], axis=1)


def make_iterator(seed: int, dataset_size: int | None, batch_size: int, steps_per_chunk: int, num_steps: int,
                  rows: slice, prefetch: int, streams: list[tuple[int, int | None]] | None = None
                  ) -> grain.DatasetIterator:
  """Chunks of K steps of indices for this host's rows; `streams` = [(seed, dataset size)] of this host's
  population members (seed and dataset_size are then unused)."""
  num_chunks = -(-num_steps // steps_per_chunk)
  fn = (ChunkIndices(seed, dataset_size, batch_size, steps_per_chunk, rows) if streams is None
        else MemberChunkIndices(streams, batch_size, steps_per_chunk, rows))
  ds = grain.MapDataset.range(num_chunks).map(fn)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)))


def device_indices(seed_key: jax.Array, dataset_size: int | None, batch_size: int, step: jax.Array) -> jax.Array:
  """The same sampling done on the device (the upper bound the Grain pipeline is measured against).

  Infinite streams give the same (hi, lo) indices as the Grain path, computed in 32-bit words. `dataset_size` may
  be a traced value (a population member's N); None means an infinite stream.
  """
  if dataset_size is not None:
    return jax.random.randint(jax.random.fold_in(seed_key, step), (batch_size,), 0, dataset_size).astype(jnp.uint32)
  hi, lo = mul_wide(jnp.asarray(step).astype(jnp.uint32), batch_size)
  rows = jnp.arange(batch_size, dtype=jnp.uint32)
  lo_B = lo + rows                                   # wraps mod 2^32; the carry goes to hi
  hi_B = hi + (lo_B < rows).astype(jnp.uint32)
  return jnp.stack([hi_B, lo_B], -1)


def mul_wide(a: jax.Array, b: int) -> tuple[jax.Array, jax.Array]:
  """(hi, lo) uint32 words of the 64-bit product a * b (a uint32 array, 0 <= b < 2^32), in 16-bit limbs."""
  m16 = jnp.uint32(0xFFFF)
  a0, a1 = a & m16, a >> 16
  b0, b1 = jnp.uint32(b & 0xFFFF), jnp.uint32(b >> 16)
  p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1  # each < 2^32
  mid = (p00 >> 16) + (p01 & m16) + (p10 & m16)            # < 3 * 2^16
  lo = (p00 & m16) | (mid << 16)
  hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)
  return hi, lo
