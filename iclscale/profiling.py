"""A JAX profiler trace of a few training steps, written into the run's workdir (config section `profile`).

  python main.py --config.profile.start_step=1000 --config.profile.num_steps=20

traces the dispatches that cover steps [start_step, start_step + num_steps) (rounded out to whole K-step
dispatches) into <workdir>/profile/plugins/profile/<timestamp>/: `*.xplane.pb` for TensorBoard's profile plugin
(`tensorboard --logdir <workdir>/profile`) and `perfetto_trace.json.gz` for https://ui.perfetto.dev. The trace
starts after the queued work has finished and stops after the traced steps have, so it holds exactly those steps.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax

from iclscale import config as config_lib

DEFAULTS = dict(
    start_step=0,   # first step to trace (the dispatch that starts at or after it; skip compilation: > 0)
    num_steps=0,    # how many steps to trace; 0 = no trace
)


def validate(cfg) -> None:
  for f in ("start_step", "num_steps"):
    config_lib.check(isinstance(cfg[f], int) and cfg[f] >= 0, f"profile.{f}", f"must be an int >= 0, got {cfg[f]!r}")


class Profile:
  """Call `before(step, barrier)` before each dispatch and `after(step, barrier)` after it; `close()` at the end."""

  def __init__(self, cfg, workdir: str):
    self.start, self.end = cfg.start_step, cfg.start_step + cfg.num_steps
    self.dir = os.path.join(workdir, "profile")
    self.active = False
    self.done = cfg.num_steps == 0

  def before(self, step: int, barrier: Any) -> None:
    if self.done or self.active or step < self.start:
      return
    jax.block_until_ready(barrier)  # earlier queued steps stay out of the trace
    jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
    self.active = True

  def after(self, step: int, barrier: Any) -> None:
    if self.active and step >= self.end:
      self.close(barrier)

  def close(self, barrier: Any = None) -> None:
    if not self.active:
      return
    jax.block_until_ready(barrier)
    jax.profiler.stop_trace()
    self.active, self.done = False, True
    logging.info("Profiler trace of steps %d..%d written to %s", self.start, self.end, self.dir)
