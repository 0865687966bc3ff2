"""Confidence intervals for per-image scores."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, num_samples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap CI of the mean over the given values.

  Example::

    lo, hi = bootstrap_ci(per_image_dice)   # 95% CI of the mean Dice
  """
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    return float('nan'), float('nan')
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, values.size, size=(num_samples, values.size))
  means = values[idx].mean(axis=1)
  alpha = (1 - level) / 2
  lo, hi = np.quantile(means, [alpha, 1 - alpha])
  return float(lo), float(hi)
