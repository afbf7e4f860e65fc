"""The plug-in contracts hold for every registered plug-in, and the loop reaches plug-ins only through them."""
import ast
import inspect

import jax
import pytest
import jax.numpy as jnp
import ml_collections
import numpy as np

from iclscale import contracts, evaluators, models, tasks, train


def test_every_registry_row_is_a_spec_named_by_its_key():
  for name, spec in tasks.REGISTRY.items():
    assert isinstance(spec, contracts.TaskSpec) and spec.defaults["name"] == name
  for name, spec in models.REGISTRY.items():
    assert isinstance(spec, contracts.ModelSpec) and spec.defaults["name"] == name
  for name, spec in evaluators.REGISTRY.items():
    assert isinstance(spec, contracts.EvaluatorSpec) and spec.defaults["type"] == name
    assert issubclass(spec.build, contracts.Evaluator)


def test_the_loop_never_probes_plugins():
  """No getattr/hasattr anywhere in train.py: every plug-in attribute it reads is part of a contract."""
  names = {n.func.id for n in ast.walk(ast.parse(inspect.getsource(train)))
           if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
  assert not names & {"getattr", "hasattr"}


def test_finetuning_is_a_population_of_held_out_episodes():
  """Finetune mode trains one held-out episode; the config finetunes all of them as a population over task.episode."""
  from configs import russin2024  # pylint: disable=g-import-not-at-top
  c = russin2024.get_config("grid,tiny,finetune")
  members = train.resolve_members(c)
  assert members.fields == ("task.episode",) and members.size == c.task.num_test_episodes > 1
  assert [m.task.episode for m in members.cfgs] == list(range(members.size))
  assert tasks.member_fields("russin_grid") == ("episode",) and tasks.member_fields("facts") is None


def test_evaluator_is_data_compute_rows_and_finalize_defaults_to_no_figure(tmp_path):
  class Mean(contracts.Evaluator):  # an evaluator that defines only what it must: data, compute, rows
    def __init__(self, name):
      super().__init__(name)
      self.data = jnp.arange(4.0)
    def compute(self, params, data):
      return jnp.mean(params * data)
    def rows(self, out):
      return {(self.name, "value"): float(out)}
  with pytest.raises(TypeError):  # compute and rows are abstract: an evaluator without them cannot be built
    contracts.Evaluator("x")  # pylint: disable=abstract-class-instantiated
  ev = Mean("x")
  assert ev(jnp.float32(2.0)) == {("x", "value"): 3.0}    # mean(2 * [0, 1, 2, 3])
  assert ev.finalize(str(tmp_path)) is None
  assert list(tmp_path.iterdir()) == []


def test_pretrained_weights_are_loaded_into_the_initialized_tree(tmp_path):
  """A model with `load` gets one model's abstract tree; every population member starts from the loaded weights."""
  module = None
  init = lambda key, batch: dict(w=jax.random.normal(key, (3, 2)))
  seen = []

  def load(abstract):
    seen.append(jax.tree.map(lambda s: s.shape, abstract))
    return dict(w=np.arange(6.0, dtype=np.float32).reshape(3, 2))
  single = contracts.Model(module, init, lambda p, b: b["x"] @ p["w"], load=load)
  abstract = jax.eval_shape(single.init, jax.random.key(0), dict(x=jnp.zeros((1, 3))))   # one model's tree
  params = train.load_params(single, abstract, 4)
  assert seen == [dict(w=(3, 2))]
  np.testing.assert_array_equal(params["w"], np.broadcast_to(np.arange(6.0).reshape(3, 2), (4, 3, 2)))
