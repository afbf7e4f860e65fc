"""Summary statistics of results: means with confidence intervals."""
from __future__ import annotations

import numpy as np
from scipy import stats


def mean_ci95(x: np.ndarray) -> tuple[float, float]:
  """Mean and half-width of the 95% Student-t interval (0 for a single value)."""
  n = len(x)
  half = stats.t.ppf(0.975, n - 1) * np.std(x, ddof=1) / np.sqrt(n) if n > 1 else 0.0
  return float(np.mean(x)), float(half)
