"""Throughput of the results table (iclscale/results.py): rows per second written and read back.

The rows are a population's evaluations: every append is one member's sweep (`--keys` (evaluator, metric) values,
member columns member / seed / task.dataset_size), and the buffer is committed as one chunk whenever it holds
`--chunk_rows` rows, as the training loop does at each checkpoint. Written: the time spent in append and commit
(building the caller's dicts is not counted). Read: `results.read_columns` of the whole table.

  python -m benchmarks.results_table             # 1e6 and 1e7 rows
  python -m benchmarks.results_table --quick     # 1e6 rows
"""
import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from iclscale import results

COLUMNS = ("member", "seed", "task.dataset_size")


def write(workdir: str, rows: int, chunk_rows: int, members: int, keys: int) -> float:
  """Writes about `rows` rows into a fresh table in `workdir`; returns the seconds spent in append and commit."""
  names = [(f"grid/{'ibd' if i % 2 else 'oobd'}/set{i // 4}", ("error", "ce", "alpha", "accuracy")[i % 4])
           for i in range(keys)]
  rng = np.random.default_rng(0)
  table = results.ResultsTable(workdir, resume_step=-1, columns=COLUMNS)
  spent, written, buffered, step = 0.0, 0, 0, 0
  while written < rows:
    step += 1000
    for m in range(members):
      values = dict(zip(names, rng.random(keys).tolist()))  # a fresh dict per sweep, as an evaluator returns
      member = {"member": m, "seed": m % 5, "task.dataset_size": 2 ** (6 + m // 5 % 15)}
      t = time.perf_counter()
      table.append(step, values, member)
      spent += time.perf_counter() - t
      buffered += keys
    if buffered >= chunk_rows:
      t = time.perf_counter()
      table.commit(step)
      spent += time.perf_counter() - t
      written, buffered = written + buffered, 0
  t = time.perf_counter()
  table.close()
  return spent + time.perf_counter() - t


def measure(rows: int = 1_000_000, chunk_rows: int = 100_000, members: int = 120, keys: int = 100) -> dict:
  """dict(rows, write_rows_per_s, read_rows_per_s, chunks, bytes_per_row, ...) of one table in a temporary dir."""
  workdir = tempfile.mkdtemp(prefix="results_bench_")
  try:
    write(workdir, 1, 1, 1, keys)  # the first write and read import modules: not part of the rates
    results.read_columns(workdir)
    write_s = write(workdir, rows, chunk_rows, members, keys)
    t = time.perf_counter()
    cols = results.read_columns(workdir)
    read_s = time.perf_counter() - t
    n = len(cols["step"])
    files = [os.path.join(workdir, results.DIRNAME, f) for f in os.listdir(os.path.join(workdir, results.DIRNAME))]
    size = sum(os.path.getsize(f) for f in files)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return dict(rows=n, write_s=write_s, read_s=read_s, write_rows_per_s=n / write_s, read_rows_per_s=n / read_s,
              chunks=len(files), bytes_per_row=size / n, loadavg=os.getloadavg())


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="1e6 rows only")
  ap.add_argument("--chunk_rows", type=int, default=100_000, help="rows per commit (chunk)")
  ap.add_argument("--members", type=int, default=120, help="appends per step (population members)")
  ap.add_argument("--keys", type=int, default=100, help="(evaluator, metric) values per append")
  args = ap.parse_args()
  print(f"{'rows':>10} {'write rows/s':>13} {'read rows/s':>13} {'write s':>8} {'read s':>7} {'chunks':>7} "
        f"{'bytes/row':>9}  load (1, 5, 15 min)")
  for rows in (1_000_000,) if args.quick else (1_000_000, 10_000_000):
    r = measure(rows, args.chunk_rows, args.members, args.keys)
    print(f"{r['rows']:>10} {r['write_rows_per_s']:>13.3g} {r['read_rows_per_s']:>13.3g} {r['write_s']:>8.2f} "
          f"{r['read_s']:>7.2f} {r['chunks']:>7} {r['bytes_per_row']:>9.2f}  {r['loadavg']}", flush=True)


if __name__ == "__main__":
  main()
