"""Preemption notices (SIGTERM: TPU/VM preemption, SLURM's --signal, `kill`): stop at one step on every host, save.

One process: a SIGTERM handler sets a flag the loop reads at each dispatch boundary. Several processes: JAX's
preemption sync manager (started by jax.distributed.initialize) catches SIGTERM on whichever host receives it,
propagates it to all, and `multihost_utils.reached_preemption_sync_point(i)` returns True on every host at the
same dispatch. It must be called at every dispatch with consecutive ids 0, 1, 2, ... from the same id on every
host: the service picks max(reported id) + 1 as the safe point, which a caller passing step counts (0, K, 2K, ...)
never presents (jax/experimental/multihost_utils.py).

`install_early()` is called first thing by main.py: a notice that arrives while the run is still starting (imports,
compilation, restoring) is remembered and honoured at the first dispatch boundary instead of killing the process
with status 143 and no word.
"""
from __future__ import annotations

import logging
import os
import signal
import threading

_early = {"requested": False, "installed": False}


def _early_handler(signum, frame):
  del signum, frame
  _early["requested"] = True


def install_early() -> None:
  """Remember a SIGTERM that arrives before the training loop runs (main thread only)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _early_handler)
    _early["installed"] = True


class Preemption:
  """Asks the loop to save and exit at a dispatch boundary that every process agrees on."""

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.multi = jax.process_count() > 1
    self.requested = False
    self._previous = None
    self._dispatch = 0
    if self.multi:
      if _early["requested"]:
        # The notice came before jax.distributed.initialize() put JAX's own SIGTERM handler in place of ours:
        # hand it to JAX now, so every process learns of it and they stop together.
        logging.warning("SIGTERM received during start-up: passing it to the other processes.")
        os.kill(os.getpid(), signal.SIGTERM)
    elif threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      if _early["requested"]:
        self._handle(signal.SIGTERM, None)

  def _handle(self, signum, frame):
    del signum, frame
    if not self.requested:
      logging.warning("SIGTERM received: saving a checkpoint and exiting.")
    self.requested = True

  def due(self) -> bool:
    """Called once per dispatch boundary, at every boundary, by every process (the ids must be consecutive)."""
    if self.multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      due = multihost_utils.reached_preemption_sync_point(self._dispatch)
      self._dispatch += 1
      if due:
        logging.warning("Preemption notice: every process stops at this step.")
      return due
    return self.requested

  def close(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      _early["requested"] = False
