"""Evaluator metrics against hand-computed values, and the registry's config checks."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from iclscale import evaluate
from iclscale.config import ConfigError


def test_classification_metrics_by_hand():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]]))
  batch = dict(target=jnp.array([0, 2, 1, 1]), context_has_query=jnp.array([True, False, True, True]))
  m = evaluate.classification_metrics(logits, batch)
  assert m["accuracy"] == 0.5 and m["error"] == 0.5
  np.testing.assert_allclose(m["ce"], -np.mean(np.log([0.7, 0.8, 0.4, 0.3])), rtol=1e-6)
  assert m["context_has_query"] == 0.75


def test_batched_logits_equal_one_pass():
  apply = lambda params, b: b["x"] @ params
  params = jnp.arange(6.0).reshape(3, 2)
  batch = dict(x=jnp.arange(24.0).reshape(8, 3), target=jnp.zeros(8, int))
  np.testing.assert_array_equal(evaluate.batched_logits(apply, params, batch, 4), batch["x"] @ params)


def test_registry_rejects_unknown_types_and_bad_sizes():
  with pytest.raises(ConfigError, match=r"evals.x.type: unknown evaluator type 'nope'"):
    evaluate.resolve(ml_collections.ConfigDict({"x": {"type": "nope"}}), 1)
  with pytest.raises(ConfigError, match=r"evals.g.batch_size: 100 is not divisible by the data-parallel size 8"):
    evaluate.resolve(ml_collections.ConfigDict({"g": {"type": "query_classification", "num_examples": 1000,
                                                      "batch_size": 100}}), 8)
