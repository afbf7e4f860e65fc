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
  # Shapes only: eval_shape traces init and apply as they run, without compiling them.
  params = jax.eval_shape(m.init, jax.random.key(0), x, jnp.zeros((3, 1), jnp.int32))["params"]
  logits = jax.eval_shape(m.apply, {"params": params}, x, jnp.zeros((3, 1), jnp.int32))
  assert logits.shape == (3, 10)
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  # Per block: 2 LNs (2*128) + qkv (64*192+192) + out (64*64+64) + MLP (64*256+256 + 256*64+64) = 49,984.
  # Plus label embedding 10*64 kernel + 64 bias (upstream's Dense on one-hots), final LN 128, head 64*10+10.
  assert n == 2 * 49_984 + 640 + 64 + 128 + 650


def test_attention_is_causal():
  block = transformer.Block(num_heads=2, mlp_ratio=4)
  x = jax.random.normal(jax.random.key(1), (1, 7, 16))
  params = jax.jit(block.init)(jax.random.key(2), x)   # jitted: one compilation, not one per operation
  apply = jax.jit(block.apply)
  y = apply(params, x)
  x2 = x.at[:, 4:].set(jax.random.normal(jax.random.key(3), (1, 3, 16)))
  y2 = apply(params, x2)
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
  params = jax.jit(m.init)(jax.random.key(1), x, jnp.zeros((1, 2), jnp.int32))
  apply = jax.jit(m.apply)
  a = apply(params, x, jnp.array([[0, 1]]))
  b = apply(params, x, jnp.array([[0, 2]]))
  assert not np.allclose(a, b)


def test_attention_only_model_has_no_mlp():
  def block_params(mlp_ratio):
    m = transformer.ICLTransformer(num_classes=5, width=16, num_layers=1, num_heads=2, mlp_ratio=mlp_ratio)
    # The parameter tree only: eval_shape traces init without compiling it.
    return jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 2, 16)),
                          jnp.zeros((1, 1), jnp.int32))["params"]["block_0"]
  assert {"up", "down"} <= set(block_params(4)) and not {"up", "down"} & set(block_params(0))


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
  params = jax.jit(m.init)(jax.random.key(2), x, y_ctx)["params"]   # jitted: one compilation, not one per op
  np.testing.assert_array_equal(params["label_embed"]["bias"], np.zeros(16))

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": p}, x, y_ctx), target).mean()

  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, state):   # one Adam step; also returns the gradient it used
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, grads

  state = tx.init(params)
  for i in range(3):
    params, state, grads = step(params, state)
    if i == 0:   # the gradient at init
      assert np.abs(grads["label_embed"]["bias"]).max() > 0
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


def numpy_forward(p, x_BxSxD, y_BxL, num_layers, num_heads, period=30.0):
  """The two-layer model as Chan et al. 2024 describe and their code builds it (chanb/simple_icl, iclr_2025,
  src/models.py and src/modules.py), written out in float64 NumPy: Dense on one-hot labels with bias; x_i and y_i
  at position i, the query at L; pre-LN blocks (eps 1e-5, two-pass variance) with separate q, k, v projections
  (here the three column blocks of the fused kernel), causal mask by -1e10, tanh-GELU MLP; final LN; linear head."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  B, S, D = x_BxSxD.shape
  L, K = S - 1, p["head"]["kernel"].shape[1]

  def ln(h, q):
    mu = h.mean(-1, keepdims=True)
    return (h - mu) / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * q["scale"] + q["bias"]

  def dense(h, q):
    return h @ q["kernel"] + q["bias"]

  labels = dense(np.eye(K)[y_BxL], p["label_embed"])
  tokens = [t for i in range(L) for t in (x_BxSxD[:, i], labels[:, i])] + [x_BxSxD[:, L]]
  h = np.stack(tokens, axis=1).astype(np.float64)
  pos = np.array([i for i in range(L) for _ in (0, 1)] + [L], np.float64)
  angle = pos[:, None] * period ** (-np.arange(0, D, 2) / D)[None]
  h = h + np.concatenate([np.sin(angle), np.cos(angle)], -1)[None]
  T, dh = h.shape[1], D // num_heads
  mask = np.tril(np.ones((T, T)))
  for i in range(num_layers):
    q = p[f"block_{i}"]
    a = ln(h, q["ln_attn"])
    w, b = q["attn"]["qkv"]["kernel"], q["attn"]["qkv"]["bias"]
    qq, kk, vv = ((a @ w[:, j * D:(j + 1) * D] + b[j * D:(j + 1) * D]).reshape(B, T, num_heads, dh) for j in range(3))
    logits = np.einsum("bthd,bshd->bhts", qq, kk) / np.sqrt(dh)
    logits = logits * mask - 1e10 * (1 - mask)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    h = h + dense(np.einsum("bhts,bshd->bthd", att, vv).reshape(B, T, D), q["attn"]["out"])
    u = dense(ln(h, q["ln_mlp"]), q["up"])
    u = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))
    h = h + dense(u, q["down"])
  return dense(ln(h[:, -1], p["ln_final"]), p["head"])


def test_forward_equals_a_numpy_transcription_of_the_upstream_model():
  m = transformer.ICLTransformer(num_classes=7, width=16, num_layers=2, num_heads=2)
  x = jax.random.normal(jax.random.key(0), (4, 4, 16))
  y = jax.random.randint(jax.random.key(1), (4, 3), 0, 7)
  params = jax.jit(m.init)(jax.random.key(2), x, y)["params"]   # jitted: one compilation, not one per operation

  # Perturb every leaf (biases and LN parameters are 0/1 at init) so each one's role is checked. NumPy draws: JAX's
  # would compile one sampler per leaf shape.
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda v: v + np.float32(0.3) * rng.normal(size=v.shape).astype(np.float32), params)
  got = np.asarray(jax.jit(m.apply)({"params": params}, x, y))
  want = numpy_forward(params, np.asarray(x, np.float64), np.asarray(y), num_layers=2, num_heads=2)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def layer_norm_inputs(offset: float):
  rng = np.random.default_rng(0)
  x = (offset + rng.normal(size=(3, 5, 64)) * np.linspace(0.01, 3, 64)).astype(np.float32)
  params = {"scale": (1 + 0.3 * rng.normal(size=64)).astype(np.float32),
            "bias": (0.3 * rng.normal(size=64)).astype(np.float32)}
  return x, params


def test_layer_norm_is_two_pass_accurate_far_from_zero():
  """Inputs with a large common offset, where the one-pass E[x^2] - E[x]^2 form loses most digits: ours is as
  close to a float64 LayerNorm as flax's two-pass LayerNorm, with the same parameter tree."""
  x, params = layer_norm_inputs(1e3)
  x64 = x.astype(np.float64)
  centered = x64 - x64.mean(-1, keepdims=True)
  want = centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5) * params["scale"] + params["bias"]
  ours, ref = transformer.LayerNorm(), nn.LayerNorm(1e-5, use_fast_variance=False)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(ref.init(jax.random.key(0), x))
  err = lambda m: np.abs(np.asarray(m.apply({"params": params}, x), np.float64) - want).max()
  assert err(ours) <= 2 * err(ref) + 1e-6
  assert err(nn.LayerNorm(1e-5, use_fast_variance=True)) > 20 * err(ours)   # the form this test would catch


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_layer_norm_equals_flax_layer_norm_in_each_compute_dtype(dtype):
  """Same values and output dtype as flax's LayerNorm for float32 and bfloat16 inputs and parameters (statistics in
  float32 in both)."""
  cast = lambda t: jax.tree.map(lambda v: jnp.asarray(v, dtype), t)
  x, params = cast(layer_norm_inputs(0.5))
  got = transformer.LayerNorm().apply({"params": params}, x)
  want = nn.LayerNorm(1e-5, use_fast_variance=False).apply({"params": params}, x)
  assert got.dtype == want.dtype == jnp.dtype(dtype)
  tol = 1e-5 if dtype == "float32" else 2e-2
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol)
