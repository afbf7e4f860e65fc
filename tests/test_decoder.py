"""The Llama-style decoder: causal answer-position logits, the answer-token loss, and vmapped finetuning copies."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from iclscale import contracts, losses, models, train
from iclscale.config import ConfigError
from iclscale.models import decoder

V, T = 11, 9


def tiny_module():
  return decoder.Decoder(V, width=16, num_layers=2, num_heads=2, ffn_dim=24)


def test_answer_logits_see_only_the_past():
  module = tiny_module()
  tokens = jax.random.randint(jax.random.key(0), (1, T), 0, V)
  pos = jnp.array([[4, 5]])
  params = jax.jit(module.init)(jax.random.key(1), tokens, pos)["params"]   # jitted: one compilation, not one per op
  apply = jax.jit(module.apply)
  base = apply({"params": params}, tokens, pos)
  assert base.shape == (1, 2, V)
  later = tokens.at[0, 6:].set((tokens[0, 6:] + 1) % V)       # after both answer positions: no effect
  np.testing.assert_allclose(apply({"params": params}, later, pos), base, atol=1e-6)
  between = tokens.at[0, 5].set((tokens[0, 5] + 1) % V)       # position 5: changes only the second answer
  out = apply({"params": params}, between, pos)
  np.testing.assert_allclose(out[0, 0], base[0, 0], atol=1e-6)
  assert not np.allclose(out[0, 1], base[0, 1], atol=1e-4)


def test_copies_train_independently():
  """The summed loss of n copies gives each copy exactly the gradient of its own loss on its own batch."""
  module = tiny_module()
  single = contracts.Model(module, lambda k, b: module.init(k, b["tokens"], b["answer_pos"])["params"],
                           lambda p, b: module.apply({"params": p}, b["tokens"], b["answer_pos"]), losses.answer_ce)
  copies = models.with_copies(single, 3)
  tokens = jax.random.randint(jax.random.key(2), (3, 4, T), 0, V)
  batch = dict(tokens=tokens, answer_pos=jnp.full((3, 4, 1), T - 1), answer_tok=tokens[..., :1],
               answer_mask=jnp.ones((3, 4, 1), bool))
  # Jitted: one compilation per function, not one per operation.
  params = jax.jit(copies.init)(jax.random.key(3), batch)
  assert not np.allclose(params["embed"]["embedding"][0], params["embed"]["embedding"][1])  # own inits
  copies_grad = jax.jit(jax.grad(lambda p, b: copies.loss(copies.apply(p, b), b)[0]))
  single_grad = jax.jit(jax.grad(lambda p, b: single.loss(single.apply(p, b), b)[0]))
  grads = copies_grad(params, batch)
  take = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
  for i in range(3):
    own = single_grad(take(params, i), take(batch, i))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), take(grads, i), own)
  other = dict(batch, tokens=batch["tokens"].at[0].set(0))      # another batch for copy 0 only
  grads2 = copies_grad(params, other)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[1:], b[1:]), grads, grads2)


def finetune_config(**task):
  from configs import russin2024  # pylint: disable=g-import-not-at-top
  c = russin2024.get_config("grid,tiny,finetune")
  c.mesh.num_devices = 1
  for k, v in task.items():
    c.task[k] = v
  return c


def test_finetune_configs_are_checked_before_building(tmp_path):
  c = finetune_config()
  c.optim.grad_clip = 1.0
  with pytest.raises(ConfigError, match="optim.grad_clip"):
    train.resolve(c)
  c = finetune_config()
  c.train.batch_size = 6                                        # 4 copies
  with pytest.raises(ConfigError, match="train.batch_size"):
    train.resolve(c)
  c = finetune_config()
  c.model.init_from = str(tmp_path)                             # no checkpoints there
  with pytest.raises(ConfigError, match="model.init_from"):
    train.resolve(c)


def test_init_from_refuses_another_architecture(tmp_path):
  from configs import russin2024  # pylint: disable=g-import-not-at-top
  meta = russin2024.get_config("grid,tiny")
  meta.mesh.num_devices = 1
  meta.train.num_steps = 5
  meta.evals = ml_collections.ConfigDict()
  train.run(meta, str(tmp_path / "meta"))
  c = finetune_config()
  c.model.init_from = str(tmp_path / "meta")
  c.model.width = 32
  with pytest.raises(ConfigError, match="model.init_from: .* holds parameters of another architecture"):
    train.run(c, str(tmp_path / "finetune"))
  assert not os.path.exists(os.path.join(tmp_path, "finetune", "checkpoints"))
