"""The Llama-style decoder: causal answer-position logits, the answer-token loss, finetuning configs."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from iclscale import train
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


def finetune_config(**task):
  from configs import russin2024  # pylint: disable=g-import-not-at-top
  c = russin2024.get_config("grid,tiny,finetune")
  c.mesh.num_devices = 1
  for k, v in task.items():
    c.task[k] = v
  return c


def test_finetune_configs_are_checked_before_building(tmp_path):
  c = finetune_config(episode=4)                                # 4 held-out episodes: 0..3
  c.population = dict(product={}, zip={})
  with pytest.raises(ConfigError, match="task.episode"):
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
