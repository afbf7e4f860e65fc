"""The tidy results table: append, read back, roll back on resume."""
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
