"""Every benchmark in one command: steps/s and model FLOPs utilization (MFU) of each model, the device, the versions.

  python -m benchmarks.all                          # on an accelerator: ~10 s timed per row, <= 8 min in all
  python -m benchmarks.all --quick                  # this CPU: ~2 s timed per row, <= 15 min in all
  python -m benchmarks.all --only stylized_2layer,gemma3_step --out bench.json --dtype bfloat16

Each row runs in its own process (fresh memory, one device; its compile time is reported, not timed) for about
`--seconds` of steady state; the timed span ends when the last dispatched step has finished. FLOPs per step are
XLA's cost analysis of one step (`jit(...).lower(...).cost_analysis()`), so MFU = steps/s x FLOPs/step / peak,
with the peak of the device kind and compute dtype from PEAKS below (vendor datasheets) or, on a CPU, a matmul
measured at the start of the run. Writes one JSON (device, versions, rows) and prints a table. The row
`results_table` is the results table's throughput on the host (benchmarks/results_table.py): its "steps" are rows
appended and committed, and its note gives the read rate.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from iclscale import launch_local  # pylint: disable=wrong-import-position  # (imports no JAX)

# Dense peak FLOP/s per chip, (bf16, f32), from the vendors' datasheets. f32 on NVIDIA: JAX's default matmul
# precision runs f32 matmuls on TF32 tensor cores, so the TF32 dense peak; on TPUs the default precision runs
# f32 matmuls as one bf16 pass, so the bf16 peak. First match of the substring in jax's `device_kind` wins.
PEAKS = [
    ("H100 PCIe", 756e12, 378e12, "NVIDIA H100 PCIe datasheet (BF16 / TF32 dense)"),
    ("H100", 989e12, 495e12, "NVIDIA H100 SXM datasheet (BF16 / TF32 dense)"),
    ("H200", 989e12, 495e12, "NVIDIA H200 SXM datasheet (BF16 / TF32 dense)"),
    ("A100", 312e12, 156e12, "NVIDIA A100 datasheet (BF16 / TF32 dense)"),
    ("TPU v4", 275e12, 275e12, "Google Cloud TPU v4 documentation (bf16; f32 matmuls run as bf16 passes)"),
    ("TPU v5 lite", 197e12, 197e12, "Google Cloud TPU v5e documentation (bf16)"),
    ("TPU v5e", 197e12, 197e12, "Google Cloud TPU v5e documentation (bf16)"),
    ("TPU v5", 459e12, 459e12, "Google Cloud TPU v5p documentation (bf16)"),
    ("TPU v6", 918e12, 918e12, "Google Cloud TPU v6e (Trillium) documentation (bf16)"),
]

# name -> what one timed step of the row is
ROWS = {
    "stylized_2layer": "2-layer transformer, stylized task (configs/chan2024_synthetic.py quick), batch 32",
    "stylized_12layer": "12-layer transformer, stylized task (configs/stylized_12layer.py), batch 32",
    "bursty_tokens": "12-layer, bursty token-embedding sequences (configs/singh2023_tokens.py full)",
    "omniglot28_resnet": "12-layer + ResNet encoder, bursty Omniglot 28 px (singh2023_omniglot small)",
    "omniglot105_resnet": "12-layer + ResNet encoder, bursty Omniglot 105 px (singh2023_omniglot full)",
    "resnet105": "ResNet encoder alone, fwd+bwd of 32 x 9 images at 105 px",
    "resnet28": "ResNet encoder alone, fwd+bwd of 32 x 9 images at 28 px",
    "gemma3_step": "Gemma 3 270M AdamW step, batch 4 x 32 tokens, loss on the last 8",
    "results_table": "results table (CPU): a 'step' is one row appended+committed, 1e6 rows in 100K-row chunks",
}


def run_row(name: str, seconds: float, dtype: str) -> dict:
  """One row in this process: dict(steps_per_s, flops_per_step, timed_s, first_dispatch_s, ...)."""
  from benchmarks import bursty_throughput, throughput  # pylint: disable=g-import-not-at-top

  def training(config, k):
    if dtype != "float32":
      config.model.dtype = dtype
    return throughput.measure_config(config, "grain", 1, seconds, k)

  if name in ("stylized_2layer", "stylized_12layer"):
    mod = __import__("configs." + ("chan2024_synthetic" if name == "stylized_2layer" else "stylized_12layer"),
                     fromlist=["get_config"])
    return training(mod.get_config("quick"), 100 if name == "stylized_2layer" else 50)
  if name == "bursty_tokens":
    return training(bursty_throughput.config_for("tokens"), bursty_throughput.STEPS_PER_DISPATCH["tokens"])
  if name in ("omniglot28_resnet", "omniglot105_resnet"):
    small = name == "omniglot28_resnet"
    setting = "omniglot28" if small else "omniglot105"
    return training(bursty_throughput.config_for(setting), bursty_throughput.STEPS_PER_DISPATCH[setting])
  if name in ("resnet105", "resnet28"):
    from benchmarks import resnet_encoder  # pylint: disable=g-import-not-at-top
    return resnet_encoder.measure(int(name[len("resnet"):]), seconds=seconds)
  if name == "gemma3_step":
    from benchmarks import gemma3_step  # pylint: disable=g-import-not-at-top
    return gemma3_step.measure(seconds=seconds)
  if name == "results_table":
    from benchmarks import results_table  # pylint: disable=g-import-not-at-top
    r = results_table.measure(1_000_000)
    # Rows are the unit here: no FLOPs, nothing compiled; the read rate goes in the note.
    return dict(r, steps_per_s=r["write_rows_per_s"], steps=r["rows"], timed_s=r["write_s"], first_dispatch_s=0.0,
                flops_per_step=None, note=f"; read_columns {r['read_rows_per_s']:.3g} rows/s")
  raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(ROWS)})")


def peak_flops(device_kind: str, platform_name: str, dtype: str, cpu_peak: float | None) -> tuple[float | None, str]:
  """(peak FLOP/s of one device for `dtype`, where the number comes from)."""
  if platform_name == "cpu":
    if cpu_peak is None:
      return None, "n/a"
    return cpu_peak, "measured: f32 2048x2048 matmul on this CPU at the start of the run"
  for kind, bf16, f32, source in PEAKS:
    if kind.lower() in device_kind.lower():
      return (bf16 if dtype == "bfloat16" else f32), source
  return None, f"n/a (no datasheet peak for {device_kind!r} in benchmarks/all.py PEAKS)"


def measure_cpu_matmul_peak(n: int = 2048, seconds: float = 1.0) -> float:
  """Best-of FLOP/s of an f32 n x n matmul on one CPU device (the divisor of MFU on CPUs)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  best, t_end = 0.0, time.perf_counter() + seconds
  while time.perf_counter() < t_end:
    t0 = time.perf_counter()
    mm(a).block_until_ready()
    best = max(best, 2 * n**3 / (time.perf_counter() - t0))
  return best


def environment() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  versions = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__}
  for mod in ("flax", "optax", "numpy", "grain", "orbax.checkpoint"):
    try:
      versions[mod] = __import__(mod, fromlist=["__version__"]).__version__
    except (ImportError, AttributeError):
      versions[mod] = None
  d = jax.devices()[0]
  load = os.getloadavg() if hasattr(os, "getloadavg") else None
  return dict(device=dict(platform=d.platform, kind=d.device_kind, count=jax.device_count(),
                          host=platform.node(), cpu_count=os.cpu_count(), loadavg=load), versions=versions)


def child_env() -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  # One device per row: on a CPU, do not split the host into simulated devices (tests do that).
  env["XLA_FLAGS"] = launch_local.xla_flags(env.get("XLA_FLAGS", ""), None)
  return env


def table(report: dict) -> str:
  dev = report["device"]
  lines = [f"device: {dev['platform']} / {dev['kind']} x {dev['count']}   dtype: {report['dtype']}   "
           f"jax {report['versions']['jax']}   load at start: {dev['loadavg']}",
           f"{'benchmark':<20} {'steps/s':>10} {'GFLOP/step':>11} {'TFLOP/s':>9} {'MFU':>8} {'timed s':>8} "
           f"{'compile s':>9}  note"]
  for r in report["rows"]:
    if "error" in r:
      lines.append(f"{r['name']:<20} {'-':>10} {'':>11} {'':>9} {'':>8} {'':>8} {'':>9}  {r['error']}")
      continue
    flops = r.get("flops_per_step")
    mfu = r.get("mfu")
    lines.append(f"{r['name']:<20} {r['steps_per_s']:>10.2f} {flops / 1e9 if flops else float('nan'):>11.3f} "
                 f"{r['flops_per_s'] / 1e12 if r.get('flops_per_s') else float('nan'):>9.4f} "
                 f"{'n/a' if mfu is None else f'{100 * mfu:.2f}%':>8} {r['timed_s']:>8.1f} "
                 f"{r['first_dispatch_s']:>9.1f}  {ROWS[r['name']]}{r.get('note', '')}")
  peaks = {(r.get("peak_flops"), r.get("peak_source")) for r in report["rows"] if "peak_source" in r}
  for peak, source in sorted(peaks, key=str):
    lines.append(f"MFU divides by {'n/a' if peak is None else f'{peak / 1e12:.3f} TFLOP/s'}: {source}")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="about 2 s timed per row (a CPU)")
  ap.add_argument("--seconds", type=float, default=None, help="timed seconds per row (default 10, --quick 2)")
  ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ROWS)}")
  ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                  help="compute dtype of the trained models (model.dtype); parameters stay float32")
  ap.add_argument("--row-timeout", type=float, default=None, help="seconds a row may take, compile included")
  ap.add_argument("--out", default="benchmarks.json", help="where the JSON goes")
  ap.add_argument("--child", help=argparse.SUPPRESS)
  args = ap.parse_args()
  seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 10.0)
  if args.child:  # one row in this process
    print(json.dumps(run_row(args.child, seconds, args.dtype)))
    return
  names = [n for n in args.only.split(",") if n] or list(ROWS)
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    sys.exit(f"error: unknown benchmark(s) {', '.join(unknown)} (known: {', '.join(ROWS)})")
  env = environment()
  dev = env["device"]
  cpu_peak = measure_cpu_matmul_peak() if dev["platform"] == "cpu" else None
  timeout = args.row_timeout or (240.0 if dev["platform"] == "cpu" else 120.0)
  report = dict(env, dtype=args.dtype, seconds_per_row=seconds, rows=[], started=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                                 time.gmtime()))
  t_all = time.perf_counter()
  for name in names:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "benchmarks.all", "--child", name, "--seconds", str(seconds), "--dtype", args.dtype]
    try:
      p = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)
      if p.returncode:
        tail = (p.stderr or p.stdout).strip().splitlines()
        row = dict(name=name, error=f"failed: {tail[-1][:160] if tail else p.returncode}")
      else:
        row = dict(json.loads(p.stdout.strip().splitlines()[-1]), name=name)
    except subprocess.TimeoutExpired:
      row = dict(name=name, error=f"timed out after {timeout:.0f} s")
    row["wall_s"] = time.perf_counter() - t0
    if "error" not in row:
      peak, source = peak_flops(dev["kind"], dev["platform"], args.dtype, cpu_peak)
      flops = row.get("flops_per_step")
      row["flops_per_s"] = row["steps_per_s"] * flops if flops else None
      row.update(peak_flops=peak, peak_source=source,
                 mfu=row["flops_per_s"] / peak if (peak and row["flops_per_s"]) else None)
    report["rows"].append(row)
    print(f"[{time.perf_counter() - t_all:6.0f} s] {name}: "
          + (row["error"] if "error" in row else f"{row['steps_per_s']:.2f} steps/s"), flush=True)
  report["total_s"] = time.perf_counter() - t_all
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(table(report))
  print(f"wrote {args.out} ({report['total_s']:.0f} s in all)")


if __name__ == "__main__":
  main()
