"""The tidy results table: append, read back, roll back on resume."""
import pytest

from iclscale import results


def test_append_read_and_rollback(tmp_path):
  t = results.ResultsTable(str(tmp_path), resume_step=-1)
  t.append(10, {("grid/ibd/default/all", "error"): 0.5, ("train", "loss"): 1.25})
  t.append(20, {("grid/ibd/default/all", "error"): 0.25})
  rows = results.read(str(tmp_path))
  assert rows[0] == dict(step=10, evaluator="grid/ibd/default/all", metric="error", value=0.5)
  steps, values = results.series(rows, "grid/ibd/default/all", "error")
  assert list(steps) == [10, 20] and list(values) == [0.5, 0.25]
  results.ResultsTable(str(tmp_path), resume_step=10)   # resuming from a step-10 checkpoint drops step 20
  assert [r["step"] for r in results.read(str(tmp_path))] == [10, 10]
  results.ResultsTable(str(tmp_path), resume_step=-1)   # a fresh start clears the table
  assert results.read(str(tmp_path)) == []
  assert list(results.read_many(str(tmp_path / "*"))) == []


def test_torn_last_line_is_skipped_and_dropped_on_resume(tmp_path):
  t = results.ResultsTable(str(tmp_path), resume_step=-1)
  t.append(10, {("grid/ibd", "error"): 0.5})
  t.append(20, {("grid/ibd", "error"): 0.25})
  path = tmp_path / results.FILENAME
  with open(path, "a", newline="") as f:
    f.write("30,grid/ibd,err")   # a crash mid-append: the last line has no line break
  assert [r["step"] for r in results.read(str(tmp_path))] == [10, 20]
  with open(path, "a", newline="") as f:   # even a torn line that parses ("3" of "30") is not a row
    f.write("\r\n3,grid/ibd,error,0.1")
  path.write_bytes(path.read_bytes().replace(b"30,grid/ibd,err\r\n", b""))
  assert [r["step"] for r in results.read(str(tmp_path))] == [10, 20]
  results.ResultsTable(str(tmp_path), resume_step=20)   # resuming repairs the file
  assert path.read_bytes().endswith(b"\r\n") and [r["step"] for r in results.read(str(tmp_path))] == [10, 20]


def test_malformed_inner_line_names_it(tmp_path):
  (tmp_path / results.FILENAME).write_text("step,evaluator,metric,value\r\n10,a,b,x\r\n20,a,b,0.5\r\n")
  with pytest.raises(ValueError, match=r"line 2: not a results row"):
    results.read(str(tmp_path))
