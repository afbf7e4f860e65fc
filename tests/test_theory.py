"""The theory calculator against Monte-Carlo simulations of what it predicts."""
import jax
import numpy as np
import pytest
from scipy import stats

from iclscale import theory


def unit_prototypes(K=10, D=64, seed=0):
  mu = np.random.default_rng(seed).standard_normal((K, D))
  return mu / np.linalg.norm(mu, axis=-1, keepdims=True)


def test_majority_error_matches_simulated_votes():
  rng = np.random.default_rng(0)
  for eps in (0.1, 0.35):
    for n in (0, 1, 2, 3, 4, 7, 10):
      minority = rng.binomial(n, eps, 200_000)
      tie = 2 * minority == n
      simulated = np.mean(np.where(tie, rng.random(minority.size) < 0.5, 2 * minority > n))
      if n == 0:
        simulated = 1 - 1 / 10  # no votes: a uniform guess among 10 classes
      assert theory.majority_error(n, eps, 10) == pytest.approx(simulated, abs=0.004)


def test_vote_distribution_closed_form_equals_its_monte_carlo():
  q = np.array([0.0, 0.7, 0.3, 0.0])
  ns = np.array([0, 1, 2, 5, 12])
  exact = theory.vote_distribution(q, ns)
  mc = theory.vote_distribution(q, ns, num_samples=40_000, force_mc=True)
  np.testing.assert_allclose(exact, mc, atol=0.01)
  np.testing.assert_allclose(exact.sum(-1), 1.0)
  three = theory.vote_distribution(np.array([0.5, 0.3, 0.2]), [1, 3, 5000])
  np.testing.assert_allclose(three[0], [0.5, 0.3, 0.2], atol=0.03)   # one vote is one draw
  np.testing.assert_allclose(three[-1], [1.0, 0.0, 0.0])             # many votes: the top label


def test_confusion_matches_full_dimensional_simulation():
  mu = unit_prototypes()
  s = theory.Setting(input_noise=0.4)
  m = theory.confusion(s, mu, 100_000, seed=1)
  rng = np.random.default_rng(2)
  for c in (0, 7):
    x = mu[c] + 0.4 * rng.standard_normal((100_000, 64))
    direct = np.bincount(np.argmax(2 * x @ mu.T - 1.0, -1), minlength=10) / 100_000
    np.testing.assert_allclose(m[c], direct, atol=0.006)
  np.testing.assert_array_equal(theory.confusion(theory.Setting(input_noise=0.0), mu), np.eye(10))


@pytest.mark.parametrize("p_relevant", [0.5, 0.9])
def test_ic_error_closed_form_matches_the_task_sampler(p_relevant):
  """L = 1: h answers the context label; the closed form against sequences drawn by the task itself."""
  s = theory.Setting(p_high=0.9, p_relevant=p_relevant, label_noise=0.2, input_noise=0.2)
  mu = unit_prototypes()
  for target in ("clean", "train"):
    exact = theory.ic_error_closed_form(s, target=target)
    mc = theory.ic_error_mc(s, mu, target=target, num_samples=20_000, seed=3)
    for group in theory.GROUPS:
      ids = s.group(group)
      assert exact[ids].mean() == pytest.approx(mc[ids].mean(), abs=0.012), (target, group)


def simulate_tabular_g(s, mu, N, replicates, seed):
  """Direct simulation: N training queries, a plurality table per nearest-prototype region, clean test error."""
  rng = np.random.default_rng(seed)
  K, w = s.num_classes, s.weights()
  sq = np.sum(mu**2, -1)
  region_of = lambda c: np.argmax(2 * (mu[c] + s.input_noise * rng.standard_normal(c.shape + mu.shape[1:])) @ mu.T
                                  - sq, -1)
  cls = rng.choice(K, (replicates, N), p=w)
  label = np.where(rng.random(cls.shape) < s.label_noise, (cls + 1) % K, cls)
  counts = np.zeros((replicates, K, K))
  np.add.at(counts, (np.arange(replicates)[:, None], region_of(cls), label), 1)
  top = counts == counts.max(-1, keepdims=True)                  # an empty row ties everywhere: a uniform guess
  vote = top / top.sum(-1, keepdims=True)
  errors = {}
  for group in theory.GROUPS:
    test = rng.choice(s.group(group), (replicates, 400))
    p_right = vote[np.arange(replicates)[:, None], region_of(test), test]
    errors[group] = 1 - p_right.mean()
  return errors


@pytest.mark.parametrize("N", [50, 400])
def test_iw_error_matches_a_simulated_plurality_table(N):
  """Impure regions (σ = 0.3) and label noise: region confusion, contamination and plurality votes together."""
  s = theory.Setting(p_high=0.9, input_noise=0.3, label_noise=0.1)
  mu = unit_prototypes(seed=4)
  pred = theory.predict(s, mu, [N], confusion_samples=200_000)
  sim = simulate_tabular_g(s, mu, N, replicates=400, seed=5)
  for group in theory.GROUPS:
    assert pred[group]["curve"]["iw_error"][0] == pytest.approx(sim[group], abs=0.03), group


def test_switch_rules_on_hand_made_curves():
  e_g = np.array([1.0] + [0.0] * 99)    # g is wrong once, then always right; h errs 10% of the time
  assert theory.switch_visits(e_g, 0.1, "instant") == 1
  assert theory.switch_visits(e_g, 0.1, "cumulative") == 10    # 1 <= 0.1 n
  # median: G(n) = 1 − Binomial(n, 0.1); first n with P(G < 0) + ½P(G = 0) >= ½
  n = np.arange(1, 100)
  p = stats.binom.sf(1, n, 0.1) + 0.5 * stats.binom.pmf(1, n, 0.1)
  assert theory.switch_visits(e_g, 0.1, "median") == n[np.argmax(p >= 0.5)]
  floor = np.array([1.0] + [0.05] * 9)  # beyond the curve the floor 0.05 < 0.1 persists: extrapolated
  assert theory.switch_visits(floor, 0.1, "cumulative") == 19   # 1 + 0.05 (n − 1) <= 0.1 n
  assert theory.switch_visits(np.full(10, 0.2), 0.1, "median") == float("inf")


def test_predicted_switch_scales_as_inverse_class_weight():
  """σ = ε = 0: g is right after one visit, so the switch is in visits, and in sequences N = visits / w_c."""
  s = theory.Setting(input_noise=0.0, p_high=0.9)
  pred = theory.predict(s, unit_prototypes())
  w_h, w_l = 0.9 / 5, 0.1 / 5
  assert pred["C_H"]["switch"]["instant"] == pytest.approx(1 / w_h)
  assert pred["C_L"]["switch"]["instant"] == pytest.approx(1 / w_l)
  assert pred["C_L"]["switch"]["cumulative"] == pytest.approx(10 / w_l)  # 0.9 <= n·e_h with e_h ≈ 0.09996
  assert pred["C_L"]["switch"]["median"] > pred["C_L"]["switch"]["cumulative"]
  assert pred["C_L"]["iw_floor"] == 0.0 and pred["C_L"]["ic_error"] == pytest.approx(0.1, abs=1e-3)
  # large σ: g's floor (queries carried across regions) exceeds h's error, so ICL is never given up
  noisy = theory.predict(theory.Setting(input_noise=0.4), unit_prototypes(), confusion_samples=50_000)
  assert noisy["C_L"]["iw_floor"] > noisy["C_L"]["ic_error"]
  assert noisy["C_L"]["switch"]["median"] == float("inf")


def test_setting_from_a_task_config():
  from iclscale import tasks  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = tasks.resolve(ml_collections.ConfigDict(dict(name="stylized", p_high=0.99, input_noise=0.3)))
  s = theory.Setting.from_task(cfg)
  assert (s.p_high, s.input_noise, s.num_classes) == (0.99, 0.3, 10)
  np.testing.assert_allclose(s.weights().sum(), 1.0)
  assert jax.numpy.asarray(s.label_noise_matrix()).shape == (10, 10)
