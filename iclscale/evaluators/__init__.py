"""Evaluator registry: config.evals = {name: dict(type=<row of REGISTRY>, ...)}, looked up here (big_vision style).

Each evaluator returns {(evaluator, metric): value} rows for the results table (the contract is
contracts.Evaluator). Evaluation sets are fixed at start-up (seed-reproducible) and never overlap the training
stream.
"""
from __future__ import annotations

from typing import Any, Callable

from iclscale import config as config_lib
from iclscale import contracts
from iclscale.evaluators import classification
from iclscale.evaluators import episode_accuracy
from iclscale.evaluators import fact_probes
from iclscale.evaluators import gated_heads

REGISTRY: dict[str, contracts.EvaluatorSpec] = {
    "query_classification": contracts.EvaluatorSpec(classification.QUERY_CLASSIFICATION,
                                                    classification.validate_query_classification,
                                                    classification.QueryClassification),
    "icl_iwl": contracts.EvaluatorSpec(classification.ICL_IWL, classification.validate_query_classification,
                                       classification.ICLIWL),
    "episode_accuracy": contracts.EvaluatorSpec(episode_accuracy.EPISODE_ACCURACY,
                                                episode_accuracy.validate_episode_accuracy,
                                                episode_accuracy.EpisodeAccuracy),
    # The in-weight / in-context probes of the facts task.
    "fact_probes": contracts.EvaluatorSpec(fact_probes.FACT_PROBES, fact_probes.validate_fact_probes,
                                           fact_probes.FactProbes),
    # f, g, h and the gate α of the gated model (models/gated.py).
    "gated_heads": contracts.EvaluatorSpec(gated_heads.GATED_HEADS, gated_heads.validate_gated_heads,
                                           gated_heads.GatedHeads),
}


def resolve(evals_cfg, parallelism: int) -> dict[str, Any]:
  """Every declared evaluator's config, checked against its row's fields and filled in."""
  out = {}
  for name, cfg in evals_cfg.items():
    config_lib.check("type" in cfg and cfg.type in REGISTRY, f"evals.{name}.type",
                     f"unknown evaluator type {cfg.get('type')!r} (known: {', '.join(sorted(REGISTRY))})")
    spec = REGISTRY[cfg.type]
    full = config_lib.with_defaults(cfg, spec.defaults, f"evals.{name}")
    spec.validate(name, full, parallelism)
    out[name] = full
  return out


def build(evals: dict[str, Any], task: contracts.Task, apply: Callable, mesh) -> list[contracts.Evaluator]:
  return [REGISTRY[cfg.type].build(name, cfg, task, apply, mesh) for name, cfg in evals.items()]
