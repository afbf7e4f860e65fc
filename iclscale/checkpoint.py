"""Orbax checkpoints: fixed interval + log-spaced milestones, keep-last-N, async, resume, corruption fallback.

Milestones are log-spaced on an absolute grid (`per_decade` points per power of ten), not relative to the run's
length, so extending a run keeps every milestone already written: transience analysis needs dense early and
sparse late checkpoints, and they must survive the run being continued.

A checkpoint is used only if it is whole: readable, with a Grain iterator position that agrees with its step, and
with array contents that match the digest computed when it was saved (Orbax stores no checksums of array data).
A corrupt one is set aside in checkpoints_corrupt/ and the previous one is tried. A readable checkpoint whose
arrays do not fit this config's state (another model or optimizer) is never moved: the run is refused.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import shutil
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
from etils import epath
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from iclscale import config as config_lib
from iclscale import distributed

DEFAULTS = dict(
    every=5000,          # save every this many steps (0 = only milestones, the end and preemption)
    keep=3,              # keep the latest N interval checkpoints; milestone checkpoints are always kept
    per_decade=4,        # log-spaced milestones per power of ten of steps (0 = none)
    async_save=True,     # write in a background thread; the loop only waits for the device->host copy
)


def validate(cfg) -> None:
  for f in ("every", "per_decade"):
    config_lib.check(isinstance(cfg[f], int) and cfg[f] >= 0, f"checkpoint.{f}", f"must be an int >= 0, got {cfg[f]!r}")
  config_lib.check(isinstance(cfg.keep, int) and cfg.keep > 0, "checkpoint.keep", f"must be an int > 0, got {cfg.keep!r}")


def leaf_name(path: tuple) -> str:
  """A pytree path as Orbax names the stored array ('opt_state.0.mu.w')."""
  return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


# States at least this large are neither copied for a deferred save (Checkpointer.snapshot) nor by XLA while a CPU
# write holds views of them: the loop saves them in place and waits for the write (Checkpointer.before_update).
# 3.2 GB for Gemma 3 270M with AdamW; the 2-layer model's state is 1.2 MB.
WAIT_FOR_WRITE_BYTES = 64 << 20
_DIGEST_MUL = 0x9E3779B1
# Elements per step of the blocked digest sum (4 MB of uint32 temporaries). XLA's CPU backend does not fuse a
# reduction with the elementwise product feeding it, so a one-shot sum over a leaf materializes a uint32 copy of
# the whole leaf: 3 GiB of temporaries for the Gemma 3 270M AdamW state (XLA memory_analysis of the unblocked sum).
_DIGEST_BLOCK = 1 << 20


def _leaf_bits(x: jax.Array) -> jax.Array:
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)


def _weighted_sum(bits_N: jax.Array, start: jax.Array) -> jax.Array:
  """sum_i bits_i * (2 (start + i) + 1) * 0x9E3779B1 mod 2^32."""
  i_N = start + jnp.arange(bits_N.size, dtype=jnp.uint32)
  return jnp.sum(bits_N * ((2 * i_N + 1) * jnp.uint32(_DIGEST_MUL)), dtype=jnp.uint32)


@functools.partial(jax.jit, static_argnums=1)
def _digest_leaves(tree: Any, blocked: tuple[bool, ...]) -> list[jax.Array]:
  """Per leaf: sum_i bits_i * (2i + 1) * 0x9E3779B1 mod 2^32 over the leaf's raw bits. The weights are odd, so
  flipping any one bit (or any bits of one element) always changes the sum.

  A `blocked` leaf is summed _DIGEST_BLOCK elements at a time in a loop (the same value: the sum is taken mod
  2^32, in any order); the others in one pass, which keeps a sharded leaf's sum local to its shards instead of
  gathering it for the loop's dynamic slices."""
  out = []
  for x_N, blocked_leaf in zip((x.reshape(-1) for x in jax.tree.leaves(tree)), blocked):
    if not blocked_leaf:
      out.append(_weighted_sum(_leaf_bits(x_N), jnp.uint32(0)))
      continue
    num_blocks = x_N.size // _DIGEST_BLOCK

    def add_block(k, acc, x_N=x_N):
      block_N = jax.lax.dynamic_slice(x_N, (k * _DIGEST_BLOCK,), (_DIGEST_BLOCK,))
      return acc + _weighted_sum(_leaf_bits(block_N), k.astype(jnp.uint32) * jnp.uint32(_DIGEST_BLOCK))
    acc = jax.lax.fori_loop(0, num_blocks, add_block, jnp.uint32(0)) if num_blocks else jnp.uint32(0)
    if x_N.size % _DIGEST_BLOCK:
      start = num_blocks * _DIGEST_BLOCK
      acc = acc + _weighted_sum(_leaf_bits(x_N[start:]), jnp.uint32(start % 2**32))
    out.append(acc)
  return out


def digest(tree: Any) -> dict[str, int]:
  """{leaf name: 32-bit digest of its bits}: one jitted pass over the (possibly sharded) arrays, a few bytes back.
  Leaves on one device (or replicated) are summed in blocks, which bounds the pass's temporaries at a few MB."""
  return finish_digest(start_digest(tree))


def start_digest(tree: Any) -> tuple[list[str], list[jax.Array]]:
  """Dispatches `digest`'s pass and returns (leaf names, device sums) without waiting for it."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [leaf_name(p) for p, _ in flat]
  blocked = tuple(bool(getattr(getattr(x, "sharding", None), "is_fully_replicated", True)) for _, x in flat)
  return paths, _digest_leaves(tree, blocked)


def finish_digest(started: tuple[list[str], list[jax.Array]]) -> dict[str, int]:
  paths, sums = started
  return dict(zip(paths, (int(v) for v in jax.device_get(sums))))


@jax.jit
def copy_tree(tree: Any) -> Any:
  """A device copy of every leaf (same shardings, new buffers), as ONE program. A copy per leaf (device_put with
  may_alias=False) is one execution per leaf and device: the 2-layer model's state has 97 leaves. The CPU client
  admits 32 unfinished executions per device (PjRt CPU's max_inflight_computations_per_device) and launches a
  program with collectives from its thread pool, so a burst of copies that wait on a just-dispatched train step can
  take all 32 slots of a device before that step is launched there: the step then never starts and neither do the
  copies (seen with 2 processes x 4 devices on a loaded 2-core host)."""
  return jax.tree.map(jnp.copy, tree)


class IncompatibleCheckpoint(config_lib.ConfigError):
  """A readable checkpoint that this config cannot continue: refused, never moved."""


def milestones(num_steps: int, per_decade: int, multiple: int) -> list[int]:
  """Steps round(10^(k/per_decade)) rounded up to a multiple of the dispatch size, up to num_steps."""
  if per_decade <= 0 or num_steps <= 0:
    return []
  k_max = int(np.ceil(per_decade * np.log10(max(num_steps, 1)))) + 1
  raw = np.round(10.0 ** (np.arange(k_max + 1) / per_decade)).astype(np.int64)
  steps = np.unique(-(-raw // multiple) * multiple)
  return [int(s) for s in steps if s <= num_steps]


def itstime(step: int, every: int, total: int | None = None, at: frozenset | set = frozenset()) -> bool:
  """big_vision-style: a periodic action is due at multiples of `every`, at listed steps and at the last step."""
  return bool((every and step % every == 0) or step in at or (total is not None and step == total))


class Checkpointer:
  """Saves/restores {'state': train state pytree, 'data': Grain iterator} under workdir/checkpoints."""

  def __init__(self, workdir: str, cfg, num_steps: int, multiple: int):
    self.dir = os.path.join(os.path.abspath(workdir), "checkpoints")
    # The grid does not depend on num_steps (10^9 covers any run), so extending a run keeps its milestones.
    self.milestones = frozenset(milestones(10**9, cfg.per_decade, multiple))
    self.every, self.num_steps = cfg.every, num_steps
    keep = [policies.LatestN(cfg.keep), policies.CustomSteps(sorted(self.milestones))]
    # Which steps to save is decided by `due` on the host (a cheap check per dispatch); Orbax decides what to keep.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep),
        enable_async_checkpointing=cfg.async_save, create=True)
    # Handlers named up front, so a new process can read a checkpoint's metadata before restoring it.
    # The state uncompressed: zstd saves ~6% of a Gemma 3 270M AdamW state (3.01 of 3.22 GB; float mantissas are
    # close to random bits), but its encoded chunks are held in memory until written, as much again as the state
    # (+3 GB of RSS during each write), and compressing takes most of a write's time on a CPU host. The format is
    # StandardCheckpointHandler's (which wraps this handler with compression on), so either reads the other's.
    handlers = dict(state=ocp.PyTreeCheckpointHandler(use_compression=False),
                    data=grain.checkpoint.CheckpointHandler(), digest=ocp.JsonCheckpointHandler())
    self.mngr = ocp.CheckpointManager(self.dir, options=options, item_handlers=handlers)
    self.steps_per_chunk = multiple
    self._write_holds_state = False   # a background write holds views of the live state's buffers (`save`)

  def due(self, step: int) -> bool:
    return itstime(step, self.every, self.num_steps, self.milestones)

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | FrozenPosition | None,
           started_digest: tuple | None = None) -> bool:
    """Writes step `step` (in the background where async_save); `started_digest` is start_digest(state) when it
    was dispatched earlier (`snapshot`)."""
    args = dict(state=ocp.args.PyTreeSave(state),
                digest=ocp.args.JsonSave(finish_digest(started_digest or start_digest(state))))
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    with _disk_full_as_oserror(self.dir):  # also reports a failure of the previous background save
      saved = self.mngr.save(step, args=ocp.args.Composite(**args), force=True)
    # On the CPU backend Orbax's device-to-host transfer (np.asarray of each shard in transfer_arrays_to_host,
    # orbax/checkpoint/_src/serialization/replica_slices.py) is a zero-copy view of the state's own buffers.
    # Below WAIT_FOR_WRITE_BYTES XLA's silent copy of the state costs less than waiting for the write (the 2-layer
    # model's 1.2 MB state is saved at every milestone; waiting would idle the device for each of those writes).
    leaves = jax.tree.leaves(state)
    self._write_holds_state = (saved and sum(x.nbytes for x in leaves) >= WAIT_FOR_WRITE_BYTES
                               and any(d.platform == "cpu" for x in leaves for d in x.sharding.device_set))
    return saved

  def snapshot(self, state: Any, data_iter: grain.DatasetIterator | None) -> tuple[Any, Any, tuple] | None:
    """`save`'s arguments after the step, taken now so that the loop can dispatch its next steps before Orbax's
    host-side work begins (that work then overlaps the device's): a device copy of the state (the next step
    donates the live one), the data iterator's position, and the digest's pass, dispatched before the next steps
    so that `save` never waits for them. None for a state of WAIT_FOR_WRITE_BYTES or more: a copy would double
    its memory, so it is saved in place before the next step."""
    if sum(x.nbytes for x in jax.tree.leaves(state)) >= WAIT_FOR_WRITE_BYTES:
      return None
    position = None if data_iter is None else FrozenPosition(data_iter.get_state())
    copy = copy_tree(state)
    return copy, position, start_digest(copy)

  def before_update(self) -> None:
    """Call before the saved state is donated to the next step. XLA cannot donate a buffer that a host view still
    references: it silently allocates a second state for the step's output (3.2 GB for Gemma 3 270M with AdamW)
    and the first is freed only when the background write is done. So while a write holds views of the state
    (the CPU backend), wait for it here; the loop saves before it evaluates, so the write overlaps the evaluation."""
    if self._write_holds_state:
      self.wait()
      self._write_holds_state = False

  def _check_fits(self, step: int, target: Any) -> None:
    """Raises IncompatibleCheckpoint if the stored arrays (names, shapes) are not those of `target`."""
    meta = self.mngr.item_metadata(step)["state"]
    if meta is None:
      raise ValueError("its array metadata cannot be read")
    stored = {m.name: tuple(m.shape) for m in jax.tree.leaves(getattr(meta, "tree", meta))}
    mine = {leaf_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
    if stored != mine:
      diff = sorted(set(stored.items()) ^ set(mine.items()))
      raise IncompatibleCheckpoint(
          f"the checkpoint at step {step} in {self.dir} holds a different state than this config builds "
          f"(first difference: {diff[0][0]}); it was kept; use another --workdir")

  def _read(self, step: int, target: Any, data_iter: grain.DatasetIterator | None) -> Any:
    """The state of one checkpoint, verified; raises on any sign of corruption."""
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)   # each array onto its target's sharding
    args = dict(state=ocp.args.PyTreeRestore(target, restore_args=restore_args))
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    state = self.mngr.restore(step, args=ocp.args.Composite(**args))["state"]
    if data_iter is not None:
      position = data_iter.get_state().get("next_index")
      if position != step // self.steps_per_chunk:
        raise ValueError(f"the data iterator is at chunk {position}, but step {step} needs chunk "
                         f"{step // self.steps_per_chunk}")
    try:
      saved = self.mngr.restore(step, args=ocp.args.Composite(digest=ocp.args.JsonRestore()))["digest"]
    except Exception:  # pylint: disable=broad-except  # checkpoints written before digests existed
      logging.warning("Checkpoint at step %d has no digest; its array contents are not verified.", step)
      return state
    mine = digest(state)
    bad = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    if bad:
      raise ValueError(f"array contents differ from the digest written when it was saved ({', '.join(bad[:3])})")
    return state

  def restore(self, target: Any, data_iter: grain.DatasetIterator | None) -> tuple[int, Any] | None:
    """Restores the newest whole checkpoint; a corrupt one is set aside with a warning, never used. A readable
    checkpoint of another state (IncompatibleCheckpoint) is refused and left where it is."""
    for step in sorted(self.mngr.all_steps(), reverse=True):
      try:
        self._check_fits(step, target)  # from the shared metadata: every process decides the same
        restored, why = self._read(step, target, data_iter), ""
      except IncompatibleCheckpoint:
        raise
      except Exception as e:  # pylint: disable=broad-except  # any failure to read or verify: do not use it
        restored, why = None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
      # Unreadable on any process is unreadable for all: every process falls back to the same step.
      if distributed.all_true("restore", restored is not None):
        return step, restored
      bad = os.path.join(os.path.dirname(self.dir), "checkpoints_corrupt", str(step))
      if os.path.exists(bad):
        bad = f"{bad}.{time.strftime('%Y%m%d-%H%M%S')}"
      logging.warning("Checkpoint at step %d is unreadable or corrupt (%s); moved to %s, trying the previous one.",
                      step, why or "on another process", bad)
      if jax.process_index() == 0:
        os.makedirs(os.path.dirname(bad), exist_ok=True)
        shutil.move(os.path.join(self.dir, str(step)), bad)
      distributed.all_true("restore_moved", True)  # a barrier: nobody reloads before the move
      self.mngr.reload()
    return None

  def wait(self) -> None:
    with _disk_full_as_oserror(self.dir):
      self.mngr.wait_until_finished()

  def close(self) -> None:
    with _disk_full_as_oserror(self.dir):
      try:
        self.mngr.wait_until_finished()
      finally:
        self.mngr.close()


class FrozenPosition:
  """A data iterator's position taken at a step, saved later by Grain's checkpoint handler (which writes
  `get_state()` of whatever it is given: JSON bytes for an object that is not a live iterator)."""

  def __init__(self, state: dict):
    self._json = json.dumps(state, indent=4).encode()

  def get_state(self) -> bytes:
    return self._json


class _disk_full_as_oserror:  # pylint: disable=invalid-name
  """Orbax reports a full disk as ValueError('RESOURCE_EXHAUSTED ... [os_error_code='28']'): raise the OSError
  (ENOSPC) it is, so the caller says it in one line. The unfinished save stays a *.orbax-checkpoint-tmp
  directory, which Orbax never restores: the previous checkpoints remain the run's latest."""

  def __init__(self, where: str):
    self.where = where

  def __enter__(self):
    return self

  def __exit__(self, kind, e, tb):
    if e is not None and not isinstance(e, OSError) and (
        "os_error_code='28'" in str(e) or "No space left on device" in str(e)):
      raise OSError(errno.ENOSPC, "No space left on device", self.where) from None
    return False


def latest_saved_step(workdir: str) -> int | None:
  """The newest finished checkpoint's step in workdir (Orbax's unfinished saves end in -tmp), or None."""
  root = epath.Path(workdir) / "checkpoints"
  steps = [int(p.name) for p in root.iterdir() if p.name.isdigit()] if root.exists() else []
  return max(steps, default=None)


def check_writable(workdir: str) -> None:
  """One ConfigError line for a workdir that is a file or cannot be written (checked before anything runs)."""
  root = epath.Path(workdir)
  if root.exists() and not root.is_dir():
    raise config_lib.ConfigError(f"workdir {workdir} is a file, not a directory; use another --workdir")
  created = []  # directories made for the probe are removed again: a run that does not start leaves nothing
  node = root
  while not node.exists() and node != node.parent:
    created.append(node)
    node = node.parent
  probe = root / f".write_test.{jax.process_index()}"
  try:
    root.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise config_lib.ConfigError(f"workdir {workdir} cannot be written ({e.strerror or e}); "
                                 "use another --workdir") from None
  finally:
    for d in created:
      if d.exists():
        d.rmdir()


def guard_workdir(workdir: str, cfg) -> bool:
  """Refuses a workdir that holds a run of a different config. Returns True if the workdir already had one.

  `cfg` is the resolved config (every default filled in), so spelling out a default is not a different config.
  Each start appends the resumable fields (config.RESUMABLE_FIELDS: the run's length, cadences, and the learning
  rate and clipping a resume after a non-finite loss may lower) to history.jsonl. Works for local paths and gs://
  (etils.epath); on multi-host runs only process 0 writes.
  """
  check_writable(workdir)
  path = epath.Path(workdir) / "config.json"
  mine = config_lib.run_identity(cfg)
  existed = _check_identity(workdir, path, mine)
  if jax.process_index() == 0:
    if not existed:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(mine, indent=1, sort_keys=True, default=str))
    history = epath.Path(workdir) / "history.jsonl"
    flat = config_lib.flatten(cfg)
    line = json.dumps(dict(start=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           **{k: flat[k] for k in config_lib.RESUMABLE_FIELDS if k in flat}), default=str)
    previous = history.read_text() if history.exists() else ""
    history.write_text(previous + line + "\n")
  return existed


def _check_identity(workdir: str, path, mine: dict) -> bool:
  if path.exists():
    theirs = json.loads(path.read_text())
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k, "<unset>") != theirs.get(k, "<unset>"))
    if diff:
      shown = ", ".join(f"{k}: {theirs.get(k, '<unset>')!r} -> {mine.get(k, '<unset>')!r}" for k in diff[:4])
      more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
      raise config_lib.ConfigError(
          f"workdir {workdir} holds a run with a different config ({shown}{more}); use another --workdir")
    return True
  return False


def restore_params(workdir: str, abstract_params: Any = None, field: str = "model.init_from") -> Any:
  """The parameters of the newest checkpoint of another run's workdir, as host arrays; that run is only read.

  `abstract_params` is the tree the loop initialized (ShapeDtypeStructs): the loaded tree must have its structure
  and shapes, else the checkpoint belongs to another architecture (a ConfigError naming `field`). None = no check
  (reading a finished run's weights for analysis).
  """
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
                             item_names=("state", "data")) as mngr:
    step = mngr.latest_step()
    config_lib.check(step is not None, field, f"{workdir} has no complete checkpoint")
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  params = jax.tree.map(np.asarray, state["params"])
  if abstract_params is None:
    return params
  want = jax.tree_util.tree_flatten_with_path(abstract_params)
  got = jax.tree_util.tree_flatten_with_path(params)
  config_lib.check(want[1] == got[1], field, f"{workdir} holds parameters of another architecture "
                   f"({len(got[0])} arrays where this model has {len(want[0])}, or other names)")
  for (path, w), (_, g) in zip(want[0], got[0]):
    config_lib.check(w.shape == g.shape, field, f"{workdir} holds parameters of another architecture "
                     f"({jax.tree_util.keystr(path)}: {g.shape} where this model has {w.shape})")
  return params
