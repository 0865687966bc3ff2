"""Comparing the experiments of a sweep: tables, paired tests, ranks, curves, findings.

A :class:`Results` holds one row per (run, test image) and one row per run;
``unet_jax.analysis.load`` (a work directory) and ``from_frame`` (any table)
make one. Its methods answer the study's questions::

  res = analysis.load('runs/default')
  res.summary()                               # mean, median, 95% CI per experiment
  res.paired('contracting', 'expanding')      # run-aware paired test
  res.pairwise(reference='full')              # every experiment vs full, Holm
  res.findings()                              # F1..F6 of DESIGN.md, with numbers
  res.recommend()                             # what to train: Hsu's MCB against the best
  res.by_class(); res.empty_truth()           # per image class; empty masks as detection
  res.images(empty=False).recommend()         # the same, on some of the test images

Vocabulary: a *run* is one trained network (one experiment name such as
``full-seed1``); its ``base`` is the entry of ``config.experiments`` it came
from (``full``); its ``variant`` is the grid point other than the seed and
the fold (``-lr0.001``, usually empty; recorded in the summary);
``condition`` is base + variant. Grouping ``by='base'`` pools seeds, folds
and variants; pairs are always matched on every key the two sides share
(domain, variant, seed, image), so a paired test compares like with like.

Statistics (``unet_jax.analysis.stats``): the training run is the unit of
replication. A group's scores form a matrix of seeds x test images (with
cross-validation each image scored by the fold model that did not train
on it), and every CI and test treats seeds and images as crossed random
factors (``stats.crossed_mean``); with one seed no test is made, since
run-to-run variation is unknown. When every seed drew its own split
(``data.split_per_seed``; ``Results.resampled``) the images are nested in
the runs and each run's mean is one replicate (``stats.resampled_mean``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from unet_jax import files
from unet_jax.analysis import stats
from unet_jax.analysis.paired import PairedTest, paired_test
from unet_jax.errors import UserError
from unet_jax.modalities import MODALITIES
from unet_jax.records import ExperimentSummary, SweepRecord
from unet_jax.workdir import WorkdirPaths

if TYPE_CHECKING:
  from unet_jax.analysis.findings import Finding

HIGHER_IS_BETTER = {'dice': True, 'iou': True, 'hd95': False, 'assd': False}
GROUPINGS = ('base', 'condition', 'experiment')


def structure_metrics(columns) -> dict[str, bool]:
  """The per-structure metric columns (``dice:<structure>``, ...) among ``columns``, with
  their metric's direction."""
  out = {}
  for column in columns:
    metric, sep, name = str(column).partition(':')
    if sep and name and metric in HIGHER_IS_BETTER:
      out[column] = HIGHER_IS_BETTER[metric]
  return out
# Pairing keys of a row besides the grouping itself.
_PAIR_KEYS = ('variant', 'seed', 'image_id')


@dataclasses.dataclass(frozen=True)
class RankStability:
  ranks: pd.DataFrame  # groups x runs (seeds), 1 = best
  kendall_w: float
  p_value: float  # Friedman test of W = 0
  mean_spearman: float
  dropped: tuple[str, ...]  # groups missing from some run, left out


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """One run's record, with where it came from."""

  domain: str
  workdir: str | None  # None: from_frame, no files behind it
  summary: ExperimentSummary
  folder: str = ''  # its folder under experiments/ when the name carries a label


@dataclasses.dataclass
class Results:
  """A sweep's results: ``df`` has one row per (run, test image)."""

  df: pd.DataFrame
  runs: pd.DataFrame  # one row per run: keys, init, schedule, sizes, how it stopped, workdir
  loaded: list[LoadedRun]  # every run's summary record
  sweeps: dict[str, SweepRecord]  # domain -> its sweep's resolved settings
  notes: list[str]
  # metric -> whether higher is better (HIGHER_IS_BETTER's by default)
  higher: dict[str, bool] = dataclasses.field(default_factory=lambda: dict(HIGHER_IS_BETTER))

  @functools.cached_property
  def resampled(self) -> bool:
    """Whether runs drew their own test images (``data.split_per_seed``).

    True when some group's seeds were scored on different sets of images: the
    images are then nested in the runs and every CI and test uses
    ``stats.resampled_mean`` (run means as the replicates) instead of
    ``stats.crossed_mean``. Cross-validation folds pooled per seed test every
    image once, so k-fold sweeps stay crossed even with ``split_per_seed``.
    """
    return resampled(self.df)

  @property
  def domains(self) -> list[str]:
    return sorted(self.df['domain'].unique())

  def metrics(self) -> list[str]:
    return [m for m in self.higher if m in self.df.columns]

  def structures(self, domain: str | None = None) -> list[str]:
    """The structures scored one by one (``dice:<name>`` columns); empty for a binary
    set, whose one structure is the ``dice`` column itself."""
    rows = self.df if domain is None else self.df[self.df['domain'] == domain]
    return [c.split(':', 1)[1] for c in rows.columns
            if c.startswith('dice:') and rows[c].notna().any()]

  # -- selection -------------------------------------------------------------

  def _rows(self, metric: str, by: str, domain: str | None) -> pd.DataFrame:
    if metric not in self.metrics():
      raise UserError(f'metric {metric!r} is not in the results; available: '
                      f'{", ".join(self.metrics())}')
    if by not in GROUPINGS:
      raise UserError(f'cannot group by {by!r}; valid: {", ".join(GROUPINGS)}')
    if domain is None:
      if len(self.domains) > 1:
        raise UserError(f'results hold several domains ({", ".join(self.domains)}); '
                        'pass domain=')
      return self.df
    if domain not in self.domains:
      raise UserError(f'unknown domain {domain!r}; valid: {", ".join(self.domains)}')
    return self.df[self.df['domain'] == domain]

  def groups(self, by: str = 'base', domain: str | None = None) -> list[str]:
    return list(dict.fromkeys(self._rows('dice', by, domain)[by]))

  # -- tables ----------------------------------------------------------------

  def summary(self, by: str = 'base', metric: str = 'dice', *, domain: str | None = None
              ) -> pd.DataFrame:
    """Mean, median and run-aware 95% CI per group, best first.

    The CI treats seeds and images as random (``stats.crossed_mean``); with
    one seed it is over images only (``ci_over`` says which). ``seed_sd`` is
    the SD over runs of each run's mean; ``n_nan`` counts values left out
    as undefined (HD95/ASSD with an empty mask: such an image is left out of
    the group's mean and CI).
    """
    rows = self._rows(metric, by, domain)
    out = []
    for name, g in rows.groupby(by, sort=False):
      matrix = g.pivot_table(index=['variant', 'seed'], columns='image_id', values=metric,
                             aggfunc='mean', dropna=False)
      values = g[metric].to_numpy(dtype=np.float64)
      est = stats.run_mean(matrix.to_numpy(), self.resampled)
      lo, hi = est.ci()
      runs = self.runs[self.runs['experiment'].isin(g['experiment'].unique()) &
                       (self.runs['domain'] == g['domain'].iloc[0])]
      defined = values[~np.isnan(values)]
      out.append({by: name, 'mean': est.mean,
                  'median': float(np.median(defined)) if defined.size else np.nan,
                  'ci_lo': lo, 'ci_hi': hi, 'seed_sd': est.run_sd,
                  'n_runs': est.n_runs, 'n_images': est.n_images,
                  'n_nan': int(np.isnan(values).sum()),
                  'ci_over': _ci_over(est, self.resampled),
                  'trainable_fraction': float(runs['trainable_fraction'].mean())})
    table = pd.DataFrame(out)
    return table.sort_values('mean', ascending=not self.higher[metric], ignore_index=True)

  # -- subsets of the test images ------------------------------------------

  def classes(self, domain: str | None = None) -> list[str]:
    """The image classes of the test images (the set's labels, e.g. benign,
    malignant, normal), sorted; empty when the results carry none."""
    labels = self._rows('dice', 'base', domain)['label'].astype(str)
    return sorted(c for c in labels.unique() if c)

  def images(self, *, label: str | None = None, empty: bool | None = None) -> Results:
    """The same results restricted to some test images; every method applies.

    ``label``: the images of one class (:meth:`classes`). ``empty``: True
    keeps the images whose true mask is empty (they score Dice 1 with an
    empty prediction, 0 with any foreground: ``EMPTY_MASK_CONVENTION``),
    False those with a structure. Raises UserError for a class not in the
    results, for ``empty`` on results without ``true_pixels`` (``from_frame``
    tables may lack it), or when nothing is left.

    Example::

      res.images(empty=False).recommend(delta=0.02)   # ranked on lesion images only
      res.images(label='malignant').summary()
    """
    keep = np.ones(len(self.df), bool)
    if label is not None:
      found = sorted(c for c in self.df['label'].astype(str).unique() if c)
      if label not in found:
        raise UserError(f'no test images of class {label!r}; classes in the results: '
                        f'{", ".join(found) or "none"}')
      keep &= (self.df['label'].astype(str) == label).to_numpy()
    if empty is not None:
      if 'true_pixels' not in self.df:
        raise UserError('the results have no true_pixels column, so images with an empty '
                        'mask cannot be told apart; add it to the frame')
      keep &= ((self.df['true_pixels'] == 0) == bool(empty)).to_numpy()
    if not keep.any():
      raise UserError(f'no test images with label={label!r}, empty={empty!r}')
    return dataclasses.replace(self, df=self.df[keep].reset_index(drop=True))

  def by_class(self, by: str = 'base', metric: str = 'dice', *, domain: str | None = None
               ) -> pd.DataFrame:
    """:meth:`summary` per image class: one row per (group, class), groups in the
    order of the overall summary. A ranking can differ by class (on BUSI,
    contracting leads on malignant and normal images, full on benign ones),
    which a mean over all images hides. Empty when the results carry no classes.
    """
    order = list(self.summary(by, metric, domain=domain)[by])
    parts = []
    for label in self.classes(domain):
      table = self.images(label=label).summary(by, metric, domain=domain)
      parts.append(table.assign(**{'class': label}))
    if not parts:
      return pd.DataFrame(columns=[by, 'class', 'mean', 'ci_lo', 'ci_hi'])
    table = pd.concat(parts, ignore_index=True)
    table['_order'] = table[by].map({name: i for i, name in enumerate(order)})
    front = [by, 'class']
    table = table.sort_values(['_order', 'class'], ignore_index=True).drop(columns='_order')
    return table[front + [c for c in table.columns if c not in front]]

  def empty_truth(self, by: str = 'base', *, domain: str | None = None) -> pd.DataFrame:
    """The test images whose true mask is empty, scored as detection.

    One row per group, in the order of the overall Dice summary:
    ``n_images`` such images; ``false_positive_rate`` the share of (run,
    image) cells with any predicted foreground, with its run-aware 95% CI
    (``fp_ci_lo``, ``fp_ci_hi``: the statistics of :meth:`summary` on the
    0/1 outcomes); ``predicted_pixels`` the mean predicted area on them;
    ``dice_with_structure`` the mean Dice on the other images. Under the
    Dice convention such an image scores 1 or 0, so a few of them can move
    a mean over all images more than the segmentations do. Empty when no
    test image has an empty mask.
    """
    rows = self._rows('dice', by, domain)
    columns = [by, 'n_images', 'false_positive_rate', 'fp_ci_lo', 'fp_ci_hi',
               'predicted_pixels', 'dice_with_structure']
    if 'true_pixels' not in rows or not (rows['true_pixels'] == 0).any():
      return pd.DataFrame(columns=columns)
    order = list(self.summary(by, 'dice', domain=domain)[by])
    out = []
    for name in order:
      g = rows[rows[by] == name]
      none = g[g['true_pixels'] == 0]
      flagged = none.assign(fp=(none['pred_pixels'] > 0).astype(np.float64))
      matrix = flagged.pivot_table(index=['variant', 'seed'], columns='image_id', values='fp',
                                   aggfunc='mean', dropna=False)
      est = stats.run_mean(matrix.to_numpy(), self.resampled)
      lo, hi = est.ci()
      structure = g[g['true_pixels'] > 0]['dice']
      out.append({by: name, 'n_images': int(none['image_id'].nunique()),
                  'false_positive_rate': est.mean, 'fp_ci_lo': lo, 'fp_ci_hi': hi,
                  'predicted_pixels': float(none['pred_pixels'].mean()),
                  'dice_with_structure': float(structure.mean()) if len(structure)
                  else np.nan})
    return pd.DataFrame(out, columns=columns)

  # -- paired comparisons ----------------------------------------------------

  def matched(self, a: str, b: str, metric: str = 'dice', *, by: str = 'base',
              domain: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Cells of a and b matched on their shared keys: (frame of keys + a, b; keys).

    By base, runs are matched on variant too, unless the two share no variant
    (a strategy crossed with its own grid axis against a plain subset): then
    each side's variants are pooled, cell by cell.
    """
    rows = self._rows(metric, by, domain)
    names = set(rows[by])
    for name in (a, b):
      if name not in names:
        raise UserError(f'no {by} named {name!r} in the results; valid: '
                        f'{", ".join(sorted(names))}')
    keys = _pair_keys(by, set(rows[rows[by] == a]['variant']),
                      set(rows[rows[by] == b]['variant']))
    side = [rows[rows[by] == n].groupby(keys)[metric].mean().rename(col)
            for n, col in ((a, 'a'), (b, 'b'))]
    return pd.concat(side, axis=1, join='inner').reset_index(), keys

  def paired(self, a: str, b: str, metric: str = 'dice', *, by: str = 'base',
             domain: str | None = None) -> PairedTest:
    """Paired comparison of two groups, matched on (variant, seed, image).

    The differences form a seeds x images matrix; ``p`` and ``diff_ci95``
    treat both as random (``stats.crossed_mean``), so a verdict needs at
    least two seeds. ``rank_biserial``, ``wins``/``losses`` and ``p_images``
    describe the images (each image's difference averaged over seeds).
    Pairs with a NaN are left out and counted.

    Example::

      t = res.paired('contracting', 'expanding')
      print(t.mean_diff, t.diff_ci95, t.p, t.favours())
    """
    matched, keys = self.matched(a, b, metric, by=by, domain=domain)
    if matched.empty:
      raise UserError(f'{a} and {b} share no {", ".join(keys[1:])}: nothing to pair')
    return paired_test(a, b, metric, matched, keys, higher_is_better=self.higher[metric],
                       resampled=self.resampled)

  def pairwise(self, names: Sequence[str] | None = None, metric: str = 'dice', *,
               reference: str | None = None, by: str = 'base', domain: str | None = None
               ) -> pd.DataFrame:
    """Paired tests of every pair of ``names`` (or each against ``reference``).

    ``p_holm`` is the run-aware p-value Holm-corrected over all rows (NaN
    with one seed).
    """
    names = list(names or self.groups(by, domain))
    if reference is not None:
      pairs = [(n, reference) for n in names if n != reference]
    else:
      pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]
    tests = [self.paired(x, y, metric, by=by, domain=domain) for x, y in pairs]
    table = pd.DataFrame([{
        'a': t.a, 'b': t.b, 'mean_a': t.mean_a, 'mean_b': t.mean_b,
        'mean_diff': t.mean_diff, 'ci_lo': t.diff_ci95[0], 'ci_hi': t.diff_ci95[1],
        'p': t.p, 'df': t.df, 'rank_biserial': t.rank_biserial, 'p_images': t.p_images,
        'n_images': t.n_images, 'n_runs': t.n_runs} for t in tests])
    if tests:
      table['p_holm'] = stats.holm(table['p'])
    return table

  def recommend(self, metric: str = 'dice', *, domain: str | None = None,
                alpha: float = 0.05, by: str = 'condition', delta: float | None = None
                ) -> pd.DataFrame:
    """What to train on this data: the best strategy, and which others MCB shows worse.

    One row per strategy (``by='condition'``: each grid variant, such as a
    layer-decay factor, counts as its own strategy), best mean first.
    ``mcb_lo``, ``mcb_hi``: Hsu's constrained multiple comparisons with the
    best (``stats.mcb``), simultaneous ``1 - alpha`` intervals for each
    strategy's mean minus the best mean of the others, from the run-aware
    paired differences of every pair (matched seeds and images, as in
    ``paired``; Bonferroni-t critical value, conservative). Signs follow
    "better": for a lower-is-better metric (hd95) a positive value still
    means better than the others. Every interval contains 0; ``mcb_hi == 0``
    says some other strategy is better, ``mcb_lo == 0`` that this one is at
    least as good as every other. Unlike testing each against the
    best-by-mean, the intervals account for the best having been chosen
    by the same data (no winner's curse). ``verdict``:

    - 'best': the highest mean (lowest for hd95/assd);
    - 'within delta' (``delta`` given, in the metric's units): ``mcb_lo >
      -delta``, shown to be at most delta below the best of the others.
      It takes precedence over 'worse': a strategy may also have ``mcb_hi ==
      0`` (shown worse, but by less than delta; the interval says how much);
    - 'worse': ``mcb_hi == 0``, shown not to be the best (and, with a
      delta, not shown within it);
    - 'not shown worse': neither; it may be the best or may not, the data
      cannot tell (this is not a claim of equivalence: give a delta for that);
    - 'untested': some of its comparisons have one seed (run-to-run
      variation unknown) or no matched cells: its interval is NaN and
      nothing is decided.

    ``diff_vs_best`` is its mean paired difference from the best (metric
    units, its matched cells); ``p_holm``, the run-aware paired test against
    the best Holm-corrected over those comparisons, is kept for reference
    and decides no verdict. ``pareto`` marks strategies no other beats on
    both mean and trainable parameters. Columns also hold each strategy's
    trainable and extra parameters (adapters) and its mean own training time
    per run (``seconds``; NaN where the bundle ran as one program and one
    run's time is not separable).

    The cost of reaching that Dice, from the runs' summaries (runs train
    until validation Dice stops improving and are scored with their
    best-validation weights): ``best_step``, the mean step of the
    best-validation evaluation whose weights were scored; ``stopped_step``,
    the mean step training stopped at; ``seconds_to_best``, the mean of each
    run's own seconds per step x its best step (NaN where unknown, as for
    ``seconds``); ``at_cap``, how many of its runs reached the step cap still
    improving (``stop_reason == 'cap'``): their Dice is a lower bound, and a
    longer cap may change the ranking. Summaries written before training to
    convergence give NaN steps and ``at_cap`` 0 (``Results.runs['stop_reason']``
    is None for them).

    Example::

      analysis.load('runs/strategies').recommend(delta=0.02)
    """
    if delta is not None and not delta > 0:
      raise UserError(f'delta must be a positive number of {metric} units, not {delta!r}')
    table = self.summary(by, metric, domain=domain)
    if table.empty:
      return table
    names = list(table[by])
    k = len(names)
    rows = self._rows(metric, by, domain)
    groups = {name: g for name, g in rows.groupby(by, sort=False)}
    variants = {name: set(g['variant']) for name, g in groups.items()}
    sides: dict[tuple, pd.Series] = {}  # (name, keys) -> its cells, as in matched()

    def side(name: str, keys: list[str]) -> pd.Series:
      if (name, *keys) not in sides:
        sides[(name, *keys)] = groups[name].groupby(keys)[metric].mean()
      return sides[(name, *keys)]

    diff = np.full((k, k), np.nan)
    se, df, p = diff.copy(), diff.copy(), diff.copy()
    np.fill_diagonal(diff, 0.0)
    for i, j in itertools.combinations(range(k), 2):
      keys = _pair_keys(by, variants[names[i]], variants[names[j]])
      est = _paired_estimate(side(names[i], keys), side(names[j], keys), keys,
                             self.resampled)
      if est is None:
        continue  # nothing to pair: both stay untested
      diff[i, j], diff[j, i] = est.mean, -est.mean
      if est.runs_known:  # the numbers of paired(); with one seed nothing is decided
        p[i, j] = p[j, i] = est.p_value()
        se[i, j] = se[j, i] = est.se
        df[i, j] = df[j, i] = est.df
    sign = 1.0 if self.higher[metric] else -1.0
    mcb_lo, mcb_hi = stats.mcb(sign * diff, se, df, alpha)
    p_holm = stats.holm(p[1:, 0])
    runs = self.runs if domain is None else self.runs[self.runs['domain'] == domain]
    out = []
    for i, row in enumerate(table.itertuples()):
      name = getattr(row, by)
      members = runs[runs['experiment'].isin(rows[rows[by] == name]['experiment'].unique())]
      lo, hi = mcb_lo[i], mcb_hi[i]
      if i == 0:
        verdict = 'best'
      elif np.isnan(lo) or np.isnan(hi):
        verdict = 'untested'
      elif delta is not None and lo > -delta:
        verdict = 'within delta'
      elif hi == 0:
        verdict = 'worse'
      else:
        verdict = 'not shown worse'
      out.append({by: name, 'verdict': verdict, 'mean': row.mean, 'ci_lo': row.ci_lo,
                  'ci_hi': row.ci_hi, 'diff_vs_best': np.nan if i == 0 else diff[i, 0],
                  'mcb_lo': lo, 'mcb_hi': hi,
                  'p_holm': np.nan if i == 0 else p_holm[i - 1], 'n_runs': row.n_runs,
                  'trainable_params': float(members['trainable_params'].mean()),
                  'extra_params': float(members['extra_params'].mean()),
                  'seconds': float(members['seconds'].mean()),
                  'best_step': float(members['best_step'].mean()),
                  'stopped_step': float(members['stopped_at_step'].mean()),
                  'seconds_to_best': float(members['seconds_to_best'].mean()),
                  'at_cap': int((members['stop_reason'] == 'cap').sum())})
    frame = pd.DataFrame(out)
    frame['pareto'] = _pareto(frame['mean'].to_numpy() * sign,
                              frame['trainable_params'].to_numpy())
    return frame

  def rank_stability(self, metric: str = 'dice', *, by: str = 'base',
                     domain: str | None = None) -> RankStability:
    """How much the ranking of the groups changes from seed to seed.

    Each run (variant, seed) ranks the groups by its mean over images (1 =
    best); Kendall's W and the mean Spearman correlation between runs
    summarise the agreement. Groups missing from a run are dropped.
    """
    if by == 'experiment':
      raise UserError("rank_stability needs runs to compare: use by='base' or 'condition'")
    rows = self._rows(metric, by, domain)
    rater = ['seed'] if by == 'condition' else ['variant', 'seed']
    means = rows.groupby([by] + rater)[metric].mean().unstack(rater)
    complete = means.dropna()
    dropped = tuple(sorted(set(means.index) - set(complete.index)))
    sign = -1.0 if self.higher[metric] else 1.0
    ranks = (sign * complete).rank(axis=0, method='average')
    w, p = stats.kendall_w((sign * complete).T.to_numpy())
    ranks.columns = [_run_label(c) for c in ranks.columns]
    return RankStability(ranks, w, p, stats.mean_spearman(complete.T.to_numpy()), dropped)

  # -- training curves -------------------------------------------------------

  def history(self, experiment: str, domain: str | None = None) -> pd.DataFrame | None:
    """The run's ``history.jsonl`` as a DataFrame, or None when it was not written."""
    run = self._run(experiment, domain)
    if run['workdir'] is None:  # from_frame: no files behind the rows
      return None
    path = WorkdirPaths(run['workdir']).experiment(run.get('folder') or experiment).history
    if not os.path.exists(path):
      return None
    return pd.DataFrame(files.read_jsonl(path))

  def _run(self, experiment: str, domain: str | None) -> pd.Series:
    runs = self.runs[self.runs['experiment'] == experiment]
    if domain is not None:
      runs = runs[runs['domain'] == domain]
    if len(runs) != 1:
      raise UserError(f'no single run named {experiment!r}'
                      + ('' if domain else ' (pass domain=)'))
    return runs.iloc[0]

  def convergence(self, fraction: float = 0.9, *, reference: str | None = None
                  ) -> pd.DataFrame:
    """Steps each run needs to reach ``fraction`` of a best validation Dice.

    The target is the run's own best ``val_dice``, or with ``reference`` (a
    base) the best of the reference run with the same domain, variant, seed
    and fold, so runs are compared against one bar. ``steps`` is where the
    curve first crosses the target, interpolated linearly between the logged
    steps around the crossing (the first logged step when it is already
    there), so that runs logged every chunk do not tie at chunk boundaries;
    NaN when it is never reached or the engine wrote no ``history.jsonl``
    (``note`` says which).
    """
    best = {}
    curves = {}
    for run in self.runs.itertuples():
      h = self.history(run.experiment, run.domain)
      if h is not None and 'val_dice' in h:
        h = h.dropna(subset=['val_dice'])
        curves[run.Index] = h if len(h) else None
      else:
        curves[run.Index] = None
      if curves[run.Index] is not None:
        best[(run.domain, run.base, run.variant, run.seed, _fold(run.fold))] = float(
            h['val_dice'].max())
    out = []
    for run in self.runs.itertuples():
      h = curves[run.Index]
      row = {'domain': run.domain, 'experiment': run.experiment, 'base': run.base,
             'condition': run.condition, 'seed': run.seed, 'fold': _fold(run.fold),
             'best_val_dice': np.nan,
             'target': np.nan, 'steps': np.nan, 'last_step': np.nan, 'note': ''}
      if h is None:
        row['note'] = 'no history.jsonl with val_dice'
      else:
        row['best_val_dice'] = float(h['val_dice'].max())
        row['last_step'] = float(h['step'].max())
        key = (run.domain, reference or run.base, run.variant, run.seed, _fold(run.fold))
        if key in best:
          row['target'] = fraction * best[key]
          row['steps'] = crossing_step(h['step'].to_numpy(), h['val_dice'].to_numpy(),
                                       row['target'])
          if np.isnan(row['steps']):
            row['note'] = 'target never reached'
        else:
          row['note'] = f'no history for reference {reference!r}'
      out.append(row)
    return pd.DataFrame(out)

  def record(self, experiment: str, domain: str) -> ExperimentSummary:
    """The summary record of one run."""
    for run in self.loaded:
      if run.domain == domain and run.summary.name == experiment:
        return run.summary
    raise UserError(f'no run named {experiment!r} in domain {domain!r}')

  def findings(self, alpha: float = 0.05, *, domain_kinds: dict[str, str] | None = None
               ) -> list[Finding]:
    """F1..F6 of DESIGN.md judged on these results; rules in ``unet_jax.analysis.findings``.

    ``domain_kinds`` adds ``data.source -> 'ultrasound' | 'xray'`` entries
    to :data:`unet_jax.modalities.MODALITIES`.
    """
    from unet_jax.analysis import findings  # noqa: PLC0415 - it builds on this module
    return findings.evaluate(self, alpha, {**MODALITIES, **(domain_kinds or {})})


def _pair_keys(by: str, variants_a: set, variants_b: set) -> list[str]:
  """The keys two groups are matched on (``Results.matched``)."""
  identity = {'base': (), 'condition': ('variant',), 'experiment': ('variant', 'seed')}[by]
  if by == 'base' and not variants_a & variants_b:
    identity = ('variant',)  # no variant in common (a strategy's grid): pool them
  return ['domain'] + [k for k in _PAIR_KEYS if k not in identity]


def _ci_over(est: stats.Estimate, resampled: bool) -> str:
  """What a summary CI's variation covers."""
  if not est.runs_known:
    return 'images (1 seed)'
  return 'seeds, each its own split' if resampled else 'seeds and images'


def resampled(frame: pd.DataFrame, by: str = 'condition') -> bool:
  """Whether some group's seeds were scored on different sets of test images
  (``image_id``), within each domain: the seeds drew their own splits."""
  if frame.empty or 'image_id' not in frame:
    return False
  keys = [k for k in ('domain', by) if k in frame]
  sets = frame.groupby(keys + ['seed'])['image_id'].agg(frozenset)
  return bool((sets.groupby(level=list(range(len(keys)))).nunique() > 1).any())


def _paired_estimate(a: pd.Series, b: pd.Series, keys: list[str], resampled: bool = False
                     ) -> stats.Estimate | None:
  """``stats.run_mean`` of a - b on their matched cells, as ``paired_test`` makes it.

  ``a`` and ``b`` are cell means indexed by ``keys``; None when they share no
  cell. The same cells and numbers as ``Results.paired`` (tested), without
  its per-pair tables: ``recommend`` makes one per pair of strategies.
  """
  joined = pd.concat([a.rename('a'), b.rename('b')], axis=1, join='inner')
  if joined.empty:
    return None
  d = joined['a'] - joined['b']
  image_keys = [k for k in keys if k in ('domain', 'image_id')]
  if len(image_keys) == len(keys):  # no run key: one run
    return stats.run_mean(d.to_numpy()[None], resampled)
  return stats.run_mean(d.unstack(image_keys).to_numpy(), resampled)


def _pareto(score: np.ndarray, cost: np.ndarray) -> np.ndarray:
  """True where no other entry has a higher-or-equal score at a lower-or-equal cost
  with one of the two strict (the Pareto front of score against cost)."""
  out = np.ones(len(score), bool)
  for i in range(len(score)):
    better = (score >= score[i]) & (cost <= cost[i]) & ((score > score[i]) | (cost < cost[i]))
    out[i] = not better.any()
  return out


def _fold(fold):
  """A fold as a dictionary key: None and NaN (no folds) alike."""
  return None if fold is None or (isinstance(fold, float) and np.isnan(fold)) else int(fold)


def crossing_step(steps: np.ndarray, values: np.ndarray, target: float) -> float:
  """The step where a logged curve first reaches ``target``, interpolated; NaN if never."""
  above = np.flatnonzero(values >= target)
  if not above.size:
    return float('nan')
  i = int(above[0])
  if i == 0:
    return float(steps[0])
  t0, t1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
  return float(t0 + (target - v0) / (v1 - v0) * (t1 - t0))


def _run_label(column) -> str:
  parts = column if isinstance(column, tuple) else (column,)
  return ''.join(str(p) for p in parts[:-1]) + f'seed={parts[-1]}'
