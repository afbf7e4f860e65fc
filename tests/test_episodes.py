"""Episodic tasks (Russin et al. 2024) through the task registry: the split, samples, finetuned episodes, eval sets."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from iclscale import config as config_lib
from iclscale import tasks
from iclscale.tasks import episodes

# One xdist worker runs this module (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("episodes")

SMALL = dict(russin_grid=dict(num_train_episodes=100), russin_category=dict(num_dims=10, num_train_episodes=50))
NAMES = tuple(SMALL)
ANSWER_LEN = dict(russin_grid=2, russin_category=1)
NUM_STUDY = dict(russin_grid=9, russin_category=32)


def resolve(name, **overrides):
  return tasks.resolve(ml_collections.ConfigDict(dict(name=name, **{**SMALL[name], **overrides})))


def make_task(name, seed=0, **overrides):
  return tasks.build(resolve(name, **overrides), seed)


@pytest.fixture(scope="module", params=NAMES)
def meta(request):
  return make_task(request.param)


def rows(a):
  return {r.tobytes() for r in np.asarray(a)}


def test_held_out_episodes_never_reach_metalearning(meta):
  assert not set(meta.train_keys.tolist()) & set(meta.test_keys.tolist())
  assert len(set(meta.train_keys.tolist())) == meta.cfg.num_train_episodes
  assert len(set(meta.test_keys.tolist())) == meta.cfg.num_test_episodes
  train_ctx = rows(meta.arrays["ctx"])
  assert len(train_ctx) == meta.cfg.num_train_episodes
  for c in meta.curricula:
    for rotated in (False, True):
      assert not rows(meta.episodes(meta.test_keys, c, rotated)["ctx"]) & train_ctx


def test_same_seed_same_arrays_other_seed_other_arrays(meta):
  again, other = make_task(meta.cfg.name, 0), make_task(meta.cfg.name, 1)
  for k, v in meta.arrays.items():
    np.testing.assert_array_equal(again.arrays[k], v)
  np.testing.assert_array_equal(again.test_keys, meta.test_keys)
  assert not np.array_equal(other.arrays["ctx"], meta.arrays["ctx"])
  assert not np.array_equal(other.test_keys, meta.test_keys)


def test_metalearn_sample_i_is_episode_i_over_q_query_i_mod_q(meta):
  Q, N, S = meta.queries, ANSWER_LEN[meta.cfg.name], NUM_STUDY[meta.cfg.name]
  assert Q == 25 if meta.cfg.name == "russin_grid" else Q == 64
  assert meta.dataset_size == meta.cfg.num_train_episodes * Q
  idx = np.concatenate([np.arange(3 * Q), [meta.dataset_size - 1, 17 * Q + 5]]).astype(np.uint32)
  b = jax.device_get(jax.jit(meta.batch)(meta.arrays, jnp.asarray(idx), jnp.int32(0)))
  a = jax.device_get(meta.arrays)
  T = tasks.input_shape(meta.cfg)[0]
  Tc = a["ctx"].shape[1]
  assert b["tokens"].shape == (len(idx), T) and Tc == T - 3 - N
  np.testing.assert_array_equal(b["answer_pos"], np.broadcast_to(np.arange(T - N, T), (len(idx), N)))
  assert b["answer_mask"].all()
  np.testing.assert_array_equal(b["tokens"][:, -N - 1], episodes.COLON)
  np.testing.assert_array_equal(b["tokens"][:, -N:], episodes.MASK)
  for i, tok, ans in zip(idx, b["tokens"], b["answer_tok"]):
    e, q = divmod(int(i), Q)
    np.testing.assert_array_equal(tok[:Tc], a["ctx"][e])
    np.testing.assert_array_equal(tok[Tc:Tc + 2], a["items"][e, q])
    np.testing.assert_array_equal(ans, a["answers"][e, q])
  # the context is <|endoftext|> then the study rows (the first S queries) as `item : answer <sep>`
  for e in range(3):
    ctx = [episodes.BOS] + [t for q in range(S) for t in (*a["items"][e, q], episodes.COLON, *a["answers"][e, q],
                                                          episodes.SEP)]
    np.testing.assert_array_equal(a["ctx"][e], ctx)
    assert (a["block"][e, :S] >= 0).all() and (a["block"][e, S:] == -1).all()
  assert len(rows(a["items"][0])) == Q  # every query of an episode is a distinct item


def _held(task):
  return task.episodes(task.test_keys, task.cfg.curriculum, task.cfg.rotated)


def _drawn_blocks(task, held, b, e):
  """The finetuning block of every drawn row, checked to be a study item of held-out episode e (the task's)."""
  S, Tc = NUM_STUDY[task.cfg.name], held["ctx"].shape[1]
  study = {r.tobytes(): (blk, ans) for r, blk, ans in zip(held["items"][e, :S], held["block"][e, :S],
                                                            held["answers"][e, :S])}
  out = np.zeros(len(b["tokens"]), int)
  for j, tok in enumerate(b["tokens"]):
    np.testing.assert_array_equal(tok[:Tc], held["ctx"][e])
    blk, ans = study[tok[Tc:Tc + 2].tobytes()]
    np.testing.assert_array_equal(b["answer_tok"][j], ans)
    out[j] = blk
  return out


@pytest.mark.parametrize("name", NAMES)
def test_finetune_blocked_schedule_alternates_a_b_a(name):
  k, E, per = 3, 4, 40
  twin = make_task(name, num_test_episodes=E)   # the metalearning task of the same split
  S = NUM_STUDY[name]
  for e in (0, E - 1):
    task = make_task(name, mode="finetune", num_test_episodes=E, steps_per_block=k, episode=e)
    held = _held(task)
    np.testing.assert_array_equal(twin.test_keys, task.test_keys)
    assert not rows(held["ctx"]) & rows(twin.arrays["ctx"])
    fn = jax.jit(task.batch)
    idx = jnp.arange(per, dtype=jnp.uint32)
    for step in range(3 * k):
      b = jax.device_get(fn(task.arrays, idx, jnp.int32(step)))
      assert b["tokens"].shape == (per, tasks.input_shape(task.cfg)[0])
      phase = (step // k) % 2
      assert (_drawn_blocks(task, held, b, e) == phase).all()
      # each phase's items are all drawn (the indices cover every residue)
      want = rows(held["items"][e, :S][held["block"][e, :S] == phase])
      assert rows(b["tokens"][:, -3 - ANSWER_LEN[name]:-1 - ANSWER_LEN[name]]) == want


@pytest.mark.parametrize("name", NAMES)
def test_finetune_interleaved_draws_every_study_item(name):
  E, e = 3, 1
  task = make_task(name, mode="finetune", num_test_episodes=E, finetune_schedule="interleaved", steps_per_block=1,
                   episode=e)
  held = _held(task)
  S = NUM_STUDY[name]
  for step in (0, 1):
    b = jax.device_get(jax.jit(task.batch)(task.arrays, jnp.arange(S, dtype=jnp.uint32), jnp.int32(step)))
    assert set(_drawn_blocks(task, held, b, e).tolist()) == {0, 1}
    assert rows(b["tokens"][:, -3 - ANSWER_LEN[name]:-1 - ANSWER_LEN[name]]) == rows(held["items"][e, :S])


def test_finetune_episodes_eval_set_is_the_finetuned_episode():
  E, e = 3, 2
  task = make_task("russin_grid", mode="finetune", num_test_episodes=E, curriculum="aligned", rotated=True,
                   episode=e)
  sets = task.eval_sets("episodes", 0)
  assert len(sets) == 1
  (h,), held = sets.values(), _held(task)
  T = tasks.input_shape(task.cfg)[0]
  assert h["tokens"].shape == (25, T) and h["answer_tok"].shape == (25, 2) and h["block"].shape == (25,)
  Tc = held["ctx"].shape[1]
  assert (h["tokens"][:, :Tc] == held["ctx"][e]).all()
  np.testing.assert_array_equal(h["answer_tok"], held["answers"][e])
  np.testing.assert_array_equal(h["tokens"][:, Tc:Tc + 2], held["items"][e])
  np.testing.assert_array_equal(h["block"], held["block"][e])
  with pytest.raises(ValueError):
    task.eval_sets("nope", 0)


def _pairs(s, E, Q, N):
  """Per held-out episode: the set of (item, answer) pairs of a flattened fewshot set."""
  tok, ans = s["tokens"].reshape(E, Q, -1), s["answer_tok"].reshape(E, Q, N)
  Tc = tok.shape[-1] - 3 - N
  return [frozenset((tuple(tok[e, q, Tc:Tc + 2].tolist()), tuple(ans[e, q].tolist())) for q in range(Q))
          for e in range(E)]


def test_fewshot_sets_cover_every_rotation_and_curriculum(meta):
  sets = meta.eval_sets("fewshot", 0)
  assert set(sets) == {f"{r}/{c}" for r in ("rule", "rotated") for c in meta.curricula}
  E, Q, N = meta.cfg.num_test_episodes, meta.queries, ANSWER_LEN[meta.cfg.name]
  T = tasks.input_shape(meta.cfg)[0]
  for name, s in sets.items():
    assert s["tokens"].shape == (E * Q, T) and s["answer_tok"].shape == (E * Q, N) and s["block"].shape == (E * Q,)
    r, c = name.split("/")
    held = meta.episodes(meta.test_keys, c, r == "rotated")
    np.testing.assert_array_equal(s["answer_tok"], held["answers"].reshape(E * Q, N))
    np.testing.assert_array_equal(s["block"], held["block"].reshape(-1))
  # the same held-out episodes under every curriculum: the same items (the key's content; token order aside)
  items = {n: [frozenset(tuple(sorted(p[0])) for p in ep) for ep in _pairs(s, E, Q, N)] for n, s in sets.items()}
  assert len({tuple(v) for v in items.values()}) == 1


def test_rule_fewshot_sets_pair_the_same_answers_across_curricula(meta):
  sets = meta.eval_sets("fewshot", 0)
  E, Q, N = meta.cfg.num_test_episodes, meta.queries, ANSWER_LEN[meta.cfg.name]
  pairs = [_pairs(sets[f"rule/{c}"], E, Q, N) for c in meta.curricula]
  assert all(p == pairs[0] for p in pairs)


@pytest.mark.parametrize("name,overrides,field", [
    ("russin_grid", dict(curriculum="sideways"), "curriculum"),
    ("russin_category", dict(curriculum="aligned"), "curriculum"),
    ("russin_grid", dict(mode="pretrain"), "mode"),
    ("russin_category", dict(finetune_schedule="random"), "finetune_schedule"),
    ("russin_grid", dict(num_train_episodes=14391), "num_train_episodes"),
    ("russin_category", dict(num_dims=4, num_train_episodes=3), "num_train_episodes"),
    ("russin_grid", dict(flip_xy=1.5), "flip_xy"),
    ("russin_category", dict(num_dims=1), "num_dims"),
    ("russin_grid", dict(rotated=1), "rotated"),
])
def test_validation_rejects_bad_fields(name, overrides, field):
  with pytest.raises(config_lib.ConfigError, match=field):
    resolve(name, **overrides)


def test_validation_accepts_the_largest_split():
  cfg = resolve("russin_category", num_dims=4, num_train_episodes=2)
  assert cfg.num_train_episodes + cfg.num_test_episodes == 12
  cfg = resolve("russin_grid", num_train_episodes=14390)
  assert cfg.num_train_episodes + cfg.num_test_episodes == 14400
