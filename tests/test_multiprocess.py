"""Multi-host, proven on one machine: 2 processes x 4 CPU devices against 1 process x 8 devices.

Each scenario starts real processes (iclscale/launch_local.py) that join through jax.distributed and run
collectives over gloo; every wait is bounded and every process is killed at the end of its test. Launches are
shared between assertions to keep the file's CI time small.
"""
import json
import os
import signal

import numpy as np
import pytest

from iclscale import launch_local, pipeline, results, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_main.py")
TINY = os.path.join(ROOT, "configs", "chan2024_synthetic.py") + ":tiny"
HEARTBEAT = 10   # seconds: a dead peer is noticed within this (passed to jax.distributed.initialize)
TIMEOUT = 420    # seconds any launch may take on a loaded 2-core machine before it is killed
# Every cadence at each 10-step dispatch: checkpoints (interval and milestones), evals and train logs.
DP = {"train.num_steps": 30, "checkpoint.every": 10, "checkpoint.per_decade": 4, "eval_every": 10,
      "train.log_every": 10, "mesh.num_devices": 0}
FSDP = dict(DP, **{"train.num_steps": 20, "mesh.data": 1, "mesh.fsdp": 8, "model.width": 256, "task.dim": 256,
                   "plot": False})

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def flags(overrides):
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def start(workdir, overrides, *extra, config=TINY, probe=True):
  args = [f"--config={config}", f"--workdir={workdir}", f"--heartbeat_timeout={HEARTBEAT}", "--init_timeout=60",
          *flags(overrides), *extra]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MP_PROBE_DIR=str(workdir) + "_probe")
  return launch_local.LocalJob(2, 4, args, main=WORKER if probe else os.path.join(ROOT, "main.py"), env=env)


def run(workdir, overrides, *extra, **kwargs):
  job = start(workdir, overrides, *extra, **kwargs)
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
  job, codes = run(base / "two", DP)
  assert codes == [0, 0], job.log(0)[-3000:] + job.log(1)[-3000:]
  train.run(tiny_config(**DP), str(base / "one"))
  return base


def test_two_processes_equal_one_process_of_eight_devices(dp_run):
  assert_same_run(table(dp_run / "two"), table(dp_run / "one"))
  for i, log in enumerate(("two/logs/process_0.log", "two/logs/process_1.log")):
    assert f"process {i} of 2, 4 local devices, 8 global devices (cpu)" in (dp_run / log).read_text()


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


def test_one_process_writes_outputs_and_each_writes_its_checkpoint_part(dp_run):
  two = dp_run / "two"
  events = [n for n in os.listdir(two) if n.startswith("events.out.tfevents")]
  assert len(events) == 1 and (two / "curves.png").exists()
  rows = table(two)
  assert len(rows) == len({r[:3] for r in rows})   # no row appended twice
  step = two / "checkpoints" / "30"
  assert sorted(os.listdir(step / "data")) == ["commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(step / "state"))
