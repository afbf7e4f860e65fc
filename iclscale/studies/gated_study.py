"""The gated model's N sweep beside the theory's predictions (and, optionally, the transformer's).

  python -m iclscale.studies.gated_study --workdir runs/gated_study [--scale quick] [--transformer_runs DIR]
      [--sigmas 0,0.2] [--p_highs 0.9] [--seeds 0,1,2] [--log2n 6,13]     # override the scale's sweep

Sweeps N (2^6 .. 2^k sequences, one streaming pass each), σ and p_high over seeds with configs/chan2024_gated.py;
every run goes through iclscale.train.run into its own sub-workdir, and a finished one (its results table holds
step N) is skipped, so re-running resumes the sweep. Writes to --workdir:
  table.csv          tidy rows: sigma, p_high, seed, N, source (gated | theory | transformer), set, metric, value
  switch_points.csv  per σ, p_high, group and seed: the predicted switch N (rules instant, cumulative, median of
                     theory.py) and the observed one (where the mean α on the group's IBD set crosses 1/2,
                     log-interpolated; the first N if α starts above 1/2, inf if it never gets there)
  gated_s{σ}_p{p_high}.png  against N: α for C_H and C_L; errors of g, h, f with the theory's g and h curves;
                     ICL (OOBD relevant) and IWL (IBD irrelevant) errors of f, and of the transformer if given.
Predicted switch points are vertical lines (solid: median rule, dotted: instant rule; see theory.py).

A transformer N sweep (--transformer_runs) is a directory of run workdirs, each with config.json (task.dataset_size,
task.input_noise, task.p_high) and a results table with evaluators grid/{ibd,oobd}/{relevant,irrelevant}/{C_H,C_L};
its last evaluation is plotted against N = task.dataset_size in the figure of the matching σ and p_high. Note
that the transformer's N is a dataset trained on for many epochs, the gated model's N a single pass.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from typing import Any

import numpy as np

from iclscale import results as results_lib
from iclscale import theory

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                      "chan2024_gated.py")
# scale -> sweep: log2 N range, σ values, p_high values, seeds, and the sequences per evaluation set
SCALES = {
    "tiny": dict(log2n=(6, 7), sigmas=(0.2,), p_highs=(0.9,), seeds=(0,), num_examples=100),
    "quick": dict(log2n=(6, 13), sigmas=(0.2, 0.4), p_highs=(0.9, 0.99), seeds=(0, 1), num_examples=500),
    "full": dict(log2n=(6, 18), sigmas=(0.0, 0.2, 0.3, 0.4), p_highs=(0.5, 0.9, 0.99), seeds=(0, 1, 2, 3, 4),
                 num_examples=1000),
}
GROUPS = theory.GROUPS
HEADS = ("g", "h", "f")
RULE_STYLES = {"median": "-", "instant": ":"}  # the rules drawn as vertical lines (all are in the CSV)
TABLE_FIELDS = ("sigma", "p_high", "seed", "N", "source", "set", "metric", "value")


def load_config():
  """configs/chan2024_gated.py (loaded by path: configs/ is not a package); the sweep overrides its scale."""
  spec = importlib.util.spec_from_file_location("chan2024_gated", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("quick")


def run_config(num_examples: int, sigma: float, p_high: float, seed: int, n: int):
  """The gated config for one point of the sweep: N streaming steps, evaluated (and saved) at the end only."""
  c = load_config()
  c.seed = seed
  c.task.input_noise = sigma
  c.task.p_high = p_high
  c.train.num_steps = n
  c.train.log_every = n
  c.eval_every = 0                      # evaluate at the last step only
  c.checkpoint.every = 0                # save at the end (and on preemption) only
  c.checkpoint.per_decade = 0
  c.plot = False
  c.evals.grid.num_examples = num_examples
  c.evals.grid.batch_size = num_examples
  return c


def run_dir(workdir: str, sigma: float, p_high: float, seed: int, n: int) -> str:
  return os.path.join(workdir, "runs", f"s{sigma:g}_p{p_high:g}_seed{seed}_N{n}")


def finished(path: str, n: int) -> bool:
  return results_lib.exists(path) and bool(np.any(results_lib.read_columns(path)["step"] == n))


def sweep(workdir: str, sc: dict) -> list[tuple[tuple, str]]:
  """Runs every missing point of the sweep `sc` (a SCALES entry); returns [((σ, p_high, seed, N), run dir)]."""
  from iclscale import train  # pylint: disable=g-import-not-at-top  # JAX starts only when runs are needed
  ns = [2**k for k in range(sc["log2n"][0], sc["log2n"][1] + 1)]
  points = [(s, p, seed, n) for s in sc["sigmas"] for p in sc["p_highs"] for seed in sc["seeds"] for n in ns]
  out = []
  start = time.time()
  for i, point in enumerate(points):
    path = run_dir(workdir, *point)
    out.append((point, path))
    if finished(path, point[-1]):
      continue
    t = time.time()
    train.run(run_config(sc["num_examples"], *point), path)
    print(f"[{i + 1}/{len(points)}] sigma={point[0]:g} p_high={point[1]:g} seed={point[2]} N={point[3]}: "
          f"{time.time() - t:.1f} s (sweep {time.time() - start:.0f} s)", flush=True)
  return out


def sweep_population(workdir: str, sc: dict) -> list[dict]:
  """The sweep `sc` as one population run per seed in <workdir>/population_seed<s>: members σ x p_high, each
  trained for the largest N and evaluated at every N of the sweep. The data is a stream and the learners' clocks
  do not depend on the run's length, so a member's state at step N is exactly the one-at-a-time run of N steps.
  (One population per seed: the gated model's regions are the seed's prototypes, models.reads_task_seed.)
  Returns the gated rows of the table (as gated_rows)."""
  from iclscale import train  # pylint: disable=g-import-not-at-top
  ns = [2**k for k in range(sc["log2n"][0], sc["log2n"][1] + 1)]
  rows = []
  for seed in sc["seeds"]:
    c = run_config(sc["num_examples"], sc["sigmas"][0], sc["p_highs"][0], seed, ns[-1])
    c.train.eval_steps = tuple(ns)
    c.population = dict(product=dict(task=dict(input_noise=tuple(sc["sigmas"]), p_high=tuple(sc["p_highs"]))),
                        zip={})
    path = os.path.join(workdir, f"population_seed{seed}")
    if not finished(path, ns[-1]):
      t = time.time()
      train.run(c, path)
      print(f"seed {seed}: population of {len(sc['sigmas']) * len(sc['p_highs'])} members, N up to {ns[-1]}: "
            f"{time.time() - t:.1f} s", flush=True)
    for r in results_lib.read(path):
      if r["step"] in ns and r["evaluator"].startswith("grid/"):
        rows.append(dict(sigma=float(r["task.input_noise"]), p_high=float(r["task.p_high"]), seed=seed,
                         N=r["step"], source="gated", set=r["evaluator"].split("/", 1)[1], metric=r["metric"],
                         value=r["value"]))
  return rows


def gated_rows(points: list[tuple[tuple, str]]) -> list[dict]:
  rows = []
  for (sigma, p_high, seed, n), path in points:
    for r in results_lib.read(path):
      if r["step"] == n and r["evaluator"].startswith("grid/"):
        rows.append(dict(sigma=sigma, p_high=p_high, seed=seed, N=n, source="gated",
                         set=r["evaluator"].split("/", 1)[1], metric=r["metric"], value=r["value"]))
  return rows


def theory_rows(sigma: float, p_high: float, ns: list[int], seeds: tuple) -> tuple[list[dict], dict]:
  """The theory's g/h errors on the IBD default sets against N, and its switch points (with this seed's
  prototypes: they set the region confusion)."""
  from iclscale import tasks  # pylint: disable=g-import-not-at-top
  cfg = load_config()
  cfg.task.input_noise, cfg.task.p_high = sigma, p_high
  task_cfg = tasks.resolve(cfg.task)
  setting = theory.Setting.from_task(task_cfg)
  rows, preds = [], {}
  for seed in seeds:
    prototypes = np.asarray(tasks.build(task_cfg, seed).arrays["prototypes"])
    preds[seed] = pred = theory.predict(setting, prototypes, ns, tau=cfg.model.init_tau, seed=seed)
    for group in GROUPS:
      curve = pred[group]["curve"]
      for n, g_err, h_err in zip(ns, curve["iw_error"], curve["ic_error"]):
        for metric, v in (("g_error", g_err), ("h_error", h_err)):
          rows.append(dict(sigma=sigma, p_high=p_high, seed=seed, N=n, source="theory",
                           set=f"ibd/default/{group}", metric=metric, value=float(v)))
  return rows, preds


def transformer_rows(directory: str, p_relevant: float) -> list[dict]:
  """The final evaluation of each finished transformer run trained at p_relevant (an N sweep may also hold the
  p = 0 / p = 1 baselines), keyed by its task's dataset size, σ and p_high."""
  rows = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    cfg_path = os.path.join(path, "config.json")
    if not (os.path.exists(cfg_path) and results_lib.exists(path)):
      continue
    with open(cfg_path) as f:
      cfg = json.load(f)
    table = results_lib.read(path)
    if not table or "task.dataset_size" not in cfg or not np.isclose(cfg.get("task.p_relevant", p_relevant),
                                                                      p_relevant):
      continue
    last = max(r["step"] for r in table)
    if last < cfg.get("train.num_steps", last):  # still running
      continue
    for r in table:
      parts = r["evaluator"].split("/")
      if r["step"] == last and len(parts) == 4 and parts[1] in ("ibd", "oobd"):
        rows.append(dict(sigma=cfg.get("task.input_noise"), p_high=cfg.get("task.p_high"), seed=cfg.get("seed", 0),
                         N=int(cfg["task.dataset_size"]), source="transformer", set="/".join(parts[1:]),
                         metric=r["metric"], value=r["value"]))
  return rows


def crossing(ns: np.ndarray, alpha: np.ndarray) -> float:
  """The N where α first reaches 1/2, interpolated linearly in log2 N; ns[0] if it starts there, inf if never."""
  above = np.nonzero(alpha >= 0.5)[0]
  if not above.size:
    return math.inf
  i = above[0]
  if i == 0:
    return float(ns[0])
  x0, x1, a0, a1 = np.log2(ns[i - 1]), np.log2(ns[i]), alpha[i - 1], alpha[i]
  return float(2 ** (x0 + (0.5 - a0) / (a1 - a0) * (x1 - x0)))


def series(rows: list[dict], source: str, set_name: str, metric: str,
           **match) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(N, mean over seeds, std over seeds) of one metric."""
  by_n: dict[int, list[float]] = {}
  for r in rows:
    if r["source"] == source and r["set"] == set_name and r["metric"] == metric and all(
        r[k] is None or np.isclose(r[k], v) for k, v in match.items()):
      by_n.setdefault(int(r["N"]), []).append(r["value"])
  ns = np.array(sorted(by_n), dtype=np.int64)
  return (ns, np.array([np.mean(by_n[n]) for n in ns]), np.array([np.std(by_n[n]) for n in ns]))


def switch_rows(rows: list[dict], preds: dict, sigma: float, p_high: float, seeds: tuple) -> list[dict]:
  """Predicted (per seed: the prototypes differ) and observed switch N; seed='all' aggregates the seeds (the
  median prediction, the crossing of the seed-mean α)."""
  out = []
  for group in GROUPS:
    base = dict(sigma=sigma, p_high=p_high, group=group)
    for rule in theory.RULES:
      values = [preds[s][group]["switch"][rule] for s in seeds]
      out += [dict(base, kind=f"predicted_{rule}", seed=s, N=v) for s, v in zip(seeds, values)]
      out.append(dict(base, kind=f"predicted_{rule}", seed="all", N=float(np.median(values))))
    for seed in seeds:
      ns, alpha, _ = series([r for r in rows if r["seed"] == seed], "gated", f"ibd/default/{group}", "alpha",
                            sigma=sigma, p_high=p_high)
      out.append(dict(base, kind="observed", seed=seed, N=crossing(ns, alpha)))
    ns, alpha, _ = series(rows, "gated", f"ibd/default/{group}", "alpha", sigma=sigma, p_high=p_high)
    out.append(dict(base, kind="observed", seed="all", N=crossing(ns, alpha)))
  return out


def plot(path: str, rows: list[dict], switches: list[dict], sigma: float, p_high: float) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  colors = {"C_H": "tab:blue", "C_L": "tab:red"}
  head_styles = {"g": "tab:green", "h": "tab:purple", "f": "black"}
  match = dict(sigma=sigma, p_high=p_high)
  fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
  axes = axes.ravel()
  ns_all = sorted({int(r["N"]) for r in rows if r["source"] != "theory" and all(
      r[k] is None or np.isclose(r[k], v) for k, v in match.items())})

  def vlines(ax, groups=GROUPS, label=False):
    for s in switches:
      rule = s["kind"].split("_", 1)[-1]
      if s["group"] in groups and s["seed"] == "all" and rule in RULE_STYLES:
        text = f"{s['group']} predicted ({rule}): N={s['N']:.0f}" if label else None
        if np.isfinite(s["N"]):
          ax.axvline(s["N"], color=colors[s["group"]], ls=RULE_STYLES[rule], lw=1, alpha=0.7, label=text)
        elif label:  # no switch at any N: shown in the legend only
          ax.plot([], [], color=colors[s["group"]], ls=RULE_STYLES[rule], label=text)

  ax = axes[0]
  for group in GROUPS:
    ns, m, sd = series(rows, "gated", f"ibd/default/{group}", "alpha", **match)
    ax.errorbar(ns, m, sd, marker="o", color=colors[group], label=f"α on {group}", capsize=2)
  ax.axhline(0.5, color="gray", lw=0.5)
  ax.set_title("gate α (1 = in-weight), mean ± sd over seeds")
  ax.set_ylim(-0.05, 1.05)
  vlines(ax, label=True)
  for ax, group in zip(axes[1:3], GROUPS):
    for head in HEADS:
      metric = "error" if head == "f" else f"{head}_error"
      ns, m, sd = series(rows, "gated", f"ibd/default/{group}", metric, **match)
      ax.errorbar(ns, m, sd, marker="o", color=head_styles[head], label=f"{head}", capsize=2)
    for head in ("g", "h"):
      ns, m, _ = series(rows, "theory", f"ibd/default/{group}", f"{head}_error", **match)
      ax.plot(ns, m, ls="--", color=head_styles[head], label=f"{head} theory")
    ax.set_title(f"IBD error on {group} (default relevance)")
    ax.set_ylim(-0.05, 1.05)
    vlines(ax, (group,))
  ax = axes[3]
  for group in GROUPS:
    for set_name, ls in ((f"oobd/relevant/{group}", "-"), (f"ibd/irrelevant/{group}", "--")):
      ns, m, _ = series(rows, "gated", set_name, "error", **match)
      ax.plot(ns, m, ls=ls, marker="o", color=colors[group], label=f"gated {set_name}")
      ns, m, _ = series(rows, "transformer", set_name, "error", **match)
      if ns.size:
        ax.plot(ns, m, ls=ls, marker="s", color=colors[group], alpha=0.5, label=f"transformer {set_name}")
  ax.set_title("ICL (OOBD relevant) and IWL (IBD irrelevant) error of f")
  ax.set_ylim(-0.05, 1.05)
  vlines(ax)
  for ax in axes:
    ax.set_xscale("log", base=2)
    if ns_all:  # predicted switches outside the swept N are listed in the α legend
      ax.set_xlim(ns_all[0] / 1.4, ns_all[-1] * 1.4)
    ax.set_xlabel("N (sequences)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"gated model, Algorithm 1: σ={sigma:g}, p_high={p_high:g}\n"
               "vertical lines: predicted switch to IW (solid: median rule, dotted: instant rule; theory.py)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="study directory (runs/, tables and figures)")
  parser.add_argument("--scale", default="quick", choices=sorted(SCALES))
  parser.add_argument("--transformer_runs", default=None, help="directory of transformer N-sweep workdirs")
  parser.add_argument("--sigmas", default=None, help="comma-separated σ values, replacing the scale's")
  parser.add_argument("--p_highs", default=None, help="comma-separated p_high values, replacing the scale's")
  parser.add_argument("--seeds", default=None, help="comma-separated seeds, replacing the scale's")
  parser.add_argument("--log2n", default=None, help="smallest,largest log2 N, replacing the scale's (e.g. 6,13)")
  parser.add_argument("--population", action="store_true",
                      help="train the sweep as one population run (one program; every N read off one run)")
  args = parser.parse_args(argv)
  sc = dict(SCALES[args.scale])
  for field, cast in (("sigmas", float), ("p_highs", float), ("seeds", int), ("log2n", int)):
    if getattr(args, field):
      sc[field] = tuple(cast(v) for v in getattr(args, field).split(","))
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from iclscale import train  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)  # one progress line per run instead of every scalar
  # Runs of one (σ, p_high, seed) differ only in N, so their programs are compiled once and then read back.
  train.enable_compilation_cache(min_compile_secs=0.0)
  os.makedirs(args.workdir, exist_ok=True)
  rows = sweep_population(args.workdir, sc) if args.population else gated_rows(sweep(args.workdir, sc))
  ns = [2**k for k in range(sc["log2n"][0], sc["log2n"][1] + 1)]
  switches, figures = [], []
  p_relevant = load_config().task.p_relevant
  transformer = transformer_rows(args.transformer_runs, p_relevant) if args.transformer_runs else []
  rows += transformer
  for sigma in sc["sigmas"]:
    for p_high in sc["p_highs"]:
      t_rows, preds = theory_rows(sigma, p_high, ns, sc["seeds"])
      rows += t_rows
      switches += switch_rows(rows, preds, sigma, p_high, sc["seeds"])
      figures.append(os.path.join(args.workdir, f"gated_s{sigma:g}_p{p_high:g}.png"))
      plot(figures[-1], rows, [s for s in switches if s["sigma"] == sigma and s["p_high"] == p_high], sigma, p_high)
  results_lib.write_dicts(os.path.join(args.workdir, "table.csv"), rows, TABLE_FIELDS)
  results_lib.write_dicts(os.path.join(args.workdir, "switch_points.csv"), switches,
            ("sigma", "p_high", "group", "kind", "seed", "N"))
  print("switch points, N sequences (observed: the mean α on the group's IBD set crosses 1/2; per seed, then all):")
  for s in switches:
    if s["kind"] in ("predicted_median", "predicted_instant", "observed"):
      print(f"  sigma={s['sigma']:g} p_high={s['p_high']:g} {s['group']} {s['kind']:>18} seed={s['seed']}: "
            f"{s['N']:.0f}")
  print(f"wrote {args.workdir}/table.csv, switch_points.csv and {len(figures)} figures")
  return dict(rows=rows, switches=switches, figures=figures)


if __name__ == "__main__":
  main()
