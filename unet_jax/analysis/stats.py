"""Statistics for per-image scores: run-aware means and tests, corrections, ranks.

Scores of one experiment form a matrix ``runs x images`` (a run is one
trained network: one seed); every run is scored on the same test images, so
runs and images are *crossed*. The training run is the unit of replication:
:func:`crossed_mean` gives a mean's standard error and degrees of freedom
with both sources of variation, and every CI, test and verdict of
``unet_jax.analysis`` (results, paired tests, findings) comes from it (its error rate
is checked by simulation in ``tests/analysis/stats_test.py``). :func:`mcb` gives
Hsu's multiple comparisons with the best on such run-aware paired
differences. When every run drew its own split (``data.split_per_seed``)
images are nested in runs and :func:`resampled_mean` replaces
:func:`crossed_mean` (:func:`run_mean` picks). :func:`wilcoxon` describes one
run's images.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy import stats as sps


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The mean of a ``runs x images`` matrix with a run-aware standard error.

  ``se`` and ``df`` come from :func:`crossed_mean`; with one run they are
  the images' alone (``runs_known`` False: run-to-run variation unknown).
  """

  mean: float
  se: float
  df: float
  n_runs: int
  n_images: int
  n_dropped: int  # images left out because some run had no value (NaN) for them
  run_sd: float  # SD over runs of each run's mean; NaN with one run

  @property
  def runs_known(self) -> bool:
    return self.n_runs >= 2

  def ci(self, level: float = 0.95) -> tuple[float, float]:
    """Two-sided t interval with ``df`` degrees of freedom."""
    if not np.isfinite(self.se):
      return float('nan'), float('nan')
    half = float(sps.t.ppf(0.5 + level / 2, self.df)) * self.se if self.se > 0 else 0.0
    return self.mean - half, self.mean + half

  def p_value(self) -> float:
    """Two-sided t test of mean = 0 (a zero SE gives 0 or 1)."""
    if not np.isfinite(self.mean) or not np.isfinite(self.se):
      return float('nan')
    if self.se == 0:
      return 1.0 if self.mean == 0 else 0.0
    return float(2 * sps.t.sf(abs(self.mean / self.se), self.df))


def crossed_mean(matrix) -> Estimate:
  """Mean of a ``runs x images`` matrix, with runs and images both random.

  Every run (a trained network: one seed, its folds pooled) is scored on
  the same test images, so runs and images are crossed factors and the
  mean's variance has three parts, ``s_r^2 / R + s_i^2 / I + s_e^2 / (R I)``
  (run-to-run, image-to-image, interaction). From the two-way ANOVA mean
  squares (E[MS_run] = s_e^2 + I s_r^2, E[MS_image] = s_e^2 + R s_i^2,
  E[MS_resid] = s_e^2) it is estimated as

    var(run means) / R + max(0, MS_image - MS_resid) / (R I),

  the paired t-test's variance over run means, widened by the test set's
  sampling variance where the images show one; the degrees of freedom of
  that sum by Satterthwaite (1946), the quasi-F treatment of crossed random
  effects (Clark 1973). Why this and not another (simulation in
  docs/DESIGN.md and tests/analysis/stats_test.py): averaging over seeds and testing
  over images ignores the runs (80% false positives for identical
  procedures); testing run means alone ignores the images (10-19% when
  procedures differ image by image but not on average); the run-to-run
  component is not truncated at zero, because with 2-3 seeds a zero
  estimate of it is often wrong. Images with a NaN in any run are left out
  (counted). With one run the SE is the images' alone (``df = I - 1``), and
  no verdict should rest on it; with one image, the runs' (``df = R - 1``).

  Example::

    est = crossed_mean(dice_of_a - dice_of_b)   # (seeds, images) differences
    lo, hi = est.ci(); p = est.p_value()
  """
  m = np.asarray(matrix, dtype=np.float64)
  if m.ndim == 1:
    m = m[None]
  keep = ~np.isnan(m).any(axis=0)
  dropped = int((~keep).sum())
  m = m[:, keep]
  runs, images = m.shape
  if runs == 0 or images == 0:
    return Estimate(float('nan'), float('nan'), float('nan'), runs, images, dropped,
                    float('nan'))
  mean = float(m.mean())
  run_means = m.mean(axis=1)
  run_sd = float(run_means.std(ddof=1)) if runs > 1 else float('nan')
  if runs == 1 or images == 1:
    values = m.ravel()
    n = values.size
    se = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else float('nan')
    return Estimate(mean, se, float(n - 1), runs, images, dropped, run_sd)
  image_means = m.mean(axis=0)
  # Each part of the variance as (its value, its degrees of freedom); the
  # image part is (MS_image - MS_resid) / (R I), a difference of two.
  run_part = run_means.var(ddof=1) / runs
  ms_image = runs * image_means.var(ddof=1)
  resid = m - run_means[:, None] - image_means[None, :] + mean
  df_resid = (runs - 1) * (images - 1)
  ms_resid = float(np.sum(resid ** 2) / df_resid)
  variance, pieces = run_part, [(run_part, runs - 1)]
  if ms_image > ms_resid:
    scale = runs * images
    variance += (ms_image - ms_resid) / scale
    pieces += [(ms_image / scale, images - 1), (ms_resid / scale, df_resid)]
  denominator = sum(v ** 2 / df for v, df in pieces)
  df = variance ** 2 / denominator if denominator > 0 else float(runs - 1)
  return Estimate(mean, float(np.sqrt(variance)), float(df), runs, images, dropped, run_sd)


def resampled_mean(matrix) -> Estimate:
  """Mean of a ``runs x images`` matrix whose runs drew their own test images.

  With ``data.split_per_seed`` every run (a seed: its own split, or its own
  fold partition pooled) is scored on images of its own drawing, NaN where it
  did not score one; the images are then nested in the runs, not crossed
  with them. Given the data set the runs are independent draws of (split,
  training), so each run's mean over its images is one observation and the
  mean's variance is ``var(run means) / R`` with ``R - 1`` degrees of
  freedom: the test images' sampling is inside each run mean, and more runs
  shrink it. It describes this data set averaged over its splits; the
  variation between data sets of the same size drawn from the population is
  not estimable from one set (Nadeau and Bengio 2003). With one run, the SE
  is its images' alone, as in :func:`crossed_mean`.
  """
  m = np.asarray(matrix, dtype=np.float64)
  if m.ndim == 1:
    m = m[None]
  seen = ~np.isnan(m)
  m = m[seen.any(axis=1)]
  seen = seen[seen.any(axis=1)]
  runs, images = m.shape[0], int(seen.any(axis=0).sum())
  if runs == 0:
    return Estimate(float('nan'), float('nan'), float('nan'), 0, images, 0, float('nan'))
  run_means = np.array([row[ok].mean() for row, ok in zip(m, seen)])
  mean = float(run_means.mean())
  if runs == 1:
    values = m[seen]
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float('nan')
    return Estimate(mean, se, float(values.size - 1), 1, images, 0, float('nan'))
  run_sd = float(run_means.std(ddof=1))
  return Estimate(mean, run_sd / float(np.sqrt(runs)), float(runs - 1), runs, images, 0, run_sd)


def run_mean(matrix, resampled: bool = False) -> Estimate:
  """:func:`resampled_mean` when each run drew its own test images, else :func:`crossed_mean`."""
  return resampled_mean(matrix) if resampled else crossed_mean(matrix)


def welch(a: Estimate, b: Estimate) -> tuple[float, float, float]:
  """(difference a - b, its SE, Satterthwaite df) of two independent estimates."""
  se = float(np.hypot(a.se, b.se))
  parts = [e.se ** 4 / e.df for e in (a, b) if e.df > 0]
  df = se ** 4 / sum(parts) if parts and sum(parts) > 0 else float('nan')
  return a.mean - b.mean, se, df


def paired_differences(matrices, resampled: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(diff, se, df), each ``k x k``, of k matched ``runs x images`` matrices.

  ``diff[i, j]`` estimates mu_i - mu_j by :func:`run_mean` of
  ``matrices[i] - matrices[j]`` (same runs and images in each); ``se`` and
  ``df`` are its run-aware SE and Satterthwaite df (NaN with one run:
  run-to-run variation unknown). The diagonal is 0 (diff) and NaN. The input
  :func:`mcb` takes.
  """
  m = [np.asarray(x, dtype=np.float64) for x in matrices]
  k = len(m)
  diff, se, df = np.zeros((k, k)), np.full((k, k), np.nan), np.full((k, k), np.nan)
  for i, j in itertools.combinations(range(k), 2):
    est = run_mean(m[i] - m[j], resampled)
    diff[i, j], diff[j, i] = est.mean, -est.mean
    if est.runs_known:
      se[i, j] = se[j, i] = est.se
      df[i, j] = df[j, i] = est.df
  return diff, se, df


def mcb(diff, se, df, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """Hsu's constrained multiple comparisons with the best (MCB; Hsu 1984).

  ``diff[i, j]`` estimates mu_i - mu_j (higher is better; negate a
  lower-is-better metric), ``se[i, j]`` and ``df[i, j]`` its standard error
  and degrees of freedom (for paired runs: :func:`crossed_mean` of the
  seeds x images differences, :func:`paired_differences`); diagonals are
  ignored. Returns ``(lo, hi)``, arrays of k: simultaneous ``1 - alpha``
  intervals for ``mu_i - max_{j != i} mu_j``, each strategy against the best
  of the others::

    hi_i = max(0, min_{j != i}(diff_ij + d_ij se_ij))
    lo_i = min(0, min_{j != i}(diff_ij - d_ij se_ij))

  ``hi_i == 0``: some other strategy is better than i (i is shown not to be
  the best); ``lo_i == 0``: i is at least as good as every other (shown to
  be the best); ``lo_i > -delta``: i is at most delta below the best of the
  others. Every interval contains 0 (constrained MCB), which is what keeps
  it valid with a one-sided critical value: all k statements hold whenever
  the k - 1 one-sided comparisons of the true best with the others hold.

  The critical value is the one-sided Bonferroni bound
  ``d_ij = t_{1 - alpha / (k - 1), df_ij}``, per pair with its own df (the
  seeds x images differences of each pair have their own variance). Hsu's
  exact constant is the (k-1)-variate Dunnett-type quantile of the
  correlated comparisons with the best; Bonferroni ignores that
  correlation, so it is larger and the intervals conservative (coverage
  at least 1 - alpha, up to the accuracy of each Satterthwaite df; checked by
  simulation in ``tests/analysis/stats_test.py``). Hsu's lower bound, a
  minimum over only the j whose ``hi_j > 0``, would be a little tighter;
  the minimum over every j is the simpler, also valid, bound. An interval
  whose comparisons include a NaN SE (one run) is NaN: nothing is decided.
  """
  diff = np.asarray(diff, dtype=np.float64)
  se = np.asarray(se, dtype=np.float64)
  df = np.asarray(df, dtype=np.float64)
  k = diff.shape[0]
  if k < 2:
    return np.full(k, np.nan), np.full(k, np.nan)
  other = ~np.eye(k, dtype=bool)
  with np.errstate(invalid='ignore'):
    d = sps.t.ppf(1 - alpha / (k - 1), np.where(other, df, 1.0))
    margin = np.where(other, d * se, 0.0)
  upper = np.where(other, diff + margin, np.inf).min(axis=1)  # NaN wins: nothing decided
  lower = np.where(other, diff - margin, np.inf).min(axis=1)
  return np.minimum(0.0, lower), np.maximum(0.0, upper)


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
