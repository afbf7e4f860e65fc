"""The stylized distribution against its definition (Chan et al. 2024, iclr_2025 semantics)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from iclscale import tasks
from iclscale.tasks import stylized

N = 20000


def make_task(**kw):
  cfg = dict(stylized.DEFAULTS, **kw)
  return tasks.build(tasks.resolve(ml_collections.ConfigDict(cfg)), seed=3)


def draw(task, cell, n=N, seed_name="t"):
  key = stylized.stream_key(7, seed_name)
  out = jax.jit(stylized.sample_batch, static_argnums=3)(key, task.arrays["prototypes"],
                                                         jnp.arange(n, dtype=jnp.uint32), task.spec, cell)
  return jax.tree.map(np.asarray, out)


def test_query_class_frequencies_follow_w():
  task = make_task(p_high=0.9, num_high=5, num_low=5, input_noise=0.0)
  b = draw(task, stylized.cell(task.cfg, 0.9))
  freq = np.bincount(b["target"], minlength=10) / N
  w = stylized.class_weights(task.cfg.num_high, task.cfg.num_low, task.cfg.p_high)
  assert np.all(np.abs(freq - w) < 4 * np.sqrt(w * (1 - w) / N) + 1e-3), (freq, w)
  assert abs(freq[:5].sum() - 0.9) < 0.01


def test_relevance_is_binomial_per_slot():
  """With L=4 and p=0.5, #context slots equal to the query is at least r ~ Binomial(4, 0.5), more only by chance."""
  task = make_task(context_len=4, p_relevant=0.5, num_high=50, num_low=50, p_high=0.5)
  b = draw(task, stylized.cell(task.cfg, 0.5))
  matches = (b["ctx_labels"] == b["target"][:, None]).sum(1)
  # With 100 near-uniform classes, a natural match has probability ~1/100 per slot, so the count is ~Binomial.
  expected = np.array([1, 4, 6, 4, 1]) / 16
  freq = np.bincount(matches, minlength=5)[:5] / N
  np.testing.assert_allclose(freq, expected, atol=0.02)


def test_irrelevant_context_redraws_matches_and_relevant_fills_all():
  task = make_task(context_len=2, num_high=2, num_low=2, p_high=0.5)
  irr = draw(task, stylized.cell(task.cfg, 0.0))
  # A matching slot is re-drawn once from w (1/4 each), so it still matches with probability 1/4 after the redraw:
  # P(match after) = P(match before) * 1/4 = 1/4 * 1/4 per slot.
  rate = (irr["ctx_labels"] == irr["target"][:, None]).mean()
  assert abs(rate - 1 / 16) < 0.01
  rel = draw(task, stylized.cell(task.cfg, 1.0))
  assert (rel["ctx_labels"] == rel["target"][:, None]).all()


def test_fixed_num_relevant_and_no_negative_overwrite():
  """Upstream's synthetic.py lets the replacement count r - matches go negative when natural matches exceed r,
  over-writing slots: with r=1 < natural matches, the count must not exceed max(r, natural matches)."""
  task = make_task(context_len=8, num_high=1, num_low=1, p_high=0.5, num_relevant=1)
  b = draw(task, stylized.cell(task.cfg, 0.9, num_relevant=1))
  matches = (b["ctx_labels"] == b["target"][:, None]).sum(1)
  assert matches.min() >= 1
  # With 2 equiprobable classes natural matches ~ Binomial(8, 1/2); r=1 only lifts the zero case to 1.
  np.testing.assert_allclose(matches.mean(), 4 + 1 / 256, atol=0.05)


def test_conditioning_restricts_query_group():
  task = make_task()
  hi = draw(task, stylized.cell(task.cfg, 0.9, conditioning="high"), n=2000)
  lo = draw(task, stylized.cell(task.cfg, 0.9, conditioning="low"), n=2000)
  assert hi["target"].max() < 5 and lo["target"].min() >= 5
  np.testing.assert_allclose(np.bincount(lo["target"] - 5) / 2000, 0.2, atol=0.04)


def test_oobd_flip_is_groupwise_cyclic_shift_with_same_inputs():
  task = make_task(num_high=3, num_low=4, p_high=0.6)
  y = jnp.arange(7)
  np.testing.assert_array_equal(stylized.flip_labels(y, 3, 4), [1, 2, 0, 4, 5, 6, 3])
  a = draw(task, stylized.cell(task.cfg, 0.9, flip=False), n=500)
  b = draw(task, stylized.cell(task.cfg, 0.9, flip=True), n=500)
  np.testing.assert_array_equal(a["x"], b["x"])  # inputs keep the original prototypes
  np.testing.assert_array_equal(np.asarray(stylized.flip_labels(a["target"], 3, 4)), b["target"])


def test_label_noise_rate_and_clean_eval_targets():
  task = make_task(label_noise=0.1, input_noise=0.0)
  noisy = draw(task, stylized.cell(task.cfg, 0.9, noisy_target=True))
  clean = draw(task, stylized.cell(task.cfg, 0.9, noisy_target=False))
  moved = noisy["target"] != clean["target"]
  assert abs(moved.mean() - 0.1) < 0.01
  np.testing.assert_array_equal(noisy["target"][moved], (clean["target"][moved] + 1) % 10)


def test_inputs_are_prototype_plus_sigma_noise():
  task = make_task(input_noise=0.3)
  b = draw(task, stylized.cell(task.cfg, 0.9), n=4000)
  resid = b["x"][:, -1] - np.asarray(task.arrays["prototypes"])[b["target"]]
  assert abs(resid.std() - 0.3) < 0.01
  np.testing.assert_allclose(np.linalg.norm(task.arrays["prototypes"], axis=-1), 1.0, rtol=1e-5)


def test_sequence_is_a_pure_function_of_seed_and_index():
  task = make_task()
  idx = jnp.array([5, 17, 3], jnp.uint32)
  batch = jax.jit(task.batch)
  a = batch(task.arrays, idx, jnp.int32(0))
  b = batch(task.arrays, jnp.array([3, 99, 17, 1, 5], jnp.uint32), jnp.int32(7))
  np.testing.assert_array_equal(a["x"][0], b["x"][4])   # index 5 is the same sequence in any batch
  np.testing.assert_array_equal(a["target"][1], b["target"][2])
  other_seed = tasks.build(task.cfg, seed=4)
  assert not np.allclose(a["x"], batch(other_seed.arrays, idx, jnp.int32(0))["x"])


def test_eval_grid_is_independent_of_training_sequences():
  task = make_task(dataset_size=64, input_noise=0.2)
  sets = task.eval_sets("grid", 64)
  assert len(sets) == 18 and "oobd/irrelevant/C_L" in sets
  train = jax.jit(task.batch)(task.arrays, jnp.arange(64, dtype=jnp.uint32), jnp.int32(0))
  # Upstream reused RandomState(i) for eval sequence i, so eval-default-none equalled training sequence i.
  assert not np.isclose(np.asarray(sets["ibd/default/all"]["x"])[:, None],
                        np.asarray(train["x"])[None]).all(axis=(-1, -2)).any()


def test_upstream_overwrite_follows_the_negative_slice_bound():
  """relevance_overwrite='upstream': m natural matches > r overwrite max(0, (L-m) + (r-m)) more slots. With L=8,
  r=1 and 2 equiprobable classes, m ~ Binomial(8, 1/2) ends with 1 (m<=1), 7 (m=2), 6 (m=3), 5 (m=4) or m matches."""
  task = make_task(context_len=8, num_high=1, num_low=1, p_high=0.5, num_relevant=1, relevance_overwrite="upstream")
  b = draw(task, stylized.cell(task.cfg, 0.9, num_relevant=1))
  freq = np.bincount((b["ctx_labels"] == b["target"][:, None]).sum(1), minlength=9) / N
  expected = np.array([0, 1 + 8, 0, 0, 0, 70 + 56, 56 + 28, 28 + 8, 1]) / 256
  np.testing.assert_allclose(freq, expected, atol=0.012)


def test_upstream_eval_sampling_repeats_training_sequences():
  n = 64
  task = make_task(dataset_size=2**14, eval_sampling="upstream")
  idx = np.asarray(task.eval_indices(n))
  assert idx.max() < 5 * n and len(np.unique(idx)) < n   # with replacement from [0, 5n), as upstream
  sets = task.eval_sets("grid", n)
  train = jax.tree.map(np.asarray, jax.jit(task.batch)(task.arrays, jnp.asarray(idx), jnp.int32(0)))
  ibd, oobd = sets["ibd/default/all"], sets["oobd/default/all"]
  np.testing.assert_allclose(ibd["x"], train["x"], rtol=1e-6, atol=1e-6)   # the training sequences themselves
  np.testing.assert_array_equal(ibd["ctx_labels"], train["ctx_labels"])
  np.testing.assert_array_equal(ibd["target"], train["target"])
  np.testing.assert_array_equal(oobd["target"], np.asarray(stylized.flip_labels(train["target"], 5, 5)))


def test_eval_target_noise_option():
  clean = make_task(label_noise=0.5).eval_sets("grid", 2000)["ibd/default/all"]
  noisy = make_task(label_noise=0.5, eval_target_noise=True).eval_sets("grid", 2000)["ibd/default/all"]
  moved = np.asarray(noisy["target"] != clean["target"])
  assert abs(moved.mean() - 0.5) < 0.05
  np.testing.assert_array_equal(np.asarray(noisy["ctx_labels"]), np.asarray(clean["ctx_labels"]))


@pytest.mark.parametrize("field,value", [("relevance_overwrite", "negative"), ("eval_sampling", "train"),
                                         ("eval_target_noise", 1)])
def test_invalid_upstream_switches_rejected(field, value):
  from iclscale.config import ConfigError
  with pytest.raises(ConfigError, match=f"task.{field}"):
    tasks.resolve(ml_collections.ConfigDict(dict(stylized.DEFAULTS, **{field: value})))


@pytest.mark.parametrize("field,value", [("p_high", 1.0), ("p_relevant", 1.5), ("label_noise", -0.1)])
def test_invalid_probabilities_rejected(field, value):
  from iclscale.config import ConfigError
  with pytest.raises(ConfigError, match=f"task.{field}"):
    tasks.resolve(ml_collections.ConfigDict(dict(stylized.DEFAULTS, **{field: value})))
