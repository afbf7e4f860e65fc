"""Tests for iclscale.models.encoders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iclscale.models import encoders

# One xdist worker runs this module (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("encoders")


def _expected_resnet_params(width, channels=(16, 32, 32, 64), blocks=(2, 2, 2, 2),
                            initial=64, norm_per_channel=0):
  """Independent count: bias-free convs (+ 2 per channel per norm) + Dense."""
  n = 7 * 7 * 1 * initial + norm_per_channel * initial
  c_in = initial
  for c, num_blocks in zip(channels, blocks):
    for b in range(num_blocks):
      inner = c // 4
      n += c_in * inner + 9 * inner * inner + inner * c
      n += norm_per_channel * (2 * inner + c)
      if b == 0:  # projection shortcut
        n += c_in * c + norm_per_channel * c
      c_in = c
  return n + c_in * width + width


def _init(model, x):
  # An RBG key keeps XLA's compile of the ~40 initialisers at a few seconds;
  # threefry keys cost 3-6x more compile time on CPU. Values are irrelevant.
  return jax.jit(model.init)(jax.random.key(0, impl='rbg'), x)


@pytest.fixture(scope='module')
def resnet_and_params():
  # Shapes from eval_shape, values from numpy (lecun-normal scale): skips the
  # ~3 s init compile; the real init path is tested on the small model below.
  model = encoders.build_encoder('resnet', 64)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28)))
  rng = np.random.default_rng(0)
  fill = lambda s: (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
                    if len(s.shape) > 1 else np.zeros(s.shape)).astype(np.float32)
  return model, jax.tree_util.tree_map(fill, shapes)


def test_resnet_shapes_105(resnet_and_params):
  model, params = resnet_and_params
  x_BxTxHxW = jax.random.uniform(jax.random.key(1), (2, 3, 105, 105))
  y_BxTxD = jax.jit(model.apply)(params, x_BxTxHxW)
  assert y_BxTxD.shape == (2, 3, 64)
  assert bool(jnp.all(jnp.isfinite(y_BxTxD)))


def test_resnet_shapes_28(resnet_and_params):
  model, params = resnet_and_params
  apply = jax.jit(model.apply)
  x_BxTxHxW = jax.random.uniform(jax.random.key(1), (2, 3, 28, 28))
  y_BxTxD = apply(params, x_BxTxHxW)
  assert y_BxTxD.shape == (2, 3, 64)
  # A trailing channel axis of 1 and per-item application give the same result.
  np.testing.assert_allclose(apply(params, x_BxTxHxW[..., None]), y_BxTxD,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(apply(params, x_BxTxHxW[1, 2]), y_BxTxD[1, 2],
                             rtol=1e-4, atol=1e-5)
  # Different images give different tokens.
  assert float(jnp.abs(y_BxTxD[0, 0] - y_BxTxD[0, 1]).max()) > 1e-4


def test_resnet_param_count(resnet_and_params):
  _, params = resnet_and_params
  assert encoders.count_params(params) == _expected_resnet_params(64) == 25056
  assert set(params['params']) == {
      'initial_conv', 'projection',
      *(f'stage{g}_block{b}' for g in range(4) for b in range(2))}


@pytest.mark.parametrize('norm', ['group', 'layer'])
def test_resnet_norm_param_counts(norm):
  # Shapes only (no compile): the norms add a scale and bias per channel.
  model = encoders.build_encoder('resnet', 32, norm=norm)
  x = jnp.ones((2, 28, 28))
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  assert encoders.count_params(params) == _expected_resnet_params(32, norm_per_channel=2)
  assert jax.eval_shape(model.apply, params, x).shape == (2, 32)


def test_small_resnet_group_norm_init_and_gradients():
  # One short stage keeps compile time low; the code path is the full one's.
  model = encoders.build_encoder('resnet', 8, blocks_per_stage=(2,), channels=(8,),
                                 strides=(2,), initial_channels=8, norm='group')
  x = jax.random.uniform(jax.random.key(2), (4, 28, 28))
  params = _init(model, x)
  # The last norm of each residual branch starts at zero (DeepMind's init).
  assert not np.any(params['params']['stage0_block1']['norm_2']['scale'])
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: jnp.sum(model.apply(p, x) ** 2)))(params)
  assert np.isfinite(float(loss))
  assert float(jnp.abs(grads['params']['initial_conv']['kernel']).max()) > 0


def test_resnet_config_errors():
  # eval_shape traces without compiling: config errors surface at trace time.
  x, key = jnp.ones((1, 28, 28)), jax.random.key(0)
  with pytest.raises(ValueError, match='norm'):
    jax.eval_shape(encoders.build_encoder('resnet', 64, norm='batch').init, key, x)
  with pytest.raises(ValueError, match='project=False'):
    jax.eval_shape(encoders.build_encoder('resnet', 32, project=False).init, key, x)
  model = encoders.build_encoder('resnet', 64, project=False)  # DeepMind layout
  params = jax.eval_shape(model.init, key, x)
  assert 'projection' not in params['params']
  assert jax.eval_shape(model.apply, params, x).shape == (1, 64)


def test_linear_encoder():
  model = encoders.build_encoder('linear', 16, item_ndim=2)
  x_BxTxHxW = jnp.ones((2, 3, 28, 28))
  params = model.init(jax.random.key(0), x_BxTxHxW)
  assert model.apply(params, x_BxTxHxW).shape == (2, 3, 16)
  assert encoders.count_params(params) == 28 * 28 * 16 + 16
  vec = encoders.build_encoder('linear', 8)
  assert vec.apply(vec.init(jax.random.key(0), jnp.ones((5, 4))), jnp.ones((5, 4))).shape == (5, 8)


def test_identity_encoder():
  model = encoders.build_encoder('identity', 64)
  x_BxTxD = jax.random.normal(jax.random.key(0), (2, 3, 64))
  params = model.init(jax.random.key(0), x_BxTxD)
  assert encoders.count_params(params) == 0
  np.testing.assert_array_equal(model.apply(params, x_BxTxD), x_BxTxD)
  with pytest.raises(ValueError, match='65 features'):
    model.apply(params, jnp.ones((2, 3, 65)))
  images = encoders.build_encoder('identity', 28 * 28, item_ndim=2)
  assert images.apply({}, jnp.ones((2, 3, 28, 28))).shape == (2, 3, 784)


def test_registry():
  assert set(encoders.ENCODERS) == {'identity', 'linear', 'resnet'}
  with pytest.raises(ValueError, match='unknown encoder'):
    encoders.build_encoder('vit', 64)


def _sgd_losses(model, params, x, steps=2):
  """Losses and params after `steps` SGD steps run in a lax.scan, like the training loop's K-step chunk."""
  w_D = jnp.linspace(-1.0, 1.0, 8)

  def step(p, _):
    loss, g = jax.value_and_grad(lambda p: jnp.sum(jnp.sin(model.apply(p, x) * w_D)))(p)
    return jax.tree.map(lambda a, b: a - 0.05 * b, p, g), loss

  return jax.jit(lambda p: jax.lax.scan(step, p, None, length=steps)[::-1])(params)


def test_cpu_gradients_match_xla_in_a_scan():
  # grads='cpu' (the default on a CPU) only rewrites the backward pass: same forward, same gradients. An odd
  # size exercises uneven SAME padding at every stride (105 px Omniglot does too: 105 -> 53 -> 27 -> 14).
  kwargs = dict(blocks_per_stage=(1, 1), channels=(8, 16), strides=(1, 2), initial_channels=8)
  ref = encoders.build_encoder('resnet', 8, grads='xla', **kwargs)
  new = encoders.build_encoder('resnet', 8, grads='cpu', **kwargs)
  x = jax.random.uniform(jax.random.key(3), (2, 3, 33, 33))
  params = _init(ref, x)
  losses_ref, p_ref = _sgd_losses(ref, params, x)
  losses_new, p_new = _sgd_losses(new, params, x)
  assert float(losses_ref[0]) == float(losses_new[0])        # the forward pass is the same reduce_window/conv
  np.testing.assert_allclose(losses_new, losses_ref, rtol=1e-5)
  assert abs(float(losses_ref[1] - losses_ref[0])) > 1e-3     # the step moved the loss: gradients are not zero
  for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_new)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_max_pool_gradient_goes_to_the_first_maximum():
  # Ties (integer pixels) must route dy as select_and_scatter does: to the first maximum in row-major order.
  x_NxHxWxC = jnp.round(jax.random.uniform(jax.random.key(4), (2, 9, 8, 3)) * 3)
  dy_seed = jax.random.normal(jax.random.key(5), (2, 5, 4, 3))
  ref = lambda x: jnp.sum(dy_seed * nn_max_pool(x))
  new = lambda x: jnp.sum(dy_seed * encoders._max_pool_nhwc(x, (3, 3), (2, 2)))
  np.testing.assert_array_equal(encoders._max_pool_nhwc(x_NxHxWxC, (3, 3), (2, 2)), nn_max_pool(x_NxHxWxC))
  g_ref, g_new = jax.grad(ref)(x_NxHxWxC), jax.grad(new)(x_NxHxWxC)
  assert int(jnp.sum(g_ref != 0)) > 0
  np.testing.assert_allclose(g_new, g_ref, rtol=1e-6, atol=1e-6)


def nn_max_pool(x):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')


def test_grads_option_is_checked():
  with pytest.raises(ValueError, match='grads'):
    jax.eval_shape(encoders.build_encoder('resnet', 8, grads='fast').init, jax.random.key(0), jnp.zeros((1, 28, 28)))
