"""Classification of the query: the 'query_classification' and 'icl_iwl' evaluators."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iclscale import config as config_lib
from iclscale import contracts
from iclscale import mesh as mesh_lib
from iclscale.evaluators import batched

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


class QueryClassification(contracts.Evaluator):
  """Accuracy, error and cross-entropy of the query prediction on each of the task's evaluation sets.

  The sets are stacked [S, N, ...] and mapped over, so the model is compiled once however many sets there are.
  Subclasses change what is computed per set through `set_metrics`.
  """
  metric_fn = staticmethod(classification_metrics)  # (logits [N, K], set) -> {metric: scalar}

  def __init__(self, name: str, cfg, task: contracts.Task, apply: Callable, mesh):
    super().__init__(name)
    sets = task.eval_sets(cfg.sets, cfg.num_examples)
    self.set_names = list(sets)
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *sets.values())
    self.data = jax.tree.map(lambda x: mesh_lib.from_host_copy(x, mesh_lib.batch_sharding(mesh, x.ndim, 1)),
                             stacked)
    self.cfg, self.apply = cfg, apply

  def compute(self, params: Any, data: dict) -> dict[str, jax.Array]:
    return jax.lax.map(lambda b: self.set_metrics(self.cfg, batched.batched_apply(self.apply, params, b,
                                                                                   self.cfg.batch_size), b), data)

  def set_metrics(self, cfg, outputs: Any, batch: dict) -> dict[str, jax.Array]:
    """{metric: scalar} of one set from the model's outputs on it."""
    del cfg
    return self.metric_fn(outputs, batch)

  def rows(self, out: dict) -> contracts.Rows:
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
