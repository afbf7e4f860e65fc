"""The bursty task against its definition: burst structure, Zipf weights, the split, the ICL/IWL sets, the loop."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from iclscale import config as config_lib
from iclscale.evaluators import classification
from iclscale import tasks
from iclscale.tasks import bursty

# One xdist worker runs this module (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("bursty")


def make_task(seed=0, **overrides):
  cfg = tasks.resolve(ml_collections.ConfigDict(dict(name="bursty", **overrides)))
  return tasks.build(cfg, seed)


# One bursty task shared by the tests below: every distinct config is a new compilation of the sampler.
SHARED = dict(p_bursty=1.0, synthetic_classes=100, synthetic_exemplars=8, num_holdout=10)


@pytest.fixture(scope="module")
def shared():
  task = make_task(**SHARED)
  return task, train_batch(task), jax.device_get(task.eval_sets("icl_iwl", 256))


def train_batch(task, n=512):
  return jax.device_get(jax.jit(task.batch)(task.arrays, jnp.arange(n, dtype=jnp.uint32), jnp.int32(0)))


def test_split_is_the_fixed_permutation_and_holdout_is_last():
  split = bursty.make_split(64, num_common=4, num_holdout=6)
  np.testing.assert_array_equal(split.order, np.random.default_rng(1337).permutation(64))
  assert (split.num_rare, split.num_common, split.num_holdout) == (54, 4, 6)
  assert np.all(split.label_of()[split.order] == np.arange(64))
  # augmented: blocks of 8 adjacent classes stay together on one side of the split
  aug = bursty.make_split(80, num_common=1, num_holdout=2, group=8)
  assert np.all(aug.order.reshape(-1, 8) // 8 == aug.order.reshape(-1, 8)[:, :1] // 8)
  assert aug.num_holdout == 16


def test_zipf_weights_run_n_to_1_over_training_labels():
  split = bursty.make_split(40, num_common=5, num_holdout=10)
  w = np.exp(split.train_log_weights(1.0))
  n = split.num_train
  expected = 1.0 / np.arange(n, 0, -1)
  np.testing.assert_allclose(w[split.order[:n]], expected / expected.sum(), rtol=1e-5)
  assert np.all(w[split.order[n:]] == 0)


def test_bursty_sequences_hold_exactly_shots_items_of_two_classes(shared):
  task, b, _ = shared
  assert b["x"].shape == (512, 9, 16) and b["ctx_labels"].shape == (512, 8) and b["target"].shape == (512,)
  label_of = task.arrays["label_of"]
  for cls_S, labels_S, target in zip(b["item_class"], b["ctx_labels"], b["target"]):
    ctx, q = cls_S[:-1], cls_S[-1]
    values, counts = np.unique(ctx, return_counts=True)
    burst = values[counts >= 3]
    assert len(burst) in (1, 2)  # iid fill slots may repeat a burst class
    assert q in burst and np.sum(ctx == q) >= 3
    np.testing.assert_array_equal(labels_S, label_of[ctx])  # fixed labels
    assert target == label_of[q]


def test_holdout_classes_never_in_training_and_zipf_frequencies():
  task = make_task(p_bursty=0.0, synthetic_classes=50, num_holdout=10, num_common=0, zipf_exponent=1.0)
  b = train_batch(task, 4096)
  holdout = set(task.split.order[task.split.num_train:].tolist())
  assert not holdout & set(np.unique(b["item_class"]).tolist())
  freq = np.bincount(b["item_class"].reshape(-1), minlength=50)[task.split.order[:40]] / b["item_class"].size
  expected = np.exp(task.split.train_log_weights(1.0))[task.split.order[:40]]
  np.testing.assert_allclose(freq, expected, atol=0.01)


def test_exemplars_are_distinct_within_a_class_and_modes_select_ranges(shared):
  task, b, _ = shared
  table = task.arrays["table"]
  for cls_S, x_S in zip(b["item_class"][:64], b["x"][:64]):
    for c in np.unique(cls_S):
      rows = x_S[cls_S == c]
      assert len({r.tobytes() for r in rows}) == len(rows)
      assert all(np.any(np.all(np.isclose(table[c], r), -1)) for r in rows)
  assert bursty.exemplar_ranges("single", 20, 5) == ((0, 1), (19, 1))
  assert bursty.exemplar_ranges("separated", 20, 5) == ((0, 15), (15, 5))


def test_icl_and_iwl_sets_follow_their_construction(shared):
  task, _, sets = shared
  assert set(sets) == set(bursty.EVAL_SETS)
  holdout = set(task.split.order[task.split.num_train:].tolist())
  fs = sets["fewshot_holdout"]
  for cls_S, labels_L, target in zip(fs["item_class"], fs["ctx_labels"], fs["target"]):
    ctx = cls_S[:-1]
    values, counts = np.unique(ctx, return_counts=True)
    assert len(values) == 2 and list(counts) == [4, 4] and set(values) <= holdout  # two distinct holdout classes
    assert sorted(set(labels_L.tolist())) == [0, 1]
    assert all(len(set(labels_L[ctx == c].tolist())) == 1 for c in values)  # one label per class
    assert target == labels_L[ctx == cls_S[-1]][0]
  ns = sets["no_support"]
  label_of = task.arrays["label_of"]
  assert np.all(ns["item_class"][:, :-1] != ns["item_class"][:, -1:])  # query class absent from the context
  np.testing.assert_array_equal(ns["target"], label_of[ns["item_class"][:, -1]])
  ciwl = sets["ciwl"]
  assert np.all(np.sum(ciwl["ctx_labels"] == ciwl["target"][:, None], -1) >= 1)
  assert np.all(ciwl["item_class"][:, :-1] != ciwl["item_class"][:, -1:])
  fl = sets["flip"]
  for cls_S, labels_L, target in zip(fl["item_class"], fl["ctx_labels"], fl["target"]):
    a, b = np.unique(cls_S[:-1])
    assert set(labels_L[cls_S[:-1] == a].tolist()) == {label_of[b]}
    assert target == (label_of[b] if cls_S[-1] == a else label_of[a])
  # seed-reproducible and independent of the training stream
  again = jax.device_get(make_task(**SHARED).eval_sets("icl_iwl", 256))
  np.testing.assert_array_equal(again["no_support"]["x"], ns["x"])


def test_closed_set_accuracy_restricts_the_argmax():
  logits = jnp.array([[5.0, 1.0, 2.0, 0.0], [5.0, 0.0, 0.0, 3.0]])
  batch = dict(target=jnp.array([2, 3]), ctx_labels=jnp.array([[2, 1], [0, 0]]),
               closed_context=jnp.array([True, False]), closed_hi=jnp.array([4, 4]))
  m = classification.closed_set_metrics(logits, batch)
  assert float(m["accuracy"]) == 0.0 and float(m["accuracy_closed"]) == 0.5


def test_omniglot_images_go_through_the_resnet_encoder():
  cfg = tasks.resolve(ml_collections.ConfigDict(dict(name="bursty", dataset="omniglot", image_size=28, noise=0.1)))
  table = np.random.default_rng(0).integers(0, 256, (40, 20, 28, 28), dtype=np.uint8)  # no file read
  task = bursty.BurstyTask(cfg, 0, table=table)
  b = jax.jit(task.batch)(task.arrays, jnp.arange(2, dtype=jnp.uint32), jnp.int32(0))
  assert b["x"].shape == (2, 9, 28, 28) and b["x"].dtype == jnp.float32
  from iclscale import models
  small_resnet = dict(blocks_per_stage=(1,), channels=(8,), strides=(2,), initial_channels=8)
  mcfg = models.resolve(ml_collections.ConfigDict(dict(name="transformer", encoder="resnet", num_layers=1,
                                                       encoder_kwargs=small_resnet)), tasks.input_shape(cfg))
  model = models.build(mcfg, task)
  params = jax.jit(model.init)(jax.random.key(0), b)  # jitted: eager op-by-op ResNet init is slow
  assert jax.jit(model.apply)(params, b).shape == (2, 40)


def test_validation_rejects_bad_fields():
  with pytest.raises(config_lib.ConfigError, match="fewshot_shots"):
    make_task(fewshot_shots=5)
  with pytest.raises(config_lib.ConfigError, match="dataset"):
    make_task(dataset="cifar")


def test_end_to_end_run(tmp_path):
  from configs import transience_cpu
  from iclscale import results, train
  c = transience_cpu.get_config("tiny")
  c.train.num_steps = c.eval_every = c.train.log_every = c.checkpoint.every = 20
  c.evals.icl_iwl.num_examples = c.evals.icl_iwl.batch_size = 32
  c.plot = False
  out = train.run(c, str(tmp_path))
  assert out["step"] == 20
  rows = results.read(str(tmp_path))
  assert {r["evaluator"] for r in rows} >= {"icl_iwl/fewshot_holdout", "icl_iwl/no_support", "train"}
  assert {r["metric"] for r in rows if r["evaluator"] == "icl_iwl/flip"} >= {"accuracy", "accuracy_closed"}


def test_stylized_omniglot_items_are_the_fixed_image_plus_noise():
  from iclscale.tasks import stylized_omniglot
  cfg = tasks.resolve(ml_collections.ConfigDict(dict(name="stylized_omniglot", num_high=4, num_low=12,
                                                     input_noise=0.0, dataset_size=0)))
  images = np.random.default_rng(0).integers(0, 256, (16, 20, 28, 28), dtype=np.uint8)
  task = stylized_omniglot.StylizedOmniglotTask(cfg, 0, images=images)
  b = jax.device_get(jax.jit(task.batch)(task.arrays, jnp.arange(4, dtype=jnp.uint32), jnp.int32(0)))
  assert b["x"].shape == (4, 3, 28, 28)
  y_q = b["target"]  # no label noise, no flip: the target is the query's class
  np.testing.assert_allclose(b["x"][:, -1], images[y_q, 0] / 255.0, atol=1e-6)


def test_study_configs_resolve():
  from configs import singh2023_omniglot, singh2023_tokens, transience_cpu
  from iclscale import train
  for module, scales in ((singh2023_omniglot, ("tiny", "local", "small", "full")),
                         (singh2023_tokens, ("tiny", "local", "full")), (transience_cpu, ("tiny", "local"))):
    for scale in scales:
      cfg = train.resolve(module.get_config(scale))
      assert cfg.task.name == "bursty" and "icl_iwl" in cfg.evals
