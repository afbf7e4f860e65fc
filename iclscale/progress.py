"""The progress line (steps/s, ETA) timed on finished device work, not on the host's dispatches.

CLU's ReportProgress stamps each report with the host's clock at the call. With asynchronous dispatch the host
runs ahead of the device by up to the queued chunks, so an interval's steps are divided by host time: at the end of
a run the final report (always due at the last step) can come milliseconds after the previous one while the device
still works through the queue, and the line shows impossible rates (e.g. 21877 steps/s at step 20000). Here a
report that is due first waits for the step's state to be computed (one sync per report, every
`report_every_secs`), so both ends of every interval are finished work.
"""
from __future__ import annotations

import time
from typing import Any

import jax
from clu import periodic_actions


class SyncedProgress(periodic_actions.ReportProgress):
  """ReportProgress whose timestamps are taken after `barrier` (e.g. the state's step counter) is ready."""

  def __call__(self, step: int, barrier: Any = None, t: float | None = None) -> bool:  # pylint: disable=arguments-renamed
    del t  # the time is read after the barrier
    if self._previous_step is None:  # the first call starts the clock on finished work
      jax.block_until_ready(barrier)
      self._init_and_check(step, time.monotonic())
      return False
    self._init_and_check(step, time.monotonic())
    if not self._should_trigger(step, time.monotonic()):
      return False
    jax.block_until_ready(barrier)
    now = time.monotonic()
    self._apply(step, now)
    self._after_apply(step, now)
    return True
