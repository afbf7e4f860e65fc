"""Train (or resume) one run: python main.py [--config=configs/X.py[:arg]] [--workdir=DIR] [--config.a.b=v]."""
import logging as std_logging
import os
import sys
import time

_START = time.time()

from iclscale import preemption  # pylint: disable=wrong-import-position
preemption.install_early()  # a SIGTERM during start-up is honoured at the first step, not a silent exit 143

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from iclscale import distributed  # pylint: disable=wrong-import-position  # --coordinator_address etc.

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "chan2024_synthetic.py")
config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Python config file[:arg]; fields overridable.")
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>[_<arg>]). Re-run to resume.")
FLAGS = flags.FLAGS


class _QuietLibraries(std_logging.Filter):
  """Orbax and Grain narrate every save at INFO; keep their warnings and errors only."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "grain", "jax"))


def default_workdir() -> str:
  path, _, arg = config_flags.get_config_filename(FLAGS["config"]).partition(":")
  name = os.path.splitext(os.path.basename(path))[0] + (f"_{arg}" if arg else "")
  return os.path.join("runs", name)


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from iclscale import config as config_lib, train  # pylint: disable=g-import-not-at-top
  train.enable_compilation_cache()
  workdir = FLAGS.workdir or default_workdir()
  try:
    distributed.initialize_from_flags()
    distributed.check_same_run(FLAGS.config, workdir)
    out = train.run(FLAGS.config, workdir, start_time=_START)
  except (config_lib.ConfigError, FloatingPointError) as e:
    sys.exit(f"error: {e}")
  print(f"Run stopped at step {out['step']}. Outputs in {os.path.abspath(workdir)}: TensorBoard events, "
        f"checkpoints/, results.csv, curves.png  (view: tensorboard --logdir {workdir})")


if __name__ == "__main__":
  app.run(main)
