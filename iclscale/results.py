"""The tidy results table: rows (step, evaluator, metric, value, member columns...) of a run, in `<workdir>/results/`.

The table is a directory of immutable Parquet chunks, one per commit, named by the commit's step
(`part-000000005000.parquet`). Appending only buffers rows in memory, and a commit writes one new file of the
buffered rows: neither reads nor rewrites what is already there, so writing a run's table costs time in proportion
to its rows, also on object stores (gs://), which have no append. The training loop commits at every checkpoint
save, so chunk boundaries are checkpoint steps and resuming from step S deletes exactly the chunks named after S:
the resumed run's table equals an uninterrupted run's. Member columns (e.g. member, seed, task.dataset_size) let a
population share one table.

Runs from before this layout have `results.csv` instead; readers read it, and resuming such a run moves its kept
rows into chunks.

  python -m iclscale.results WORKDIR               # rows, steps, evaluators, member columns
  python -m iclscale.results WORKDIR --csv out.csv # the table as one CSV
"""
from __future__ import annotations

import argparse
import csv
import glob
import io
import logging
import os
import re
import sys
import uuid

import jax
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from etils import epath

FIELDS = ("step", "evaluator", "metric", "value")
DIRNAME = "results"
LEGACY_FILENAME = "results.csv"
_CHUNK = re.compile(r"part-(\d+)\.parquet")
_TEMP = re.compile(r"\.part-\d+\.parquet\.tmp-\w+")
_NAMES = pa.dictionary(pa.int32(), pa.string())
_TYPES = {"step": pa.int64(), "evaluator": _NAMES, "metric": _NAMES, "value": pa.float64()}


def chunk_name(step: int) -> str:
  return f"part-{step:012d}.parquet"


class ResultsTable:
  """Buffers rows on process 0 and writes them as one chunk per `commit`; other processes do nothing.

  Construction rolls the table back to `resume_step` (-1: a fresh run, empty table) by deleting the chunks
  committed after it, and cleans the temporary files of an interrupted commit.
  """

  def __init__(self, workdir: str, resume_step: int, columns: tuple[str, ...] = ()):
    self.dir = epath.Path(workdir) / DIRNAME
    self.columns = tuple(columns)
    self._column_set = frozenset(self.columns)
    clash = [c for c in self.columns if c in FIELDS]
    if clash or len(set(self.columns)) != len(self.columns):
      raise ValueError(f"results columns {self.columns}: member columns must be distinct and not one of {FIELDS}")
    self.local = "://" not in str(workdir)
    self.writer = jax.process_index() == 0
    self.floor = resume_step  # appended rows must be after it: a later rollback deletes whole chunks
    self._clear()
    if self.writer:
      self.dir.mkdir(parents=True, exist_ok=True)
      _roll_back(self.dir, resume_step)
      _migrate_legacy(epath.Path(workdir), self, resume_step)

  def _clear(self) -> None:
    self._calls = []  # per append: (step, evaluator codes, metric codes, values, member values)
    self._layouts = {}  # key tuple -> its (evaluator codes, metric codes): a run repeats the same keys each sweep
    self._evaluators, self._metrics = {}, {}  # name -> code: the dictionaries of this chunk's string columns

  def append(self, step: int, values: dict[tuple[str, str], float], member: dict | None = None) -> None:
    """Buffers one row per (evaluator, metric) -> value at `step`; `member` gives these rows' member columns."""
    if not self.writer:
      return
    if step <= self.floor:
      raise ValueError(f"results: step {step} is not after step {self.floor}, already committed or resumed from")
    if not values:
      return
    keys = tuple(values)
    codes = self._layouts.get(keys)
    if codes is None:
      codes = self._layouts[keys] = self._encode(keys)
    row = np.fromiter(values.values(), np.float64, len(keys))
    self._calls.append((int(step), *codes, row, self._member_values(member)))

  def _encode(self, keys: tuple) -> tuple[np.ndarray, np.ndarray]:
    bad = next((k for k in keys if not (isinstance(k, tuple) and len(k) == 2 and all(isinstance(s, str) for s in k))),
               None)
    if bad is not None:
      raise ValueError(f"results: key {bad!r} is not an (evaluator, metric) pair of strings")
    return _intern(self._evaluators, [e for e, _ in keys]), _intern(self._metrics, [m for _, m in keys])

  def _member_values(self, member: dict | None) -> tuple:
    if not member:
      return (None,) * len(self.columns)
    if not self._column_set.issuperset(member):
      unknown = sorted(set(member) - self._column_set)
      raise ValueError(f"results: member column(s) {', '.join(unknown)} not among the table's columns "
                       f"{self.columns}")
    return tuple(map(member.get, self.columns))

  def commit(self, step: int) -> None:
    """Writes the buffered rows as the chunk of `step` (none if nothing is buffered) and empties the buffer."""
    if not self.writer:
      return
    if self._calls:
      last = max(c[0] for c in self._calls)
      if step < last:
        raise ValueError(f"results: commit at step {step} with rows of step {last} buffered (a chunk is named by a "
                         "step at or after its rows, so that a rollback deletes whole chunks)")
      _write_chunk(self.dir / chunk_name(step), self._table(), self.local)
    self.floor = max(self.floor, step)
    self._clear()

  def _table(self) -> pa.Table:
    counts = np.array([len(c[3]) for c in self._calls])
    cols = {
        "step": np.repeat(np.array([c[0] for c in self._calls], np.int64), counts),
        "evaluator": _dictionary([c[1] for c in self._calls], self._evaluators),
        "metric": _dictionary([c[2] for c in self._calls], self._metrics),
        "value": np.concatenate([c[3] for c in self._calls]),
    }
    call_of_row = np.repeat(np.arange(len(self._calls)), counts)
    for j, name in enumerate(self.columns):
      cols[name] = _member_column(name, [c[4][j] for c in self._calls], call_of_row)
    return pa.table(cols)

  def close(self) -> None:
    """Commits what is buffered, as the chunk of the last appended step."""
    if self._calls:
      self.commit(max(c[0] for c in self._calls))


def _intern(index: dict, names: list[str]) -> np.ndarray:
  return np.fromiter((index.setdefault(s, len(index)) for s in names), np.int32, len(names))


def _dictionary(codes: list[np.ndarray], index: dict) -> pa.DictionaryArray:
  # Few distinct names repeated over many rows: dictionary encoding keeps memory and files small.
  return pa.DictionaryArray.from_arrays(pa.array(np.concatenate(codes)), pa.array(list(index), pa.string()))


def _member_column(name: str, per_call: list, call_of_row: np.ndarray) -> pa.Array:
  try:
    values = pa.array(per_call)
  except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
    raise ValueError(f"results: member column {name!r} has values of mixed types ({_one_line(e)})") from None
  if pa.types.is_string(values.type):
    values = values.dictionary_encode()
  return values.take(pa.array(call_of_row))


def _write_chunk(path: epath.Path, table: pa.Table, local: bool) -> None:
  """Writes `path` whole or not at all: readers never see a partial chunk."""
  sink = pa.BufferOutputStream()
  # Dictionary pages for the few distinct steps, names and member values; not for values, which rarely repeat
  # (encoding them only slows writing and reading).
  pq.write_table(table, sink, compression="zstd", use_dictionary=[c for c in table.column_names if c != "value"])
  data = sink.getvalue()
  if not local:
    path.write_bytes(data.to_pybytes())  # an object store shows an object whole or not at all
    return
  tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())  # the data is on disk before the rename makes it a chunk
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  _fsync_dir(path.parent)


def _fsync_dir(path: epath.Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)  # the rename itself survives a power loss
  finally:
    os.close(fd)


def _chunks(directory: epath.Path) -> list[tuple[int, epath.Path]]:
  """(step, path) of every chunk, by step; other files (temporaries of an interrupted commit) are not chunks."""
  found = [(int(m[1]), p) for p in directory.iterdir() if (m := _CHUNK.fullmatch(p.name))]
  return sorted(found, key=lambda sp: sp[0])


def _roll_back(directory: epath.Path, resume_step: int) -> None:
  """Deletes the chunks committed after `resume_step` and stray temporaries; lists the directory, reads no chunk."""
  for p in directory.iterdir():
    m = _CHUNK.fullmatch(p.name)
    if (m and int(m[1]) > resume_step) or _TEMP.fullmatch(p.name):
      p.unlink(missing_ok=True)


def _migrate_legacy(workdir: epath.Path, table: ResultsTable, resume_step: int) -> None:
  """Moves a legacy results.csv's rows up to `resume_step` into chunks, one per step so that a later rollback to
  any earlier checkpoint stays exact, then deletes the CSV (a one-time cost per run)."""
  path = workdir / LEGACY_FILENAME
  if not path.exists():
    return
  rows = [r for r in read_rows(path) if r["step"] <= resume_step] if resume_step >= 0 else []
  steps = sorted({r["step"] for r in rows})
  for step in steps:
    _write_chunk(table.dir / chunk_name(step), _rows_table([r for r in rows if r["step"] == step]), table.local)
  path.unlink()  # after the chunks: a crash in between leaves the CSV, and the next start moves it again
  logging.info("Moved %d steps of %s into %s", len(steps), path, table.dir)


def exists(workdir: str) -> bool:
  """Whether `workdir` holds a results table (chunks or a legacy results.csv)."""
  w = epath.Path(workdir)
  return (w / DIRNAME).is_dir() or (w / LEGACY_FILENAME).exists()


def read_table(workdir: str) -> pa.Table:
  """The whole table as one Arrow table: every chunk in step order, or a legacy results.csv."""
  w = epath.Path(workdir)
  if (w / DIRNAME).is_dir():
    tables = [_read_chunk(p) for _, p in _chunks(w / DIRNAME)]
  elif (w / LEGACY_FILENAME).exists():
    tables = [_legacy_table(w / LEGACY_FILENAME)]
  else:
    raise FileNotFoundError(f"{workdir}: no results table ({DIRNAME}/ or {LEGACY_FILENAME})")
  if not tables:
    return _rows_table([])
  # Member columns may differ between chunks (a column added later, nulls only): missing ones read as null.
  return pa.concat_tables(tables, promote_options="permissive")


def _read_chunk(path: epath.Path) -> pa.Table:
  """One chunk, checked: an unreadable chunk is an error naming it, never skipped (rows would silently go)."""
  try:
    source = str(path) if "://" not in str(path) else pa.BufferReader(path.read_bytes())
    with pq.ParquetFile(source) as f:
      table = f.read()
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: unreadable results chunk ({_one_line(e)})") from None
  for name in FIELDS:
    if name not in table.column_names:
      raise ValueError(f"{path}: not a results chunk (no column {name!r})")
    if table.schema.field(name).type != _TYPES[name]:
      raise ValueError(f"{path}: results column {name!r} has type {table.schema.field(name).type}, not {_TYPES[name]}")
  return table


def _one_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _legacy_table(path: epath.Path) -> pa.Table:
  return _rows_table(read_rows(path))


def _rows_table(rows: list[dict]) -> pa.Table:
  return pa.table({"step": pa.array([r["step"] for r in rows], pa.int64()),
                   "evaluator": pa.array([r["evaluator"] for r in rows], pa.string()).dictionary_encode(),
                   "metric": pa.array([r["metric"] for r in rows], pa.string()).dictionary_encode(),
                   "value": pa.array([r["value"] for r in rows], pa.float64())})


def read_rows(path) -> list[dict]:
  """The rows of a legacy results.csv; a torn last line (no line break: a crash mid-append) is skipped with a
  warning, any other malformed line is a ValueError naming it."""
  text = epath.Path(path).read_text()
  whole, _, torn = text.rpartition("\n")
  if torn:
    logging.warning("%s: skipping a torn last line (a crash while appending): %r", path, torn[:80])
    text = whole + "\n"
  rows = []
  for line, r in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
    try:
      rows.append(dict(step=int(r["step"]), evaluator=r["evaluator"], metric=r["metric"], value=float(r["value"])))
    except (TypeError, ValueError) as e:
      raise ValueError(f"{path}, line {line}: not a results row ({e})") from None
  return rows


def read_columns(workdir: str) -> dict[str, np.ndarray]:
  """{column: array}: step int64, value float64, evaluator/metric (and string member columns) object arrays of str;
  a numeric member column with nulls reads as float with NaN. The fast way to read a large table."""
  table = read_table(workdir)
  return {name: _to_numpy(table.column(name)) for name in table.column_names}


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
  if not pa.types.is_dictionary(column.type):
    if pa.types.is_string(column.type) or pa.types.is_null(column.type):
      return np.asarray(column.to_pylist(), dtype=object)
    return column.to_numpy()
  # Decode each chunk by indexing its few names: no Python object per row.
  parts = []
  for chunk in column.chunks:
    names = np.asarray(chunk.dictionary.to_pylist() + [None], dtype=object)
    parts.append(names[chunk.indices.fill_null(len(chunk.dictionary)).to_numpy()])
  return np.concatenate(parts) if parts else np.zeros(0, object)


def read(workdir: str) -> list[dict]:
  """The table as dict rows (step, evaluator, metric, value, member columns), in step order."""
  table = read_table(workdir)
  names = table.column_names
  lists = [_to_numpy(table.column(n)).tolist() if n in FIELDS else table.column(n).to_pylist() for n in names]
  return [dict(zip(names, row)) for row in zip(*lists)]


def read_many(pattern_or_dirs) -> dict[str, list[dict]]:
  """{workdir: rows} for a glob pattern or a list of workdirs that hold a results table."""
  dirs = glob.glob(pattern_or_dirs) if isinstance(pattern_or_dirs, str) else list(pattern_or_dirs)
  return {d: read(d) for d in sorted(dirs) if exists(d)}


def series(rows: list[dict], evaluator: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of one evaluator/metric, sorted by step."""
  pts = sorted((r["step"], r["value"]) for r in rows if r["evaluator"] == evaluator and r["metric"] == metric)
  if not pts:
    return np.zeros(0, int), np.zeros(0)
  s, v = zip(*pts)
  return np.asarray(s), np.asarray(v)


def write_dicts(path: str, rows: list[dict], fields: tuple | None = None) -> None:
  """A CSV of dict rows (study tables, summaries); columns are `fields` or the first row's keys."""
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(fields or rows[0]))
    w.writeheader()
    w.writerows(rows)


def export_csv(workdir: str, out: str) -> int:
  """Writes the whole table to the CSV `out` (header, one line per row); returns the number of rows."""
  table = read_table(workdir)
  plain = pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                     for f in table.schema])
  sink = pa.BufferOutputStream()
  pa_csv.write_csv(table.cast(plain), sink)
  epath.Path(out).write_bytes(sink.getvalue().to_pybytes())
  return table.num_rows


def summary(workdir: str) -> str:
  """A few lines about the table: rows, chunks, steps, evaluators and metrics, member columns."""
  w = epath.Path(workdir)
  cols = read_columns(workdir)
  steps = np.unique(cols["step"])
  where = (f"{len(_chunks(w / DIRNAME))} chunks in {w / DIRNAME}" if (w / DIRNAME).is_dir()
           else f"legacy {w / LEGACY_FILENAME}")
  evaluators = sorted(set(cols["evaluator"].tolist()))
  members = [c for c in cols if c not in FIELDS]
  lines = [f"{workdir}: {len(cols['step'])} rows, {where}",
           f"steps: {len(steps)}" + (f", {steps[0]} to {steps[-1]}" if len(steps) else ""),
           f"evaluators: {len(evaluators)}" + (f" ({_listed(evaluators)})" if evaluators else ""),
           f"metrics: {_listed(sorted(set(cols['metric'].tolist())))}",
           f"member columns: {', '.join(members) if members else 'none'}"]
  return "\n".join(lines)


def _listed(names: list[str], most: int = 8) -> str:
  return ", ".join(names[:most]) + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m iclscale.results", description="Summarize or export a results table.")
  ap.add_argument("workdir", help="a run's workdir (holds results/ or a legacy results.csv)")
  ap.add_argument("--csv", metavar="OUT", help="write the whole table to this CSV instead of summarizing")
  args = ap.parse_args(argv)
  try:
    if args.csv:
      print(f"wrote {export_csv(args.workdir, args.csv)} rows to {args.csv}")
    else:
      print(summary(args.workdir))
  except (ValueError, OSError) as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
