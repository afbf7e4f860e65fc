"""SIGTERM in one process (iclscale/preemption.py through main.py): whatever the checkpoint cadence, and during
start-up, a preempted run exits 0 with its checkpoint, and the same command resumes."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "chan2024_synthetic.py") + ":tiny"
# A checkpoint (interval or milestone) and an evaluation at every 10-step dispatch: the preemption step is always
# one that was just saved.
FREQUENT = ["--config.train.num_steps=1000000", "--config.checkpoint.every=10", "--config.checkpoint.per_decade=4",
            "--config.eval_every=10", "--config.plot=false"]


def main_cmd(workdir, *flags):
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={TINY}", f"--workdir={workdir}", *flags]


def env():
  from conftest import child_xla_flags  # pylint: disable=g-import-not-at-top
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=child_xla_flags())  # one device


def preempt_when(workdir, pattern, timeout=300):
  """Starts main.py, sends SIGTERM once its output matches `pattern`; returns (exit status, output)."""
  proc = subprocess.Popen(main_cmd(workdir, *FREQUENT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env())
  watchdog = threading.Timer(2 * timeout, proc.kill)   # bounds the blocking reads below
  watchdog.start()
  try:
    deadline, seen = time.monotonic() + timeout, []
    for line in proc.stdout:   # ends when the process does
      seen.append(line)
      if re.search(pattern, line):
        proc.send_signal(signal.SIGTERM)
        break
      if time.monotonic() > deadline:
        break
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(seen) + out
  finally:
    watchdog.cancel()
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def saved_steps(workdir):
  return sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())


def test_sigterm_right_after_a_checkpoint_exits_0_and_resumes(tmp_path):
  workdir = tmp_path / "frequent"
  code, out = preempt_when(workdir, r"\[10\] .*train/loss")   # the step-10 checkpoint is being written
  assert code == 0 and "Traceback" not in out, out[-3000:]
  stopped = int(re.search(r"Preempted: saved step (\d+)", out).group(1))
  assert stopped >= 10 and saved_steps(workdir)[-1] == stopped
  p = subprocess.run(main_cmd(workdir, *FREQUENT[1:], f"--config.train.num_steps={stopped + 10}"),
                     capture_output=True, text=True, env=env(), timeout=300, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"Resumed from the checkpoint at step {stopped}" in p.stderr
  assert saved_steps(workdir)[-1] == stopped + 10


def test_sigterm_during_start_up_exits_0_with_a_checkpoint(tmp_path):
  workdir = tmp_path / "startup"
  code, out = preempt_when(workdir, r"process 0 of 1")   # before anything is compiled
  assert code == 0 and "Traceback" not in out, out[-3000:]
  assert "Preempted: saved step 0" in out and saved_steps(workdir) == [0]
