"""Schedules, scoped masks, penalties and frozen groups against hand-computed values."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from iclscale import optim
from iclscale.config import ConfigError, with_defaults

PARAMS = {"block_0": {"attn": {"qkv": {"kernel": jnp.full((2, 3), 2.0)}},
                      "mlp": {"up": {"kernel": jnp.full((2, 2), 1.0), "bias": jnp.zeros((2,))}}},
          "encoder": {"kernel": jnp.full((3,), -1.0)},
          "label_embed": {"embedding": jnp.ones((4, 2))}}


def cfg(**kw):
  c = with_defaults(ml_collections.ConfigDict(kw), optim.DEFAULTS, "optim")
  optim.validate(c)
  return c


def test_warmup_rsqrt_schedule_matches_deepmind_formula():
  lr = optim.schedule(cfg(schedule="warmup_rsqrt", warmup_steps=4000, lr=3e-4), 10**6)
  for t in (1, 2000, 4000, 16000):
    assert np.isclose(lr(t), min(3e-4 * t / 4000, 3e-4 * np.sqrt(4000 / t)))


def test_scope_masks():
  mlp = jax.tree.leaves(optim.scope_mask(PARAMS, "mlp"))
  flat = dict(zip([optim.path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(PARAMS)], mlp))
  assert flat["block_0/mlp/up/kernel"] and flat["block_0/mlp/up/bias"] and not flat["block_0/attn/qkv/kernel"]
  enc = optim.scope_mask(PARAMS, "encoder")
  assert enc["encoder"]["kernel"] and not enc["block_0"]["mlp"]["up"]["kernel"]
  assert not any(jax.tree.leaves(optim.scope_mask(PARAMS, "")))


def test_squared_and_norm_penalties():
  # squared over mlp: 0.5 * 0.1 * (4 * 1^2 + 0) = 0.2
  assert np.isclose(optim.penalty(cfg(l2=0.1, l2_form="squared", l2_scope="mlp"), PARAMS), 0.2)
  # norm over all: 0.1 * (||2*ones(2,3)|| + ||ones(2,2)|| + ||0|| + ||-ones(3)|| + ||ones(4,2)||)
  expected = 0.1 * (2 * np.sqrt(6) + 2 + 0 + np.sqrt(3) + np.sqrt(8))
  assert np.isclose(optim.penalty(cfg(l2=0.1, l2_form="norm"), PARAMS), expected, rtol=1e-6)
  # the zero bias must not produce NaN gradients under the non-squared norm
  g = jax.grad(lambda p: optim.penalty(cfg(l2=0.1, l2_form="norm"), p))(PARAMS)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
  assert optim.penalty(cfg(), PARAMS) == 0


def test_frozen_group_never_moves_and_adamw_decays_only_its_scope():
  c = cfg(name="adamw", lr=0.1, weight_decay=0.5, decay_scope="attn", frozen="encoder")
  tx, _ = optim.build(c, PARAMS, 10)
  zero_grads = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zero_grads, tx.init(PARAMS), PARAMS)
  new = optax.apply_updates(PARAMS, updates)
  np.testing.assert_array_equal(new["encoder"]["kernel"], PARAMS["encoder"]["kernel"])
  np.testing.assert_allclose(new["block_0"]["attn"]["qkv"]["kernel"], 2.0 - 0.1 * 0.5 * 2.0, rtol=1e-6)
  np.testing.assert_array_equal(new["block_0"]["mlp"]["up"]["kernel"], 1.0)


@pytest.mark.parametrize("kw,field", [(dict(name="sgd"), "optim.name"), (dict(weight_decay=0.1), "optim.weight_decay"),
                                      (dict(schedule="warmup_rsqrt"), "optim.warmup_steps"), (dict(lr=-1.0), "optim.lr")])
def test_invalid_optimizer_configs(kw, field):
  with pytest.raises(ConfigError, match=field):
    cfg(**kw)


def test_clipping_is_outside_the_state_so_a_resume_may_add_it():
  plain, _ = optim.build(cfg(), PARAMS, 100)
  clipped, _ = optim.build(cfg(grad_clip=0.5), PARAMS, 100)
  s_plain, s_clip = plain.init(PARAMS), clipped.init(PARAMS)
  assert jax.tree.structure(s_plain) == jax.tree.structure(s_clip)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), PARAMS)
  updates, _ = clipped.update(grads, s_clip, PARAMS)
  reference = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(3e-4))
  expected, _ = reference.update(grads, reference.init(PARAMS), PARAMS)
  for u, e in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
    np.testing.assert_allclose(u, e, rtol=1e-6)
