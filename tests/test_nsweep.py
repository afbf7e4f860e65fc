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
  assert c.task.input_noise == 0.2                       # sigma left at Chan et al. 2024's default
  pop = nsweep.population_config("quick", [0.9], (0, 1), input_noise=0.4)
  assert pop.task.input_noise == 0.4 and nsweep.run_config("quick", 0.9, 6, 0, 0.4).task.input_noise == 0.4


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


def test_population_mode_aggregates_its_one_table_like_the_runs(tmp_path, monkeypatch):
  """The same values as one population table (member columns p_relevant, dataset_size, seed) or as runs."""
  monkeypatch.setitem(nsweep.SCALES, "test", dict(steps=200, log2_sizes=(6, 8), seeds=(0, 1)))
  errors = {(6, 0): 0.2, (6, 1): 0.4, (8, 0): 1.0, (8, 1): 0.8}
  table = results.ResultsTable(str(tmp_path / "pop" / "population"), -1,
                               ("member", "task.p_relevant", "task.dataset_size", "seed"))
  for i, ((log2_n, seed), e) in enumerate(errors.items()):
    fake_run(str(tmp_path / "runs" / nsweep.run_name(0.9, log2_n, seed)), e)
    member = {"member": i, "task.p_relevant": 0.9, "task.dataset_size": 2**log2_n, "seed": seed}
    table.append(100, {("grid/oobd/relevant/C_L", "error"): 0.9}, member)
    table.append(200, {("grid/oobd/relevant/C_L", "error"): e}, member)
  table.close()
  pop = nsweep.aggregate(str(tmp_path / "pop"), "test", [0.9], (0, 1), population=True)
  runs = nsweep.aggregate(str(tmp_path / "runs"), "test", [0.9], (0, 1))
  assert pop == runs and [r["mean"] for r in pop] == [pytest.approx(0.3), pytest.approx(0.9)]


def test_population_config_is_the_whole_grid():
  from iclscale import train  # pylint: disable=g-import-not-at-top
  members = train.resolve_members(nsweep.population_config("tiny", [0.9, 0.0], (0, 1)))
  assert members.size == 2 * 2 * 2   # p x N x seeds
  assert {(m.task.p_relevant, m.task.dataset_size, m.seed) for m in members.cfgs} == {
      (p, 2**n, s) for p in (0.9, 0.0) for n in (6, 10) for s in (0, 1)}
