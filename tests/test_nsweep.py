"""The N-sweep aggregation: mean and standard error over seeds of the last step, table and figure."""
import csv
import os

import numpy as np
import pytest

from iclscale import results
from iclscale.studies import nsweep


def fake_run(workdir, error_at_end):
  t = results.ResultsTable(workdir, resume_step=-1)
  t.append(100, {("grid/oobd/relevant/C_L", "error"): 0.9})
  t.append(200, {("grid/oobd/relevant/C_L", "error"): error_at_end})
  t.close()


def test_aggregate_uses_last_step_and_standard_error(tmp_path, monkeypatch):
  monkeypatch.setitem(nsweep.SCALES, "test", dict(steps=200, log2_sizes=(6, 8), seeds=(0, 1)))
  for log2_n, errs in ((6, (0.2, 0.4)), (8, (1.0, 1.0))):
    for seed, e in enumerate(errs):
      fake_run(str(tmp_path / nsweep.run_name(0.9, log2_n, seed)), e)
  table = nsweep.aggregate(str(tmp_path), "test", [0.9], (0, 1))
  row = next(r for r in table if r["log2_N"] == 6)
  assert row["mean"] == pytest.approx(0.3) and row["se"] == pytest.approx(np.std([0.2, 0.4], ddof=1) / np.sqrt(2))
  assert next(r for r in table if r["log2_N"] == 8)["se"] == 0
  results.write_dicts(str(tmp_path / "t.csv"), table)
  nsweep.plot(table, str(tmp_path / "t.png"))
  with open(tmp_path / "t.csv") as f:
    assert len(list(csv.DictReader(f))) == 2
  assert os.path.getsize(tmp_path / "t.png") > 10_000


def test_run_config_sets_the_swept_fields():
  c = nsweep.run_config("quick", 0.0, 12, 3)
  assert (c.task.dataset_size, c.seed, c.task.p_relevant, c.train.num_steps) == (4096, 3, 0.0, 50_000)


def test_partial_sweep_aggregates_finished_runs_only(tmp_path, monkeypatch):
  monkeypatch.setitem(nsweep.SCALES, "test", dict(steps=200, log2_sizes=(6, 8), seeds=(0,)))
  fake_run(str(tmp_path / nsweep.run_name(0.9, 6, 0)), 0.2)
  fake_run(str(tmp_path / nsweep.run_name(0.9, 6, 1)), 0.4)
  unfinished = results.ResultsTable(str(tmp_path / nsweep.run_name(0.9, 6, 2)), resume_step=-1)
  unfinished.append(100, {("grid/oobd/relevant/C_L", "error"): 0.0})   # stopped before the last step
  unfinished.close()
  table = nsweep.aggregate(str(tmp_path), "test", [0.9], (0, 1, 2))   # N=2^8 has no run at all
  assert [(r["log2_N"], r["seeds"], r["mean"]) for r in table] == [(6, 2, pytest.approx(0.3))]


def test_members_are_seed_major_and_shards_partition_them():
  m = nsweep.members("quick", [0.9], (0, 1, 2, 3, 4))
  assert len(m) == 25 and m[:6] == [(0.9, n, 0) for n in (6, 8, 10, 12, 14)] + [(0.9, 6, 1)]
  assert sorted(m[0::2] + m[1::2]) == sorted(m)
