"""The results table: chunked round trip with member columns, exact rollback, torn and corrupt files, legacy CSV,
appends and commits that never read the table, the command line."""
import csv
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from iclscale import results

EV = "grid/ibd/default/all"


def chunk_files(workdir) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, results.DIRNAME)))


def test_append_commit_read_and_rollback(tmp_path):
  d = str(tmp_path)
  t = results.ResultsTable(d, resume_step=-1)
  t.append(10, {(EV, "error"): 0.5, ("train", "loss"): 1.25})
  assert results.read(d) == []   # appends are buffered until a commit
  t.commit(10)
  t.append(20, {(EV, "error"): 0.25})
  t.close()
  rows = results.read(d)
  assert rows[0] == dict(step=10, evaluator=EV, metric="error", value=0.5)
  steps, values = results.series(rows, EV, "error")
  assert list(steps) == [10, 20] and list(values) == [0.5, 0.25]
  assert chunk_files(d) == ["part-000000000010.parquet", "part-000000000020.parquet"]
  results.ResultsTable(d, resume_step=10)   # resuming from a step-10 checkpoint drops step 20
  assert [r["step"] for r in results.read(d)] == [10, 10]
  results.ResultsTable(d, resume_step=-1)   # a fresh start clears the table
  assert results.read(d) == []
  assert list(results.read_many(str(tmp_path / "*"))) == []
  assert list(results.read_many([d])) == [d]


def test_round_trip_with_member_columns(tmp_path):
  d = str(tmp_path)
  cols = ("member", "seed", "task.dataset_size", "name")
  t = results.ResultsTable(d, resume_step=-1, columns=cols)
  values = {(EV, "error"): 0.1, (EV, "ce"): 1 / 3, ("train", "loss"): 1e-300}
  for m in range(3):
    t.append(1000, {k: v + m for k, v in values.items()},
             member={"member": m, "seed": 7, "task.dataset_size": 2**m, "name": f"n{m}"})
  t.commit(1000)
  t.append(2000, values, member={"member": 0})   # missing member columns are null
  t.commit(2000)
  rows = results.read(d)
  assert len(rows) == 12 and list(rows[0]) == ["step", "evaluator", "metric", "value", *cols]
  assert rows[4] == {"step": 1000, "evaluator": EV, "metric": "ce", "value": 1 / 3 + 1, "member": 1, "seed": 7,
                     "task.dataset_size": 2, "name": "n1"}
  assert rows[-1] == {"step": 2000, "evaluator": "train", "metric": "loss", "value": 1e-300, "member": 0,
                      "seed": None, "task.dataset_size": None, "name": None}
  c = results.read_columns(d)
  assert list(c) == list(rows[0])
  assert c["step"].dtype == np.int64 and c["value"].dtype == np.float64
  np.testing.assert_array_equal(c["value"], [r["value"] for r in rows])   # exact, not approximately
  assert c["evaluator"].tolist() == [r["evaluator"] for r in rows]
  assert c["name"].tolist() == [r["name"] for r in rows]
  np.testing.assert_array_equal(c["task.dataset_size"], [1] * 3 + [2] * 3 + [4] * 3 + [np.nan] * 3)


def test_bad_appends_are_one_line_errors(tmp_path):
  t = results.ResultsTable(str(tmp_path), resume_step=100, columns=("member",))
  with pytest.raises(ValueError, match=r"step 100 is not after step 100"):
    t.append(100, {(EV, "error"): 0.5})   # resumed from 100: its rows are already in the table
  with pytest.raises(ValueError, match=r"member column\(s\) seed not among"):
    t.append(200, {(EV, "error"): 0.5}, member={"seed": 1})
  with pytest.raises(ValueError, match=r"not an \(evaluator, metric\) pair"):
    t.append(200, {EV: 0.5})
  t.append(300, {(EV, "error"): 0.5})
  with pytest.raises(ValueError, match=r"commit at step 200 with rows of step 300"):
    t.commit(200)
  t.commit(300)
  with pytest.raises(ValueError, match=r"step 250 is not after step 300"):
    t.append(250, {(EV, "error"): 0.5})


def test_rollback_deletes_exactly_the_chunks_after_the_resume_step(tmp_path):
  d = str(tmp_path)
  t = results.ResultsTable(d, resume_step=-1, columns=("member",))
  for step in range(1000, 6000, 1000):
    for s in range(step - 1000 + 250, step + 1, 250):   # evaluations between checkpoints, committed at each
      t.append(s, {(EV, "error"): s / 1e4}, member={"member": 0})
    t.commit(step)
  before = {name: os.stat(os.path.join(d, results.DIRNAME, name)).st_mtime_ns for name in chunk_files(d)}
  results.ResultsTable(d, resume_step=3000, columns=("member",))
  assert chunk_files(d) == [f"part-{s:012d}.parquet" for s in (1000, 2000, 3000)]
  assert all(os.stat(os.path.join(d, results.DIRNAME, n)).st_mtime_ns == before[n] for n in chunk_files(d))
  assert sorted({r["step"] for r in results.read(d)}) == list(range(250, 3001, 250))


def test_append_commit_and_rollback_never_read_the_table(tmp_path, monkeypatch):
  d = str(tmp_path)
  t = results.ResultsTable(d, resume_step=-1)
  for step in (1000, 2000, 3000):
    t.append(step, {(EV, "error"): 0.5})
    t.commit(step)

  def no_reading(*args, **kwargs):
    raise AssertionError("the table was read")

  monkeypatch.setattr(results, "_read_chunk", no_reading)
  monkeypatch.setattr(results, "read_rows", no_reading)
  monkeypatch.setattr(pq, "read_table", no_reading)
  monkeypatch.setattr(pq, "ParquetFile", no_reading)
  t = results.ResultsTable(d, resume_step=2000)
  for step in (2500, 3000):
    t.append(step, {(EV, "error"): 0.25})
  t.commit(3000)
  t.append(4000, {(EV, "error"): 0.125})
  t.close()
  monkeypatch.undo()
  assert [r["step"] for r in results.read(d)] == [1000, 2000, 2500, 3000, 4000]


def test_torn_temporary_file_is_ignored_and_cleaned(tmp_path):
  d = str(tmp_path)
  t = results.ResultsTable(d, resume_step=-1)
  t.append(10, {(EV, "error"): 0.5})
  t.commit(10)
  torn = os.path.join(d, results.DIRNAME, ".part-000000000020.parquet.tmp-0123abcd")
  with open(torn, "wb") as f:
    f.write(b"PAR1\x00\x01")   # a commit interrupted mid-write
  assert [r["step"] for r in results.read(d)] == [10]
  results.ResultsTable(d, resume_step=10)
  assert not os.path.exists(torn) and chunk_files(d) == ["part-000000000010.parquet"]


def test_corrupt_chunk_is_a_one_line_error_naming_it(tmp_path):
  d = str(tmp_path)
  t = results.ResultsTable(d, resume_step=-1)
  for step in (10, 20):
    t.append(step, {(EV, "error"): 0.5})
    t.commit(step)
  path = os.path.join(d, results.DIRNAME, "part-000000000010.parquet")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  for reader in (results.read, results.read_columns):
    with pytest.raises(ValueError, match=r"part-000000000010\.parquet: unreadable results chunk") as e:
      reader(d)
    assert "\n" not in str(e.value)
  pq.write_table(results._rows_table([]).drop_columns(["value"]), path)   # readable, but not a results chunk
  with pytest.raises(ValueError, match=r"part-000000000010\.parquet: not a results chunk \(no column 'value'\)"):
    results.read(d)


def test_legacy_csv_is_read_and_moved_into_chunks_on_resume(tmp_path):
  d = str(tmp_path)
  legacy = tmp_path / results.LEGACY_FILENAME
  legacy.write_text("step,evaluator,metric,value\r\n10,a,b,0.5\r\n10,a,c,0.25\r\n20,a,b,0.125\r\n30,a,b,1e-3\r\n"
                    "40,a,b")   # a torn last line: a crash mid-append
  assert results.exists(d)
  assert [(r["step"], r["metric"], r["value"]) for r in results.read(d)] == [
      (10, "b", 0.5), (10, "c", 0.25), (20, "b", 0.125), (30, "b", 1e-3)]
  assert results.read_columns(d)["step"].tolist() == [10, 10, 20, 30]
  t = results.ResultsTable(d, resume_step=20)   # an old run resumed: its rows up to step 20 become chunks
  assert not legacy.exists() and chunk_files(d) == ["part-000000000010.parquet", "part-000000000020.parquet"]
  t.append(30, {("a", "b"): 0.75})
  t.close()
  assert [(r["step"], r["value"]) for r in results.read(d)] == [(10, 0.5), (10, 0.25), (20, 0.125), (30, 0.75)]
  results.ResultsTable(d, resume_step=10)   # one chunk per legacy step: rolling back further stays exact
  assert [r["step"] for r in results.read(d)] == [10, 10]


def test_malformed_legacy_line_names_it(tmp_path):
  (tmp_path / results.LEGACY_FILENAME).write_text("step,evaluator,metric,value\r\n10,a,b,x\r\n20,a,b,0.5\r\n")
  with pytest.raises(ValueError, match=r"line 2: not a results row"):
    results.read(str(tmp_path))


def test_other_processes_write_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(results.jax, "process_index", lambda: 1)
  t = results.ResultsTable(str(tmp_path), resume_step=-1)
  t.append(10, {(EV, "error"): 0.5})
  t.close()
  assert not results.exists(str(tmp_path))


def test_command_line_summary_and_csv_export(tmp_path, capsys):
  d = str(tmp_path / "run")
  t = results.ResultsTable(d, resume_step=-1, columns=("member",))
  t.append(10, {(EV, "error"): 0.1, ("train", "loss"): 1 / 3}, member={"member": 4})
  t.close()
  assert results.main([d]) == 0
  out = capsys.readouterr().out
  assert "2 rows, 1 chunks" in out and "steps: 1, 10 to 10" in out and "member columns: member" in out
  assert results.main([d, "--csv", str(tmp_path / "t.csv")]) == 0
  with open(tmp_path / "t.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(int(r["step"]), r["evaluator"], r["metric"], float(r["value"]), int(r["member"])) for r in rows] == [
      (10, EV, "error", 0.1, 4), (10, "train", "loss", 1 / 3, 4)]
  assert results.main([str(tmp_path / "nothing")]) == 2
  assert "error: " in capsys.readouterr().err
