"""Figures from the tidy results table (matplotlib, no display needed)."""
from __future__ import annotations

import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from iclscale import results as results_lib  # pylint: disable=wrong-import-position

PREFERRED_METRICS = ("error", "accuracy", "accuracy_test", "loss")


def panels(rows: list[dict]) -> dict[str, dict[str, str]]:
  """{panel: {line label: evaluator}}: evaluators 'a/b/c' share panel 'a/b' and are drawn as line 'c'."""
  out = defaultdict(dict)
  for name in sorted({r["evaluator"] for r in rows}):
    head, _, tail = name.rpartition("/")
    out[head or name][tail] = name
  return dict(out)


def plot_run(workdir: str, filename: str = "curves.png") -> str:
  """One panel per evaluator group (error, or accuracy, vs step on a log axis) plus the training loss."""
  rows = results_lib.read(workdir)
  groups = panels(rows)
  n = len(groups)
  cols = min(3, n)
  fig, axes = plt.subplots(-(-n // cols), cols, figsize=(4.2 * cols, 3.2 * -(-n // cols)), squeeze=False)
  for ax, (panel, lines) in zip(axes.flat, sorted(groups.items())):
    metrics = {r["metric"] for r in rows if r["evaluator"] in lines.values()}
    preferred = ("loss",) if panel == "train" else PREFERRED_METRICS
    metric = next((m for m in preferred if m in metrics), sorted(metrics)[0])
    for label, evaluator in sorted(lines.items()):
      steps, values = results_lib.series(rows, evaluator, metric)
      ax.plot(steps, values, marker=".", label=label)
    ax.set_xscale("symlog", linthresh=max(1, min((s for s in (r["step"] for r in rows) if s > 0), default=1)))
    ax.set_title(panel, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
