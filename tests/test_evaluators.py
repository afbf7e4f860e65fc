"""Evaluator metrics against hand-computed values, and the registry's config checks."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from iclscale import evaluators
from iclscale.evaluators import batched, classification
from iclscale.config import ConfigError


def test_classification_metrics_by_hand():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]]))
  batch = dict(target=jnp.array([0, 2, 1, 1]), context_has_query=jnp.array([True, False, True, True]))
  m = classification.classification_metrics(logits, batch)
  assert m["accuracy"] == 0.5 and m["error"] == 0.5
  np.testing.assert_allclose(m["ce"], -np.mean(np.log([0.7, 0.8, 0.4, 0.3])), rtol=1e-6)
  assert m["context_has_query"] == 0.75


def test_batched_apply_equals_one_pass():
  apply = lambda params, b: dict(y=b["x"] @ params, s=b["x"].sum(-1))   # any output pytree
  params = jnp.arange(6.0).reshape(3, 2)
  batch = dict(x=jnp.arange(24.0).reshape(8, 3), target=jnp.zeros(8, int))
  out = batched.batched_apply(apply, params, batch, 4)
  np.testing.assert_array_equal(out["y"], batch["x"] @ params)
  np.testing.assert_array_equal(out["s"], batch["x"].sum(-1))


def test_pad_rows_to_a_multiple():
  x = np.arange(10).reshape(5, 2)
  np.testing.assert_array_equal(batched.pad_rows(x, 4), np.concatenate([x, [[0, 1]] * 3]))
  np.testing.assert_array_equal(batched.pad_rows(x, 4, -2)[5:], np.full((3, 2), -2))
  assert batched.pad_rows(x, 5).shape == (5, 2)


def test_registry_rejects_unknown_types_and_bad_sizes():
  with pytest.raises(ConfigError, match=r"evals.x.type: unknown evaluator type 'nope'"):
    evaluators.resolve(ml_collections.ConfigDict({"x": {"type": "nope"}}), 1)
  with pytest.raises(ConfigError, match=r"evals.g.batch_size: 100 is not divisible by the data-parallel size 8"):
    evaluators.resolve(ml_collections.ConfigDict({"g": {"type": "query_classification", "num_examples": 1000,
                                                      "batch_size": 100}}), 8)
