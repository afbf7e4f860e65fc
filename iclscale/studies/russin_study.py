"""Russin et al. 2024's experiments, run through the training loop, and their results table next to the paper's.

  python -m iclscale.studies.russin_study --task grid                       # CPU scale, seeds 0 1
  python -m iclscale.studies.russin_study --task category --seeds 0,1,2
  python -m iclscale.studies.russin_study --task grid --scale full --seeds 0,1,2,3,4,5,6,7,8,9   # accelerator

Per seed, every run an ordinary resumable run in its own sub-workdir (skipped when complete):
  meta_rule, meta_rotated   metalearning (ICL) on rule-like / rotated episodes, blocked contexts
  ft_{iwl_only,icl_iwl}_{rule,rotated}_{blocked,interleaved}
                            finetuning (IWL) of every held-out episode (a population) on its study items, blocked
                            (A, B, A, B) or interleaved, with the same curriculum in context; from fresh weights
                            (IWL only) or from meta_rule (ICL + IWL, as upstream's unrotated-blocked models)
Measures (upstream jlrussin/icl-iwl-interplay, notebooks/prepare_results_for_stats.ipynb): ICL = few-shot test-item accuracy on held-out episodes before any finetuning;
retention = study-item accuracy after the last finetuning block; generalization = test-item accuracy then.
Reported: mean and 95% t-interval over seeds (each seed's value a mean over its held-out episodes).
Writes russin_<task>.csv, .md, .png (the table) and russin_<task>_curves.png (finetuning curves) in --workdir.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os

import numpy as np

from iclscale import results
from iclscale.analysis.stats import mean_ci95
from iclscale.tasks.episodes import ROTATIONS

SCHEDULES = ("blocked", "interleaved")
CONDITIONS = ("iwl_only", "icl_iwl")
# Mean accuracy of upstream's shipped CSVs (notebooks/{category,grid}_{icl_only,icl_iwl}.csv); (measure, rotation) -> (blocked, interleaved).
PAPER = {
    "category": {("iwl_only/retention", "rule"): (0.500, 1.000), ("iwl_only/retention", "rotated"): (0.500, 0.987),
                 ("icl/fewshot", "rule"): (1.000, 0.806), ("icl/fewshot", "rotated"): (0.724, 0.645),
                 ("icl_iwl/retention", "rotated"): (0.644, 1.000)},
    "grid": {("iwl_only/retention", "rule"): (0.452, 1.000), ("iwl_only/retention", "rotated"): (0.502, 1.000),
             ("icl/fewshot", "rule"): (0.999, 0.398), ("icl/fewshot", "rotated"): (0.004, 0.003),
             ("icl_iwl/retention", "rotated"): (0.642, 1.000)},
}
MEASURES = ("iwl_only/retention", "iwl_only/generalization", "icl/fewshot", "icl_iwl/fewshot",
            "icl_iwl/retention", "icl_iwl/generalization")
FIELDS = ("task", "measure", "rotation", "curriculum", "mean", "ci95", "n", "paper")


def run_configs(task: str, scale: str, seed: int, workdir: str) -> dict[str, tuple]:
  """{run name: (config, workdir)} of one seed, in the order they must run (finetuning needs meta_rule)."""
  from configs import russin2024  # pylint: disable=g-import-not-at-top
  out = {}
  for rot in ROTATIONS:
    c = russin2024.get_config(",".join([task, scale] + (["rotated"] if rot == "rotated" else [])))
    c.seed = seed
    out[f"meta_{rot}"] = (c, os.path.join(workdir, f"seed{seed}", f"meta_{rot}"))
  for cond, rot, sched in itertools.product(CONDITIONS, ROTATIONS, SCHEDULES):
    c = russin2024.get_config(",".join([task, scale, "finetune"] + (["rotated"] if rot == "rotated" else [])))
    c.seed = seed
    c.task.curriculum = c.task.finetune_schedule = sched
    c.model.init_from = out["meta_rule"][1] if cond == "icl_iwl" else ""
    c.plot = False
    out[f"ft_{cond}_{rot}_{sched}"] = (c, os.path.join(workdir, f"seed{seed}", f"ft_{cond}_{rot}_{sched}"))
  return out


def last(rows: list[dict], evaluator: str, metric: str, first: bool = False) -> float:
  """The value at the run's last (or first) evaluated step; for a population (the finetuned episodes) the mean
  over its members of each member's value."""
  per_member = {}
  for r in rows:
    per_member.setdefault(r.get("member", 0), []).append(r)
  out = []
  for member_rows in per_member.values():
    _, values = results.series(member_rows, evaluator, metric)
    if not len(values):
      raise ValueError(f"no {evaluator}/{metric} in the results table")
    out.append(float(values[0] if first else values[-1]))
  return float(np.mean(out))


def seed_measures(runs: dict[str, tuple]) -> dict[tuple[str, str, str], float]:
  """{(measure, rotation, curriculum): value} of one seed's finished runs."""
  out = {}
  meta = {rot: results.read(runs[f"meta_{rot}"][1]) for rot in ROTATIONS}
  curricula = sorted({r["evaluator"].split("/")[2] for r in meta["rule"] if r["evaluator"].startswith("heldout/")})
  for rot, cur in itertools.product(ROTATIONS, curricula):
    out[("icl/fewshot", rot, cur)] = last(meta[rot], f"heldout/{rot}/{cur}", "accuracy_test")
  for cond, rot, sched in itertools.product(CONDITIONS, ROTATIONS, SCHEDULES):
    rows = results.read(runs[f"ft_{cond}_{rot}_{sched}"][1])
    out[(f"{cond}/retention", rot, sched)] = last(rows, "heldout/finetuned", "accuracy_study")
    out[(f"{cond}/generalization", rot, sched)] = last(rows, "heldout/finetuned", "accuracy_test")
    if cond == "icl_iwl":  # before finetuning: the metalearned model's few-shot accuracy on these episodes
      out[(f"{cond}/fewshot", rot, sched)] = last(rows, "heldout/finetuned", "accuracy_test", first=True)
  return out


def table(task: str, per_seed: list[dict]) -> list[dict]:
  rows = []
  for key in sorted(per_seed[0], key=lambda k: (MEASURES.index(k[0]), ROTATIONS.index(k[1]), k[2])):
    mean, half = mean_ci95(np.array([s[key] for s in per_seed]))
    paper = PAPER[task].get(key[:2])
    cur = key[2]
    rows.append(dict(task=task, measure=key[0], rotation=key[1], curriculum=cur, mean=round(mean, 4),
                     ci95=round(half, 4), n=len(per_seed),
                     paper="" if paper is None or cur not in SCHEDULES else paper[SCHEDULES.index(cur)]))
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| measure | task | curriculum | ours (mean ± 95% CI, n seeds) | paper |", "|---|---|---|---|---|"]
  for r in rows:
    paper = "" if r["paper"] == "" else f"{float(r['paper']):.3f}"
    lines.append(f"| {r['measure']} | {r['rotation']} | {r['curriculum']} | {r['mean']:.3f} ± {r['ci95']:.3f} "
                 f"(n={r['n']}) | {paper} |")
  return "\n".join(lines)


def plot(task: str, rows: list[dict], path: str) -> str:
  """Blocked vs interleaved bars per measure x rotation, ours with CIs, the paper's values as black marks."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  shown = [m for m in MEASURES if any(r["measure"] == m for r in rows)]
  cols = min(3, len(shown))
  fig, axes = plt.subplots(-(-len(shown) // cols), cols, figsize=(3.3 * cols, 3.0 * -(-len(shown) // cols)),
                           sharey=True, squeeze=False)
  for ax, measure in zip(axes.flat, shown):
    for j, sched in enumerate(SCHEDULES):
      for i, rot in enumerate(ROTATIONS):
        r = next((r for r in rows if (r["measure"], r["rotation"], r["curriculum"]) == (measure, rot, sched)), None)
        if r is None:
          continue
        x = i + (j - 0.5) * 0.38
        ax.bar(x, r["mean"], 0.36, yerr=r["ci95"], color=("tab:blue", "tab:orange")[j], capsize=3,
               label=sched if i == 0 else None)
        if r["paper"] != "":
          ax.plot([x - 0.16, x + 0.16], [float(r["paper"])] * 2, "k-", lw=2.5, label="paper" if (i, j) == (0, 0) else None)
    ax.set_xticks(range(len(ROTATIONS)), ROTATIONS)
    ax.set_title(measure.replace("/", "\n"), fontsize=9)
    ax.set_ylim(0, 1.05)
  for ax in axes[:, 0]:
    ax.set_ylabel("accuracy")
  axes[0, 0].legend(fontsize=7, loc="center left")
  fig.suptitle(f"Russin et al. 2024, {task} task: blocked vs interleaved (n={rows[0]['n']} seeds)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_curves(task: str, run_sets: list[dict], path: str) -> str:
  """Finetuning curves, mean over seeds: study block A / B and test accuracy against the step, blocked (solid)
  vs interleaved (dashed), per condition x rotation: catastrophic forgetting of block A shows here."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(CONDITIONS), len(ROTATIONS), figsize=(9, 6), sharex=True, sharey=True)
  for (i, cond), (j, rot) in itertools.product(enumerate(CONDITIONS), enumerate(ROTATIONS)):
    ax = axes[i, j]
    for sched, style in zip(SCHEDULES, ("-", "--")):
      tables = [results.read(runs[f"ft_{cond}_{rot}_{sched}"][1]) for runs in run_sets]
      for metric, colour in (("accuracy_study_A", "tab:blue"), ("accuracy_study_B", "tab:orange"),
                             ("accuracy_test", "tab:gray")):
        steps, _ = results.series(tables[0], "heldout/finetuned", metric)
        mean = np.mean([results.series(t, "heldout/finetuned", metric)[1] for t in tables], axis=0)
        ax.plot(steps, mean, style, color=colour, label=f"{metric.replace('accuracy_', '')} ({sched})")
    ax.set_title(f"{cond} · {rot}", fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  for ax in axes[-1]:
    ax.set_xlabel("finetuning step")
  for ax in axes[:, 0]:
    ax.set_ylabel("accuracy")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(f"{task}: finetuning (IWL) curves, mean over {len(run_sets)} seeds", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", choices=("grid", "category"), default="grid")
  p.add_argument("--scale", choices=("tiny", "cpu", "full"), default="cpu")
  p.add_argument("--seeds", default="0,1", help="comma-separated seeds")
  p.add_argument("--workdir", default="", help="default runs/russin_<task>_<scale>")
  p.add_argument("--table-only", action="store_true", help="only aggregate runs that are already complete")
  args = p.parse_args(argv)
  workdir = args.workdir or os.path.join("runs", f"russin_{args.task}_{args.scale}")
  seeds = [int(s) for s in args.seeds.split(",")]
  from iclscale import train  # pylint: disable=g-import-not-at-top
  train.enable_compilation_cache()
  run_sets = []
  for seed in seeds:
    runs = run_configs(args.task, args.scale, seed, workdir)
    if not args.table_only:
      for name, (config, wd) in runs.items():
        logging.info("seed %d: %s", seed, name)
        train.run(config, wd)
    run_sets.append(runs)
  per_seed = [seed_measures(runs) for runs in run_sets]
  rows = table(args.task, per_seed)
  base = os.path.join(workdir, f"russin_{args.task}")
  results.write_dicts(base + ".csv", rows, FIELDS)
  with open(base + ".md", "w") as f:
    f.write(markdown(rows) + "\n")
  print(markdown(rows))
  print(f"table: {base}.csv, {base}.md; figures: {plot(args.task, rows, base + '.png')}, "
        f"{plot_curves(args.task, run_sets, base + '_curves.png')}")
  return rows


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main()
