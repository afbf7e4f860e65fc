"""Transience of ICL (Singh et al. 2023) read from results tables: ICL peak, its step, the decay slope, IWL onset.

  python -m iclscale.analysis.transience runs/transience_cpu [more run dirs...] --out runs/transience_summary

A population run (e.g. --population="optim.l2=0,1e-4,1e-3") gives one summary per member, named
<run>/<member>_<its varying fields>, with the member's own optim.l2.

Definitions (the project's; Singh et al. 2023 describe peak and decay in words, not as these formulas):
  ICL curve     icl_iwl/fewshot_holdout accuracy_closed: 2-way few-shot on never-trained classes relabeled 0/1,
                argmax over {0, 1} (chance 1/2); --icl picks another evaluator/metric.
  IWL curve     icl_iwl/no_support accuracy_closed: the query class is absent from the context, argmax over the
                training labels (chance 1/num_train); --iwl picks another.
  peak          the maximum of the ICL curve over evaluations; `peak_step` its first step.
  decay slope   least-squares slope of ICL accuracy against log10(step) over the evaluations from the peak on
                (accuracy per decade; negative = ICL fades); NaN with fewer than 2 such points.
  IWL onset     the first evaluated step where the IWL curve reaches --iwl_threshold (default 0.5); NaN if never.
Writes transience_summary.csv (one row per run) and, per run, <name>_curves.png (ICL, IWL and train loss);
across runs, slope_vs_l2.png (optim.l2 from each run's config.json) and peak_vs_classes.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from iclscale import results as results_lib

ICL_DEFAULT = "icl_iwl/fewshot_holdout:accuracy_closed"
IWL_DEFAULT = "icl_iwl/no_support:accuracy_closed"


def decay_slope(steps: np.ndarray, values: np.ndarray, peak_index: int) -> float:
  """Least-squares slope of values vs log10(step) from the peak on (NaN with fewer than 2 distinct steps)."""
  s, v = steps[peak_index:], values[peak_index:]
  keep = s > 0
  s, v = s[keep], v[keep]
  if len(np.unique(s)) < 2:
    return math.nan
  return float(np.polyfit(np.log10(s.astype(np.float64)), v, 1)[0])


def onset_step(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
  above = np.flatnonzero(values >= threshold)
  return float(steps[above[0]]) if len(above) else math.nan


def transience_metrics(icl_steps: np.ndarray, icl: np.ndarray, iwl_steps: np.ndarray, iwl: np.ndarray,
                       iwl_threshold: float = 0.5) -> dict[str, float]:
  """Peak, peak step, decay slope, final ICL, IWL onset and final IWL of two curves sorted by step."""
  out = dict(icl_peak=math.nan, icl_peak_step=math.nan, icl_decay_slope=math.nan, icl_final=math.nan,
             iwl_onset_step=onset_step(iwl_steps, iwl, iwl_threshold) if len(iwl) else math.nan,
             iwl_final=float(iwl[-1]) if len(iwl) else math.nan)
  if len(icl):
    i = int(np.argmax(icl))  # the first maximum
    out.update(icl_peak=float(icl[i]), icl_peak_step=float(icl_steps[i]), icl_final=float(icl[-1]),
               icl_decay_slope=decay_slope(icl_steps, icl, i))
  return out


def split_key(key: str) -> tuple[str, str]:
  evaluator, _, metric = key.rpartition(":")
  return evaluator, metric


def run_config(workdir: str) -> dict:
  """The run's flat config record (config.json, written by the loop); fields left at defaults are absent."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def num_classes(flat: dict) -> float:
  """Classes of a bursty-task run from its config record (defaults filled in from the task's declaration)."""
  from iclscale.tasks import bursty  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  if flat.get("task.name") != "bursty":
    return math.nan
  task = dict(bursty.DEFAULTS)
  task.update({k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith("task.")})
  return float(bursty.table_size(ml_collections.ConfigDict(task))[0])


def member_rows(workdir: str) -> dict[str, list[dict]]:
  """{name: rows} of a run: one entry for a solo run, one per member of a population run (iclscale/population.py),
  named <run>/<member's varying fields>."""
  rows = results_lib.read(workdir)
  base = os.path.basename(os.path.abspath(workdir))
  if not rows or "member" not in rows[0]:
    return {base: rows}
  fixed = {"step", "evaluator", "metric", "value", "member"}
  by_member: dict[int, list[dict]] = {}
  for r in rows:
    by_member.setdefault(r["member"], []).append(r)
  out: dict[str, list[dict]] = {}
  for member, member_rows_ in by_member.items():   # named once per member from its first row
    first = member_rows_[0]
    fields = "_".join(f"{k.rsplit('.', 1)[-1]}={first[k]:g}" if isinstance(first[k], float)
                      else f"{k.rsplit('.', 1)[-1]}={first[k]}" for k in sorted(first) if k not in fixed)
    out[f"{base}/{member}_{fields}" if fields else f"{base}/{member}"] = member_rows_
  return out


def summarize(workdir: str, icl_key: str = ICL_DEFAULT, iwl_key: str = IWL_DEFAULT,
              iwl_threshold: float = 0.5, until: int | None = None) -> list[dict]:
  """One summary per run, or per member of a population run; a member's own optim.l2 (a table column) wins over
  the config's. `until`: only the rows at or before this step (runs of different lengths on one horizon)."""
  flat = run_config(workdir)
  out = []
  for name, rows in member_rows(workdir).items():
    rows = [r for r in rows if until is None or r["step"] <= until]
    icl_s, icl = results_lib.series(rows, *split_key(icl_key))
    iwl_s, iwl = results_lib.series(rows, *split_key(iwl_key))
    l2 = rows[0].get("optim.l2", flat.get("optim.l2", 0.0)) if rows else flat.get("optim.l2", 0.0)
    s = dict(run=workdir, name=name, l2=float(l2), l2_form=flat.get("optim.l2_form", "squared"),
             num_classes=num_classes(flat), last_step=float(max((r["step"] for r in rows), default=0)))
    s.update(transience_metrics(icl_s, icl, iwl_s, iwl, iwl_threshold))
    s["rows"] = rows
    out.append(s)
  return out


def plot_curves(summary: dict, path: str, icl_key: str, iwl_key: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = summary["rows"]
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for key, label, color in ((icl_key, "ICL (" + icl_key + ")", "C0"), (iwl_key, "IWL (" + iwl_key + ")", "C1")):
    s, v = results_lib.series(rows, *split_key(key))
    ax.plot(s, v, marker=".", color=color, label=label)
  if not math.isnan(summary["icl_peak_step"]):
    ax.axvline(summary["icl_peak_step"], color="C0", ls=":", lw=1)
  if not math.isnan(summary["iwl_onset_step"]):
    ax.axvline(summary["iwl_onset_step"], color="C1", ls=":", lw=1)
  ax.set_xscale("log")
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("step")
  ax.set_ylabel("accuracy")
  ax.grid(alpha=0.3)
  s, v = results_lib.series(rows, "train", "loss")
  ax2 = ax.twinx()
  ax2.plot(s, v, color="0.5", lw=1, label="train loss")
  ax2.set_ylabel("train loss")
  lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
  ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="center left")
  ax.set_title(f"{summary['name']}: peak {summary['icl_peak']:.2f} at "
               f"{summary['icl_peak_step']:.0f}, slope {summary['icl_decay_slope']:.3f}/decade", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_scatter(summaries: list[dict], x: str, y: str, path: str, xlabel: str, ylabel: str, logx: bool) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(4.8, 3.6))
  pts = [(s[x], s[y], s["name"]) for s in summaries
         if not (math.isnan(s[x]) or math.isnan(s[y]))]
  for px, py, name in pts:
    ax.scatter([px], [py], color="C0")
    ax.annotate(name, (px, py), fontsize=6)
  if logx and pts and all(p[0] > 0 for p in pts):
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv: list[str] | None = None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("runs", nargs="+", help="run directories holding a results table")
  ap.add_argument("--out", required=True, help="directory for transience_summary.csv and the figures")
  ap.add_argument("--icl", default=ICL_DEFAULT, help="ICL curve as evaluator:metric")
  ap.add_argument("--iwl", default=IWL_DEFAULT, help="IWL curve as evaluator:metric")
  ap.add_argument("--iwl_threshold", type=float, default=0.5, help="IWL onset: first step at or above this")
  ap.add_argument("--until", type=int, default=None, help="read every run up to this step (a common horizon)")
  args = ap.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  summaries = [s for d in args.runs for s in summarize(d, args.icl, args.iwl, args.iwl_threshold, args.until)]
  for s in summaries:
    name = s["name"].replace("/", "_")
    s["curves_png"] = plot_curves(s, os.path.join(args.out, f"{name}_curves.png"), args.icl, args.iwl)
    del s["rows"]
  plot_scatter(summaries, "l2", "icl_decay_slope", os.path.join(args.out, "slope_vs_l2.png"),
               "optim.l2", "ICL decay slope (accuracy / decade)", logx=True)
  plot_scatter(summaries, "num_classes", "icl_peak", os.path.join(args.out, "peak_vs_classes.png"),
               "classes", "ICL peak accuracy", logx=True)
  results_lib.write_dicts(os.path.join(args.out, "transience_summary.csv"), summaries)
  for s in summaries:
    print(f"{s['name']}: ICL peak {s['icl_peak']:.3f} at step {s['icl_peak_step']:.0f}, decay slope "
          f"{s['icl_decay_slope']:.4f}/decade, final ICL {s['icl_final']:.3f}; IWL onset step {s['iwl_onset_step']:.0f}, "
          f"final IWL {s['iwl_final']:.3f}; curves {s['curves_png']}")
  print(f"summary: {os.path.join(args.out, 'transience_summary.csv')}")
  return summaries


if __name__ == "__main__":
  main()
