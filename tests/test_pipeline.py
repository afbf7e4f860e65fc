"""Grain index pipeline: pure function of (seed, step), per-host rows, checkpointable state."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iclscale import checkpoint as ckpt_lib
from iclscale import mesh as mesh_lib
from iclscale import models
from iclscale import pipeline
from iclscale import results
from iclscale import tasks
from iclscale import train


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
  assert f(1).shape == (2, 4, 2) and f(1).dtype == np.uint32   # (hi, lo) words of the 64-bit index
  np.testing.assert_array_equal(f(1)[..., 1], [[8, 9, 10, 11], [12, 13, 14, 15]])
  np.testing.assert_array_equal(f(1)[..., 0], 0)


# Steps and batches where the old flat uint32 index wrapped (t*B >= 2^32) or int32 step*B overflowed (>= 2^31).
WIDE = [(0, 1), (3, 7), (2**31 // 256, 256), (2**32 // 256 - 1, 256), (49_900_000, 256), (49_999_999, 4096),
        (10**9, 256), (10**9, 65_537), (10**9, 2**32 - 1), (2**32 - 1, 3)]


def test_infinite_indices_are_the_64_bit_flat_index_for_any_step_and_batch():
  for step, batch in WIDE:
    got = pipeline.ChunkIndices(0, None, batch, 1, slice(max(batch - 3, 0), batch)).step_indices(step)
    flat = [(int(hi) << 32) | int(lo) for hi, lo in got]
    assert flat == [step * batch + r for r in range(max(batch - 3, 0), batch)], (step, batch)


def test_device_indices_agree_with_grain_beyond_32_bits():
  small = [(s, b) for s, b in WIDE if b <= 4096]  # the device builds all B rows
  dev = jax.jit(pipeline.device_indices, static_argnums=(1, 2))
  for step, batch in small:
    want = pipeline.ChunkIndices(0, None, batch, 1, slice(0, batch)).step_indices(step)
    np.testing.assert_array_equal(dev(jax.random.key(0), None, batch, jnp.int32(step) if step < 2**31 else
                                      jnp.uint32(step)), want, err_msg=f"step {step} batch {batch}")
  a = jnp.asarray(np.array([0, 1, 65_535, 65_536, 10**9, 2**32 - 1], np.uint32))
  for b in (0, 1, 255, 65_537, 2**31 + 5, 2**32 - 1):
    hi, lo = jax.device_get(pipeline.mul_wide(a, b))
    assert [(int(h) << 32) | int(l) for h, l in zip(hi, lo)] == [int(x) * b for x in np.asarray(a)]


def test_index_keys_keep_32_bit_streams_and_separate_high_words():
  key = jax.random.key(7)
  lo = jnp.array([0, 5, 2**32 - 1], jnp.uint32)
  flat = jax.random.key_data(pipeline.index_keys(key, lo))
  pairs0 = jax.random.key_data(pipeline.index_keys(key, jnp.stack([jnp.zeros_like(lo), lo], -1)))
  np.testing.assert_array_equal(flat, pairs0)  # every run below 2^32 indices reads the data it always did
  keys = [tuple(k) for hi in (0, 1, 2, 2**32 - 1) for k in np.asarray(jax.random.key_data(
      pipeline.index_keys(key, jnp.stack([jnp.full_like(lo, hi), lo], -1))))]
  assert len(set(keys)) == len(keys)  # (hi, lo) and (hi', lo) never share a key


def _checkpoint_at(config, workdir, step):
  """Writes the checkpoint a run would hold at `step` (fresh parameters; step and optimizer counts set)."""
  cfg = train.resolve(config)
  ckpt_lib.guard_workdir(workdir, config)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  k = cfg.train.steps_per_dispatch
  with jax.set_mesh(mesh):
    task = tasks.build(cfg.task, cfg.seed)
    state, _, _ = train.init_state(cfg, task, models.build(cfg.model, task), mesh)
    counts = lambda x: jnp.full_like(x, step) if x.dtype == jnp.int32 and x.ndim == 0 else x  # optax counts
    state = dict(state, step=jnp.int32(step), opt_state=jax.tree.map(counts, state["opt_state"]))
    data_iter = None
    if cfg.data.pipeline == "grain":
      data_iter = pipeline.make_iterator(cfg.seed, task.dataset_size, cfg.train.batch_size, k, cfg.train.num_steps,
                                         slice(0, cfg.train.batch_size), cfg.data.prefetch)
      data_iter.set_state({"next_index": step // k})
    ckpt = ckpt_lib.Checkpointer(workdir, cfg.checkpoint, cfg.train.num_steps, k)
    ckpt.save(step, state, data_iter)
    ckpt.close()


def test_a_5e7_step_run_resumed_at_4_99e7_with_batch_256(tiny, tmp_path):
  """Restores a run at step 4.99e7 (batch 256, infinite data: indices past 2^32), finishes it, and checks the
  milestones, the schedule, and that the Grain and device-side pipelines train on the same data there."""
  start, end, per_decade = 49_900_000, 49_900_060, 1527  # this grid has a milestone at 49_900_040
  milestone = [s for s in ckpt_lib.milestones(10**9, per_decade, 10) if start < s <= end]
  assert milestone == [49_900_040]
  runs = {}
  for pipe in ("grain", "device"):
    config = tiny(**{"task.dataset_size": 0, "train.batch_size": 256, "train.num_steps": end, "train.log_every": 20,
                     "checkpoint.every": 0, "checkpoint.per_decade": per_decade, "eval_every": 0,
                     "optim.schedule": "warmup_rsqrt", "optim.warmup_steps": 1000, "data.pipeline": pipe,
                     "plot": False})
    workdir = str(tmp_path / pipe)
    _checkpoint_at(config, workdir, start)
    out = train.run(config, workdir)
    assert out["step"] == end
    # rsqrt decay lr * sqrt(w / t), evaluated at the last step (float32 on the device)
    assert out["train"]["train/lr"] == pytest.approx(3e-4 * np.sqrt(1000 / end), rel=1e-5)
    saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert saved == [start] + milestone + [end]
    rows = results.read(workdir)
    assert sorted({r["step"] for r in rows if r["evaluator"] != "train"}) == milestone + [end]
    runs[pipe] = [(r["step"], r["evaluator"], r["metric"], r["value"]) for r in rows]
  # Same indices -> the same batches -> the same training, metric for metric.
  np.testing.assert_allclose([r[3] for r in runs["grain"]], [r[3] for r in runs["device"]], rtol=1e-6)
  assert [r[:3] for r in runs["grain"]] == [r[:3] for r in runs["device"]]


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

