"""Every shipped config resolves at every argument it accepts, and spells out every field of its plug-ins."""
import glob
import importlib
import os

import pytest

from configs import common
from iclscale import config as config_lib
from iclscale import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
               if not p.endswith(("__init__.py", "common.py")))
CASES = [(name, arg) for name in NAMES for arg in importlib.import_module(f"configs.{name}").ARGS]


def test_every_config_declares_its_arguments():
  assert len(NAMES) >= 9 and all(len(importlib.import_module(f"configs.{n}").ARGS) >= 2 for n in NAMES)


@pytest.mark.parametrize("name,arg", CASES)
def test_config_resolves_and_is_complete(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  written = config_lib.flatten(config)
  # A config that takes all devices is checked on one (its batch split depends on the machine; test_config.py
  # checks the split rules); the others as shipped, on the tests' 8 simulated devices.
  if config.mesh.num_devices == 0:
    config.mesh.num_devices = 1
  cfg = train.resolve(config)
  assert cfg.train.num_steps > 0
  # Complete: resolving adds nothing, so the config as written is the one the run records, and every field can
  # be overridden on the command line.
  resolved = config_lib.flatten(cfg)
  assert sorted(set(resolved) - set(written)) == []
  written["mesh.num_devices"] = resolved["mesh.num_devices"]
  assert {k: resolved[k] for k in written} == written


@pytest.mark.parametrize("name", NAMES)
def test_unknown_argument_is_a_one_line_value_error(name):
  with pytest.raises(ValueError) as e:
    importlib.import_module(f"configs.{name}").get_config("huge")
  assert "\n" not in str(e.value) and "huge" in str(e.value)


def test_documented_fields_exist_with_their_defaults():
  c = importlib.import_module("configs.chan2024_synthetic").get_config("tiny")
  assert c.optim.grad_clip == 0.0 and c.optim.warmup_steps == 0 and c.train.eval_at_start is False
  assert c.checkpoint.async_save is True and c.data.prefetch == 4 and c.evals.grid.sets == "grid"
  assert c.model.label_init_std == train.resolve(c).model.label_init_std


def test_complete_keeps_the_configs_own_values():
  c = common.base()
  c.task = dict(name="stylized", dim=32)
  c.model = dict(name="transformer", width=32)
  c.optim = dict(lr=1e-3)
  c.train = dict(num_steps=30)
  c.eval_every = 10
  c.evals = dict(grid=dict(type="query_classification", num_examples=16, batch_size=16))
  c = common.complete(c)
  assert c.task.dim == 32 and c.model.width == 32 and c.optim.lr == 1e-3 and c.train.num_steps == 30
  assert c.task.num_high == 5 and c.optim.b2 == 0.999 and c.train.batch_size == 32 and c.evals.grid.sets == "grid"
