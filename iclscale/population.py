"""Populations: the members of a study (seeds x dataset sizes x hyperparameters) trained side by side in one program.

A config's `population` block names the fields that vary between members, as a product and/or a zip over config
paths; every other field is shared. Member i is the solo run of the config with member i's values (up to the
order of float operations in the batched program; benchmarks/drift.py measures what that amounts to): its
own seed (initialization, data stream, evaluation sets), its own dataset size N (a bound of its index sampler,
not a shape) and its own hyperparameters (arrays, not compiled constants). The loop stacks the members'
parameters and optimizer states on a leading axis and vmaps one member's step over it (train.py), so no member's
gradient, clipping norm or optimizer statistic depends on another's; the leading axis is sharded over the mesh's
`population` axis, so D devices each train P/D members without communicating.

Only fields that change neither shapes nor the compiled program may vary: `seed`, the optimizer's `lr` and `l2`
(per-member arrays) and the task fields its TaskSpec lists as `member_fields` (the task reads them from its
arrays). Anything else (width, layers, batch size, context length, the task kind) is refused with a one-line
error; members that differ in shape run as separate runs.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import itertools
from typing import Any

import ml_collections
import numpy as np

from iclscale import config as config_lib

DEFAULTS = dict(
    # {config path: values}, every combination: nested dicts mirror the config, e.g.
    # dict(seed=(0, 1, 2), task=dict(dataset_size=(64, 1024))) is 6 members (the first path varies slowest).
    product={},
    # {config path: values} of equal lengths, varied together: one more (last) axis of the product.
    zip={},
)
# The optimizer fields a member may set: the step scales its updates by lr_i / lr (optax's adam and adamw updates
# are linear in the learning rate, schedules included) and adds its own l2 penalty.
OPTIM_FIELDS = ("optim.lr", "optim.l2")
LINEAR_IN_LR = ("adam", "adamw")


@dataclasses.dataclass(frozen=True)
class Members:
  """The members of a population: which paths vary, each member's values, and each member's resolved config."""
  fields: tuple[str, ...]                 # varying config paths, in table-column order
  values: tuple[dict[str, Any], ...]      # per member: {path: value}
  cfgs: tuple[Any, ...]                   # per member: the resolved solo config

  @property
  def size(self) -> int:
    return len(self.cfgs)

  def columns(self, i: int) -> dict[str, Any]:
    """Member i's columns of the results table: its index and its value of every varying path."""
    return dict(member=i, **self.values[i])

  def name(self, i: int) -> str:
    """A readable directory name for member i (its TensorBoard run)."""
    return f"member{i:03d}_" + "_".join(f"{p.rsplit('.', 1)[-1]}={v}" for p, v in self.values[i].items())

  def hparams(self, shared_lr: float) -> dict[str, np.ndarray]:
    """The per-member hyperparameter arrays the step reads, for the optimizer fields that vary: `lr_scale` (the
    member's lr over the shared config's) and `l2`. Fields that do not vary stay compiled constants, so such a
    population computes what its solo runs compute, up to rounding."""
    out = {}
    if "optim.lr" in self.fields:
      out["lr_scale"] = np.array([c.optim.lr / shared_lr for c in self.cfgs], np.float32)
    if "optim.l2" in self.fields:
      out["l2"] = np.array([c.optim.l2 for c in self.cfgs], np.float32)
    return out


def parse_axes(text: str, flag: str) -> dict:
  """'seed=0,1,2 task.dataset_size=64,1024' (axes separated by spaces or ';') -> the nested dict of a population
  block, dict(seed=(0, 1, 2), task=dict(dataset_size=(64, 1024))); values are Python literals."""
  out: dict = {}
  for axis in text.replace(";", " ").split():
    path, eq, values = axis.partition("=")
    config_lib.check(bool(eq and path and values), flag, f"expected path=v1,v2,... got {axis!r}")
    try:
      parsed = tuple(ast.literal_eval(v) for v in values.split(","))
    except (ValueError, SyntaxError):
      raise config_lib.ConfigError(f"config.{flag}: values of {path} must be Python literals, got {values!r}") from None
    node = out
    *parents, leaf = path.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = parsed
  return out


def is_population(config) -> bool:
  pop = config.get("population", None)
  return bool(pop) and bool(config_lib.flatten(pop.get("product", {})) or config_lib.flatten(pop.get("zip", {})))


def _set(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def member_overrides(pop) -> list[dict[str, Any]]:
  """Every member's {path: value}: the product of `product`'s axes with the zip as its last axis."""
  product = config_lib.flatten(pop.get("product", {}))
  zipped = config_lib.flatten(pop.get("zip", {}))
  for kind, axes in (("product", product), ("zip", zipped)):
    for path, values in axes.items():
      config_lib.check(isinstance(values, (list, tuple)) and len(values) > 0, f"population.{kind}.{path}",
                       f"must be a non-empty list of values, got {values!r}")
  config_lib.check(not set(product) & set(zipped), "population.zip",
                   f"{sorted(set(product) & set(zipped))} also vary in population.product")
  lengths = {len(v) for v in zipped.values()}
  config_lib.check(len(lengths) <= 1, "population.zip",
                   f"zipped lists must have one length, got {dict((p, len(v)) for p, v in zipped.items())}")
  axes = [[{p: v} for v in vs] for p, vs in product.items()]
  if zipped:
    axes.append([dict(zip(zipped, vs)) for vs in zip(*zipped.values())])
  return [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*axes)]


def allowed_fields(task_member_fields: tuple[str, ...] | None) -> tuple[str, ...]:
  """What members may vary: the optimizer's fields always (the task is then the same for every member), the seed
  and the task's member fields when the task is population-ready."""
  if task_member_fields is None:
    return OPTIM_FIELDS
  return ("seed",) + OPTIM_FIELDS + tuple(f"task.{f}" for f in task_member_fields)


def members(config: ml_collections.ConfigDict, resolve_solo, task_member_fields, model_reads_task_seed) -> Members:
  """Resolves every member of `config`'s population (each as a solo config, so each is validated as one) and
  refuses paths that would change the program. `resolve_solo(config without population) -> resolved config`;
  `task_member_fields(task name) -> the task's member_fields`; `model_reads_task_seed(model name) -> bool`."""
  overrides = member_overrides(config.population)
  solo = copy.deepcopy(config)
  with solo.unlocked():
    del solo["population"]
  allowed = allowed_fields(task_member_fields(solo.task.get("name")))
  if model_reads_task_seed(solo.model.get("name")):
    allowed = tuple(a for a in allowed if a != "seed")
  paths = tuple(overrides[0])
  known = config_lib.flatten(solo)
  for path in paths:
    kind = "product" if path in config_lib.flatten(config.population.get("product", {})) else "zip"
    config_lib.check(path in allowed, f"population.{kind}.{path}",
                     f"a population cannot vary {path}: it would change the program's shapes or constants "
                     f"(members may vary: {', '.join(allowed)}); run such members as separate runs")
    config_lib.check(path in known or path.startswith("task.") or path.startswith("optim."),
                     f"population.{kind}.{path}", "not a field of the config")
  cfgs = []
  for ov in overrides:
    member = copy.deepcopy(solo)
    for path, value in ov.items():
      _set(member, path, value)
    cfgs.append(resolve_solo(member))
  base = cfgs[0]
  if "optim.lr" in paths:
    config_lib.check(base.optim.name in LINEAR_IN_LR, "population.optim.lr",
                     f"per-member learning rates need an optimizer linear in lr ({', '.join(LINEAR_IN_LR)}), "
                     f"got optim.name={base.optim.name!r}")
  finite = {bool(c.task.get("dataset_size", 1)) for c in cfgs}
  config_lib.check(len(finite) == 1, "population.task.dataset_size",
                   "members cannot mix a finite dataset with an infinite stream (0): their indices differ in shape")
  return Members(paths, tuple(overrides), tuple(cfgs))
