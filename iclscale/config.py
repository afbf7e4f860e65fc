"""Config validation: one clear line per bad field, raised before anything compiles.

Every plug-in (task, model, evaluator) declares its fields as a ConfigDict of defaults; a config is checked
against those declarations (unknown keys, wrong types) and then against the plug-in's own value checks.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import ml_collections


class ConfigError(ValueError):
  """An invalid configuration value. The message is one line that names the field."""


def check(cond: bool, field: str, msg: str) -> None:
  if not cond:
    raise ConfigError(f"config.{field}: {msg}")


def check_prob(cfg: Any, field: str, where: str) -> None:
  v = cfg[field]
  check(isinstance(v, (int, float)) and 0.0 <= v <= 1.0, f"{where}.{field}", f"must be a probability in [0, 1], got {v!r}")


def check_positive(cfg: Any, field: str, where: str, allow_zero: bool = False) -> None:
  v = cfg[field]
  ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
  check(ok, f"{where}.{field}", f"must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")


def check_one_of(cfg: Any, field: str, where: str, choices: Iterable[str]) -> None:
  choices = tuple(choices)
  check(cfg[field] in choices, f"{where}.{field}", f"must be one of {choices}, got {cfg[field]!r}")


def _type_ok(value: Any, default: Any) -> bool:
  if default is None or value is None:
    return True
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  if isinstance(default, (dict, ml_collections.ConfigDict)):
    return isinstance(value, (dict, ml_collections.ConfigDict))
  return isinstance(value, type(default))


def check_fields(cfg: Any, defaults: dict, where: str) -> None:
  """Unknown keys and wrong types are errors; missing keys take the declared defaults."""
  for key in cfg.keys():
    if key not in defaults:
      raise ConfigError(f"config.{where}.{key}: unknown field (known: {', '.join(sorted(defaults))})")
    if not _type_ok(cfg[key], defaults[key]):
      raise ConfigError(f"config.{where}.{key}: expected {type(defaults[key]).__name__}, got {type(cfg[key]).__name__} {cfg[key]!r}")


def with_defaults(cfg: Any, defaults: dict, where: str) -> ml_collections.ConfigDict:
  """Checks `cfg` against `defaults` and returns a frozen copy with the missing fields filled in."""
  check_fields(cfg, defaults, where)
  merged = dict(defaults)
  merged.update(dict(cfg))
  return ml_collections.FrozenConfigDict(merged)


# Fields that may change between a run and its resumption: extending a run, changing how often it reports, and
# lowering the learning rate or clipping gradients after a non-finite loss (the optimizer state keeps its
# structure: optim.build applies clipping outside the state tree). Each start records them in history.jsonl.
RESUMABLE_FIELDS = (
    "train.num_steps", "train.log_every", "eval_every", "checkpoint.every", "checkpoint.keep",
    "checkpoint.async_save", "report_every_secs", "plot", "optim.lr", "optim.grad_clip", "profile.start_step",
    "profile.num_steps",
)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in (cfg.items() if hasattr(cfg, "items") else []):
    name = f"{prefix}{k}"
    if isinstance(v, (dict, ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
      out.update(flatten(v, name + "."))
    else:
      out[name] = list(v) if isinstance(v, tuple) else v
  return out


def run_identity(cfg: Any) -> dict[str, Any]:
  """The fields that identify a run: everything but the resumable ones."""
  return {k: v for k, v in flatten(cfg).items() if k not in RESUMABLE_FIELDS}

