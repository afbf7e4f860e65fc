"""Model shapes, causality, position sharing, parameter counts, and the upstream label embedding."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from iclscale import config as config_lib
from iclscale import models
from iclscale.models import transformer


def test_shapes_and_param_count_of_the_two_layer_model():
  m = transformer.ICLTransformer(num_classes=10, width=64, num_layers=2, num_heads=1)
  x = jnp.zeros((3, 2, 64))
  params = m.init(jax.random.key(0), x, jnp.zeros((3, 1), jnp.int32))["params"]
  logits = m.apply({"params": params}, x, jnp.zeros((3, 1), jnp.int32))
  assert logits.shape == (3, 10)
  n = sum(p.size for p in jax.tree.leaves(params))
  # Per block: 2 LNs (2*128) + qkv (64*192+192) + out (64*64+64) + MLP (64*256+256 + 256*64+64) = 49,984.
  # Plus label embedding 10*64 kernel + 64 bias (upstream's Dense on one-hots), final LN 128, head 64*10+10.
  assert n == 2 * 49_984 + 640 + 64 + 128 + 650


def test_attention_is_causal():
  block = transformer.Block(num_heads=2, mlp_ratio=4)
  x = jax.random.normal(jax.random.key(1), (1, 7, 16))
  params = block.init(jax.random.key(2), x)
  y = block.apply(params, x)
  x2 = x.at[:, 4:].set(jax.random.normal(jax.random.key(3), (1, 3, 16)))
  y2 = block.apply(params, x2)
  np.testing.assert_allclose(y[:, :4], y2[:, :4], atol=1e-6)   # the past never sees the future
  assert not np.allclose(y[:, 4:], y2[:, 4:])


def test_item_and_label_share_positions_and_query_is_last():
  np.testing.assert_array_equal(transformer.interleave_positions(3), [0, 0, 1, 1, 2, 2, 3])
  pe = transformer.sinusoid(jnp.arange(4), 8, 30.0)
  np.testing.assert_allclose(pe[1], np.concatenate([np.sin(30.0 ** (-2 * np.arange(4) / 8)),
                                                    np.cos(30.0 ** (-2 * np.arange(4) / 8))]), rtol=1e-6)


def test_readout_depends_on_context_labels():
  m = transformer.ICLTransformer(num_classes=5, width=16, num_layers=2, num_heads=2)
  x = jax.random.normal(jax.random.key(0), (1, 3, 16))
  params = m.init(jax.random.key(1), x, jnp.zeros((1, 2), jnp.int32))
  a = m.apply(params, x, jnp.array([[0, 1]]))
  b = m.apply(params, x, jnp.array([[0, 2]]))
  assert not np.allclose(a, b)


def test_attention_only_model_has_no_mlp():
  m = transformer.ICLTransformer(num_classes=5, width=16, num_layers=1, num_heads=2, mlp_ratio=0)
  params = m.init(jax.random.key(0), jnp.zeros((1, 2, 16)), jnp.zeros((1, 1), jnp.int32))["params"]
  assert "mlp" not in params["block_0"]


def label_kernel(kind, num_classes=10, width=4096, seed=0, **kw):
  m = transformer.LabelEmbed(num_classes, width, kind, **kw)
  return m.init(jax.random.key(seed), jnp.zeros((1, 1), jnp.int32))["params"]


def test_default_label_kernel_is_lecun_normal_with_std_one_over_sqrt_k():
  # 40,960 draws: the sample std is within ~0.4% (1 s.e.) of the true std; the old truncnorm init is 12% lower.
  for K in (10, 100):
    w = np.asarray(label_kernel("dense_lecun", K, 40_960 // K)["kernel"])
    assert w.std() == pytest.approx(K ** -0.5, rel=0.02)
    # lecun_normal truncates a unit normal at +-2 and rescales by 1/0.87962566: |w| <= 2.2737/sqrt(K), and reaches
    # near it (a plain normal would exceed it in ~1.5% of the draws).
    assert np.abs(w).max() <= 2 / 0.87962566 * K ** -0.5 * (1 + 1e-6)
    assert np.abs(w).max() > 2.1 * K ** -0.5
  # An explicit std of 1/sqrt(K) gives flax's lecun_normal (Dense's default kernel init) draw for draw.
  np.testing.assert_array_equal(nn.initializers.lecun_normal()(jax.random.key(4), (10, 8)),
                                transformer.LABEL_INITS["dense_lecun"](10 ** -0.5, 10)(jax.random.key(4), (10, 8)))


def test_alternative_label_inits_keep_their_meaning():
  K = 10
  trunc = np.asarray(label_kernel("truncnorm", K, 4096)["kernel"])
  assert trunc.std() == pytest.approx(0.8796 * K ** -0.5, rel=0.02)   # flax's std is before truncation
  normal = np.asarray(label_kernel("normal", K, 4096, init_std=0.02)["kernel"])
  assert normal.std() == pytest.approx(0.02, rel=0.02) and np.abs(normal).max() > 2.3 * 0.02   # untruncated
  scaled = np.asarray(label_kernel("dense_lecun", K, 4096, init_std=0.05)["kernel"])
  assert scaled.std() == pytest.approx(0.05, rel=0.02)
  assert "bias" not in label_kernel("truncnorm", K, 8, use_bias=False)


def test_label_embed_is_a_dense_layer_on_one_hot_labels():
  m = transformer.LabelEmbed(6, 5)
  y = jnp.array([[0, 5, 2], [3, 3, 1]])
  params = m.init(jax.random.key(0), y)["params"]
  params = dict(params, bias=jax.random.normal(jax.random.key(1), (5,)))
  expected = jax.nn.one_hot(y, 6) @ params["kernel"] + params["bias"]
  np.testing.assert_allclose(m.apply({"params": params}, y), expected, rtol=1e-6, atol=1e-7)


def test_label_bias_exists_is_zero_at_init_and_trains():
  m = transformer.ICLTransformer(num_classes=5, width=16, num_layers=1, num_heads=1)
  x = jax.random.normal(jax.random.key(0), (8, 3, 16))
  y_ctx = jax.random.randint(jax.random.key(1), (8, 2), 0, 5)
  target = y_ctx[:, 0]
  params = m.init(jax.random.key(2), x, y_ctx)["params"]
  np.testing.assert_array_equal(params["label_embed"]["bias"], np.zeros(16))

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": p}, x, y_ctx), target).mean()

  assert np.abs(jax.grad(loss)(params)["label_embed"]["bias"]).max() > 0
  tx = optax.adam(1e-2)
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert np.abs(params["label_embed"]["bias"]).min() > 0


def test_label_fields_are_declared_and_validated():
  from configs import chan2024_synthetic  # pylint: disable=g-import-not-at-top
  c = chan2024_synthetic.get_config("tiny").model
  for f in ("label_embed", "label_init_std", "label_bias"):
    assert c[f] == models.TRANSFORMER_DEFAULTS[f], f   # declared, so --config.model.<f>=... overrides it
  assert models.TRANSFORMER_DEFAULTS["label_embed"] == "dense_lecun" and models.TRANSFORMER_DEFAULTS["label_bias"]
  for field, value, msg in (("label_embed", "lecun", "must be one of"), ("label_init_std", -0.1, "must be >= 0")):
    bad = ml_collections.ConfigDict(dict(name="transformer", **{field: value}))
    with pytest.raises(config_lib.ConfigError, match=rf"config.model.{field}: {msg}"):
      models.resolve(bad, (64,))
