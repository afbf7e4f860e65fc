"""Every shipped config resolves (validates) at its default and tiny scales, without building anything."""
import glob
import importlib
import os

import pytest

from iclscale import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
               if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", NAMES)
def test_config_resolves(name):
  mod = importlib.import_module(f"configs.{name}")
  config = mod.get_config()
  config.mesh.num_devices = 1  # the device split is checked by test_config.py; here the fields and values
  cfg = train.resolve(config)
  assert cfg.train.num_steps > 0
  try:
    tiny = mod.get_config("tiny")
  except (AssertionError, KeyError, ValueError):
    return  # this config has no tiny scale
  tiny.mesh.num_devices = 1
  train.resolve(tiny)
