"""Populations (iclscale/population.py): members equal their solo runs, stay independent, resume exactly, and
give the same values on 1 and 8 devices; fields that would change the program are refused in one line."""
import ml_collections
import numpy as np
import pytest

from iclscale import population, results, train
from iclscale.config import ConfigError

# One xdist worker runs this module (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.xdist_group("population")]

STEPS = 100
# Three members that differ in seed, dataset size and learning rate at once (zipped).
ZIP = dict(seed=(0, 1, 1), task=dict(dataset_size=(64, 64, 1024)), optim=dict(lr=(3e-4, 1e-3, 3e-4)))


def pop_config(tiny, zipped=None, product=None, **overrides):
  c = tiny(**{"train.num_steps": STEPS, "plot": False, **overrides})
  c.population = dict(product=product or {}, zip=zipped if zipped is not None else ZIP)
  return c


def member_values(zipped, i):
  return population.member_overrides(ml_collections.ConfigDict(dict(zip=zipped)))[i]


def member_rows(workdir, member):
  return [r for r in results.read(workdir) if r.get("member", member) == member]


def close(a, b, rel=1e-4, abs_=1e-6):
  assert a.keys() == b.keys()
  for k in a:
    assert a[k] == pytest.approx(b[k], rel=rel, abs=abs_), k


@pytest.fixture(scope="module")
def pop_run(tmp_path_factory):
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("pop"))
  return workdir, train.run(pop_config(tiny_config), workdir)


def test_members_are_the_product_then_the_zip():
  pop = ml_collections.ConfigDict(dict(product=dict(seed=(0, 1), task=dict(dataset_size=(64, 128))),
                                       zip=dict(optim=dict(lr=(1e-3, 3e-4), l2=(0.0, 1e-4)))))
  members = population.member_overrides(pop)
  assert len(members) == 8
  assert members[0] == {"seed": 0, "task.dataset_size": 64, "optim.lr": 1e-3, "optim.l2": 0.0}
  assert members[1] == {"seed": 0, "task.dataset_size": 64, "optim.lr": 3e-4, "optim.l2": 1e-4}
  assert members[2]["task.dataset_size"] == 128 and members[4]["seed"] == 1 and members[7]["optim.l2"] == 1e-4


@pytest.mark.parametrize("pop, field, message", [
    (dict(product=dict(model=dict(width=(32, 64)))), "population.product.model.width", "cannot vary model.width"),
    (dict(product=dict(train=dict(batch_size=(16, 32)))), "population.product.train.batch_size", "cannot vary"),
    (dict(product=dict(task=dict(context_len=(1, 2)))), "population.product.task.context_len", "cannot vary"),
    (dict(zip=dict(seed=(0, 1), optim=dict(lr=(1e-3,)))), "population.zip", "one length"),
    (dict(product=dict(seed=(0, 1)), zip=dict(seed=(2, 3))), "population.zip", "also vary"),
    (dict(product=dict(task=dict(dataset_size=(0, 64)))), "population.task.dataset_size", "infinite"),
    (dict(product=dict(seed=())), "population.product.seed", "non-empty"),
    (dict(product=dict(task=dict(dataset_size=(1, 64)))), "task.dataset_size", "at least the number of classes"),
])
def test_bad_populations_are_one_line_errors(tiny, pop, field, message):
  c = tiny()
  c.population = dict(dict(product={}, zip={}), **pop)
  with pytest.raises(ConfigError) as e:
    train.resolve(c)
  assert str(e.value).startswith(f"config.{field}") and message in str(e.value) and "\n" not in str(e.value)


def test_a_model_holding_the_task_seed_refuses_seed_members():
  from configs import chan2024_gated  # pylint: disable=g-import-not-at-top
  c = chan2024_gated.get_config("tiny")
  c.population = dict(product=dict(seed=(0, 1)), zip={})
  with pytest.raises(ConfigError, match="population.product.seed: a population cannot vary seed"):
    train.resolve(c)
  c.population = dict(product=dict(task=dict(input_noise=(0.1, 0.3))), zip={})
  assert train.resolve_members(c).size == 2


def test_population_must_split_over_the_population_axis(tiny):
  c = pop_config(tiny, **{"mesh.num_devices": 2, "mesh.population": 2, "mesh.data": 1})
  with pytest.raises(ConfigError, match="3 members do not split over 2 devices"):
    train.resolve(c)
  with pytest.raises(ConfigError, match="only a population"):
    train.resolve(tiny(**{"mesh.num_devices": 2, "mesh.population": 2, "mesh.data": 1}))


def test_each_member_equals_its_solo_run(tiny, pop_run, tmp_path):
  """Member i trains on its own seed's data and N at its own lr: the same losses and metrics as that solo run
  (to the tolerance of the 1-vs-8-device test), and its rows of the one table are that run's rows."""
  workdir, out = pop_run
  for i in range(3):
    v = member_values(ZIP, i)
    solo_dir = str(tmp_path / f"solo{i}")
    solo = train.run(tiny(**{"train.num_steps": STEPS, "plot": False, **v}), solo_dir)
    close(out["train"][i], solo["train"])
    close(out["evals"][i], solo["evals"], rel=1e-3, abs_=1e-5)
    mine, theirs = member_rows(workdir, i), results.read(solo_dir)
    assert [(r["step"], r["evaluator"], r["metric"]) for r in mine] == [
        (r["step"], r["evaluator"], r["metric"]) for r in theirs]
    np.testing.assert_allclose([r["value"] for r in mine], [r["value"] for r in theirs], rtol=1e-3, atol=1e-5)
    assert all(r["seed"] == v["seed"] and r["task.dataset_size"] == v["task.dataset_size"] for r in mine)


def test_members_are_independent(tiny, pop_run, tmp_path):
  """Changing one member's learning rate changes that member only: the others are bit-identical."""
  workdir, out = pop_run
  perturbed = dict(ZIP, optim=dict(lr=(3e-4, 1e-3, 3e-3)))
  other = train.run(pop_config(tiny, perturbed), str(tmp_path / "perturbed"))
  for i in (0, 1):
    assert other["train"][i] == out["train"][i] and other["evals"][i] == out["evals"][i]
  assert other["train"][2]["train/loss"] != out["train"][2]["train/loss"]


def test_resume_equals_uninterrupted_population(tiny, pop_run, tmp_path):
  workdir, _ = pop_run
  resumed = str(tmp_path / "resumed")
  # Stopped at step 60, a milestone (evaluated and saved in the uninterrupted run too), then continued.
  assert train.run(pop_config(tiny, **{"train.num_steps": 60}), resumed)["step"] == 60
  assert train.run(pop_config(tiny), resumed)["step"] == STEPS
  a, b = results.read(workdir), results.read(resumed)
  assert a == b


def test_eight_devices_equal_one(tiny, tmp_path):
  """8 members over population=4 x data=2 (each member's batch split over 2 devices) equal the same members on 1
  device."""
  zipped = dict(seed=(0, 1, 2, 3, 0, 1, 2, 3), task=dict(dataset_size=(64,) * 4 + (1024,) * 4))
  short = {"train.num_steps": 30}   # three dispatches with evaluations: enough to compare, a third of the time
  one = train.run(pop_config(tiny, zipped, **short, **{"mesh.num_devices": 1}), str(tmp_path / "one"))
  eight = train.run(pop_config(tiny, zipped, **short, **{"mesh.num_devices": 8, "mesh.population": 4,
                                                         "mesh.data": 2}),
                    str(tmp_path / "eight"))
  for i in range(8):
    close(eight["train"][i], one["train"][i])
    close(eight["evals"][i], one["evals"][i], rel=1e-3, abs_=1e-5)
