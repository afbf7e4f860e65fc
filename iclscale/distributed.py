"""Joining a multi-process run (TPU pod slices, multi-node GPU, several local CPU processes) and agreeing across it.

A process learns its place from flags, from the variables launchers set (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID: jax 0.10 reads only the first itself, so they are passed on here), or from the
cluster JAX detects by itself (Cloud TPU metadata, SLURM's srun variables, Open MPI). Decisions that depend on
local files (is this workdir a resumption? is this checkpoint readable?) are agreed through the coordination
service's key-value store, so no process can decide differently from another; a config hash compared at start
makes processes started with different commands fail together instead of training different models.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Callable

from absl import flags

from iclscale import config as config_lib

flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "auto: join a multi-process run when flags/env/cluster say so; on: always; off: never.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (env JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Processes in the run (env JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes) (env JAX_PROCESS_ID).")
flags.DEFINE_integer("init_timeout", 300, "Seconds to wait for every process to join before giving up.")
flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds of silence after which a process is declared dead and "
                     "every other process stops with an error.")

KV_TIMEOUT_MS = 1_800_000  # agreement steps wait this long for the slowest process (a dead one is caught
#                            sooner by the heartbeat; a slow one may be compiling on a loaded host)


class DistributedError(config_lib.ConfigError):
  """The processes cannot form (or keep) one run. The message is one line."""


def _from_env(value, name: str, cast=str):
  if value is not None:
    return value
  raw = os.environ.get(name)
  if raw in (None, ""):
    return None
  try:
    return cast(raw)
  except ValueError as e:
    raise DistributedError(f"{name}={raw!r} is not a valid value") from e


def _cluster_detected() -> str | None:
  """The cluster JAX's initialize() would detect by itself (Cloud TPU, SLURM under srun, Open MPI, Kubernetes)."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top  # the detectors initialize() itself uses
  for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if not env.opt_in_only_method and env.is_env_present():
      return env.__name__
  return None


def initialize(mode: str = "auto", coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, init_timeout: int = 300, heartbeat_timeout: int = 100) -> None:
  """jax.distributed.initialize() with explicit arguments, launcher variables or JAX's cluster detection."""
  import jax  # pylint: disable=g-import-not-at-top
  if mode != "off" and not jax.distributed.is_initialized():
    address = _from_env(coordinator_address, "JAX_COORDINATOR_ADDRESS")
    n = _from_env(num_processes, "JAX_NUM_PROCESSES", int)
    pid = _from_env(process_id, "JAX_PROCESS_ID", int)
    explicit = (address, n, pid) != (None, None, None)
    cluster = None if explicit else _cluster_detected()
    if explicit:
      missing = [f for f, v in (("--coordinator_address", address), ("--num_processes", n), ("--process_id", pid))
                 if v is None]
      if missing:
        raise DistributedError(f"a multi-process run needs {', '.join(missing)} too (or the JAX_* variables)")
      if n < 1:
        raise DistributedError(f"--num_processes must be >= 1, got {n}")
      if not 0 <= pid < n:
        raise DistributedError(f"--process_id {pid} is out of range for --num_processes {n} (0..{n - 1})")
    if explicit and pid > 0:
      _wait_for_coordinator(address, init_timeout)
    if explicit or cluster or mode == "on":
      where = f"at {address} as process {pid} of {n}" if explicit else f"({cluster or 'JAX auto-detection'})"
      try:
        jax.distributed.initialize(address, n, pid, initialization_timeout=init_timeout,
                                   heartbeat_timeout_seconds=heartbeat_timeout)
      except Exception as e:  # pylint: disable=broad-except  # gRPC/XLA errors: one line, not a C++ status dump
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"could not join the multi-process run {where} within {init_timeout} s ({detail}); check that every "
            "process was started with the same --num_processes and a reachable --coordinator_address") from e
  if jax.process_count() > 1:
    # Orbax's barriers as coordination-service barriers instead of device collectives: a CPU collective (gloo)
    # fails when one process reaches it 30 s after another, which start-up skew on a loaded host can exceed.
    from orbax.checkpoint._src.multihost import multihost as ocp_multihost  # pylint: disable=g-import-not-at-top
    flags.FLAGS[ocp_multihost.EXPERIMENTAL_ORBAX_USE_DISTRIBUTED_BARRIER.name].value = True
  logging.info("process %d of %d, %d local devices, %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(), jax.default_backend())


def _wait_for_coordinator(address: str, timeout: float) -> None:
  """jax.distributed aborts the process (no Python exception) when it cannot reach the coordinator: check first."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise DistributedError(f"--coordinator_address {address!r} is not host:port")
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        raise DistributedError(f"the coordinator at {address} is not reachable after {timeout} s ({e.strerror or e}); "
                               "start process 0 there, or check --coordinator_address") from e
      time.sleep(0.5)


def initialize_from_flags() -> None:
  f = flags.FLAGS
  initialize(f.distributed, f.coordinator_address, f.num_processes, f.process_id, f.init_timeout,
             f.heartbeat_timeout)


def is_multiprocess() -> bool:
  """True once jax.distributed is up with more than one process (without importing JAX when it is not loaded)."""
  if "jax" not in sys.modules:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  return jax.distributed.is_initialized() and jax.process_count() > 1


def shutdown() -> None:
  """jax.distributed.shutdown(): waits at JAX's shutdown barrier for every process. A failure (a peer already gone)
  is one warning line: the caller is exiting anyway."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    jax.distributed.shutdown()
  except Exception as e:  # pylint: disable=broad-except  # JaxRuntimeError from the coordination service
    logging.warning("distributed shutdown: %s", (str(e).strip().splitlines() or [type(e).__name__])[0][:200])


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


_rounds: dict[str, int] = {}


def allgather_str(name: str, value: str) -> list[str]:
  """Every process's `value` (in process order), exchanged through the coordination service's key-value store:
  no device computation, so it works before anything is compiled. One process: [value]."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return [value]
  _rounds[name] = _rounds.get(name, 0) + 1  # every process calls in the same order, so the keys match up
  key = f"iclscale/{name}/{_rounds[name]}"
  client = _client()
  client.key_value_set(f"{key}/{jax.process_index()}", value)
  return [client.blocking_key_value_get(f"{key}/{i}", KV_TIMEOUT_MS) for i in range(jax.process_count())]


def all_true(name: str, ok: bool) -> bool:
  """True only if `ok` on every process: a local failure (e.g. an unreadable shard) is everyone's failure."""
  return all(v == "1" for v in allgather_str(name, "1" if ok else "0"))


def on_process_zero(name: str, fn: Callable[[], Any]) -> Any:
  """fn() evaluated on process 0 only; its JSON result, or its ConfigError, is the same on every process."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return fn()
  if jax.process_index() == 0:
    try:
      out = json.dumps({"value": fn()})
    except config_lib.ConfigError as e:
      out = json.dumps({"error": str(e)})
    values = allgather_str(name, out)
  else:
    values = allgather_str(name, "")
  decided = json.loads(values[0])
  if "error" in decided:
    raise config_lib.ConfigError(decided["error"])
  return decided["value"]


def check_workdir(workdir: str, timeout: float = 90.0) -> None:
  """An object-store workdir (gs://...) must be reachable before anything is built: one clear line otherwise,
  instead of a storage client's retries and traceback at the first save."""
  if "://" not in workdir:
    return
  from etils import epath  # pylint: disable=g-import-not-at-top
  scheme, rest = workdir.split("://", 1)
  bucket = epath.Path(f"{scheme}://{rest.split('/', 1)[0]}")
  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    ok, detail = pool.submit(bucket.exists).result(timeout=timeout), "not found"
  except concurrent.futures.TimeoutError:
    ok, detail = False, f"no answer within {timeout:.0f} s"
  except Exception as e:  # pylint: disable=broad-except  # storage clients raise their own error types
    ok, detail = False, (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
  finally:
    pool.shutdown(wait=False)
  if not ok:
    raise DistributedError(f"workdir {workdir}: bucket {bucket} is not reachable ({detail}); check its name, this "
                           "machine's credentials (a TPU VM's service account needs Storage access) and network")


def check_same_run(config: Any, workdir: str) -> None:
  """Every process must run the same config in the same workdir: a mismatch fails on every process, at start.
  A gs:// workdir is checked for reachability first (`check_workdir`)."""
  check_workdir(workdir)
  mine = hashlib.sha256(json.dumps([config_lib.flatten(config), os.path.normpath(workdir)], sort_keys=True,
                                   default=str).encode()).hexdigest()[:16]
  hashes = allgather_str("config_hash", mine)
  differ = [i for i, h in enumerate(hashes) if h != hashes[0]]
  if differ:
    raise DistributedError(f"processes {differ} were started with a different config or workdir than process 0 "
                           f"(config hashes {hashes}); start every process with the same command")


def same_everywhere(name: str, fn: Callable[[], Any]) -> Any:
  """fn() on every process (e.g. config validation, which may read local files); if it raises a ConfigError on
  any process, it raises on every process, so none is left waiting for the others."""
  try:
    out, error = fn(), ""
  except config_lib.ConfigError as e:
    out, error = None, str(e)
  errors = allgather_str(name, error)
  first = next((i for i, e in enumerate(errors) if e), None)
  if first is not None:
    raise config_lib.ConfigError(errors[first] if errors[first] == error else f"{errors[first]} (on process {first})")
  return out


def barrier(name: str) -> None:
  """Waits for every process (coordination service, no device collective). Called before the first run of a
  program with collectives: CPU collectives (gloo) give up if a peer arrives more than ~30 s later, which a
  peer still compiling on a loaded machine can."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    _rounds[name] = _rounds.get(name, 0) + 1
    _client().wait_at_barrier(f"iclscale/{name}/{_rounds[name]}", KV_TIMEOUT_MS)


def compiled_together(name: str, jitted: Callable, *args) -> Callable:
  """`jitted`, compiled for `args` on every process before any process runs it (see `barrier`: a process that
  finishes compiling first would otherwise wait in a collective for one still compiling). A later call whose
  argument shardings differ (e.g. a state whose shardings the first step settled) compiles its own variant the
  same way."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return jitted
  variants = []

  def compile_variant(*a):
    variants.append(jitted.lower(*a).compile())
    barrier(name)
    return variants[-1]

  def call(*a):
    for compiled in variants:
      try:
        return compiled(*a)
      except (TypeError, ValueError) as e:  # raised before running: the arguments do not fit this variant
        if "compiled for" not in str(e):
          raise
    return compile_variant(*a)(*a)

  compile_variant(*args)
  return call


def fetch(tree: Any) -> Any:
  """Host copies of device values on every process. A population's values [P, ...] are split over processes
  along the population axis: they are gathered first, so every process reads every member's."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  leaves = jax.tree.leaves(tree)
  if all(x.is_fully_addressable for x in leaves):
    return jax.device_get(tree)
  if all(x.sharding.is_fully_replicated for x in leaves):
    # Every process holds the whole value (e.g. the train-metric sums): a local copy, no collective to compile.
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)
