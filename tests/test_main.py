"""main.py as a user runs it: end to end, bad flags, SIGTERM then resume."""
import json
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "chan2024_synthetic.py") + ":tiny"


def main_cmd(workdir, *flags):
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={TINY}", f"--workdir={workdir}", *flags]


def env():
  from conftest import child_xla_flags  # pylint: disable=g-import-not-at-top
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=child_xla_flags())  # one device, as a user's laptop


def test_end_to_end_run_writes_every_output(tmp_path):
  workdir = tmp_path / "run"
  p = subprocess.run(main_cmd(workdir, "--config.train.num_steps=100"), capture_output=True, text=True, env=env(),
                     timeout=300, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"Outputs in {workdir}" in p.stdout
  names = os.listdir(workdir)
  assert {"results", "curves.png", "config.json", "checkpoints"} <= set(names)
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
  watchdog = threading.Timer(300, proc.kill)   # bounds the blocking reads below
  watchdog.start()
  try:
    for line in proc.stdout:
      if re.search(r"\[\d+\] .*train/loss", line):   # steps have run (the first train log: step 50)
        proc.send_signal(signal.SIGTERM)
        break
    out, _ = proc.communicate(timeout=120)
  finally:
    watchdog.cancel()
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, out[-2000:]
  assert "Preempted: saved step" in out
  saved = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
  assert len(saved) == 1 and saved[0] > 0
  # Re-running the same command (shortened so the test ends) resumes from the preemption checkpoint.
  p = subprocess.run(main_cmd(workdir, *flags[1:], f"--config.train.num_steps={saved[0] + 10}"),
                     capture_output=True, text=True, env=env(), timeout=300, check=False)
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"Resumed from the checkpoint at step {saved[0]}" in p.stdout + p.stderr


def test_finished_run_rerun_shorter_and_after_a_lost_figure(tmp_path, tiny):
  """A completed run: re-running it shorter is refused with its checkpoints kept; re-running it after its figure
  was lost rewrites the figure; a lower learning rate is accepted and recorded."""
  import pytest  # pylint: disable=g-import-not-at-top
  from iclscale import train  # pylint: disable=g-import-not-at-top
  from iclscale.config import ConfigError  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  short = {"train.num_steps": 20, "checkpoint.every": 10, "eval_every": 10, "checkpoint.per_decade": 0,
           "evals.grid.num_examples": 16, "evals.grid.batch_size": 16, "mesh.num_devices": 1}
  out = train.run(tiny(**short), workdir)
  assert out["step"] == 20 and "curves.png" in out["outputs"]
  saved = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(ConfigError, match=r"already at step 20, past train.num_steps=10"):
    train.run(tiny(**dict(short, **{"train.num_steps": 10})), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == saved
  assert not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))
  os.remove(os.path.join(workdir, "curves.png"))
  out = train.run(tiny(**dict(short, **{"optim.lr": 1e-4})), workdir)
  assert out["step"] == 20 and os.path.exists(os.path.join(workdir, "curves.png")) and "curves.png" in out["outputs"]
  with open(os.path.join(workdir, "history.jsonl")) as f:
    assert [json.loads(ln)["optim.lr"] for ln in f] == [3e-4, 1e-4]   # the refused start left no record


def test_full_disk_while_saving_is_one_line(tmp_path):
  """A workdir on a small tmpfs (root only): the first checkpoint does not fit."""
  import pytest  # pylint: disable=g-import-not-at-top
  mnt = tmp_path / "small"
  mnt.mkdir()
  if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                                         capture_output=True, check=False).returncode != 0:
    pytest.skip("needs root to mount a small tmpfs")
  try:
    p = subprocess.run(main_cmd(mnt / "run", "--config.train.num_steps=20", "--config.checkpoint.every=10",
                                "--config.checkpoint.per_decade=0", "--config.eval_every=10",
                                "--config.evals.grid.num_examples=16", "--config.evals.grid.batch_size=16"),
                       capture_output=True, text=True, env=env(), timeout=600, check=False)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    # No traceback of the run's own code: no frame of iclscale or main.py. Orbax's native writer threads may still
    # print asyncio's "Event loop is closed" from callbacks that run after the failed save closed their loop (in
    # about half the runs here): they bypass every Python hook, so they are tolerated here and named in the README
    # as the one known leak. Several threads and the progress logger can print at once and interleave their lines,
    # so the check is on frames, not on whole traceback blocks.
    foreign = [ln for ln in p.stderr.splitlines()
               if re.match(r'\s*File "[^"]*(/iclscale/[^"]*|main\.py)"', ln)]
    assert p.returncode == 1 and not foreign, p.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("error: no space left on the device while writing")
    assert [s for s in os.listdir(mnt / "run" / "checkpoints") if s.isdigit()] == []   # no partial checkpoint used
  finally:
    subprocess.run(["umount", str(mnt)], check=False)


def test_nan_advice_is_true_a_lower_lr_resumes(tmp_path, tiny):
  """After a non-finite loss, the re-run the message advises (a lower optim.lr) resumes from the last checkpoint."""
  import pytest  # pylint: disable=g-import-not-at-top
  from iclscale import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  short = {"checkpoint.every": 10, "eval_every": 10, "checkpoint.per_decade": 0, "train.log_every": 10,
           "evals.grid.num_examples": 16, "evals.grid.batch_size": 16, "mesh.num_devices": 1, "plot": False}
  assert train.run(tiny(**dict(short, **{"train.num_steps": 20})), workdir)["step"] == 20
  with pytest.raises(FloatingPointError, match=r"Re-run the same command .*--config\.optim\.lr=1e\+29"):
    train.run(tiny(**dict(short, **{"train.num_steps": 40, "optim.lr": 3e29})), workdir)
  out = train.run(tiny(**dict(short, **{"train.num_steps": 40, "optim.lr": 1e-4})), workdir)
  assert out["step"] == 40 and np.isfinite(out["train"]["train/loss"])
  with open(os.path.join(workdir, "history.jsonl")) as f:
    assert [json.loads(ln)["optim.lr"] for ln in f] == [3e-4, 3e29, 1e-4]
