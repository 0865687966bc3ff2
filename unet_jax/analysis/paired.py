"""Paired comparisons of two procedures on the same test images and seeds.

A :class:`PairedTest` is run-aware: the differences form a seeds x images
matrix and its p-value and CI treat both as random
(``unet_jax.analysis.stats.crossed_mean``); with one seed it reports the
images' spread and decides nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from unet_jax.analysis import stats


@dataclasses.dataclass(frozen=True)
class PairedTest:
  """``a`` against ``b`` on one metric; differences are a - b.

  ``p`` is the run-aware test (``stats.crossed_mean`` of the seeds x images
  matrix of differences); it is NaN with one seed, where only the images'
  spread is known (``diff_ci95`` is then over images alone). ``p_images``
  (Wilcoxon over images of each image's difference averaged over seeds)
  describes the images and ignores run-to-run variation: it decides nothing.
  """

  a: str
  b: str
  metric: str
  n_images: int
  n_runs: int  # matched (variant, seed) pairs of runs
  n_excluded: int  # matched cells left out because a value was NaN
  mean_a: float
  mean_b: float
  mean_diff: float
  diff_ci95: tuple[float, float]
  se: float
  df: float
  p: float  # run-aware, two-sided; NaN with one seed
  p_images: float
  rank_biserial: float  # over images; +1: a higher than b on every image
  wins: int  # images where a's mean is higher than b's
  losses: int
  higher_is_better: bool = True

  @property
  def runs_known(self) -> bool:
    return self.n_runs >= 2

  def favours(self, alpha: float = 0.05) -> str | None:
    """The better of a and b when the run-aware test is significant, else None.

    Always None with one seed: a single run cannot tell a procedure's effect
    from that run's luck.
    """
    if not (self.runs_known and self.p < alpha) or self.mean_diff == 0:
      return None
    higher = self.a if self.mean_diff > 0 else self.b
    lower = self.b if higher == self.a else self.a
    return higher if self.higher_is_better else lower


def paired_test(a: str, b: str, metric: str, matched: pd.DataFrame, keys: Sequence[str], *,
                higher_is_better: bool = True, resampled: bool = False) -> PairedTest:
  """The PairedTest of matched cells: columns ``keys`` + a, b (see Results.matched).

  Keys other than ``domain`` and ``image_id`` identify runs; concatenating the
  matched cells of several pairs with an extra key pools them in one test.
  Every number comes from the same cells: images with a value in every run
  on both sides (``n_excluded`` counts the matched cells left out). With
  ``resampled`` (every run drew its own test images) a cell counts when both
  sides have a value in its run, and the run means are the replicates
  (``stats.resampled_mean``).
  """
  run_keys = [k for k in keys if k not in ('domain', 'image_id')] or ['run']
  image_keys = [k for k in keys if k in ('domain', 'image_id')]
  cells = matched.assign(run=0)
  side = {c: cells.pivot_table(index=run_keys, columns=image_keys, values=c, dropna=False)
          for c in ('a', 'b')}
  if resampled:
    both = side['a'].notna() & side['b'].notna()
    a_cells, b_cells = side['a'].where(both), side['b'].where(both)
    used = int(both.to_numpy().sum())
  else:
    complete = side['a'].notna().all() & side['b'].notna().all()
    a_cells, b_cells = side['a'].loc[:, complete], side['b'].loc[:, complete]
    used = int(a_cells.size)
  est = stats.run_mean((a_cells - b_cells).to_numpy(), resampled)
  per_image_a, per_image_b = a_cells.mean(), b_cells.mean()
  per_image = per_image_a - per_image_b
  return PairedTest(
      a=a, b=b, metric=metric, n_images=est.n_images, n_runs=est.n_runs,
      n_excluded=len(matched) - used,
      mean_a=float(np.nanmean(a_cells.to_numpy())),
      mean_b=float(np.nanmean(b_cells.to_numpy())),
      mean_diff=est.mean, diff_ci95=est.ci(), se=est.se, df=est.df,
      p=est.p_value() if est.runs_known else float('nan'),
      p_images=stats.wilcoxon(per_image), rank_biserial=stats.rank_biserial(per_image),
      wins=int((per_image > 0).sum()), losses=int((per_image < 0).sum()),
      higher_is_better=higher_is_better)
