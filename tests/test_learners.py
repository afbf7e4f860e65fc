"""No-regret learners: O(1/√T) average regret on constructed streams, projections, clocks, the bilevel builder."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from iclscale import learners
from iclscale import optim
from iclscale.config import ConfigError, with_defaults


def play(tx, x0, grads_T, loss_fn):
  """Runs the learner on a stream of linear losses; returns each round's loss of the point played."""
  def step(carry, z):
    x, state = carry
    loss = loss_fn(x, z)
    updates, state = tx.update(z, state, x)  # linear loss: its gradient is the stream element itself
    return (optax.apply_updates(x, updates), state), loss
  _, losses = jax.lax.scan(step, (x0, tx.init(x0)), grads_T)
  return np.asarray(losses)


def alternating(T, u):
  """z_t = +u, -u, +u, ...: a learner with step η_t oscillates and pays ~η_t per pair, so regret ~ η√T."""
  return jnp.asarray(np.where(np.arange(T)[:, None] % 2 == 0, 1.0, -1.0) * np.asarray(u)[None], jnp.float32)


def box_regret(losses, z_T, lo, hi):
  """Regret against the best fixed point of a box (linear loss: a vertex, coordinate by coordinate)."""
  total = np.asarray(z_T).sum(0)
  return losses.sum() - np.sum(np.minimum(total * lo, total * hi))


def ball_regret(losses, z_T, radius):
  return losses.sum() + radius * np.linalg.norm(np.asarray(z_T).sum(0))


def expert_regret(losses, loss_TxE):
  return losses.sum() - np.asarray(loss_TxE).sum(0).min()


T = 1000


def average_regret_ratio(regret_fn):
  """Average regret at 4T over average regret at T; 1/2 when regret grows like √T."""
  return (regret_fn(4 * T) / (4 * T)) / (regret_fn(T) / T)


def test_ogd_box_average_regret_falls_as_inverse_sqrt_t():
  tx = learners.ogd(0.5, "box", -1.0, 1.0)
  def regret(n):
    z = alternating(n, [1.0])
    return box_regret(play(tx, jnp.zeros(1), z, lambda x, g: jnp.dot(x, g)), z, -1.0, 1.0)
  assert regret(T) > 0
  assert average_regret_ratio(regret) == pytest.approx(0.5, abs=0.06)
  # and within the textbook bound D²√T/(2η) + ηG²√T (D = 2, G = 1)
  assert regret(T) <= 4 * np.sqrt(T) / (2 * 0.5) + 0.5 * np.sqrt(T)


def test_ogd_ball_average_regret_falls_as_inverse_sqrt_t():
  u = np.random.default_rng(0).standard_normal(5)
  u /= np.linalg.norm(u)
  tx = learners.ogd(0.3, "ball", radius=1.0)
  def regret(n):
    z = alternating(n, u)
    return ball_regret(play(tx, jnp.zeros(5), z, lambda x, g: jnp.dot(x, g)), z, 1.0)
  assert average_regret_ratio(regret) == pytest.approx(0.5, abs=0.06)


def test_ftrl_average_regret_falls_as_inverse_sqrt_t():
  tx = learners.ftrl(0.5, "box", -1.0, 1.0)
  def regret(n):
    z = alternating(n, [1.0, -0.5])
    return box_regret(play(tx, jnp.zeros(2), z, lambda x, g: jnp.dot(x, g)), z, -1.0, 1.0)
  assert regret(T) > 0
  assert average_regret_ratio(regret) == pytest.approx(0.5, abs=0.06)


def test_hedge_pair_average_regret_falls_as_inverse_sqrt_t():
  """Two experts whose losses alternate (1, 0), (0, 1): the gradient of a·ℓ_A + (1-a)·ℓ_B is ℓ_A − ℓ_B."""
  tx = learners.hedge(1.0, "pair")
  def regret(n):
    loss_TxE = np.where(np.arange(n)[:, None] % 2 == 0, [1.0, 0.0], [0.0, 1.0])
    d = jnp.asarray(loss_TxE[:, :1] - loss_TxE[:, 1:], jnp.float32)
    mixture = lambda a, g: a[0] * (g[0] > 0) + (1 - a[0]) * (g[0] < 0)  # ℓ_A = 1 iff d = +1
    return expert_regret(play(tx, jnp.full(1, 0.5), d, mixture), loss_TxE)
  assert regret(T) > 0
  assert average_regret_ratio(regret) == pytest.approx(0.5, abs=0.06)


def test_hedge_simplex_average_regret_falls_as_inverse_sqrt_t():
  """Three experts, expert t mod 3 loses each round: every expert totals T/3 and Hedge pays ~η_t extra."""
  tx = learners.hedge(1.0, "last")
  def regret(n):
    loss_TxE = jnp.asarray(np.eye(3)[np.arange(n) % 3], jnp.float32)
    return expert_regret(play(tx, jnp.full(3, 1 / 3), loss_TxE, jnp.dot), loss_TxE)
  assert regret(T) > 0
  assert average_regret_ratio(regret) == pytest.approx(0.5, abs=0.06)


def test_hedge_closed_forms_and_simplex():
  pair = learners.hedge(2.0, "pair")
  a = jnp.array([0.5, 0.2])
  state = pair.init(a)
  upd, state = pair.update(jnp.array([1.0, -3.0]), state, a)
  np.testing.assert_allclose(a + upd, jax.nn.sigmoid(jnp.log(a / (1 - a)) - 2.0 * jnp.array([1.0, -3.0])),
                             rtol=1e-5)
  simplex = learners.hedge(1.0, "last")
  w = jnp.full((2, 4), 0.25)
  upd, _ = simplex.update(jnp.arange(8.0).reshape(2, 4), simplex.init(w), w)
  np.testing.assert_allclose((w + upd).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(w + upd, jax.nn.softmax(-jnp.arange(8.0).reshape(2, 4), -1), rtol=1e-5)


def test_projections():
  np.testing.assert_allclose(learners.project(jnp.array([-2.0, 0.3, 5.0]), "box", 0.0, 1.0, 1.0), [0.0, 0.3, 1.0])
  rows = learners.project(jnp.array([[3.0, 4.0], [0.3, 0.4]]), "ball", 0.0, 1.0, 1.0)
  np.testing.assert_allclose(rows, [[0.6, 0.8], [0.3, 0.4]], rtol=1e-6)  # each row is its own ball


def test_per_coordinate_clock_runs_only_on_visited_rows():
  """A table row that gets no gradient keeps its clock (and value); the visited row's step shrinks as 1/√t."""
  tx = learners.ogd(1.0)
  table = jnp.zeros((2, 3))
  g = jnp.zeros((2, 3)).at[0].set(1.0)
  state = tx.init(table)
  steps = []
  for _ in range(4):
    upd, state = tx.update(g, state, table)
    table = table + upd
    steps.append(float(-upd[0, 0]))
  np.testing.assert_allclose(steps, 1 / np.sqrt([1, 2, 3, 4]), rtol=1e-6)
  np.testing.assert_array_equal(state.count[1], 0.0)
  np.testing.assert_array_equal(table[1], 0.0)
  upd, state = learners.ogd(1.0, per_coordinate=False).update(g, learners.ogd(1.0).init(table), table)
  assert float(state.count[1, 0]) == 1.0  # the global clock advances everywhere


def test_ftrl_is_a_closed_form_of_the_gradient_sum():
  tx = learners.ftrl(1.0, "box", -1.0, 1.0)
  x = jnp.array([0.2])
  state = tx.init(x)
  for g in (0.3, -0.1, 0.5):
    upd, state = tx.update(jnp.array([g]), state, x)
    x = x + upd
  np.testing.assert_allclose(x, np.clip(0.2 - 1.0 / np.sqrt(3) * 0.7, -1, 1), rtol=1e-6)


def bilevel_cfg(**learner_specs):
  c = with_defaults(ml_collections.ConfigDict(dict(name="bilevel", learners=learner_specs)), optim.DEFAULTS, "optim")
  optim.validate(c)
  return c


def test_bilevel_builder_gives_each_group_its_learner():
  params = {"g": {"table": jnp.zeros((2, 3))}, "h": {"log_tau": jnp.zeros(())}, "alpha": {"table": jnp.full(2, 0.5)}}
  cfg = bilevel_cfg(g=dict(type="ogd", lr=1.0), h=dict(type="ftrl", lr=0.1),
                    alpha=dict(type="hedge", lr=1.0))
  tx, _ = optim.build(cfg, params, 10)
  grads = {"g": {"table": jnp.ones((2, 3))}, "h": {"log_tau": jnp.ones(())}, "alpha": {"table": jnp.ones(2)}}
  upd, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(upd["g"]["table"], -1.0)
  np.testing.assert_allclose(upd["h"]["log_tau"], -0.1)
  np.testing.assert_allclose(upd["alpha"]["table"], jax.nn.sigmoid(-1.0) - 0.5, rtol=1e-6)
  with pytest.raises(ConfigError, match="exactly one learner"):
    optim.build(bilevel_cfg(g=dict(type="ogd")), params, 10)


@pytest.mark.parametrize("learners_cfg,match", [
    ({}, "optim.learners"), ({"g": dict(type="sgd")}, "optim.learners.g.type"),
    ({"g": dict(lr=-1.0)}, "optim.learners.g.lr"), ({"g": dict(speed=1.0)}, "optim.learners.g.speed"),
    ({"g": dict(project="box", lo=1.0, hi=0.0)}, "optim.learners.g.lo")])
def test_invalid_learner_configs(learners_cfg, match):
  with pytest.raises(ConfigError, match=match):
    bilevel_cfg(**learners_cfg)
