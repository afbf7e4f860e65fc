"""Invalid configs fail with one clear line naming the field, before anything is built."""
import ml_collections
import pytest

from iclscale import train
from iclscale.config import ConfigError


@pytest.mark.parametrize("overrides,match", [
    ({"task.p_relevant": 1.2}, r"config\.task\.p_relevant: must be a probability"),
    ({"train.batch_size": 30, "mesh.num_devices": 8}, r"config\.train\.batch_size: 30 is not divisible by the data-parallel size 8"),
    ({"train.num_steps": 105}, r"config\.train\.num_steps: must be a multiple of train\.steps_per_dispatch=10"),
    ({"model.num_heads": 3}, r"config\.model\.num_heads: width 64 is not divisible"),
    ({"model.width": 32}, r"config\.model\.encoder: identity encoder needs inputs of width 32"),
    ({"mesh.num_devices": 9}, r"config\.mesh\.num_devices: must be in \[0, 8\]"),
    ({"mesh.fsdp": 3, "mesh.num_devices": 8}, r"config\.mesh: 8 devices cannot be split"),
    ({"data.pipeline": "tfdata"}, r"config\.data\.pipeline: must be one of"),
    ({"evals.grid.batch_size": 30}, r"config\.evals\.grid\.num_examples: 128 is not a multiple of batch_size 30"),
    ({"task.name": "nope"}, r"config\.task\.name: unknown task 'nope'"),
    ({"seed": -1}, r"config\.seed: must be an int >= 0"),
])
def test_bad_values(tiny, overrides, match):
  with pytest.raises(ConfigError, match=match):
    train.resolve(tiny(**overrides))


def test_unknown_and_mistyped_fields(tiny):
  c = tiny()
  c.task.unlock()
  c.task.p_relevent = 0.5
  with pytest.raises(ConfigError, match=r"config\.task\.p_relevent: unknown field"):
    train.resolve(c)
  c = tiny()
  c.model = ml_collections.ConfigDict(dict(c.model.to_dict(), num_layers="two"))
  with pytest.raises(ConfigError, match=r"config\.model\.num_layers: expected int, got str"):
    train.resolve(c)
  c = tiny()
  c.unlock()
  c.extra = 1
  with pytest.raises(ConfigError, match=r"config\.extra: unknown field"):
    train.resolve(c)


def test_error_is_one_line(tiny):
  with pytest.raises(ConfigError) as e:
    train.resolve(tiny(**{"task.p_high": 0.0}))
  assert "\n" not in str(e.value)


def test_valid_tiny_config_resolves_with_defaults(tiny):
  cfg = train.resolve(tiny())
  assert cfg.optim.grad_clip == 0.0 and cfg.model.mlp_ratio == 4 and cfg.evals.grid.sets == "grid"
