"""What every config shares: one way to pick the scale, the blocks each config repeats, and completion.

big_vision's configs/common.py is the model. A config's get_config(arg) reads its scale with `pick_scale`, starts
from `base()` (seed, data, mesh, checkpoint, report blocks), sets what its study needs, and returns
`complete(c)`: the config with every field of every plug-in it uses filled in from the declared, commented
defaults in the package (train.TRAIN_DEFAULTS, optim.DEFAULTS, pipeline.DEFAULTS, mesh.DEFAULTS,
checkpoint.DEFAULTS, and the task, model and evaluator registries), so any field can be overridden on the command
line (--config.optim.grad_clip=1.0) and the config the run records is the one it trains.
"""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections


def pick_scale(arg: str | None, scales: Sequence[str], default: str) -> str:
  """The config argument as one of `scales` (default when empty); anything else is a one-line ValueError."""
  scale = arg or default
  if scale not in scales:
    raise ValueError(f"unknown scale {scale!r}: use {', '.join(scales[:-1])} or {scales[-1]}")
  return scale


def base() -> ml_collections.ConfigDict:
  """The blocks every config repeats, at their usual values; a config sets task, model, optim, train, eval_every
  and evals, and changes of these blocks only what its study needs (e.g. checkpoint.every per scale)."""
  c = ml_collections.ConfigDict()
  c.seed = 0                            # seeds the data, the evaluation sets and the initialization

  c.data = ml_collections.ConfigDict()
  c.data.pipeline = "grain"             # Grain yields sample indices, the device builds the sequences
  c.data.prefetch = 4                   # chunks of K steps buffered ahead of the device

  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = 0                # use the first n devices; 0 = all
  c.mesh.data = -1                      # the data-parallel axis takes the devices the others leave
  c.mesh.fsdp = 1                       # parameter sharding (worth it only for models of millions of parameters)
  c.mesh.model = 1                      # tensor parallelism

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 5000             # interval checkpoints (0 = only milestones, the end and preemption)
  c.checkpoint.keep = 3                 # interval checkpoints kept (milestones are always kept)
  c.checkpoint.per_decade = 4           # log-spaced milestone checkpoints and evaluations per power of ten
  c.checkpoint.async_save = True        # write in the background

  c.report_every_secs = 30.0            # steps/s and ETA (CLU ReportProgress)
  c.plot = True                         # write the evaluator curves (curves.png) at the end of the run

  c.profile = ml_collections.ConfigDict()
  c.profile.start_step = 0              # JAX profiler trace from this step (iclscale/profiling.py)
  c.profile.num_steps = 0               # steps traced into workdir/profile; 0 = no trace
  return c


def _fill(node: ml_collections.ConfigDict, defaults: dict[str, Any]) -> None:
  """Adds the declared fields `node` does not set (its own values win; unknown keys are left for validation)."""
  for key, value in defaults.items():
    if key not in node:
      node[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def plugin_defaults(c: ml_collections.ConfigDict) -> list[tuple[ml_collections.ConfigDict, dict[str, Any]]]:
  """(config block, the declared defaults of the plug-in it configures) for every block of `c`."""
  # Imported here: the package pulls in JAX, which a config file needs only when it is loaded.
  from iclscale import checkpoint, evaluators, mesh, models, optim, pipeline, profiling, tasks, train  # pylint: disable=g-import-not-at-top
  pairs = [(c.optim, optim.DEFAULTS), (c.train, train.TRAIN_DEFAULTS), (c.data, pipeline.DEFAULTS),
           (c.mesh, mesh.DEFAULTS), (c.checkpoint, checkpoint.DEFAULTS), (c.profile, profiling.DEFAULTS)]
  if c.task.get("name") in tasks.REGISTRY:
    pairs.append((c.task, tasks.REGISTRY[c.task.name].defaults))
  if c.model.get("name") in models.REGISTRY:
    pairs.append((c.model, models.REGISTRY[c.model.name].defaults))
  for ev in c.evals.values():
    if ev.get("type") in evaluators.REGISTRY:
      pairs.append((ev, evaluators.REGISTRY[ev.type].defaults))
  return pairs


def complete(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`c` with every field of every plug-in it uses, each at its declared default unless `c` sets it."""
  for name in ("optim", "train", "data", "mesh", "checkpoint", "evals", "profile"):
    if name not in c:
      c[name] = ml_collections.ConfigDict()
  for key, ev in list(c.evals.items()):  # evaluator entries written as dicts become ConfigDicts
    if not isinstance(ev, ml_collections.ConfigDict):
      c.evals[key] = ml_collections.ConfigDict(ev)
  for node, defaults in plugin_defaults(c):
    _fill(node, defaults)
  return c
