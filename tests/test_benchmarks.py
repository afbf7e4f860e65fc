"""benchmarks.all: the peak table, and a timed span that is the real one with per-step FLOPs (one tiny row)."""
import jax
import numpy as np

from benchmarks import all as bench
from benchmarks import throughput


def test_peaks_by_device_kind_and_dtype():
  assert bench.peak_flops("NVIDIA H100 80GB HBM3", "gpu", "bfloat16", None)[0] == 989e12
  assert bench.peak_flops("NVIDIA H100 80GB HBM3", "gpu", "float32", None)[0] == 495e12  # TF32 dense
  assert bench.peak_flops("NVIDIA H100 PCIe", "gpu", "bfloat16", None)[0] == 756e12
  assert bench.peak_flops("NVIDIA H200", "gpu", "bfloat16", None)[0] == 989e12
  assert bench.peak_flops("NVIDIA A100-SXM4-80GB", "gpu", "bfloat16", None)[0] == 312e12
  assert bench.peak_flops("TPU v5 lite", "tpu", "bfloat16", None)[0] == 197e12
  assert bench.peak_flops("TPU v5p", "tpu", "bfloat16", None)[0] == 459e12
  assert bench.peak_flops("TPU v4", "tpu", "float32", None)[0] == 275e12
  peak, source = bench.peak_flops("Some GPU", "gpu", "bfloat16", None)
  assert peak is None and source.startswith("n/a")
  assert bench.peak_flops("cpu", "cpu", "float32", 1e11) == (1e11, bench.peak_flops("cpu", "cpu", "f", 1)[1])


def test_timed_span_and_flops_per_step(tiny):
  config = tiny()
  out = throughput.measure_config(config, "grain", 1, 0.5, 10)
  # The span ends after the last chunk finished: steps/s is steps over the span, and the span is bounded.
  assert out["steps"] > 0 and np.isclose(out["steps_per_s"], out["steps"] / out["timed_s"])
  assert out["timed_s"] < 0.5 + 3 * out["first_dispatch_s"]
  # FLOPs of one step (not of the K-step chunk): ~6 x params x tokens for a 2-layer 64-d model, 32 x 3 tokens.
  params = 2 * (4 * 64 * 64 + 2 * 4 * 64 * 64) + 64 * 10  # attention + MLP weights of 2 blocks, the head
  analytic = 6 * params * 32 * 3
  assert 0.8 * analytic < out["flops_per_step"] < 1.6 * analytic, (out["flops_per_step"], analytic)
  assert jax.device_count() == 8  # (conftest's simulated devices; the row used one of them)


def test_drift_is_the_largest_relative_difference_per_step():
  from benchmarks import drift  # pylint: disable=g-import-not-at-top
  a = {(10, "train", "loss"): 2.0, (10, "e", "error"): 0.5, (20, "train", "loss"): 1.0, (30, "only", "a"): 1.0}
  b = {(10, "train", "loss"): 2.2, (10, "e", "error"): 0.5, (20, "train", "loss"): 0.0}
  out = drift.largest_rel_diff(a, b)
  assert out.keys() == {10, 20}   # steps logged by both runs only
  assert np.isclose(out[10], 0.2 / (2.0 + 1e-6)) and np.isclose(out[20], 1.0 / (1.0 + 1e-6))
