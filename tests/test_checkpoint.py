"""Milestones, periodic-action timing and the workdir config guard."""
import json
import os

import numpy as np
import pytest

from iclscale import checkpoint
from iclscale.config import ConfigError


def test_milestones_are_log_spaced_and_independent_of_run_length():
  m = checkpoint.milestones(10_000, per_decade=2, multiple=1)
  assert m == [1, 3, 10, 32, 100, 316, 1000, 3162, 10000]
  assert checkpoint.milestones(100, per_decade=2, multiple=1) == m[:5]   # a prefix: extending keeps them


def test_milestones_round_up_to_the_dispatch_size():
  assert checkpoint.milestones(1000, per_decade=1, multiple=30) == [30, 120]
  assert checkpoint.milestones(1000, per_decade=0, multiple=1) == []


def test_itstime():
  assert checkpoint.itstime(200, 100) and not checkpoint.itstime(150, 100)
  assert checkpoint.itstime(150, 100, total=150)
  assert checkpoint.itstime(30, 0, at={30}) and not checkpoint.itstime(30, 0)


def test_guard_allows_extending_but_refuses_other_changes(tmp_path, tiny):
  assert checkpoint.guard_workdir(str(tmp_path), tiny()) is False
  assert checkpoint.guard_workdir(str(tmp_path), tiny(**{"train.num_steps": 10_000, "eval_every": 500})) is True
  with pytest.raises(ConfigError, match=r"task.input_noise: 0.2 -> 0.4"):
    checkpoint.guard_workdir(str(tmp_path), tiny(**{"task.input_noise": 0.4}))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["task.input_noise"] == 0.2 and "train.num_steps" not in saved


def test_config_record_uses_the_resolved_config(tmp_path, tiny):
  from iclscale import train  # pylint: disable=g-import-not-at-top
  assert checkpoint.guard_workdir(str(tmp_path), train.resolve(tiny())) is False
  # Spelling out a default (grad_clip 0 is the default) is the same config; lowering the lr is a resume change.
  assert checkpoint.guard_workdir(str(tmp_path), train.resolve(tiny(**{"optim.grad_clip": 0.0}))) is True
  assert checkpoint.guard_workdir(str(tmp_path), train.resolve(tiny(**{"optim.lr": 1e-4}))) is True
  history = [json.loads(ln) for ln in (tmp_path / "history.jsonl").read_text().splitlines()]
  assert [h["optim.lr"] for h in history] == [3e-4, 3e-4, 1e-4]
  assert json.loads((tmp_path / "config.json").read_text())["optim.b2"] == 0.999   # defaults are recorded


def test_per_decade_must_not_be_negative(tiny):
  from iclscale import train  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match=r"config\.checkpoint\.per_decade: must be an int >= 0, got -1"):
    train.resolve(tiny(**{"checkpoint.per_decade": -1}))


def test_digest_changes_with_any_one_bit():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  x = np.linspace(-1, 1, 1000).astype(np.float32)
  base = checkpoint.digest(dict(w=jnp.asarray(x), b=jnp.arange(3, dtype=jnp.int32)))
  for i, bit in ((0, 0), (517, 22), (999, 31)):
    y = x.view(np.uint32).copy()
    y[i] ^= np.uint32(1 << bit)
    assert checkpoint.digest(dict(w=jnp.asarray(y.view(np.float32)), b=jnp.arange(3, dtype=jnp.int32)))["w"] != base["w"]
  assert checkpoint.digest(dict(w=jnp.asarray(x), b=jnp.arange(3, dtype=jnp.int32))) == base


def test_digest_is_the_same_sum_blocked_or_sharded():
  """The blocked loop (leaves on one device) and the one-pass sum (sharded leaves) give the formula's value, over
  several blocks and a partial last one, for 4-, 2- and 1-byte leaves."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  n = 2 * checkpoint._DIGEST_BLOCK + 8 * 37  # pylint: disable=protected-access
  leaves = dict(w=rng.normal(size=(8, n // 8)).astype(np.float32), h=rng.normal(size=n).astype(ml_dtypes.bfloat16),
                m=rng.random(n) > 0.5)

  def reference(x):
    bits = (x.astype(np.uint8) if x.dtype == np.bool_ else x.reshape(-1).view(f"u{x.dtype.itemsize}")).reshape(-1)
    i = np.arange(bits.size, dtype=np.uint64)
    return int(np.sum(bits.astype(np.uint64) * (((2 * i + 1) * 0x9E3779B1) % 2**32) % 2**32) % 2**32)

  want = {k: reference(v) for k, v in leaves.items()}
  assert checkpoint.digest({k: jnp.asarray(v) for k, v in leaves.items()}) == want
  mesh = jax.make_mesh((len(jax.devices()),), ("d",))
  sharded = jax.device_put(leaves["w"], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")))
  assert not sharded.sharding.is_fully_replicated
  assert checkpoint.digest(dict(w=sharded)) == dict(w=want["w"])


def _saved(tmp_path, steps=(10, 20)):
  """A Checkpointer with checkpoints of a small state and a Grain iterator at each of `steps` (K = 10)."""
  import grain  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(checkpoint.DEFAULTS, every=10, per_decade=0, async_save=False))
  ckpt = checkpoint.Checkpointer(str(tmp_path), cfg, num_steps=100, multiple=10)
  make_iter = lambda: iter(grain.MapDataset.range(10).to_iter_dataset())  # noqa: E731
  it = make_iter()
  for s in steps:
    next(it)
    while int(it.get_state()["next_index"]) < s // 10:
      next(it)
    ckpt.save(s, dict(w=jnp.full((4, 3), float(s)), step=jnp.asarray(s, jnp.int32)), it)
  ckpt.wait()
  target = dict(w=jnp.zeros((4, 3)), step=jnp.asarray(0, jnp.int32))
  return ckpt, target, make_iter


def test_the_state_of_a_background_save_is_donated_to_the_next_step(tmp_path, monkeypatch):
  """On CPU an async save holds zero-copy views of the state; before_update waits for the write, so the next step
  updates the state in place (its buffers donated) instead of allocating a second one."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(checkpoint, "WAIT_FOR_WRITE_BYTES", 0)   # the wait is for large states; this one is small
  cfg = ml_collections.ConfigDict(dict(checkpoint.DEFAULTS, every=10, per_decade=0, async_save=True))
  ckpt = checkpoint.Checkpointer(str(tmp_path), cfg, num_steps=100, multiple=10)
  state = dict(w=jnp.full((256, 256), 1.0), step=jnp.asarray(10, jnp.int32))
  assert ckpt.save(10, state, None)
  ckpt.before_update()
  new = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)(state)
  assert state["w"].is_deleted() and float(new["w"][0, 0]) == 2.0
  ckpt.close()
  step, restored = checkpoint.Checkpointer(str(tmp_path), cfg, 100, 10).restore(
      dict(w=jnp.zeros((256, 256)), step=jnp.asarray(0, jnp.int32)), None)
  assert step == 10 and float(restored["w"][0, 0]) == 1.0   # the write read the state before it was updated


def test_a_snapshot_saved_after_the_next_steps_holds_the_step_it_was_taken_at(tmp_path, monkeypatch):
  """The loop snapshots a small state at a save step, dispatches more steps (donating the live state, advancing
  the data iterator) and saves the snapshot afterwards: the checkpoint holds the snapshot's values, iterator
  position and digest. A state of WAIT_FOR_WRITE_BYTES or more is not copied (snapshot returns None)."""
  import grain  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(checkpoint.DEFAULTS, every=10, per_decade=0, async_save=True))
  ckpt = checkpoint.Checkpointer(str(tmp_path), cfg, num_steps=100, multiple=10)
  make_iter = lambda: iter(grain.MapDataset.range(10).to_iter_dataset())  # noqa: E731
  it = make_iter()
  next(it)
  state = dict(w=jnp.full((4, 3), 1.0), step=jnp.asarray(10, jnp.int32))
  snap = ckpt.snapshot(state, it)
  assert snap is not None and snap[1].get_state() == b'{\n    "next_index": 1\n}'
  state = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)(state)  # the next step
  next(it)
  assert ckpt.save(10, *snap)
  ckpt.close()
  it2 = make_iter()
  step, restored = checkpoint.Checkpointer(str(tmp_path), cfg, 100, 10).restore(
      dict(w=jnp.zeros((4, 3)), step=jnp.asarray(0, jnp.int32)), it2)
  assert step == 10 and float(restored["w"][0, 0]) == 1.0 and int(restored["step"]) == 10
  assert it2.get_state()["next_index"] == 1 and float(state["w"][0, 0]) == 2.0
  monkeypatch.setattr(checkpoint, "WAIT_FOR_WRITE_BYTES", 48)
  assert ckpt.snapshot(state, it) is None   # 52 bytes: saved in place by the loop

def test_copy_tree_copies_every_leaf_in_one_program_keeping_its_sharding():
  """The snapshot's copy (one jitted program for any number of leaves): equal values and shardings over 8 devices
  (split, replicated and scalar leaves), new buffers, and the copy outlives the donated original."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((8,), ("fsdp",))
  tree = {f"w{i}": jax.device_put(jnp.arange(16.0 * (i + 1)).reshape(8, -1), NamedSharding(mesh, P("fsdp")))
          for i in range(40)}
  tree.update(b=jax.device_put(jnp.ones((3,)), NamedSharding(mesh, P())),
              step=jax.device_put(jnp.asarray(7, jnp.int32), NamedSharding(mesh, P())))
  copy = checkpoint.copy_tree(tree)
  assert len(jax.tree.leaves(checkpoint.copy_tree.lower(tree).out_info)) == len(tree) == 42   # one program
  for k, x in tree.items():
    assert copy[k].sharding.is_equivalent_to(x.sharding, x.ndim), k
    assert all(a.data.unsafe_buffer_pointer() != b.data.unsafe_buffer_pointer()
               for a, b in zip(x.addressable_shards, copy[k].addressable_shards)), k
  expected = jax.tree.map(np.asarray, tree)
  jax.jit(lambda t: jax.tree.map(lambda x: x + 1, t), donate_argnums=0)(tree)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, copy), expected)


def _set_json(path, **values):
  data = json.loads(path.read_text())
  data.update(values)
  path.write_text(json.dumps(data))


def test_restore_verifies_iterator_position_and_digest(tmp_path):
  ckpt, target, make_iter = _saved(tmp_path)
  step, state = ckpt.restore(target, make_iter())
  assert step == 20 and float(state["w"][0, 0]) == 20.0
  # A hand-edited iterator position: the checkpoint is corrupt, set aside; the previous one is used.
  _set_json(tmp_path / "checkpoints" / "20" / "data" / "process_0-of-1.json", next_index=7)
  it = make_iter()
  step, state = ckpt.restore(target, it)
  assert step == 10 and float(state["w"][0, 0]) == 10.0 and it.get_state()["next_index"] == 1
  assert os.listdir(tmp_path / "checkpoints_corrupt") == ["20"]


def test_restore_rejects_contents_that_do_not_match_the_digest(tmp_path):
  ckpt, target, make_iter = _saved(tmp_path)
  digest_file = next((tmp_path / "checkpoints" / "20" / "digest").glob("metadata"))
  saved = json.loads(digest_file.read_text())
  _set_json(digest_file, w=(saved["w"] + 1) % 2**32)   # as if the stored array bytes had changed since the save
  step, _ = ckpt.restore(target, make_iter())
  assert step == 10 and os.listdir(tmp_path / "checkpoints_corrupt") == ["20"]


def test_flipped_array_bytes_fall_back_to_the_previous_checkpoint(tmp_path):
  ckpt, target, make_iter = _saved(tmp_path)
  blobs = [p for p in (tmp_path / "checkpoints" / "20" / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
  for p in blobs:   # flip one byte in the middle of every stored data file
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x40
    p.write_bytes(bytes(data))
  step, state = ckpt.restore(target, make_iter())
  assert step == 10 and float(state["w"][0, 0]) == 10.0
  assert os.listdir(tmp_path / "checkpoints_corrupt") == ["20"]


def test_checkpoint_of_another_state_is_refused_and_kept(tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ckpt, target, make_iter = _saved(tmp_path)
  with pytest.raises(checkpoint.IncompatibleCheckpoint, match="holds a different state"):
    ckpt.restore(dict(target, w=jnp.zeros((5, 3))), make_iter())
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]
  assert not (tmp_path / "checkpoints_corrupt").exists()
