"""main.py as a user runs it: end to end, bad flags, SIGTERM then resume."""
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "chan2024_synthetic.py") + ":tiny"


def main_cmd(workdir, *flags):
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={TINY}", f"--workdir={workdir}", *flags]


def env():
  e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  e.pop("XLA_FLAGS", None)  # one device, as a user's laptop
  return e


def test_end_to_end_run_writes_every_output(tmp_path):
  workdir = tmp_path / "run"
  p = subprocess.run(main_cmd(workdir, "--config.train.num_steps=100"), capture_output=True, text=True, env=env(),
                     timeout=300, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"Outputs in {workdir}" in p.stdout
  names = os.listdir(workdir)
  assert {"results.csv", "curves.png", "config.json", "checkpoints"} <= set(names)
  assert any(n.startswith("events.out.tfevents") for n in names)
  assert "100" in os.listdir(workdir / "checkpoints")


def test_bad_override_fails_with_one_line_before_compiling(tmp_path):
  p = subprocess.run(main_cmd(tmp_path / "bad", "--config.task.p_relevant=1.5"), capture_output=True, text=True,
                     env=env(), timeout=120, check=False)
  assert p.returncode != 0
  assert p.stderr.strip().splitlines()[-1] == "error: config.task.p_relevant: must be a probability in [0, 1], got 1.5"
  assert not (tmp_path / "bad").exists()  # nothing written for a rejected config


def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
  workdir = tmp_path / "preempt"
  flags = ["--config.train.num_steps=1000000", "--config.checkpoint.every=0", "--config.eval_every=0",
           "--config.checkpoint.per_decade=0"]
  proc = subprocess.Popen(main_cmd(workdir, *flags), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env())
  deadline = time.time() + 240
  for line in proc.stdout:
    if "First training step dispatched" in line or time.time() > deadline:
      break
  time.sleep(2.0)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-2000:]
  assert "Preempted: saved step" in out
  saved = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
  assert len(saved) == 1 and saved[0] > 0
  # Re-running the same command (shortened so the test ends) resumes from the preemption checkpoint.
  p = subprocess.run(main_cmd(workdir, *flags[1:], f"--config.train.num_steps={saved[0] + 10}"),
                     capture_output=True, text=True, env=env(), timeout=300, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"Resumed from the checkpoint at step {saved[0]}" in p.stdout + p.stderr
