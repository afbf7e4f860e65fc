"""Multi-host, proven on one machine: 2 processes x 4 CPU devices against 1 process x 8 devices.

Each scenario starts real processes (iclscale/launch_local.py) that join through jax.distributed and run
collectives over gloo; every wait is bounded and every process is killed at the end of its test. Launches are
shared between assertions to keep the file's CI time small.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from iclscale import launch_local, pipeline, results, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_main.py")
TINY = os.path.join(ROOT, "configs", "chan2024_synthetic.py") + ":tiny"
# Seconds without heartbeats after which JAX's coordination service declares a process dead and ends the run
# (passed to jax.distributed.initialize). Generous: a starved process on a loaded 2-core host can miss 10 s.
HEARTBEAT = 30
LOST_HEARTBEAT = 20   # the lost-host test's own, shorter timeout: how fast the survivor is ended
TIMEOUT = 900    # seconds any launch may take before it is killed (a 2-core machine at load 20 needs 400+)
# Every cadence at each 10-step dispatch: checkpoints (interval and milestones), evals and train logs.
DP = {"train.num_steps": 30, "checkpoint.every": 10, "checkpoint.per_decade": 4, "eval_every": 10,
      "train.log_every": 10, "mesh.num_devices": 0}
# The tiny model's matrices (64 x 64 and up) sharded over fsdp = 8: the threshold lowered from its default.
FSDP = dict(DP, **{"train.num_steps": 20, "mesh.data": 1, "mesh.fsdp": 8, "mesh.fsdp_min_size": 1024, "plot": False})

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
# The tests that read the dp_run launch share one xdist worker (pytest -n 2 --dist loadgroup), so it runs once;
# the other launches are independent and spread over the workers.
SHARES_DP_RUN = pytest.mark.xdist_group("multiprocess_dp_run")


def flags(overrides):
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def start(workdir, overrides, *extra, config=TINY, probe=True, heartbeat=HEARTBEAT):
  args = [f"--config={config}", f"--workdir={workdir}", f"--heartbeat_timeout={heartbeat}", "--init_timeout=60",
          *flags(overrides), *extra]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MP_PROBE_DIR=str(workdir) + "_probe")
  return launch_local.LocalJob(2, 4, args, main=WORKER if probe else os.path.join(ROOT, "main.py"), env=env)


def run(workdir, overrides, *extra, meanwhile=None, **kwargs):
  """Runs a 2-process job to its end; `meanwhile()` (the 1-process reference run) runs here while the job's
  processes start up and compile, which they spend mostly waiting on each other."""
  job = start(workdir, overrides, *extra, **kwargs)
  try:
    if meanwhile:
      meanwhile()
  except BaseException:
    job.kill()
    raise
  codes = job.wait(grace=HEARTBEAT + 20, timeout=TIMEOUT)
  return job, codes


def probes(workdir):
  return [json.load(open(os.path.join(str(workdir) + "_probe", f"process_{i}.json"))) for i in range(2)]


def table(workdir):
  return [(r["step"], r["evaluator"], r["metric"], r["value"]) for r in results.read(str(workdir))]


def assert_same_run(rows, ref_rows, rel_train=1e-4, rel_eval=1e-3):
  """Same rows; train values within the 1-vs-8-device tolerance of tests/test_train.py, evals within theirs."""
  assert [r[:3] for r in rows] == [r[:3] for r in ref_rows]
  for r, q in zip(rows, ref_rows):
    rel = rel_train if r[1] == "train" else rel_eval
    assert r[3] == pytest.approx(q[3], rel=rel, abs=1e-5 if r[1] != "train" else 1e-6), r[:3]


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
  """One uninterrupted 2-process data-parallel run (the reference of the resume tests) and its 1 x 8 twin."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.mktemp("dp")
  job, codes = run(base / "two", DP, meanwhile=lambda: train.run(tiny_config(**DP), str(base / "one")))
  assert codes == [0, 0], job.log(0)[-3000:] + job.log(1)[-3000:]
  return base


@SHARES_DP_RUN
def test_two_processes_equal_one_process_of_eight_devices(dp_run):
  assert_same_run(table(dp_run / "two"), table(dp_run / "one"))
  for i, log in enumerate(("two/logs/process_0.log", "two/logs/process_1.log")):
    assert f"process {i} of 2, 4 local devices, 8 global devices (cpu)" in (dp_run / log).read_text()


@SHARES_DP_RUN
def test_each_process_reads_only_its_rows_and_evaluates_only_its_share(dp_run):
  p0, p1 = probes(dp_run / "two")
  assert (p0["rows"], p1["rows"]) == ([0, 16], [16, 32])   # batch 32 over 8 devices: 4 devices = 16 rows each
  full = pipeline.ChunkIndices(0, 2**10, 32, 10, slice(None))
  assert sorted(p0["chunks"]) == sorted(p1["chunks"]) == ["0", "1", "2"]
  for c in ("0", "1", "2"):
    whole = full(int(c))
    np.testing.assert_array_equal(p0["chunks"][c], whole[:, :16])
    np.testing.assert_array_equal(p1["chunks"][c], whole[:, 16:])
  # Each process's devices hold (and run the model on) one half of every evaluation set, never the whole.
  assert p0["eval_rows"] and all(s == [[0, 16], [16, 32], [32, 48], [48, 64]] for s in p0["eval_rows"])
  assert all(s == [[64, 80], [80, 96], [96, 112], [112, 128]] for s in p1["eval_rows"])


@SHARES_DP_RUN
def test_one_process_writes_outputs_and_each_writes_its_checkpoint_part(dp_run):
  two = dp_run / "two"
  events = [n for n in os.listdir(two) if n.startswith("events.out.tfevents")]
  assert len(events) == 1 and (two / "curves.png").exists()
  rows = table(two)
  assert len(rows) == len({r[:3] for r in rows})   # no row appended twice
  step = two / "checkpoints" / "30"
  assert sorted(os.listdir(step / "data")) == ["commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(step / "state"))
  p0, p1 = probes(two)   # process 1 builds no summary writer, so it never imports TensorFlow
  assert (p0["tensorflow"], p1["tensorflow"]) == (True, False)


def tails(job, chars=2000):
  """Both processes' log ends: a stall shows where each one stopped."""
  return "".join(f"\n--- process {i} ---\n{job.log(i)[-chars:]}" for i in range(len(job.procs)))


def stopped_at(log):
  m = re.search(r"Preempted: saved step (\d+)", log)
  return int(m.group(1)) if m else None


@SHARES_DP_RUN
def test_kill_then_preempt_one_then_resume_ends_as_the_uninterrupted_run(dp_run, tmp_path):
  """SIGKILL to both processes; restart; SIGTERM to one process: both stop at the same step with a checkpoint
  and exit 0. Restart: the table equals the uninterrupted 2-process run's."""
  wd = tmp_path / "chain"
  long = dict(DP, **{"train.num_steps": 1000})
  job = start(wd, long, probe=False)
  try:
    # At the step-30 log the step-10 checkpoint is complete (Orbax finishes a save before starting the next).
    assert job.wait_for(r"\[30\] .*train/loss", 0, TIMEOUT), tails(job)
    job.signal(signal.SIGKILL)
    codes = job.wait(grace=0, timeout=60)
  finally:
    job.kill()
  assert codes == [-signal.SIGKILL] * 2

  job = start(wd, long, probe=False)   # the same command: resumes from the last complete checkpoint
  try:
    assert job.wait_for("First training step dispatched", 1, TIMEOUT), tails(job)
    job.signal(signal.SIGTERM, [1])   # a preemption notice on one worker only
    codes = job.wait(grace=HEARTBEAT + 20, timeout=TIMEOUT)
  finally:
    job.kill()
  logs = [job.log(0), job.log(1)]
  assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  assert "Resumed from the checkpoint at step" in logs[0]
  stops = [stopped_at(log) for log in logs]
  assert stops[0] is not None and stops[0] == stops[1], stops
  assert str(stops[0]) in os.listdir(wd / "checkpoints") and "Traceback" not in logs[0] + logs[1]

  job, codes = run(wd, DP, probe=False)   # the original length: ends at step 30 (or is already there)
  assert codes == [0, 0], tails(job)
  upto = lambda rows: [r for r in rows if r[0] <= 30]
  assert upto(table(wd)) == table(dp_run / "two")


def test_one_process_killed_ends_the_other_within_the_heartbeat_timeout(tmp_path):
  """SIGKILL to process 1 only (a lost host): JAX's coordination service stops receiving its heartbeats and ends
  process 0 with "another task died" within the heartbeat timeout, instead of leaving it blocked in a collective.
  The launcher's grace period is set far longer, so it is JAX, not the launcher, that ends the survivor."""
  job = start(tmp_path / "lost", dict(DP, **{"train.num_steps": 100000}), probe=False, heartbeat=LOST_HEARTBEAT)
  try:
    assert job.wait_for("First training step dispatched", 1, TIMEOUT), tails(job)
    job.signal(signal.SIGKILL, [1])
    t0 = time.monotonic()
    job.procs[0].wait(timeout=LOST_HEARTBEAT + 50)
    waited = time.monotonic() - t0
  finally:
    job.kill()
  assert job.procs[0].returncode not in (0, None) and waited < LOST_HEARTBEAT + 50
  assert "another task died" in job.log(0), job.log(0)[-2000:]


def test_fsdp_mesh_over_two_processes(tmp_path):
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  job, codes = run(tmp_path / "two", FSDP, meanwhile=lambda: train.run(tiny_config(**FSDP), str(tmp_path / "one")))
  assert codes == [0, 0], job.log(0)[-3000:] + job.log(1)[-3000:]
  assert_same_run(table(tmp_path / "two"), table(tmp_path / "one"))
  p0, p1 = probes(tmp_path / "two")
  split = [i for i, (n, local) in enumerate(p0["params"]) if local < n]
  assert split and all(p0["params"][i][1] * 2 == p0["params"][i][0] == p1["params"][i][1] * 2 for i in split)
  assert os.listdir(tmp_path / "two" / "checkpoints" / "20" / "state" / "ocdbt.process_1" / "d")


def test_population_split_over_two_processes(tmp_path):
  """4 members over population=4 x data=2 on 2 processes: each process trains its 2 members (their indices made
  on that host only) and the one table equals the same population in one process of 8 devices."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  over = dict(DP, **{"mesh.population": 4, "mesh.data": 2, "plot": False})
  pop = "--population_zip=seed=0,1,2,3 task.dataset_size=64,64,1024,1024"
  c = tiny_config(**over)
  c.population = dict(product={}, zip=dict(seed=(0, 1, 2, 3), task=dict(dataset_size=(64, 64, 1024, 1024))))
  job, codes = run(tmp_path / "two", over, pop, probe=False, meanwhile=lambda: train.run(c, str(tmp_path / "one")))
  assert codes == [0, 0], job.log(0)[-3000:] + job.log(1)[-3000:]
  two, one = results.read(str(tmp_path / "two")), results.read(str(tmp_path / "one"))
  assert {r["member"] for r in two} == {0, 1, 2, 3}
  assert_same_run([(r["step"], f'{r["member"]}/{r["evaluator"]}', r["metric"], r["value"]) for r in two],
                  [(r["step"], f'{r["member"]}/{r["evaluator"]}', r["metric"], r["value"]) for r in one])


def test_gemma_finetuning_with_parameters_split_over_two_processes(tmp_path):
  """The tiny random-weight Gemma with fsdp=8: every weight matrix is split between the two hosts."""
  overrides = {"mesh.data": 1, "mesh.fsdp": 8, "train.batch_size": 8, "train.num_steps": 5, "plot": False}
  gemma = os.path.join(ROOT, "configs", "gemma_finetune.py") + ":tiny"
  job, codes = run(tmp_path / "two", overrides, config=gemma)
  assert codes == [0, 0], job.log(0)[-3000:] + job.log(1)[-3000:]
  p0, p1 = probes(tmp_path / "two")
  big = [(n, a, b) for (n, a), (_, b) in zip(p0["params"], p1["params"]) if n >= 1024]
  assert big and all(a * 2 == n == b * 2 for n, a, b in big)
  rows = table(tmp_path / "two")
  assert {r[0] for r in rows} >= {0, 5} and all(np.isfinite(r[3]) for r in rows)


def assert_refused(job, codes, workdir, message):
  """Every process exits != 0 with one `error:` line (no traceback), and nothing but the logs was written."""
  for i, c in enumerate(codes):
    log = job.log(i)
    assert c not in (0, None) and "Traceback" not in log, log[-2000:]
    last = [l for l in log.strip().splitlines() if not l.startswith(("[Gloo]", "W", "I"))][-1]
    assert last.startswith("error: ") and message in last, last
  assert os.listdir(workdir) == ["logs"]


@pytest.mark.parametrize("extra,env,message", [
    (["--config.mesh.data=3"], {}, "8 devices cannot be split into axes"),     # 2 processes x 4 devices
    ([], {"MP_PROCESS_1_EXTRA": "--config.seed=1"}, "different config"),       # processes disagree
])
def test_bad_multiprocess_input_fails_on_every_process(tmp_path, extra, env, message):
  wd = tmp_path / "bad"
  os.environ.update(env)
  try:
    job = start(wd, {"train.num_steps": 20, "mesh.num_devices": 0}, "--init_timeout=10", *extra)
  finally:
    for k in env:
      del os.environ[k]
  codes = job.wait(grace=HEARTBEAT + 20, timeout=120)
  assert_refused(job, codes, wd, message)


@pytest.mark.parametrize("flags_,message", [
    (["--num_processes=2", "--process_id=2"], "--process_id 2 is out of range for --num_processes 2"),
    (["--num_processes=2", "--process_id=1"], "is not reachable after 5 s"),  # no process 0 at that address
])
def test_bad_process_flags_fail_within_seconds(tmp_path, flags_, message):
  wd = tmp_path / "bad"
  from conftest import child_xla_flags  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=child_xla_flags(4))
  cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={TINY}", f"--workdir={wd}", "--init_timeout=5",
         f"--coordinator_address=localhost:{launch_local.free_port()}", *flags_]
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
  assert p.returncode != 0 and "Traceback" not in p.stderr
  assert p.stderr.strip().splitlines()[-1].startswith("error: ") and message in p.stderr.strip().splitlines()[-1]
  assert not wd.exists()


def test_too_few_processes_stop_every_process_within_the_init_timeout(tmp_path):
  """2 started, 3 expected: JAX's distributed runtime ends both (its own fatal line, not a Python error) once
  --init_timeout passes; nothing is written."""
  wd = tmp_path / "bad"
  job = start(wd, {"train.num_steps": 20}, "--init_timeout=5", "--num_processes=3")
  t0 = time.monotonic()
  codes = job.wait(grace=HEARTBEAT + 20, timeout=120)
  assert all(c not in (0, None) for c in codes) and time.monotonic() - t0 < 110
  assert all("RegisterTask" in job.log(i) or "Terminating process" in job.log(i) for i in range(2))
  assert os.listdir(wd) == ["logs"]
