"""The tidy results table: one CSV row per (step, evaluator, metric, value) in each workdir.

Plots and analyses read this table, never private formats. On resume, rows written after the restored
checkpoint are dropped so a resumed run's table equals an uninterrupted run's. Every row ends with a line break,
so a last line without one was torn by a crash mid-append: readers skip it and a resumed run drops it.
"""
from __future__ import annotations

import csv
import glob
import io
import logging
import os
from typing import Iterable

import jax
import numpy as np
from etils import epath

FIELDS = ("step", "evaluator", "metric", "value")
FILENAME = "results.csv"


class ResultsTable:
  """Appends rows on process 0. Local files are appended to; object stores (gs://) have no append, so there the
  file is rewritten from the rows read back (cost per sweep grows with the table, not with the step count)."""

  def __init__(self, workdir: str, resume_step: int, columns: tuple = ()):
    self.path = epath.Path(workdir) / FILENAME
    self.local = "://" not in str(workdir)
    self.writer = jax.process_index() == 0
    if self.writer:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      rows = [r for r in read_rows(self.path) if r["step"] <= resume_step] if self.path.exists() else []
      self._rewrite(rows)

  @staticmethod
  def _lines(rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    for r in rows:
      w.writerow([int(r["step"]), r["evaluator"], r["metric"], repr(float(r["value"]))])
    return buf.getvalue()

  def _rewrite(self, rows: list[dict]) -> None:
    self.path.write_text(",".join(FIELDS) + "\r\n" + self._lines(rows))

  def append(self, step: int, values: dict[tuple[str, str], float], member: dict | None = None) -> None:
    if not self.writer:
      return
    rows = [{"step": step, "evaluator": e, "metric": m, "value": v} for (e, m), v in values.items()]
    if self.local:
      with open(self.path, "a", newline="") as f:
        f.write(self._lines(rows))
    else:
      self._rewrite(read_rows(self.path) + rows)


def write_dicts(path: str, rows: list[dict], fields: tuple | None = None) -> None:
  """A CSV of dict rows (study tables, summaries); columns are `fields` or the first row's keys."""
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(fields or rows[0]))
    w.writeheader()
    w.writerows(rows)


def read_rows(path) -> list[dict]:
  """The rows of a results table; a torn last line (no line break: a crash mid-append) is skipped with a warning,
  any other malformed line is a ValueError naming it."""
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


def read(workdir: str) -> list[dict]:
  return read_rows(os.path.join(workdir, FILENAME))


def read_many(pattern_or_dirs) -> dict[str, list[dict]]:
  """{workdir: rows} for a glob pattern or a list of workdirs that hold a results table."""
  dirs = glob.glob(pattern_or_dirs) if isinstance(pattern_or_dirs, str) else list(pattern_or_dirs)
  return {d: read(d) for d in sorted(dirs) if os.path.exists(os.path.join(d, FILENAME))}


def series(rows: list[dict], evaluator: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of one evaluator/metric, sorted by step."""
  pts = sorted((r["step"], r["value"]) for r in rows if r["evaluator"] == evaluator and r["metric"] == metric)
  if not pts:
    return np.zeros(0, int), np.zeros(0)
  s, v = zip(*pts)
  return np.asarray(s), np.asarray(v)
