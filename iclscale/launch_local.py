"""Start one run as n processes on this machine, each with its own CPU devices, as a multi-host job would.

  python -m iclscale.launch_local --processes 2 --devices_per_process 4 -- \\
      --config=configs/chan2024_synthetic.py:tiny --config.mesh.num_devices=0 --workdir=runs/two_proc

Each process gets `XLA_FLAGS=--xla_force_host_platform_device_count=<d>` and the launcher variables
JAX_COORDINATOR_ADDRESS (localhost and a free port), JAX_NUM_PROCESSES and JAX_PROCESS_ID, which main.py passes
to jax.distributed.initialize(); its output goes to <workdir>/logs/process_<i>.log. The exit status is 0 only if
every process exits 0; when one fails, the others get `--grace` seconds to stop by themselves (the distributed
runtime stops them after its heartbeat timeout) and are then killed. SIGTERM/SIGINT to the launcher is passed to
every process (a preemption notice: they save at one agreed step and exit 0). No child outlives the launcher.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLL_SECS = 0.2


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def workdir_of(main_args: list[str]) -> str | None:
  for i, a in enumerate(main_args):
    if a.startswith("--workdir="):
      return a.split("=", 1)[1]
    if a == "--workdir" and i + 1 < len(main_args):
      return main_args[i + 1]
  return None


def xla_flags(flags: str, devices: int | None) -> str:
  """`flags` ($XLA_FLAGS) with its simulated CPU device count replaced by `devices` (None/0: removed, so the host
  is one device)."""
  kept = re.sub(r"--xla_force_host_platform_device_count=\S+", "", flags).split()
  return " ".join(kept + ([f"--xla_force_host_platform_device_count={devices}"] if devices else []))


def process_env(base: dict, i: int, n: int, devices: int, address: str) -> dict:
  env = dict(base)
  if devices:
    env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = xla_flags(env.get("XLA_FLAGS", ""), devices)
  env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
  return env


def _tail(path: str, lines: int = 5) -> str:
  with open(path, errors="replace") as f:
    return "".join(l if len(l) <= 300 else l[:300] + "...\n" for l in f.readlines()[-lines:])


class LocalJob:
  """n processes of one run, started at once; `wait` reaps them and kills whatever is left (no orphans)."""

  def __init__(self, n: int, devices: int, main_args: list[str], python: str = sys.executable,
               main: str = os.path.join(ROOT, "main.py"), env: dict | None = None):
    workdir = workdir_of(main_args)
    if n < 1 or workdir is None:
      raise ValueError("launch_local needs --processes >= 1 and a --workdir among main.py's arguments")
    log_dir = os.path.join(workdir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    self.address = f"localhost:{free_port()}"
    self.logs = [os.path.join(log_dir, f"process_{i}.log") for i in range(n)]
    # Logs are appended across re-runs of a workdir: this job's output starts at the current ends.
    self.offsets = [os.path.getsize(p) if os.path.exists(p) else 0 for p in self.logs]
    self.procs: list[subprocess.Popen] = []
    try:
      for i in range(n):
        with open(self.logs[i], "ab") as log:
          # A new session per child: killing its process group also ends anything it started.
          self.procs.append(subprocess.Popen(
              [python, main, *main_args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
              env=process_env(os.environ if env is None else env, i, n, devices, self.address)))
    except BaseException:
      self.kill()
      raise

  def signal(self, signum: int, which: list[int] | None = None) -> None:
    for i, p in enumerate(self.procs):
      if (which is None or i in which) and p.poll() is None:
        p.send_signal(signum)

  def log(self, i: int) -> str:
    """What process i of this job has written so far."""
    with open(self.logs[i], errors="replace") as f:
      f.seek(self.offsets[i])
      return f.read()

  def wait_for(self, pattern: str, i: int, timeout: float) -> bool:
    """Waits until process i's log matches `pattern` (True), the process ends or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if re.search(pattern, self.log(i)):
        return True
      try:
        self.procs[i].wait(timeout=POLL_SECS)  # returns early only when the process ends
        return bool(re.search(pattern, self.log(i)))
      except subprocess.TimeoutExpired:
        pass
    return False

  def wait(self, grace: float = 30.0, timeout: float | None = None) -> list[int]:
    """Exit statuses once all have ended; after one fails the others get `grace` s, then everything is killed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    failed_at = None
    try:
      while any(p.poll() is None for p in self.procs):
        now = time.monotonic()
        if failed_at is None and any(p.poll() not in (None, 0) for p in self.procs):
          failed_at = now
        if (failed_at is not None and now - failed_at > grace) or (deadline is not None and now > deadline):
          break
        try:
          next(p for p in self.procs if p.poll() is None).wait(timeout=POLL_SECS)
        except subprocess.TimeoutExpired:
          pass
    finally:
      self.kill()
    return [p.returncode for p in self.procs]

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def status(codes: list[int]) -> int:
  """0 if every process exited 0, else the first failure as a shell would report it (128 + signal)."""
  return next((c if c > 0 else 128 - c for c in codes if c != 0), 0)


def launch(n: int, devices: int, main_args: list[str], grace: float = 30.0, timeout: float | None = None) -> int:
  """Runs main.py in n processes; SIGTERM/SIGINT to the launcher reaches every process (a preemption notice)."""
  job = LocalJob(n, devices, main_args)
  forward = lambda signum, frame: job.signal(signal.SIGTERM)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  print(f"{n} processes on {job.address}, logs: {os.path.dirname(job.logs[0])}/process_<i>.log", flush=True)
  try:
    codes = job.wait(grace, timeout)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  for i, c in enumerate(codes):
    if c != 0:
      print(f"process {i} exited with status {c}; last lines of {job.logs[i]}:\n{_tail(job.logs[i])}",
            file=sys.stderr)
  return status(codes)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  ours, main_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--processes", type=int, required=True, help="number of processes")
  parser.add_argument("--devices_per_process", type=int, default=0,
                      help="simulated CPU devices per process (0: leave XLA_FLAGS/platform as they are)")
  parser.add_argument("--grace", type=float, default=30.0,
                      help="seconds the others may take to stop after one process failed, then they are killed")
  parser.add_argument("--timeout", type=float, default=None, help="kill every process after this many seconds")
  args = parser.parse_args(ours)
  if args.processes < 1 or workdir_of(main_args) is None:
    print("error: launch_local needs --processes >= 1 and a --workdir among main.py's arguments", file=sys.stderr)
    return 2
  return launch(args.processes, args.devices_per_process, main_args, args.grace, args.timeout)


if __name__ == "__main__":
  sys.exit(main())
