"""Orbax checkpoints: fixed interval + log-spaced milestones, keep-last-N, async, resume, corruption fallback.

Milestones are log-spaced on an absolute grid (`per_decade` points per power of ten), not relative to the run's
length, so extending a run keeps every milestone already written: transience analysis needs dense early and
sparse late checkpoints, and they must survive the run being continued.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import grain
import jax
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
    self.mngr = ocp.CheckpointManager(self.dir, options=options, item_names=("state", "data"))

  def due(self, step: int) -> bool:
    return itstime(step, self.every, self.num_steps, self.milestones)

  def save(self, step: int, state: Any, data_iter: grain.DatasetIterator | None) -> bool:
    args = dict(state=ocp.args.StandardSave(state))
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return self.mngr.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, target: Any, data_iter: grain.DatasetIterator | None) -> tuple[int, Any] | None:
    """Restores the newest readable checkpoint; an unreadable one is set aside with a warning, never used."""
    for step in sorted(self.mngr.all_steps(), reverse=True):
      args = dict(state=ocp.args.StandardRestore(target))
      if data_iter is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored, why = self.mngr.restore(step, args=ocp.args.Composite(**args)), ""
      except Exception as e:  # pylint: disable=broad-except  # any failure to read means: do not use it
        restored, why = None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
      # Unreadable on any process is unreadable for all: every process falls back to the same step.
      if distributed.all_true("restore", restored is not None):
        return step, restored["state"]
      bad = os.path.join(os.path.dirname(self.dir), "checkpoints_corrupt", str(step))
      logging.warning("Checkpoint at step %d is unreadable (%s); moved to %s, trying the previous one.",
                      step, why or "on another process", bad)
      if jax.process_index() == 0:
        os.makedirs(os.path.dirname(bad), exist_ok=True)
        shutil.move(os.path.join(self.dir, str(step)), bad)
      distributed.all_true("restore_moved", True)  # a barrier: nobody reloads before the move
      self.mngr.reload()
    return None

  def wait(self) -> None:
    self.mngr.wait_until_finished()

  def close(self) -> None:
    self.mngr.wait_until_finished()
    self.mngr.close()


def guard_workdir(workdir: str, cfg) -> bool:
  """Refuses a workdir that holds a run of a different config. Returns True if the workdir already had one.

  Works for local paths and gs:// (etils.epath); on multi-host runs only process 0 writes the record.
  """
  path = epath.Path(workdir) / "config.json"
  mine = config_lib.run_identity(cfg)
  if path.exists():
    theirs = json.loads(path.read_text())
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k, "<unset>") != theirs.get(k, "<unset>"))
    if diff:
      shown = ", ".join(f"{k}: {theirs.get(k, '<unset>')!r} -> {mine.get(k, '<unset>')!r}" for k in diff[:4])
      more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
      raise config_lib.ConfigError(
          f"workdir {workdir} holds a run with a different config ({shown}{more}); use another --workdir")
    return True
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mine, indent=1, sort_keys=True, default=str))
  return False
