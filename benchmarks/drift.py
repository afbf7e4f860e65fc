"""How far two runs of the same member drift apart: a population member against its solo run, and the solo run on
2 devices against 1 (the same math, only the order of float additions differs).

  python -m benchmarks.drift                         # the quick N sweep's p=0.9, N=2^10, seed 0 member, 50K steps
  python -m benchmarks.drift --steps 5000 --log2n 12 --json drift.json

Prints, per evaluation step, the largest relative difference over every logged value of the two pairs, the solo
run's training loss, and the OOBD relevant-context C_L error (the N sweep's ICL cell) of the three runs. If the
population drifts no further from the solo run than the 2-device run does, the drift is float rounding amplified
by training, not the population mechanism. Runs in a temporary workdir unless --workdir is given.
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CELL = ("grid/oobd/relevant/C_L", "error")


def configs(steps: int, log2n: int, seed: int) -> dict:
  """solo (1 device), pop (the member 0 of a 2-member population, 1 device), devices2 (solo, data=2)."""
  from iclscale.studies import nsweep  # pylint: disable=g-import-not-at-top
  def member(num_devices=1):
    c = nsweep.run_config("quick", 0.9, log2n, seed)
    k = c.train.steps_per_dispatch  # evaluations fall on dispatch boundaries
    c.train.num_steps, c.train.log_every, c.eval_every = steps, 100, max(k, steps // 10 // k * k)
    c.mesh.num_devices = num_devices
    return c
  pop = member()  # member 1 (another seed at N = 2^6) shares the program with member 0 and nothing else
  pop.population = dict(product={}, zip=dict(seed=(seed, seed + 1), task=dict(dataset_size=(2**log2n, 2**6))))
  return dict(solo=member(), pop=pop, devices2=member(num_devices=2))


def values(workdir: str) -> dict:
  from iclscale import results  # pylint: disable=g-import-not-at-top
  return {(r["step"], r["evaluator"], r["metric"]): r["value"]
          for r in results.read(workdir) if r.get("member", 0) == 0}


def largest_rel_diff(a: dict, b: dict) -> dict[int, float]:
  by_step = collections.defaultdict(float)
  for k in a.keys() & b.keys():
    by_step[k[0]] = max(by_step[k[0]], abs(a[k] - b[k]) / (abs(a[k]) + 1e-6))
  return dict(by_step)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=50_000, help="training steps of each run")
  ap.add_argument("--log2n", type=int, default=10, help="log2 of the member's dataset size N")
  ap.add_argument("--seed", type=int, default=0, help="the member's seed")
  ap.add_argument("--workdir", default=None, help="where the three runs go (default: a temporary directory)")
  ap.add_argument("--json", default=None, help="also write the figures here")
  args = ap.parse_args()
  from iclscale import launch_local  # pylint: disable=g-import-not-at-top  # (imports no JAX)
  # 2 CPU devices for the data-parallel twin, set before JAX is imported.
  os.environ["XLA_FLAGS"] = launch_local.xla_flags(os.environ.get("XLA_FLAGS", ""), 2)
  from iclscale import train  # pylint: disable=g-import-not-at-top
  workdir = args.workdir or tempfile.mkdtemp(prefix="drift_")
  tables, seconds = {}, {}
  for name, config in configs(args.steps, args.log2n, args.seed).items():
    t0 = time.time()
    train.run(config, os.path.join(workdir, name))
    seconds[name], tables[name] = round(time.time() - t0, 1), values(os.path.join(workdir, name))
  pop, dev2 = largest_rel_diff(tables["solo"], tables["pop"]), largest_rel_diff(tables["solo"], tables["devices2"])
  steps = sorted(s for s in tables["solo"] if s[1:] == CELL)
  rows = [dict(step=s[0], pop_vs_solo=pop[s[0]], devices2_vs_solo=dev2[s[0]],
               solo_train_loss=tables["solo"].get((s[0], "train", "loss"), float("nan")),
               **{f"{n}_oobd_relevant_C_L_error": tables[n][s] for n in tables}) for s in steps]
  print(f"{'step':>7} {'pop vs solo':>12} {'2 dev vs solo':>14} {'solo loss':>10}   OOBD relevant C_L error: "
        "solo / pop / 2 devices")
  for r, s in zip(rows, steps):
    print(f"{r['step']:>7} {r['pop_vs_solo']:>12.1e} {r['devices2_vs_solo']:>14.1e} {r['solo_train_loss']:>10.2g}   "
          + " / ".join(f"{tables[n][s]:.3f}" for n in ("solo", "pop", "devices2")))
  print(f"(largest relative difference over every logged value of member 0; seconds per run: {seconds})")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(args=vars(args), seconds=seconds, rows=rows), f, indent=1)


if __name__ == "__main__":
  main()
