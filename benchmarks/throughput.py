"""Training throughput on this machine: steps/s of the loop's inner path, printed as a table.

  python -m benchmarks.throughput                 # 2-layer and 12-layer, Grain vs device input, 1 vs 8 devices
  python -m benchmarks.throughput --startup       # also: start-up to the first step and peak RSS of main.py

"grain" is the real input pipeline (Grain iterator of indices -> global array -> jitted K-step scan that builds
the sequences on the device); "device" draws the indices inside the scan, the bound the pipeline is compared to.
Each row times `--seconds` of steady state after a warm-up dispatch (compilation excluded); the timed span
includes the wait for the last dispatched chunk. Every benchmark at once, with MFU: python -m benchmarks.all.
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def measure(config_name: str, pipeline: str, num_devices: int, seconds: float, k: int) -> dict:
  mod = __import__(f"configs.{config_name}", fromlist=["get_config"])
  return dict(measure_config(mod.get_config("quick"), pipeline, num_devices, seconds, k), config=config_name)


def measure_config(config, pipeline: str, num_devices: int, seconds: float, k: int) -> dict:
  """Steady-state steps/s of `config`'s training chunk (compilation excluded) and its FLOPs per step.

  The timed span ends when the last dispatched chunk has finished (block_until_ready), and at most
  MAX_IN_FLIGHT chunks are queued, so the span is close to `seconds` instead of draining a long queue after the
  clock stops. FLOPs per step are XLA's cost analysis of a 1-step chunk (XLA counts a scan body once, whatever
  the trip count, so the K-step chunk cannot be used). A config with a population block trains all its members
  per step (train.build_program, as the loop does).
  """
  import collections  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from iclscale import mesh as mesh_lib, tasks, train  # pylint: disable=g-import-not-at-top
  config.data.pipeline = pipeline
  config.mesh.num_devices = num_devices
  config.train.steps_per_dispatch = k
  config.train.num_steps = 10**7 // k * k
  config.train.log_every = config.checkpoint.every = config.eval_every = k * 1000
  cfg = train.resolve(config)
  members = train.resolve_members(config)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  with jax.set_mesh(mesh):
    task_list = ([tasks.build(c.task, c.seed) for c in members.cfgs] if members
                 else [tasks.build(cfg.task, cfg.seed)])
    prog = train.build_program(cfg, members, task_list, mesh)
    one = train.build_program(cfg, members, task_list, mesh, steps_per_dispatch=1)
    state, inputs = prog.state, prog.inputs
    it = prog.make_iterator() if pipeline == "grain" else None
    idx1 = None if it is None else jax.ShapeDtypeStruct((1,) + prog.idx_shape[1:], jax.numpy.uint32,
                                                         sharding=prog.idx_sharding)
    flops = one.chunk.lower(one.state, one.inputs, idx1).cost_analysis().get("flops")
    del one
    # Many simulated CPU devices can deadlock in all-reduce when the host runs far ahead: wait per dispatch there.
    in_flight = 1 if num_devices > 1 else MAX_IN_FLIGHT

    def step(state):
      idx = None if it is None else mesh_lib.to_global(next(it), prog.idx_sharding, prog.idx_shape)
      return prog.chunk(state, inputs, idx)

    t0 = time.perf_counter()
    state = step(state)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    n, queue, t0 = 0, collections.deque(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
      state = step(state)
      queue.append(state["step"] + 0)  # a marker that outlives the donated state
      if len(queue) > in_flight:
        queue.popleft().block_until_ready()
      n += 1
    jax.block_until_ready(state)
    dt = time.perf_counter() - t0
  return dict(pipeline=pipeline, devices=num_devices, k=k, steps_per_s=n * k / dt, steps=n * k, timed_s=dt,
              first_dispatch_s=compile_s, flops_per_step=flops, members=members.size if members else 1)


MAX_IN_FLIGHT = 2  # chunks queued ahead of the device while timing: enough to hide the host, bounded to drain


def startup_and_memory() -> dict:
  """Runs `python main.py` (default config, 2000 steps) and reads its first-step time; peak RSS of the child."""
  import tempfile  # pylint: disable=g-import-not-at-top
  workdir = tempfile.mkdtemp()
  t0 = time.time()
  p = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), f"--workdir={workdir}",
                      "--config.train.num_steps=2000"], capture_output=True, text=True, check=True)
  wall = time.time() - t0
  m = re.search(r"First training step dispatched ([\d.]+) s", p.stdout + p.stderr)
  sps = re.findall(r"steps_per_sec=([\d.]+)", p.stdout + p.stderr)
  rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
  return dict(first_step_s=float(m.group(1)) if m else None, wall_s=wall, peak_rss_gb=rss_gb,
              reported_steps_per_s=float(sps[-1]) if sps else None)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seconds", type=float, default=8.0)
  ap.add_argument("--startup", action="store_true")
  ap.add_argument("--child", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:  # one measurement in this process (XLA_FLAGS already set by the parent)
    print(json.dumps(measure(**json.loads(args.child))))
    return
  rows = []
  plan = [("chan2024_synthetic", p, 1, 100) for p in ("grain", "device")]
  plan += [("stylized_12layer", p, 1, 50) for p in ("grain", "device")]
  plan += [("chan2024_synthetic", "grain", 8, 100), ("stylized_12layer", "grain", 8, 50)]
  for config_name, pipeline, devices, k in plan:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    job = json.dumps(dict(config_name=config_name, pipeline=pipeline, num_devices=devices, seconds=args.seconds, k=k))
    out = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--child", job], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    r = rows[-1]
    print(f"{r['config']:<20} {r['pipeline']:<7} devices={r['devices']} K={r['k']:<4} "
          f"{r['steps_per_s']:8.1f} steps/s   (first dispatch incl. compile {r['first_dispatch_s']:.1f} s)", flush=True)
  by = {(r["config"], r["pipeline"], r["devices"]): r["steps_per_s"] for r in rows}
  for name in ("chan2024_synthetic", "stylized_12layer"):
    print(f"{name}: grain/device ratio = {by[(name, 'grain', 1)] / by[(name, 'device', 1)]:.3f}")
  if args.startup:
    s = startup_and_memory()
    print(f"main.py default config: first training step {s['first_step_s']} s after start, "
          f"peak RSS {s['peak_rss_gb']:.2f} GB, end-to-end {s['reported_steps_per_s']} steps/s (CLU report), "
          f"wall {s['wall_s']:.1f} s for 2000 steps")


if __name__ == "__main__":
  main()
