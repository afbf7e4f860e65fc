"""Train (or resume) one run: python main.py [--config=configs/X.py[:arg]] [--workdir=DIR] [--config.a.b=v].

Every bad input ends in one line `error: ...` on stderr and a non-zero exit, before anything compiles: a bad flag
or override, a config file that cannot be loaded, an invalid field, a workdir that cannot be written, a full disk.
"""
import errno
import logging as std_logging
import os
import re
import sys
import threading
import time

_START = time.time()

from iclscale import preemption  # pylint: disable=wrong-import-position
preemption.install_early()  # a SIGTERM during start-up is honoured at the first step, not a silent exit 143

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from iclscale import distributed  # pylint: disable=wrong-import-position  # --coordinator_address etc.

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "chan2024_synthetic.py")
EXIT_BAD_INPUT = 2   # the run did not start: a flag, config or workdir error
EXIT_FAILED = 1      # the run started and stopped early (non-finite loss, disk full): re-run to resume


def fail(msg: str, code: int = EXIT_BAD_INPUT):
  """Exits with the one line `error: msg`."""
  print(f"error: {' '.join(str(msg).split())}", file=sys.stderr, flush=True)
  if distributed.is_multiprocess():
    # Every process stops at the same check. Leave together through JAX's shutdown barrier (process 0's
    # coordination service must outlive the others' last request), then skip the interpreter's teardown of the
    # collectives, which races with the peers' exit and can abort (SIGABRT) after the error line.
    distributed.shutdown()
    sys.stdout.flush()
    logging.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def flag_error(e: BaseException, argv: list[str]) -> str:
  """One line for an exception raised while loading the config file or applying --config.* overrides."""
  while "Error whilst parsing config file" in str(e) and (e.__cause__ or e.__context__):
    e = e.__cause__ or e.__context__  # ml_collections wraps what get_config raised (with a traceback as text)
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  if isinstance(e, (AttributeError, KeyError)):  # ml_collections: an override names a field the config lacks
    text = str(e)
    found = re.search(r"'([^'\\]+)", text) or re.search(r"(\w+)", text)
    key = found.group(1) if found else "?"
    hint = re.search(r'Did you mean "([^"]+)"', text)
    names = [a.split("=", 1)[0].lstrip("-") for a in argv if re.match(r"^--?(no)?config\.", a)]
    name = next((n for n in names if key in n.split(".")), f"config.{key}")
    return f"--{name}: the config has no field {key!r}" + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
  if isinstance(e, SyntaxError):
    return f"--config: syntax error in {e.filename}, line {e.lineno}: {e.msg}"
  if isinstance(e, OSError) or "Failed loading config file" in str(e):
    cause = e.__cause__ or e.__context__
    detail = lines[-1] if lines else type(e).__name__
    if isinstance(cause, OSError) and cause.strerror:
      detail = f"{cause.strerror}: {cause.filename}"
    return f"--config: cannot load the config file ({detail})"
  if isinstance(e, flags.Error):
    return lines[0] if lines else type(e).__name__
  config = next((a.split("=", 1)[1] for a in argv if a.startswith(("--config=", "-config="))), DEFAULT_CONFIG)
  if isinstance(e, (ValueError, AssertionError)):  # the config's own check of its argument (e.g. the scale)
    return f"--config={config}: {' '.join(lines) or type(e).__name__}"
  return f"--config={config}: {type(e).__name__} while building the config: {' '.join(lines) or '(no message)'}"


try:  # defining the flag loads the default config with any --config.* overrides on the command line
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Python config file[:arg]; fields overridable.")
except Exception as e:  # pylint: disable=broad-except  # a bad override of the default config
  fail(flag_error(e, sys.argv))
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>[_<arg>]). Re-run to resume.")
flags.DEFINE_string("population", "", "Train a population in one program: every combination of the axes "
                    "'path=v1,v2 path=v1,v2', e.g. 'seed=0,1,2 task.dataset_size=64,1024' (iclscale/population.py)")
flags.DEFINE_string("population_zip", "", "Population axes varied together (equal lengths), e.g. "
                    "'seed=0,1 optim.lr=1e-3,3e-4'; one more axis of --population's product")
FLAGS = flags.FLAGS


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing with every failure (unknown flag, bad override, unloadable config) as one `error:` line."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.keys()  # a config file that failed to load is an object that raises on first use
    return rest
  except Exception as e:  # pylint: disable=broad-except
    fail(flag_error(e, argv))


class _QuietLibraries(std_logging.Filter):
  """Orbax and Grain narrate every save at INFO; keep their warnings and errors only."""

  def filter(self, record):
    library = any(f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("orbax", "grain", "jax"))
    writer = library or any(f"{os.sep}{lib}{os.sep}" in record.pathname for lib in ("clu", "tensorflow"))
    if writer and _disk_full(record):  # Orbax and CLU log each failed writer thread; main() says it in one line
      return False
    if record.exc_info and record.exc_info[1] is not None and not record.pathname.startswith(_ROOT):
      # A library's background failure (e.g. asyncio's closed event loop after a failed save) is one line; what it
      # means for the run is said by main() or by the main thread's own error.
      record.msg, record.args = f"{record.getMessage()} ({_one_line(record.exc_info[1])})", None
      record.exc_info = record.exc_text = None
    return record.levelno >= std_logging.WARNING or not library


_ROOT = os.path.dirname(os.path.abspath(__file__))


def _one_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def _thread_failed(args) -> None:
  """threading.excepthook: a background thread's failure (Orbax's and CLU's writers) as one warning line."""
  if args.exc_type is SystemExit:
    return
  logging.warning("background thread %s failed: %s", getattr(args.thread, "name", "?"), _one_line(args.exc_value))


def _disk_full(record) -> bool:
  return _is_disk_full(record.getMessage()) or bool(record.exc_info and _is_disk_full(record.exc_info[1]))


def _is_disk_full(e) -> bool:
  """A full disk, however the writer reports it: OSError(ENOSPC), Orbax's RESOURCE_EXHAUSTED ValueError, TensorFlow's
  ResourceExhaustedError wrapped in CLU's AsyncError."""
  seen = 0
  while e is not None and seen < 10:
    if getattr(e, "errno", None) == errno.ENOSPC or any(
        s in str(e) for s in ("No space left on device", "os_error_code='28'")):
      return True
    e, seen = (e.__cause__ or e.__context__) if isinstance(e, BaseException) else None, seen + 1
  return False


def default_workdir() -> str:
  path, _, arg = config_flags.get_config_filename(FLAGS["config"]).partition(":")
  name = os.path.splitext(os.path.basename(path))[0] + (f"_{arg}" if arg else "")
  return os.path.join("runs", name)


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  threading.excepthook = _thread_failed
  from iclscale import config as config_lib, train  # pylint: disable=g-import-not-at-top
  train.enable_compilation_cache()
  workdir = FLAGS.workdir or default_workdir()
  try:
    distributed.initialize_from_flags()
    if FLAGS.population or FLAGS.population_zip:
      from iclscale import population  # pylint: disable=g-import-not-at-top
      with FLAGS.config.unlocked():
        FLAGS.config.population = dict(product=population.parse_axes(FLAGS.population, "population.product"),
                                       zip=population.parse_axes(FLAGS.population_zip, "population.zip"))
    distributed.check_same_run(FLAGS.config, workdir)
    out = train.run(FLAGS.config, workdir, start_time=_START)
  except config_lib.ConfigError as e:
    fail(e)
  except FloatingPointError as e:
    fail(e, EXIT_FAILED)
  except Exception as e:  # pylint: disable=broad-except
    if _is_disk_full(e):
      print(f"error: no space left on the device while writing {workdir}; free space, then re-run the same "
            "command to resume from the last complete checkpoint", file=sys.stderr, flush=True)
      os._exit(EXIT_FAILED)  # pylint: disable=protected-access  # the writer threads cannot finish: skip them
    if isinstance(e, OSError):  # unreadable input data, an unwritable workdir
      fail(f"{e.strerror or e}: {e.filename}" if e.filename else e)
    raise
  print(f"Run stopped at step {out['step']}. Outputs in {os.path.abspath(workdir)}: "
        f"{', '.join(out['outputs'])}  (view: tensorboard --logdir {workdir})")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
