"""The dataset-size study of Chan et al. 2024 (their Fig. 2 grid): error vs N for IBD/OOBD x relevant/irrelevant
context x C_H/C_L, over seeds, run locally one after another and aggregated into one table and one figure.

  python -m iclscale.studies.nsweep --workdir runs/nsweep                  # quick: N=2^6..2^14, 5 seeds
  python -m iclscale.studies.nsweep --workdir runs/nsweep --scale full     # paper: 2^6..2^20, 5 seeds, 50K steps
  python -m iclscale.studies.nsweep --workdir runs/nsweep --baselines      # + IW (p=0) / IC (p=1) predictors
  python -m iclscale.studies.nsweep --workdir runs/nsweep --seeds 0,1,2,3,4 --shard 0/2   # and --shard 1/2 at once
  python -m iclscale.studies.nsweep --workdir runs/nsweep_pop --population                  # the grid in one program
  python -m iclscale.studies.nsweep --workdir runs/nsweep_s04 --population --input_noise 0.4  # Fig. 3: sigma = 0.4

--seeds replaces the scale's seeds. --shard i/n runs every n-th member (seed-major order) starting at i, so n
processes can share a sweep; each then aggregates what has finished. Members run seed by seed, so a partial
sweep has whole seeds. Cells are aggregated over the seeds whose run reached the last step; the table's `seeds`
column says how many.

Each (p_relevant, N, seed) run lives in its own sub-workdir and is an ordinary run (resumable, skipped when done).
With --population the whole grid (p values x N x seeds) is one population run in <workdir>/population: one
program, one checkpoint, one results table with the members' p_relevant, dataset_size and seed as columns
(iclscale/population.py); each member is the run the one-at-a-time mode trains, equal up to float rounding, which
training amplifies over thousands of steps as it does a change of device count (benchmarks/drift.py): compare the
modes by means over seeds.
Reported values are the evaluators at the last step, mean ± standard error over seeds.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import time

import numpy as np

from iclscale import results

SCALES = {  # steps per run, log2 N values, seeds
    "tiny": dict(steps=200, log2_sizes=(6, 10), seeds=(0,)),
    "quick": dict(steps=50_000, log2_sizes=(6, 8, 10, 12, 14), seeds=(0, 1, 2, 3, 4)),
    "full": dict(steps=50_000, log2_sizes=(6, 8, 10, 12, 14, 16, 18, 20), seeds=(0, 1, 2, 3, 4)),
}
CELLS = [("oobd", "relevant", "C_H"), ("oobd", "relevant", "C_L"), ("oobd", "irrelevant", "C_H"),
         ("oobd", "irrelevant", "C_L"), ("ibd", "relevant", "C_H"), ("ibd", "relevant", "C_L"),
         ("ibd", "irrelevant", "C_H"), ("ibd", "irrelevant", "C_L")]


def run_name(p_relevant: float, log2_n: int, seed: int) -> str:
  return f"p{p_relevant:g}_N2^{log2_n}_seed{seed}"


def run_config(scale: str, p_relevant: float, log2_n: int, seed: int, input_noise: float | None = None):
  """One member's config; input_noise (sigma) None keeps the config's default (0.2, Chan et al. 2024 Table 1)."""
  from configs import chan2024_synthetic  # pylint: disable=g-import-not-at-top
  s = SCALES[scale]
  c = chan2024_synthetic.get_config("tiny" if scale == "tiny" else "quick")
  c.seed = seed
  c.task.p_relevant = p_relevant
  c.task.dataset_size = 2**log2_n
  if input_noise is not None:
    c.task.input_noise = input_noise   # sigma: Chan et al. 2024 Fig. 3 (ICL persists at large N for sigma = 0.4)
  c.train.num_steps = s["steps"]
  c.eval_every = 0              # evaluate at the log-spaced milestones and at the end only
  c.checkpoint.every = 0        # milestone checkpoints suffice for a sweep
  c.plot = False
  return c


def members(scale: str, p_values: list[float], seeds: tuple[int, ...]) -> list[tuple[float, int, int]]:
  """(p_relevant, log2 N, seed) of every run, seed-major: a sweep stopped early holds whole seeds."""
  return [(p, n, seed) for seed, p, n in itertools.product(seeds, p_values, SCALES[scale]["log2_sizes"])]


def run_all(workdir: str, scale: str, p_values: list[float], seeds: tuple[int, ...],
            shard: tuple[int, int] = (0, 1), input_noise: float | None = None) -> list[str]:
  from iclscale import train  # pylint: disable=g-import-not-at-top
  dirs = []
  for p, log2_n, seed in members(scale, p_values, seeds)[shard[0]::shard[1]]:
    d = os.path.join(workdir, run_name(p, log2_n, seed))
    t0 = time.time()
    out = train.run(run_config(scale, p, log2_n, seed, input_noise), d)
    logging.info("%s: step %d in %.0f s", d, out["step"], time.time() - t0)
    dirs.append(d)
  return dirs


def population_config(scale: str, p_values: list[float], seeds: tuple[int, ...], input_noise: float | None = None):
  """The whole sweep as one population: p_relevant x N x seed, every member the one-at-a-time mode's run."""
  c = run_config(scale, p_values[0], SCALES[scale]["log2_sizes"][0], seeds[0], input_noise)
  c.population = dict(product=dict(task=dict(p_relevant=tuple(p_values),
                                             dataset_size=tuple(2**n for n in SCALES[scale]["log2_sizes"])),
                                   seed=tuple(seeds)), zip={})
  return c


def member_tables(workdir: str, population: bool) -> dict[tuple[float, int, int], list[dict]]:
  """{(p_relevant, log2 N, seed): rows} of every run of the sweep found in workdir (either mode)."""
  if population:
    d = os.path.join(workdir, "population")
    out = {}
    for r in (results.read(d) if results.exists(d) else []):
      key = (float(r["task.p_relevant"]), int(np.log2(int(r["task.dataset_size"]))), int(r["seed"]))
      out.setdefault(key, []).append(r)
    return out
  out = {}
  for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
    d = os.path.join(workdir, name)
    if name.startswith("p") and results.exists(d):
      p, n, seed = name[1:].replace("_N2^", " ").replace("_seed", " ").split()
      out[(float(p), int(n), int(seed))] = results.read(d)
  return out


def aggregate(workdir: str, scale: str, p_values: list[float], seeds: tuple[int, ...],
              population: bool = False) -> list[dict]:
  """Mean and standard error over seeds of every grid cell's error at the last step, per (p, N); only runs that
  reached the scale's step count enter (a sweep still running gives a partial table, `seeds` per row)."""
  s = SCALES[scale]
  runs = member_tables(workdir, population)
  table = []
  for p in p_values:
    for log2_n in s["log2_sizes"]:
      per_seed = []
      for seed in seeds:
        rows = runs.get((float(p), log2_n, seed), [])
        last = max((r["step"] for r in rows), default=0)
        if last == s["steps"]:
          per_seed.append({(r["evaluator"], r["metric"]): r["value"] for r in rows if r["step"] == last})
      if not per_seed:
        continue
      for key in sorted(per_seed[0]):
        v = np.array([d[key] for d in per_seed])
        se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
        table.append(dict(p_relevant=p, log2_N=log2_n, evaluator=key[0], metric=key[1], mean=v.mean(), se=se,
                          seeds=len(v)))
  return table


def plot(table: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 4, figsize=(15, 6.5), sharex=True, sharey=True)
  labels = {0.0: "IW predictor (p=0)", 1.0: "IC predictor (p=1)"}
  for ax, (flip, rel, group) in zip(axes.flat, CELLS):
    for p in sorted({r["p_relevant"] for r in table}):
      pts = sorted((r["log2_N"], r["mean"], r["se"]) for r in table if r["p_relevant"] == p and r["metric"] == "error"
                   and r["evaluator"] == f"grid/{flip}/{rel}/{group}")
      if pts:
        x, m, se = map(np.array, zip(*pts))
        ax.errorbar(x, m, yerr=se, marker="o", capsize=3, label=labels.get(p, f"transformer (p={p:g})"))
    ax.set_title(f"{flip.upper()}, {'Rel.' if rel == 'relevant' else 'Irrel.'} Cont. {group}", fontsize=10)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
  for ax in axes[1]:
    ax.set_xlabel("log2 N (distinct training sequences)")
  for ax in axes[:, 0]:
    ax.set_ylabel("0-1 error")
  lined = max(axes.flat, key=lambda a: len(a.get_lines()))  # any panel with data carries the legend
  lined.legend(fontsize=8)
  fig.suptitle("Error vs dataset size (Chan et al. 2024 stylized data, 2-layer transformer)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="runs/nsweep")
  ap.add_argument("--scale", default="quick", choices=sorted(SCALES))
  ap.add_argument("--p_relevant", type=float, default=0.9, help="the main transformer's relevance probability")
  ap.add_argument("--baselines", action="store_true", help="also train the IW (p=0) and IC (p=1) predictors")
  ap.add_argument("--seeds", default="", help="comma-separated seeds, e.g. 0,1,2,3,4 (default: the scale's)")
  ap.add_argument("--shard", default="0/1", help="i/n: run members i, i+n, i+2n, ... (n processes share a sweep)")
  ap.add_argument("--input_noise", type=float, default=None,
                  help="sigma of every member (default: the config's 0.2); Chan et al. 2024 Fig. 3 uses 0.4")
  ap.add_argument("--aggregate_only", action="store_true", help="only rebuild the table and figure")
  ap.add_argument("--population", action="store_true",
                  help="train the whole grid as one population run in <workdir>/population (one program)")
  args = ap.parse_args()
  try:
    seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else SCALES[args.scale]["seeds"]
    shard = tuple(int(x) for x in args.shard.split("/"))
    if len(shard) != 2 or not 0 <= shard[0] < shard[1] or len(set(seeds)) != len(seeds):
      raise ValueError
  except ValueError:
    ap.error(f"--seeds must be distinct integers (got {args.seeds!r}) and --shard i/n with 0 <= i < n "
             f"(got {args.shard!r})")
  if args.input_noise is not None and not args.input_noise >= 0:
    ap.error(f"--input_noise must be a number >= 0 (got {args.input_noise})")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  for noisy in ("absl", "orbax", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from iclscale import train  # pylint: disable=g-import-not-at-top
  train.enable_compilation_cache()
  p_values = [args.p_relevant] + ([0.0, 1.0] if args.baselines else [])
  t0 = time.time()
  if not args.aggregate_only and args.population:
    train.run(population_config(args.scale, p_values, seeds, args.input_noise),
              os.path.join(args.workdir, "population"))
  elif not args.aggregate_only:
    run_all(args.workdir, args.scale, p_values, seeds, shard, args.input_noise)
  table = aggregate(args.workdir, args.scale, p_values, seeds, args.population)
  results.write_dicts(os.path.join(args.workdir, "nsweep_table.csv"), table)
  plot(table, os.path.join(args.workdir, "nsweep.png"))
  print(f"{len(table)} rows -> {args.workdir}/nsweep_table.csv and nsweep.png ({time.time() - t0:.0f} s)")
  for flip, rel, group in CELLS:
    vals = {r["log2_N"]: r["mean"] for r in table if r["p_relevant"] == args.p_relevant and r["metric"] == "error"
            and r["evaluator"] == f"grid/{flip}/{rel}/{group}"}
    print(f"  {flip:>4} {rel:>10} {group}: " + "  ".join(f"2^{n}:{v:.2f}" for n, v in sorted(vals.items())))


if __name__ == "__main__":
  main()
