"""Task registry: config name -> contracts.TaskSpec (the Task contract is written in iclscale/contracts.py)."""
from __future__ import annotations

import ml_collections

from iclscale import config as config_lib
from iclscale import contracts
from iclscale.tasks import bursty
from iclscale.tasks import category
from iclscale.tasks import episodes
from iclscale.tasks import facts
from iclscale.tasks import grid
from iclscale.tasks import stylized
from iclscale.tasks import stylized_omniglot

REGISTRY: dict[str, contracts.TaskSpec] = {
    "stylized": contracts.TaskSpec(stylized.DEFAULTS, stylized.validate, stylized.input_shape,
                                   stylized.StylizedTask, member_fields=stylized.MEMBER_FIELDS),
    "bursty": contracts.TaskSpec(bursty.DEFAULTS, bursty.validate, bursty.input_shape, bursty.BurstyTask,
                                 member_fields=bursty.MEMBER_FIELDS),
    "stylized_omniglot": contracts.TaskSpec(stylized_omniglot.DEFAULTS, stylized_omniglot.validate,
                                            stylized_omniglot.input_shape, stylized_omniglot.StylizedOmniglotTask,
                                            member_fields=stylized.MEMBER_FIELDS),
    "facts": contracts.TaskSpec(facts.DEFAULTS, facts.validate, facts.input_shape, facts.FactsTask),
    "russin_grid": contracts.TaskSpec(grid.DEFAULTS, grid.validate, grid.input_shape, grid.GridTask,
                                      member_fields=episodes.MEMBER_FIELDS),
    "russin_category": contracts.TaskSpec(category.DEFAULTS, category.validate, category.input_shape,
                                          category.CategoryTask, member_fields=episodes.MEMBER_FIELDS),
}


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """Validates a task config against its declaration and returns it with defaults filled in."""
  config_lib.check("name" in cfg and cfg.name in REGISTRY, "task.name",
                   f"unknown task {cfg.get('name')!r} (known: {', '.join(sorted(REGISTRY))})")
  spec = REGISTRY[cfg.name]
  full = config_lib.with_defaults(cfg, spec.defaults, "task")
  spec.validate(full)
  return full


def input_shape(cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The shape of one item of a resolved task config, known before any array is built."""
  return tuple(REGISTRY[cfg.name].input_shape(cfg))


def member_fields(name: str) -> tuple[str, ...] | None:
  """The fields population members of task `name` may vary (contracts.TaskSpec.member_fields); None = none, not
  even the seed."""
  return REGISTRY[name].member_fields if name in REGISTRY else ()


def build(cfg: ml_collections.FrozenConfigDict, seed: int) -> contracts.Task:
  """Builds a task from a resolved config (see `resolve`)."""
  return REGISTRY[cfg.name].build(cfg, seed)
