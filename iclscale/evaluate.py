"""Evaluators, declared in the config by name and looked up here (big_vision style).

config.evals = {name: dict(type=<registry key>, ...)}; each evaluator returns {(evaluator, metric): value}
rows for the results table. Evaluation sets are fixed at start-up (seed-reproducible) and never overlap the
training stream.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iclscale import config as config_lib
from iclscale import mesh as mesh_lib

QUERY_CLASSIFICATION = dict(
    type="query_classification",
    sets="grid",            # which family of evaluation sets the task builds (e.g. the stylized IBD/OOBD grid)
    num_examples=1000,      # sequences per set
    batch_size=500,         # sequences per forward pass (memory bound for image encoders)
)


def classification_metrics(logits_NxK: jax.Array, batch: dict) -> dict[str, jax.Array]:
  target_N = batch["target"]
  correct_N = (jnp.argmax(logits_NxK, -1) == target_N).astype(jnp.float32)
  out = dict(accuracy=correct_N.mean(), error=(1.0 - correct_N).mean(),
             ce=optax.softmax_cross_entropy_with_integer_labels(logits_NxK, target_N).mean())
  if "context_has_query" in batch:  # diagnostic of the stylized sets: how often the context holds the answer
    out["context_has_query"] = batch["context_has_query"].astype(jnp.float32).mean()
  return out


def batched_logits(apply: Callable, params: Any, batch: dict, batch_size: int) -> jax.Array:
  """Logits of N sequences computed batch_size at a time (lax.map keeps memory at one batch)."""
  n = jax.tree.leaves(batch)[0].shape[0]
  chunks = jax.tree.map(lambda x: x.reshape((n // batch_size, batch_size) + x.shape[1:]), batch)
  logits = jax.lax.map(lambda b: apply(params, b), chunks)
  return logits.reshape((n,) + logits.shape[2:])


class QueryClassification:
  """Accuracy, error and cross-entropy of the query prediction on each of the task's evaluation sets.

  The sets are stacked [S, N, ...] and mapped over, so the model is compiled once however many sets there are.
  """
  metric_fn = staticmethod(classification_metrics)  # (logits [N, K], set) -> {metric: scalar}

  def __init__(self, name: str, cfg, task: Any, apply: Callable, mesh):
    self.name = name
    sets = task.eval_sets(cfg.sets, cfg.num_examples)
    self.set_names = list(sets)
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *sets.values())
    self.stacked = jax.tree.map(lambda x: mesh_lib.from_host_copy(x, mesh_lib.batch_sharding(mesh, x.ndim, 1)),
                                stacked)

    def all_metrics(params, stacked):
      return jax.lax.map(lambda b: self.metric_fn(batched_logits(apply, params, b, cfg.batch_size), b),
                         stacked)
    self._fn = jax.jit(all_metrics)

  def __call__(self, params: Any) -> dict[tuple[str, str], float]:
    out = jax.device_get(self._fn(params, self.stacked))
    return {(f"{self.name}/{k}", m): float(v[i]) for i, k in enumerate(self.set_names) for m, v in out.items()}


def validate_query_classification(name: str, cfg, parallelism: int) -> None:
  where = f"evals.{name}"
  config_lib.check_positive(cfg, "num_examples", where)
  config_lib.check_positive(cfg, "batch_size", where)
  config_lib.check(cfg.num_examples % cfg.batch_size == 0, f"{where}.num_examples",
                   f"{cfg.num_examples} is not a multiple of batch_size {cfg.batch_size}")
  config_lib.check(cfg.batch_size % parallelism == 0, f"{where}.batch_size",
                   f"{cfg.batch_size} is not divisible by the data-parallel size {parallelism}")


ICL_IWL = dict(QUERY_CLASSIFICATION, type="icl_iwl", sets="icl_iwl")


def closed_set_metrics(logits_NxK: jax.Array, batch: dict) -> dict[str, jax.Array]:
  """classification_metrics plus `accuracy_closed`: the argmax restricted to the set's valid labels (upstream's
  accuracy_closed): the labels in the context where `closed_context` (few-shot, flip), else 0..closed_hi-1."""
  out = classification_metrics(logits_NxK, batch)
  K = logits_NxK.shape[-1]
  in_ctx_NxK = jnp.any(jax.nn.one_hot(batch["ctx_labels"], K, dtype=jnp.bool_), axis=1)
  in_range_NxK = jnp.arange(K)[None] < batch["closed_hi"][:, None]
  valid_NxK = jnp.where(batch["closed_context"][:, None], in_ctx_NxK, in_range_NxK)
  pred_N = jnp.argmax(jnp.where(valid_NxK, logits_NxK, -jnp.inf), -1)
  out["accuracy_closed"] = (pred_N == batch["target"]).astype(jnp.float32).mean()
  return out


class ICLIWL(QueryClassification):
  """The ICL/IWL sets of the bursty task (few-shot holdout, no support, CIWL, flip): accuracy over all classes
  and closed-set accuracy; chance of the closed few-shot accuracy is 1/ways."""
  metric_fn = staticmethod(closed_set_metrics)


EPISODE_ACCURACY = dict(
    type="episode_accuracy",
    sets="fewshot",         # fewshot: held-out episodes under every curriculum; episodes: the finetuned copies'
    batch_size=250,         # sequences per forward pass (fewshot sets are padded to a multiple of it)
)
PAD_BLOCK = -2              # `block` of padding rows: neither test (-1) nor study (0 = A, 1 = B)


def answer_metrics(logits_xNxV: jax.Array, batch: dict) -> dict[str, jax.Array]:
  """Exact match of all answer tokens and answer CE, over the test rows (block -1), the study rows (block >= 0)
  and each finetuning block of study rows (A = 0, B = 1)."""
  tok_xN, mask_xN, block_x = batch["answer_tok"], batch["answer_mask"], batch["block"]
  hit_x = jnp.all((jnp.argmax(logits_xNxV, -1) == tok_xN) | ~mask_xN, -1).astype(jnp.float32)
  ce_x = jnp.sum(jnp.where(mask_xN, optax.softmax_cross_entropy_with_integer_labels(
      logits_xNxV.astype(jnp.float32), tok_xN), 0.0), -1)
  mean_where = lambda v, m: jnp.sum(jnp.where(m, v, 0.0)) / jnp.maximum(jnp.sum(m), 1)
  return dict(accuracy_test=mean_where(hit_x, block_x == -1), accuracy_study=mean_where(hit_x, block_x >= 0),
              accuracy_study_A=mean_where(hit_x, block_x == 0), accuracy_study_B=mean_where(hit_x, block_x == 1),
              ce_test=mean_where(ce_x, block_x == -1))


class EpisodeAccuracy:
  """Answer accuracy of episodic tasks (tasks/episodes.py) on test and study queries of held-out episodes.

  'fewshot' sets are rows [N] (padded to a multiple of batch_size); 'episodes' sets are per model copy [E, Q]
  and go through the vmapped copies in one pass. Sets are small: they are kept replicated."""

  def __init__(self, name: str, cfg, task: Any, apply: Callable, mesh):
    self.name = name
    sets = task.eval_sets(cfg.sets, 0)
    self.set_names = list(sets)
    per_copy = cfg.sets == "episodes"   # [E, Q] rows, one slice per model copy

    def pad(x, fill):
      n = -(-x.shape[0] // cfg.batch_size) * cfg.batch_size
      return np.concatenate([x, np.full((n - x.shape[0],) + x.shape[1:], fill, x.dtype)])
    if not per_copy:
      sets = {k: {f: pad(np.asarray(v), PAD_BLOCK if f == "block" else 0) for f, v in s.items()}
              for k, s in sets.items()}
    self.sets = jax.device_put(sets, mesh_lib.replicated(mesh))

    def all_metrics(params, sets):
      return {k: answer_metrics(apply(params, s) if per_copy else batched_logits(apply, params, s, cfg.batch_size), s)
              for k, s in sets.items()}
    self._fn = jax.jit(all_metrics)

  def __call__(self, params: Any) -> dict[tuple[str, str], float]:
    out = jax.device_get(self._fn(params, self.sets))
    return {(f"{self.name}/{k}", m): float(v) for k, ms in out.items() for m, v in ms.items()}


def validate_episode_accuracy(name: str, cfg, parallelism: int) -> None:
  del parallelism  # the sets are replicated
  config_lib.check_one_of(cfg, "sets", f"evals.{name}", ("fewshot", "episodes"))
  config_lib.check_positive(cfg, "batch_size", f"evals.{name}")


# type -> (defaults, validate(name, cfg, parallelism), class(name, cfg, task, apply, mesh))
REGISTRY: dict[str, tuple[dict, Callable, Callable]] = {
    "query_classification": (QUERY_CLASSIFICATION, validate_query_classification, QueryClassification),
    "icl_iwl": (ICL_IWL, validate_query_classification, ICLIWL),
    "episode_accuracy": (EPISODE_ACCURACY, validate_episode_accuracy, EpisodeAccuracy),
}


def resolve(evals_cfg, parallelism: int) -> dict[str, Any]:
  out = {}
  for name, cfg in evals_cfg.items():
    config_lib.check("type" in cfg and cfg.type in REGISTRY, f"evals.{name}.type",
                     f"unknown evaluator type {cfg.get('type')!r} (known: {', '.join(sorted(REGISTRY))})")
    defaults, validate, _ = REGISTRY[cfg.type]
    full = config_lib.with_defaults(cfg, defaults, f"evals.{name}")
    validate(name, full, parallelism)
    out[name] = full
  return out


def build(evals: dict[str, Any], task: Any, apply: Callable, mesh) -> list[Callable]:
  return [REGISTRY[cfg.type][2](name, cfg, task, apply, mesh) for name, cfg in evals.items()]


# The in-weight / in-context probes of the facts task (imported last: fact_probes.py registers into REGISTRY).
from iclscale import fact_probes  # noqa: E402,F401  # pylint: disable=g-import-not-at-top,wrong-import-position
