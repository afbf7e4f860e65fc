"""main.py end to end against the training-only rate of the same config, side by side.

  python -m benchmarks.end_to_end                      # the default config (chan2024_synthetic quick), 2 rounds
  python -m benchmarks.end_to_end --rounds 3 --seconds 15

Each round runs, one after the other: (1) the config's training chunk alone (benchmarks.throughput.measure_config:
Grain input, the config's K, no evaluation, checkpoint or logging) for `--seconds`; (2) `python main.py` on the
config in a fresh workdir, at its own cadences (evaluations every eval_every steps and at every milestone,
checkpoints every checkpoint.every steps and at every milestone, train logs), read from the loop's closing line
"Trained steps 0 to N in T s from the first dispatch" (start-up and compilation before the first dispatch and the
end-of-run figures after the loop are reported apart). The ratio of the two rates is what the loop's evaluation,
checkpoint and logging work costs.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def training_only(config: str, seconds: float) -> float:
  job = json.dumps(dict(config=config, seconds=seconds))
  out = subprocess.run([sys.executable, "-m", "benchmarks.end_to_end", "--child", job], cwd=ROOT,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])["steps_per_s"]


def end_to_end(config: str) -> dict:
  workdir = tempfile.mkdtemp(prefix="e2e_")
  t0 = time.time()
  p = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), f"--config={config}", f"--workdir={workdir}"],
                     cwd=ROOT, capture_output=True, text=True)
  wall = time.time() - t0
  log = p.stdout + p.stderr
  if p.returncode:
    raise SystemExit(f"main.py failed ({p.returncode}): {log[-2000:]}")
  first = re.search(r"First training step dispatched ([\d.]+) s", log)
  m = re.search(r"Trained steps (\d+) to (\d+) in ([\d.]+) s from the first dispatch", log)
  steps, secs = int(m.group(2)) - int(m.group(1)), float(m.group(3))
  return dict(steps_per_s=steps / secs, loop_s=secs, steps=steps, first_dispatch_s=float(first.group(1)),
              wall_s=wall)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default=os.path.join(ROOT, "configs", "chan2024_synthetic.py"))
  ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds of the training-only measurement")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--child", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    job = json.loads(args.child)
    from benchmarks import throughput  # pylint: disable=g-import-not-at-top
    from iclscale import train  # pylint: disable=g-import-not-at-top
    import importlib.util  # pylint: disable=g-import-not-at-top
    train.enable_compilation_cache()
    path, _, arg = job["config"].partition(":")
    spec = importlib.util.spec_from_file_location("benchmarked_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    r = throughput.measure_config(config, "grain", config.mesh.num_devices, job["seconds"],
                                  config.train.steps_per_dispatch)
    print(json.dumps(r))
    return
  print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}", flush=True)
  for r in range(args.rounds):
    alone = training_only(args.config, args.seconds)
    e2e = end_to_end(args.config)
    print(f"round {r}: training only {alone:.1f} steps/s | main.py {e2e['steps_per_s']:.1f} steps/s over "
          f"{e2e['steps']} steps ({e2e['loop_s']:.1f} s from the first dispatch; first dispatch at "
          f"{e2e['first_dispatch_s']:.1f} s, wall {e2e['wall_s']:.1f} s) | ratio {e2e['steps_per_s'] / alone:.3f}",
          flush=True)
  print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
  main()
