"""Model shapes, causality, position sharing, and parameter counts."""
import jax
import jax.numpy as jnp
import numpy as np

from iclscale.models import transformer


def test_shapes_and_param_count_of_the_two_layer_model():
  m = transformer.ICLTransformer(num_classes=10, width=64, num_layers=2, num_heads=1)
  x = jnp.zeros((3, 2, 64))
  params = m.init(jax.random.key(0), x, jnp.zeros((3, 1), jnp.int32))["params"]
  logits = m.apply({"params": params}, x, jnp.zeros((3, 1), jnp.int32))
  assert logits.shape == (3, 10)
  n = sum(p.size for p in jax.tree.leaves(params))
  # Per block: 2 LNs (2*128) + qkv (64*192+192) + out (64*64+64) + MLP (64*256+256 + 256*64+64) = 49,984.
  # Plus label embedding 10*64, final LN 128, head 64*10+10.
  assert n == 2 * 49_984 + 640 + 128 + 650


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
