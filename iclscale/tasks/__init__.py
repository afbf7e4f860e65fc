"""Task registry: a task turns (seed, index) into a training sequence on the device and builds its eval sets.

A task object exposes
  num_classes, dataset_size (None = infinite), input_shape, arrays (device arrays its sampler reads),
  batch(arrays, indices_B) -> dict of arrays (jittable), eval_sets(kind, num_examples) -> {name: batch}.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from iclscale import config as config_lib
from iclscale.tasks import bursty
from iclscale.tasks import category
from iclscale.tasks import facts
from iclscale.tasks import grid
from iclscale.tasks import stylized
from iclscale.tasks import stylized_omniglot

# name -> (module with DEFAULTS / validate, task class)
REGISTRY: dict[str, tuple[Any, Any]] = {
    "stylized": (stylized, stylized.StylizedTask),
    "bursty": (bursty, bursty.BurstyTask),
    "stylized_omniglot": (stylized_omniglot, stylized_omniglot.StylizedOmniglotTask),
    "facts": (facts, facts.FactsTask),
    "russin_grid": (grid, grid.GridTask),
    "russin_category": (category, category.CategoryTask),
}


def register(name: str, module: Any, cls: Any) -> None:
  REGISTRY[name] = (module, cls)


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """Validates a task config against its declaration and returns it with defaults filled in."""
  config_lib.check("name" in cfg and cfg.name in REGISTRY, "task.name",
                   f"unknown task {cfg.get('name')!r} (known: {', '.join(sorted(REGISTRY))})")
  module, _ = REGISTRY[cfg.name]
  full = config_lib.with_defaults(cfg, module.DEFAULTS, "task")
  module.validate(full)
  return full


def input_shape(cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The shape of one item of a resolved task config, known before any array is built."""
  return tuple(REGISTRY[cfg.name][0].input_shape(cfg))


def num_copies(cfg: ml_collections.ConfigDict) -> int:
  """How many independent model copies a resolved task config trains side by side (1 for most tasks)."""
  module = REGISTRY[cfg.name][0]
  return module.num_copies(cfg) if hasattr(module, "num_copies") else 1


def build(cfg: ml_collections.FrozenConfigDict, seed: int):
  """Builds a task from a resolved config (see `resolve`)."""
  return REGISTRY[cfg.name][1](cfg, seed)
