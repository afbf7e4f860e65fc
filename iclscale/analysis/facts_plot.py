"""In-context vs in-weight answering against fine-tuning step, from a facts run's results table.

  python -m iclscale.analysis.facts_plot runs/gemma_finetune      # writes runs/gemma_finetune/facts_probes.png
"""
from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from iclscale import results as results_lib  # pylint: disable=wrong-import-position

# (probe set, answer, label): the answer each line scores on that set.
LINES = (
    ("iw/trained", "weights", "in-weight: bare question -> memorized city"),
    ("ic/trained", "context", "in-context, trained name -> context city"),
    ("ic/trained", "weights", "in-context, trained name -> memorized city"),
    ("ic/heldout", "context", "in-context, held-out name -> context city"),
)
PANELS = (("exact", "greedy answer = city (fraction)"), ("logp", "log p(city)"), ("rank", "rank of 1st city token"))


# Bands are clipped to each metric's range (a t-interval around a fraction or a rank can leave it).
RANGES = {"exact": (0.0, 1.0), "prefers_context": (0.0, 1.0), "rank": (0.0, None), "logp": (None, 0.0)}


def band(ax, rows, evaluator: str, metric: str, label: str) -> None:
  steps, mean = results_lib.series(rows, evaluator, metric)
  _, half = results_lib.series(rows, evaluator, f"{metric}_ci95")
  if not len(steps):
    return
  line, = ax.plot(steps, mean, marker=".", label=label)
  if len(half) == len(mean):
    lo, hi = RANGES.get(metric.split("_", 1)[-1] if metric != "prefers_context" else metric, (None, None))
    ax.fill_between(steps, (mean - half).clip(lo, hi), (mean + half).clip(lo, hi), color=line.get_color(),
                    alpha=0.15)


def plot(workdir: str, evaluator: str = "probes", filename: str = "facts_probes.png") -> str:
  rows = results_lib.read(workdir)
  fig, axes = plt.subplots(1, len(PANELS) + 1, figsize=(4.6 * (len(PANELS) + 1), 3.8))
  for ax, (metric, title) in zip(axes, PANELS):
    for s, answer, label in LINES:
      band(ax, rows, f"{evaluator}/{s}", f"{answer}_{metric}", label)
    ax.set_title(title, fontsize=9)
  ax = axes[-1]
  for s, label in (("iw/trained", "no context (baseline)"), ("ic/trained", "trained names"),
                   ("ic/heldout", "held-out names")):
    band(ax, rows, f"{evaluator}/{s}", "prefers_context", label)
  ax.set_title("log p(context city) > log p(memorized city)", fontsize=9)
  for ax in axes:
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("fine-tuning step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  axes[2].set_yscale("symlog", linthresh=1)
  fig.suptitle(f"{os.path.basename(os.path.abspath(workdir))}: mean over facts, 95% CI bands")
  fig.tight_layout()
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


if __name__ == "__main__":
  print(plot(sys.argv[1]))
