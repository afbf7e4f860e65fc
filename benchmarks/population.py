"""Aggregate member-steps/s of populations against one solo run: how much of a study one program trains at once.

  python -m benchmarks.population                       # 2-layer P = 1, 4, 16, 64; 12-layer P = 1, 4, 16
  python -m benchmarks.population --quick               # fewer seconds per row (this CPU)
  python -m benchmarks.population --model 2layer --sizes 1,16 --seconds 5

P = 1 is the solo run (no population block); P > 1 members differ in seed and dataset size, as in the N sweep.
Each row is the steady-state training chunk (train.build_program, as the loop runs it; compilation excluded,
reported apart) on one device with the Grain index pipeline; `member_steps_per_s` = steps/s x P, `speedup` is
that over the solo run's steps/s. Memory per member is the train state's bytes (params + Adam moments) over P.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODELS = {  # name -> (config module, steps per dispatch, default population sizes)
    "2layer": ("chan2024_synthetic", 100, (1, 4, 16, 64)),
    "12layer": ("stylized_12layer", 20, (1, 4, 16)),
}


def population_config(model: str, size: int):
  module, _, _ = MODELS[model]
  config = __import__(f"configs.{module}", fromlist=["get_config"]).get_config("quick")
  if size > 1:  # seeds x dataset sizes, as the N sweep's members
    config.population = dict(product={}, zip=dict(seed=tuple(range(size)),
                                                  task=dict(dataset_size=tuple(2**(6 + i % 9) for i in range(size)))))
  return config


def measure(model: str, size: int, seconds: float) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import throughput  # pylint: disable=g-import-not-at-top
  _, k, _ = MODELS[model]
  row = throughput.measure_config(population_config(model, size), "grain", 1, seconds, k)
  row.update(model=model, members=size, member_steps_per_s=row["steps_per_s"] * size,
             device=f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}")
  return row


def state_bytes_per_member(model: str, size: int) -> float:
  """Bytes of params + optimizer state per member (abstract: nothing is allocated)."""
  import jax  # pylint: disable=g-import-not-at-top
  from iclscale import mesh as mesh_lib, models, tasks, train  # pylint: disable=g-import-not-at-top
  config = population_config(model, size)
  config.mesh.num_devices = 1
  cfg = train.resolve(config)
  members = train.resolve_members(config)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  with jax.set_mesh(mesh):
    task = tasks.build(cfg.task, cfg.seed)
    model_ = models.build(cfg.model, task)
    state = jax.eval_shape(lambda: train.init_state(cfg, task, model_, mesh, members)[0])
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  return total / size


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="2layer,12layer", help="comma-separated: 2layer, 12layer")
  ap.add_argument("--sizes", default="", help="population sizes (default per model: see MODELS)")
  ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per row")
  ap.add_argument("--quick", action="store_true", help="3 s per row")
  ap.add_argument("--out", default="", help="also write the rows as JSON here")
  args = ap.parse_args()
  seconds = 3.0 if args.quick else args.seconds
  rows = []
  print(f"load average at start: {os.getloadavg()}", flush=True)
  for model in args.model.split(","):
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else MODELS[model][2]
    solo = None
    for size in sizes:
      row = measure(model, size, seconds)
      row["state_mb_per_member"] = state_bytes_per_member(model, size) / 2**20
      solo = row["steps_per_s"] if size == 1 else solo
      row["speedup"] = row["member_steps_per_s"] / solo if solo else None
      rows.append(row)
      print(f"{model:8s} P={size:3d}  {row['steps_per_s']:9.1f} steps/s  {row['member_steps_per_s']:9.1f} "
            f"member-steps/s  x{row['speedup'] or float('nan'):5.2f} vs solo  "
            f"{row['state_mb_per_member']:7.2f} MB/member  compile {row['first_dispatch_s']:.1f} s  "
            f"[{row['device']}]", flush=True)
  print(f"load average at end: {os.getloadavg()}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
