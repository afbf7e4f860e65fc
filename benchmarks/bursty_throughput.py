"""Training throughput of the transience study's settings: steps/s of the 12-layer model on bursty sequences.

  python -m benchmarks.bursty_throughput                  # token embeddings (Grain vs device), Omniglot 28 and 105 px
  python -m benchmarks.bursty_throughput --seconds 20

Same method as benchmarks/throughput.py (`measure_config`): each row times `--seconds` of steady state after a
warm-up dispatch, in its own process on one device. Token embeddings use the cached Gemma table when it exists;
otherwise a random table of the same shape [1600, 10, 640] (the cost does not depend on the values). Omniglot rows
use the jointly trained ResNet encoder on the uint8 table converted on the device.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# Steps per dispatch (K) of each setting: enough to amortize the per-chunk host work (Grain indices, dispatch) as a
# run of the config does (its own K is 100 for `small`), few enough that a chunk fits the timed seconds. At 28 px,
# K = 10 measured 9.1-9.4 steps/s against 7.7-8.1 at K = 2 (side by side, load 1.6-2.2); 105 px stays at 1 step.
STEPS_PER_DISPATCH = {"tokens": 50, "omniglot28": 10, "omniglot105": 1}


def config_for(setting: str):
  from configs import singh2023_omniglot, singh2023_tokens  # pylint: disable=g-import-not-at-top
  if setting == "tokens":
    c = singh2023_tokens.get_config("full")
    from iclscale.datasets import token_embeddings  # pylint: disable=g-import-not-at-top
    if not token_embeddings.table_path(c.task.token_classes, c.task.token_exemplars).exists():
      c.task.dataset = "synthetic"   # same shapes as the Gemma table; values do not change the cost
      c.task.synthetic_classes, c.task.synthetic_exemplars = c.task.token_classes, c.task.token_exemplars
      c.task.synthetic_dim = token_embeddings.EMBED_DIM
    return c
  c = singh2023_omniglot.get_config("small" if setting == "omniglot28" else "full")
  return c


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seconds", type=float, default=10.0)
  ap.add_argument("--settings", default="tokens,omniglot28,omniglot105",
                  help="comma-separated subset of tokens, omniglot28, omniglot105")
  ap.add_argument("--child", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    from benchmarks import throughput  # pylint: disable=g-import-not-at-top
    job = json.loads(args.child)
    config = config_for(job.pop("setting"))
    out = throughput.measure_config(config, **job)
    print(json.dumps(dict(out, dataset=config.task.dataset)))
    return
  plan = [("tokens", "grain"), ("tokens", "device"), ("omniglot28", "grain"), ("omniglot105", "grain")]
  for setting, pipeline in [p for p in plan if p[0] in args.settings.split(",")]:
    k = STEPS_PER_DISPATCH[setting]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    job = json.dumps(dict(setting=setting, pipeline=pipeline, num_devices=1, seconds=args.seconds, k=k))
    out = subprocess.run([sys.executable, "-m", "benchmarks.bursty_throughput", "--child", job], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"12-layer {setting:<12} ({r['dataset']:<16}) {pipeline:<7} K={k:<3} {r['steps_per_s']:8.2f} steps/s   "
          f"(first dispatch incl. compile {r['first_dispatch_s']:.1f} s)", flush=True)


if __name__ == "__main__":
  main()
