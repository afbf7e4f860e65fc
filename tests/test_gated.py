"""The gated model f = α·g + (1−α)·h: heads against hand computations, Algorithm 1's gradient split, convergence
of g and of the gate on constructed streams, one tiny end-to-end run, and the study's table helpers."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from iclscale import learners
from iclscale import models
from iclscale import results
from iclscale import train
from iclscale.config import ConfigError
from iclscale.models import gated

from configs import chan2024_gated


def make_model(task, **kw):
  cfg = models.resolve(ml_collections.ConfigDict(dict(name="gated", **kw)), (task.arrays["prototypes"].shape[-1],))
  return models.build(cfg, task)


def fake_task(prototypes):
  """The model reads only num_classes and the prototypes of a task."""
  return types.SimpleNamespace(num_classes=prototypes.shape[0], arrays=dict(prototypes=jnp.asarray(prototypes)))


def bilevel_tx(params, g="ogd", alpha="hedge"):
  groups = {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}
  return optax.multi_transform({"g": learners.make(dict(type=g, lr=1.0, project="box", lo=-8.0, hi=8.0)),
                                "h": learners.ogd(0.1), "alpha": learners.make(dict(type=alpha, lr=1.0))}, groups)


def stream(model, tx, params, batches):
  """Algorithm 1 over a stream of batches [T, B, ...] in one scan; returns the final parameters."""
  @jax.jit
  def run(params, batches):
    def step(carry, batch):
      p, s = carry
      grads, _ = jax.grad(lambda p: model.loss(model.apply(p, batch), batch), has_aux=True)(p)
      updates, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None
    (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), batches)
    return p
  return run(params, batches)


def test_h_is_the_hand_computed_weighted_average():
  task = fake_task(np.eye(3, 4))
  model = make_model(task, init_tau=0.5)
  x = np.zeros((1, 4, 4), np.float32)
  x[0, 0, 0], x[0, 1, 1], x[0, 2, 0], x[0, 3, 0] = 1.0, 2.0, 0.5, 0.8   # 3 context items, query last
  batch = dict(x=jnp.asarray(x), ctx_labels=jnp.array([[2, 1, 2]]), target=jnp.array([2]))
  params = jax.jit(model.init)(jax.random.key(0), batch)
  d2 = np.sum((x[0, :3] - x[0, 3]) ** 2, -1)
  w = np.exp(-d2 / 0.5) / np.exp(-d2 / 0.5).sum()
  expected = np.zeros(3)
  np.add.at(expected, [2, 1, 2], w)
  out = jax.jit(model.apply)(params, batch)
  np.testing.assert_allclose(out["h"][0], expected, rtol=1e-5)
  # f mixes the heads by α (0.5 at the start) and g is uniform before training
  np.testing.assert_allclose(out["f"][0], 0.5 * out["g"][0] + 0.5 * expected, rtol=1e-5)
  np.testing.assert_allclose(out["g"][0], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(float(params["h"]["log_tau"]), np.log(0.5), rtol=1e-6)


def test_regions_are_nearest_prototypes():
  mu = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  x = jnp.array([[0.9, 0.2], [0.1, 0.7], [-3.0, 1.0]])
  np.testing.assert_array_equal(gated.regions(x, mu), [0, 1, 2])


def constructed_batch(rng, T, K, g_learnable, h_right):
  """T single-example sequences (L = 1) over K one-hot prototypes.

  g_learnable: the target is the query's region (else uniform noise, which no IW predictor can learn);
  h_right: the context item carries the target's label (else another label).
  """
  region = rng.integers(0, K, T)
  target = region if g_learnable else rng.integers(0, K, T)
  ctx = target if h_right else (target + 1) % K
  eye = np.eye(K, dtype=np.float32)
  x = np.stack([eye[ctx] if h_right else eye[(region + 1) % K], eye[region]], 1)
  return jax.tree.map(lambda a: jnp.asarray(a)[:, None], dict(x=x, ctx_labels=ctx[:, None], target=target))


@pytest.mark.parametrize("gate_loss", ["error", "log"])
@pytest.mark.parametrize("better", ["g", "h"])
def test_gate_moves_to_the_lower_loss_predictor(gate_loss, better):
  K = 4
  task = fake_task(np.eye(K))
  model = make_model(task, gate_loss=gate_loss)
  batches = constructed_batch(np.random.default_rng(0), 300, K, g_learnable=better == "g", h_right=better == "h")
  params = jax.jit(model.init)(jax.random.key(0), jax.tree.map(lambda a: a[0], batches))
  alpha = stream(model, bilevel_tx(params), params, batches)["alpha"]["table"]
  if better == "g":
    assert float(alpha.min()) > 0.9
  else:
    assert float(alpha.max()) < 0.1


def test_tabular_g_converges_to_class_conditional_label_frequencies():
  """Queries of K equally likely classes, each label flipped to the next class with probability 0.2 (the
  stylized label noise, σ = 0): each table row must converge to its region's label frequencies."""
  K, T, eps = 4, 4000, 0.2
  rng = np.random.default_rng(0)
  region = rng.integers(0, K, T)
  target = np.where(rng.random(T) < eps, (region + 1) % K, region)
  eye = np.eye(K, dtype=np.float32)
  batches = jax.tree.map(lambda a: jnp.asarray(a)[:, None], dict(
      x=np.stack([eye[region], eye[region]], 1), ctx_labels=target[:, None], target=target))
  task = fake_task(eye)
  model = make_model(task, gate_loss="error")
  params = jax.jit(model.init)(jax.random.key(0), jax.tree.map(lambda a: a[0], batches))
  table = stream(model, bilevel_tx(params), params, batches)["g"]["table"]
  freq = np.stack([np.bincount(target[region == r], minlength=K) / np.sum(region == r) for r in range(K)])
  np.testing.assert_allclose(freq, (1 - eps) * eye + eps * np.roll(eye, 1, 1), atol=0.03)  # the stream
  np.testing.assert_allclose(jax.nn.softmax(table, -1), freq, atol=0.05)


def test_bilevel_gradients_follow_algorithm_1():
  """g gets only ∇ℓ_g, h only ∇ℓ_h, and α only the linear loss m_t(α) = α·(ℓ'_g − ℓ'_h)."""
  K = 4
  task = fake_task(np.eye(K))
  batch = constructed_batch(np.random.default_rng(1), 8, K, g_learnable=True, h_right=False)
  batch = jax.tree.map(lambda a: a[:, 0], batch)
  model = make_model(task, gate_loss="log")
  params = jax.jit(model.init)(jax.random.key(0), batch)
  params["alpha"]["table"] = jnp.linspace(0.2, 0.8, K)

  @jax.jit
  def all_grads(p):
    per = lambda p: gated.head_losses(model.apply(p, batch), batch["target"], 1e-7)
    return (jax.grad(lambda p: model.loss(model.apply(p, batch), batch)[0])(p),
            jax.grad(lambda p: per(p)["g"].mean())(p), jax.grad(lambda p: per(p)["h"].mean())(p), per(p))
  grads, g_only, h_only, losses = all_grads(params)
  for a, b in zip(jax.tree.leaves(grads["g"]), jax.tree.leaves(g_only["g"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grads["h"]["log_tau"], h_only["h"]["log_tau"], rtol=1e-5, atol=1e-8)
  gap = np.asarray(losses["g"] - losses["h"])
  region = np.asarray(gated.regions(batch["x"][:, -1], task.arrays["prototypes"]))
  expected = np.bincount(region, weights=gap, minlength=K) / len(gap)
  np.testing.assert_allclose(grads["alpha"]["table"], expected, rtol=1e-5)
  # end to end, the log-loss of f is the objective and is what metrics report as the loss
  e2e = make_model(task, mode="end_to_end")
  objective, metrics = jax.jit(lambda p: e2e.loss(e2e.apply(p, batch), batch))(params)
  np.testing.assert_allclose(objective, metrics["loss"], rtol=1e-6)


def test_invalid_gated_configs():
  with pytest.raises(ConfigError, match="model.gate_loss"):
    models.resolve(ml_collections.ConfigDict(dict(name="gated", gate_loss="hinge")), (4,))
  with pytest.raises(ConfigError, match="model.g"):
    models.build(models.resolve(ml_collections.ConfigDict(dict(name="gated")), (4,)),
                 types.SimpleNamespace(num_classes=3, arrays={}))


def test_tiny_config_end_to_end(tmp_path):
  cfg = chan2024_gated.get_config("tiny")
  cfg.mesh.num_devices = 1
  cfg.plot = False
  cfg.eval_every = 0                  # evaluate and save once, at the end: the test is about the wiring
  cfg.checkpoint.every = 0
  cfg.checkpoint.per_decade = 0
  out = train.run(cfg, str(tmp_path))
  assert out["step"] == cfg.train.num_steps
  rows = [r for r in results.read(str(tmp_path)) if r["step"] == cfg.train.num_steps]
  values = {(r["evaluator"], r["metric"]): r["value"] for r in rows}
  sets = {e for e, _ in values if e.startswith("grid/")}
  assert len(sets) == 18
  for s in sets:
    for m in ("error", "ce", "g_error", "g_ce", "h_error", "h_ce", "alpha"):
      assert np.isfinite(values[(s, m)]), (s, m)
  # relevant context: h copies the answer, in and out of the base distribution
  assert values[("grid/oobd/relevant/C_L", "h_error")] == 0.0
  # the common classes' gate has moved to g first
  assert values[("grid/ibd/default/C_H", "alpha")] > 0.5 > values[("grid/ibd/default/C_L", "alpha")]
  assert 0.0 <= out["train"]["train/accuracy"] <= 1.0
