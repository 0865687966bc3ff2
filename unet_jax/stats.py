"""Statistics for per-image scores: bootstrap CIs, paired tests, corrections, ranks.

Scores of one experiment form a matrix ``runs x images`` (a run is one seed,
or one grid point); every run is scored on the same test images, so runs and
images are *crossed*. :func:`cluster_bootstrap_ci` resamples both.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats as sps


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


def cluster_bootstrap_ci(matrix, num_samples: int = 2000, level: float = 0.95,
                         seed: int = 0) -> tuple[float, float]:
  """Percentile CI of the mean of a ``runs x images`` matrix, resampling both.

  Each replicate draws the runs (seeds) with replacement, then the images
  with replacement, one image draw shared by all drawn runs because every run
  saw the same test images (a two-way bootstrap for crossed factors, Owen
  2007), and takes the mean of the selected cells. NaN cells are left out of
  each replicate's mean. With one run this is the ordinary bootstrap over
  images. Example::

    lo, hi = cluster_bootstrap_ci(dice_by_seed_and_image)   # (5, 64) -> CI
  """
  m = np.asarray(matrix, dtype=np.float64)
  if m.ndim == 1:
    m = m[None]
  keep = ~np.isnan(m)
  if not keep.any():
    return float('nan'), float('nan')
  rng = np.random.default_rng(seed)
  runs, images = m.shape
  # Counts of each run / image in each replicate: the mean of the selected
  # cells is then sum_rs c_r m_rs c_s / sum_rs c_r keep_rs c_s.
  run_counts = _counts(rng, runs, num_samples)
  image_counts = _counts(rng, images, num_samples)
  total = ((run_counts @ np.where(keep, m, 0.0)) * image_counts).sum(axis=1)
  weight = ((run_counts @ keep.astype(np.float64)) * image_counts).sum(axis=1)
  means = total[weight > 0] / weight[weight > 0]
  alpha = (1 - level) / 2
  lo, hi = np.quantile(means, [alpha, 1 - alpha])
  return float(lo), float(hi)


def _counts(rng: np.random.Generator, n: int, num_samples: int) -> np.ndarray:
  """(num_samples, n): how often each of n items is drawn in each replicate."""
  draws = rng.integers(0, n, size=(num_samples, n)) + n * np.arange(num_samples)[:, None]
  return np.bincount(draws.ravel(), minlength=n * num_samples).reshape(
      num_samples, n).astype(np.float64)


def wilcoxon(differences) -> float:
  """Two-sided Wilcoxon signed-rank p-value of paired differences.

  Zero differences are dropped (scipy's ``zero_method='wilcox'``); all zero
  gives 1.0, no pairs NaN. Exact for small samples without ties (scipy).
  """
  d = np.asarray(differences, dtype=np.float64)
  d = d[~np.isnan(d)]
  if d.size == 0:
    return float('nan')
  if not np.any(d != 0):
    return 1.0
  return float(sps.wilcoxon(d, zero_method='wilcox').pvalue)


def rank_biserial(differences) -> float:
  """Matched-pairs rank-biserial correlation (Kerby 2014), in [-1, 1].

  ``(R+ - R-) / (R+ + R-)`` with R+/R- the rank sums of the positive and
  negative differences, ranks of |d| over the non-zero differences; +1 when
  every pair favours the first condition. NaN when all differences are zero.
  """
  d = np.asarray(differences, dtype=np.float64)
  d = d[~np.isnan(d) & (d != 0)]
  if d.size == 0:
    return float('nan')
  ranks = sps.rankdata(np.abs(d))
  plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
  return float((plus - minus) / (plus + minus))


def holm(pvalues) -> np.ndarray:
  """Holm-Bonferroni adjusted p-values, in the input order; NaN stays NaN.

  With the m valid p-values sorted ascending, p_(i) becomes
  ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (i, j from 1).
  """
  p = np.asarray(pvalues, dtype=np.float64)
  out = np.full(p.shape, np.nan)
  valid = np.flatnonzero(~np.isnan(p))
  m = valid.size
  order = valid[np.argsort(p[valid], kind='stable')]
  running = 0.0
  for i, idx in enumerate(order):
    running = max(running, min(1.0, (m - i) * p[idx]))
    out[idx] = running
  return out


def kendall_w(scores) -> tuple[float, float]:
  """Kendall's W of agreement and its Friedman p-value.

  ``scores`` is ``raters x items`` (seeds x experiments); each rater ranks
  the items (average ranks for ties) and W is corrected for ties:
  ``W = 12 S / (m^2 (n^3 - n) - m sum(t^3 - t))``. 1 = the same ranking in
  every seed, 0 = no agreement. The p-value tests W = 0 with
  ``chi2 = m (n - 1) W`` on n - 1 degrees of freedom.
  """
  s = np.asarray(scores, dtype=np.float64)
  m, n = s.shape
  if m < 2 or n < 2:
    return float('nan'), float('nan')
  ranks = np.apply_along_axis(sps.rankdata, 1, s)
  spread = ((ranks.sum(axis=0) - m * (n + 1) / 2) ** 2).sum()
  ties = sum(((c ** 3) - c).sum() for c in
             (np.unique(row, return_counts=True)[1] for row in s))
  denominator = m ** 2 * (n ** 3 - n) - m * ties
  if denominator <= 0:
    return float('nan'), float('nan')
  w = 12 * spread / denominator
  chi2 = m * (n - 1) * w
  return float(w), float(sps.chi2.sf(chi2, n - 1))


def mean_spearman(scores) -> float:
  """Mean Spearman correlation between the rankings of every pair of raters."""
  s = np.asarray(scores, dtype=np.float64)
  values = [sps.spearmanr(a, b).statistic for a, b in itertools.combinations(s, 2)]
  values = [v for v in values if not np.isnan(v)]
  return float(np.mean(values)) if values else float('nan')
