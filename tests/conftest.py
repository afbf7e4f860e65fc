"""Test set-up: 8 simulated CPU devices (set before JAX starts), fast compilation, tiny configs."""
import os
import sys

# XLA's CPU backend without LLVM's optimisation passes: the tests' programs are tiny and run for a few steps, so
# compiling them is most of their cost, and level 0 compiles them 2-3x faster (same programs, same assertions; float
# results differ from level 2 in the last bits, as between two XLA versions). Processes the tests start get it too
# (`child_xla_flags`). A level already in $XLA_FLAGS is kept.
FAST_COMPILE = "--xla_backend_optimization_level=0"
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _flags:
  _flags += " " + FAST_COMPILE
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()


def child_xla_flags(devices: int | None = None) -> str:
  """$XLA_FLAGS for a process a test starts: this session's flags with `devices` simulated CPU devices (None: the
  platform's own count, as a user's machine)."""
  from iclscale import launch_local  # pylint: disable=g-import-not-at-top
  return launch_local.xla_flags(os.environ.get("XLA_FLAGS", ""), devices)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # pylint: disable=wrong-import-position

from configs import chan2024_synthetic  # pylint: disable=wrong-import-position


def override(config, **overrides):
  """Sets dotted-key fields in place, e.g. override(c, **{"train.num_steps": 100}), and returns the config."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_config(**overrides):
  """The stylized tiny config with dotted-key overrides."""
  return override(chan2024_synthetic.get_config("tiny"), **overrides)


@pytest.fixture
def tiny():
  return tiny_config


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  """Runs in one session compile the same programs; the persistent cache lets later runs skip compilation.

  One cache for the whole session, this process and every process a test starts (main.py, launch_local's workers,
  the studies read $ICLSCALE_JAX_CACHE through train.enable_compilation_cache): a fresh directory, unless
  $ICLSCALE_JAX_CACHE already names one (e.g. a CI cache kept between runs).
  """
  import jax  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):   # pytest -n: one cache for every worker (their shared parent)
    base = base.parent
  path = os.environ.get("ICLSCALE_JAX_CACHE") or str(base / "jax_cache")
  os.makedirs(path, exist_ok=True)
  os.environ["ICLSCALE_JAX_CACHE"] = path
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
