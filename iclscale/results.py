"""The tidy results table: one CSV row per (step, evaluator, metric, value) in each workdir.

Plots and analyses read this table, never private formats. On resume, rows written after the restored
checkpoint are dropped so a resumed run's table equals an uninterrupted run's.
"""
from __future__ import annotations

import csv
import glob
import os
from typing import Iterable

import numpy as np

FIELDS = ("step", "evaluator", "metric", "value")
FILENAME = "results.csv"


class ResultsTable:
  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, FILENAME)
    if os.path.exists(self.path):
      rows = [r for r in read_rows(self.path) if r["step"] <= resume_step]
      self._write(rows, "w")
    else:
      self._write([], "w")

  def _write(self, rows: Iterable[dict], mode: str) -> None:
    with open(self.path, mode, newline="") as f:
      w = csv.writer(f)
      if mode == "w":
        w.writerow(FIELDS)
      for r in rows:
        w.writerow([int(r["step"]), r["evaluator"], r["metric"], repr(float(r["value"]))])

  def append(self, step: int, values: dict[tuple[str, str], float]) -> None:
    self._write(({"step": step, "evaluator": e, "metric": m, "value": v} for (e, m), v in values.items()), "a")


def read_rows(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return [dict(step=int(r["step"]), evaluator=r["evaluator"], metric=r["metric"], value=float(r["value"]))
            for r in csv.DictReader(f)]


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
