"""The launchers (launch/*.sh) against fake `gcloud`, `sbatch`, `srun`, `scontrol` on PATH that record their
arguments: command lines, quoting, per-worker logs, the preemption watcher and SLURM's requeue."""
import json
import os
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, "launch", "tpu.sh")
SLURM = os.path.join(ROOT, "launch", "slurm.sh")
SLURM_JOB = os.path.join(ROOT, "launch", "slurm_job.sh")

# A fake cloud command: appends its argv (JSON) to $FAKE_DIR/calls; answers `describe` with the next line of
# $FAKE_DIR/states and the run probe (ssh ... pgrep) with the next line of $FAKE_DIR/probes.
FAKE = r'''#!/usr/bin/env python3
import json, os, sys
d = os.environ["FAKE_DIR"]
with open(os.path.join(d, "calls"), "a") as f:
  f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\n")
def pop(name):
  path = os.path.join(d, name)
  lines = open(path).read().splitlines() if os.path.exists(path) else []
  if lines:
    open(path, "w").write("\n".join(lines[1:]))
  return lines[0] if lines else None
args = sys.argv[1:]
if "describe" in args:
  state = pop("states")
  if state in (None, "MISSING"):
    sys.exit("ERROR: (gcloud) NOT_FOUND")
  print(state)
elif "ssh" in args and any("pgrep" in a for a in args):
  print(pop("probes") or "running")
elif os.path.basename(sys.argv[0]) == "srun":
  log = os.environ.get("FAKE_SRUN_LOG")
  if log:
    open(log, "a").write(os.environ.get("FAKE_SRUN_SAYS", "") + "\n")
  open(os.path.join(d, "srun_env"), "w").write(os.environ.get("JAX_LOCAL_DEVICE_IDS", ""))
  sys.exit(int(os.environ.get("FAKE_SRUN_RC", "0")))
'''


@pytest.fixture
def fake(tmp_path):
  """PATH with fake cloud commands; returns (env, calls()) where calls() lists the recorded argv's."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("gcloud", "sbatch", "srun", "scontrol", "sleep"):
    path = bin_dir / name
    path.write_text(FAKE if name != "sleep" else "#!/bin/sh\nexit 0\n")  # the watcher's waits take no time
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path), TMPDIR=str(tmp_path),
             ICLSCALE_WATCH_INTERVAL="0")

  def calls():
    path = tmp_path / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  return env, calls


def sh(*args, env, cwd=ROOT, check=True):
  p = subprocess.run(["bash", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False)
  if check:
    assert p.returncode == 0, p.stdout + p.stderr
  return p


def test_create_and_queue_use_current_gcloud_syntax(fake):
  env, calls = fake
  sh(TPU, "create", "my-tpu", "us-central2-b", "v4-32", "--spot", env=env)
  sh(TPU, "queue", "my-qr", "us-west4-a", "v5litepod-16", "v2-alpha-tpuv5-lite", env=env)
  assert calls() == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu", "--zone=us-central2-b", "--accelerator-type=v4-32",
       "--version=v2-alpha-tpuv5-lite", "--spot"],
      ["gcloud", "compute", "tpus", "queued-resources", "create", "my-qr", "--zone=us-west4-a", "--node-id=my-qr",
       "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite"]]


def test_dry_run_prints_every_command_and_runs_none(fake):
  env, calls = fake
  p = sh(TPU, "--dry-run", "watch", "t", "z", "v4-32", "--", "--workdir=gs://b/r", env=env)
  out = p.stdout + p.stderr
  for expected in ("gcloud compute tpus queued-resources describe t --zone=z --format=value\\(state.state\\)",
                   "gcloud compute tpus tpu-vm ssh t --zone=z --worker=0",
                   "gcloud compute tpus tpu-vm scp", "--worker=all"):
    assert expected in out
  p = sh(SLURM, "--dry-run", "--nodes", "2", "--", "--workdir=/shared/x", env=env)
  assert p.stdout.startswith("sbatch --job-name=iclscale --nodes=2")
  assert calls() == []


def test_run_quotes_arguments_and_each_worker_logs_to_its_own_file(fake, tmp_path):
  env, calls = fake
  args = ["--config=configs/chan2024_synthetic.py:quick", "--workdir=gs://bucket/run with space",
          "--config.task.name=it's"]
  sh(TPU, "run", "t", "z", "--", *args, env=env)
  scp, start = calls()
  assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", str(tmp_path / "iclscale_run_t.sh")]
  assert scp[6:] == ["t:iclscale_run.sh", "--zone=z", "--worker=all"] and "--worker=all" in start
  # Execute the worker script as worker 3 would, with python and curl faked: main.py gets the exact arguments.
  home = tmp_path / "home"
  (home / "iclscale").mkdir(parents=True)
  (home / "venv" / "bin").mkdir(parents=True)
  (home / "venv" / "bin" / "activate").write_text("")
  fakes = tmp_path / "worker_bin"
  fakes.mkdir()
  for name, body in (("curl", "echo 3"), ("python", 'printf "%s\\n" "$@" > "$HOME/argv"; echo "Preempted: saved step 40"')):
    (fakes / name).write_text(f"#!/bin/sh\n{body}\n")
    (fakes / name).chmod(0o755)
  wenv = dict(env, HOME=str(home), PATH=f"{fakes}:{env['PATH']}")
  sh(str(tmp_path / "iclscale_run_t.sh"), env=wenv)
  assert (home / "argv").read_text().splitlines() == ["main.py", *args]
  assert "Preempted: saved step 40" in (home / "iclscale_logs" / "worker_3.log").read_text()
  assert (home / "iclscale_logs" / "status_3").read_text().strip() == "preempted"


def test_watcher_recreates_a_preempted_slice_and_reruns_the_same_command(fake, tmp_path):
  env, calls = fake
  # Missing -> queued; waiting; active and fresh -> set up and run; running; preempted (suspended) -> delete and
  # queue again; active and fresh -> set up and run again; the run says preempted -> run again; done -> stop.
  (tmp_path / "states").write_text("\n".join(
      ["MISSING", "WAITING_FOR_RESOURCES", "ACTIVE", "ACTIVE", "SUSPENDED", "ACTIVE", "ACTIVE", "ACTIVE"]))
  (tmp_path / "probes").write_text("\n".join(["fresh", "running", "fresh", "preempted", "done"]))
  p = sh(TPU, "watch", "t", "z", "v5litepod-16", "--spot", "--", "--workdir=gs://b/r", env=env)
  assert "run finished" in p.stdout
  verbs = []
  for c in calls():
    kind = "qr" if "queued-resources" in c else "vm"
    verb = c[4]
    if verb == "ssh":
      cmd = next(a for a in c if a.startswith("--command="))
      verb = "probe" if "pgrep" in cmd else "start" if "iclscale_run.sh" in cmd else "install" if "pip" in cmd else cmd
    verbs.append(f"{kind}:{verb}")
  assert verbs == [
      "qr:describe", "qr:create",
      "qr:describe",
      "qr:describe", "vm:probe", "vm:scp", "vm:install", "vm:scp", "vm:start",
      "qr:describe", "vm:probe",
      "qr:describe", "qr:delete", "qr:create",
      "qr:describe", "vm:probe", "vm:scp", "vm:install", "vm:scp", "vm:start",
      "qr:describe", "vm:probe", "vm:scp", "vm:start",
      "qr:describe", "vm:probe"]
  creates = [c for c in calls() if c[3:5] == ["queued-resources", "create"]]
  assert all("--spot" in c and "--accelerator-type=v5litepod-16" in c for c in creates)


def test_watcher_stops_on_a_failed_run(fake, tmp_path):
  env, _ = fake
  (tmp_path / "states").write_text("ACTIVE\n")
  (tmp_path / "probes").write_text("failed:1\n")
  p = sh(TPU, "watch", "t", "z", "v4-32", "--", "--workdir=gs://b/r", env=env, check=False)
  assert p.returncode == 1 and "error: the run failed (failed:1)" in p.stderr


@pytest.mark.parametrize("per_gpu", [False, True])
def test_sbatch_nodes_gpus_and_requeue_options(fake, tmp_path, per_gpu):
  env, calls = fake
  sh(SLURM, "--nodes", "2", "--gpus-per-node", "8", *(["--per-gpu"] if per_gpu else []), "--", "--workdir=/s/r x",
     env=env, cwd=str(tmp_path))
  (call,) = calls()
  tasks = ["--ntasks-per-node=8", "--gpus-per-task=1"] if per_gpu else ["--ntasks-per-node=1"]
  assert call == ["sbatch", "--job-name=iclscale", "--nodes=2", *tasks, "--gpus-per-node=8", "--time=24:00:00",
                  "--signal=TERM@120", "--requeue", "--open-mode=append", "--output=logs/%x_%j.log",
                  os.path.join(os.path.dirname(SLURM), "slurm_job.sh"), "--workdir=/s/r x"]


@pytest.mark.parametrize("says,requeued", [("Preempted: saved step 120; re-run", True), ("Run stopped at step 500", False)])
def test_slurm_job_requeues_itself_only_after_a_preemption(fake, tmp_path, says, requeued):
  env, calls = fake
  env = dict(env, SLURM_JOB_ID="77", SLURM_JOB_NAME="iclscale", SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_PER_NODE="h100:8",
             FAKE_SRUN_LOG=str(tmp_path / "logs" / "iclscale_77_task0.log"), FAKE_SRUN_SAYS=says)
  sh(SLURM_JOB, "--workdir=/s/r", env=env, cwd=str(tmp_path))
  srun = calls()[0]
  assert srun == ["srun", "--kill-on-bad-exit=1", "--output=logs/%x_%j_task%t.log", "--open-mode=append", "python",
                  "main.py", "--workdir=/s/r"]
  assert (tmp_path / "srun_env").read_text() == "0,1,2,3,4,5,6,7"   # one process per node sees all 8 GPUs
  assert (["scontrol", "requeue", "77"] in calls()) == requeued
