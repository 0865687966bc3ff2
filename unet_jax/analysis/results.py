"""Comparing the experiments of a sweep: tables, paired tests, ranks, curves, findings.

A :class:`Results` holds one row per (run, test image) and one row per run;
``unet_jax.analysis.load`` (a work directory) and ``from_frame`` (any table)
make one. Its methods answer the study's questions::

  res = analysis.load('runs/default')
  res.summary()                               # mean, median, 95% CI per experiment
  res.paired('contracting', 'expanding')      # run-aware paired test
  res.pairwise(reference='full')              # every experiment vs full, Holm
  res.findings()                              # F1..F6 of DESIGN.md, with numbers
  res.recommend()                             # what to train: best and tied strategies

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
run-to-run variation is unknown.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from unet_jax import files
from unet_jax.analysis import stats
from unet_jax.analysis.paired import PairedTest, paired_test
from unet_jax.errors import UserError
from unet_jax.sweep.records import ExperimentSummary, SweepRecord
from unet_jax.sweep.workdir import WorkdirPaths

if TYPE_CHECKING:
  from unet_jax.analysis.findings import Finding

METRICS = ('dice', 'iou', 'hd95', 'assd')
HIGHER_IS_BETTER = {'dice': True, 'iou': True, 'hd95': False, 'assd': False}
GROUPINGS = ('base', 'condition', 'experiment')
# Pairing keys of a row besides the grouping itself.
_PAIR_KEYS = ('variant', 'seed', 'image_id')
# data.source -> imaging modality, for F4 (an explicit table; pass more to findings()).
DOMAIN_KINDS = {'ultrasound': 'ultrasound', 'busi': 'ultrasound', 'udiat': 'ultrasound',
                'udiat_b': 'ultrasound', 'xray': 'xray', 'chest_xray': 'xray',
                'montgomery': 'xray', 'jsrt': 'xray', 'jsrt_scr': 'xray'}


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
  # metric -> whether higher is better (METRICS' by default)
  higher: dict[str, bool] = dataclasses.field(default_factory=lambda: dict(HIGHER_IS_BETTER))

  @property
  def domains(self) -> list[str]:
    return sorted(self.df['domain'].unique())

  def metrics(self) -> list[str]:
    return [m for m in self.higher if m in self.df.columns]

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
      est = stats.crossed_mean(matrix.to_numpy())
      lo, hi = est.ci()
      runs = self.runs[self.runs['experiment'].isin(g['experiment'].unique()) &
                       (self.runs['domain'] == g['domain'].iloc[0])]
      out.append({by: name, 'mean': est.mean, 'median': np.nanmedian(values),
                  'ci_lo': lo, 'ci_hi': hi, 'seed_sd': est.run_sd,
                  'n_runs': est.n_runs, 'n_images': est.n_images,
                  'n_nan': int(np.isnan(values).sum()),
                  'ci_over': 'seeds and images' if est.runs_known else 'images (1 seed)',
                  'trainable_fraction': float(runs['trainable_fraction'].mean())})
    table = pd.DataFrame(out)
    return table.sort_values('mean', ascending=not self.higher[metric], ignore_index=True)

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
    identity = {'base': (), 'condition': ('variant',), 'experiment': ('variant', 'seed')}[by]
    if by == 'base' and not (set(rows[rows[by] == a]['variant']) &
                             set(rows[rows[by] == b]['variant'])):
      identity = ('variant',)  # no variant in common (a strategy's grid): pool them
    keys = ['domain'] + [k for k in _PAIR_KEYS if k not in identity]
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
    return paired_test(a, b, metric, matched, keys, higher_is_better=self.higher[metric])

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
                alpha: float = 0.05, by: str = 'condition') -> pd.DataFrame:
    """What to train on this data: the best strategy and those statistically tied with it.

    One row per strategy (``by='condition'``: each grid variant, such as a
    layer-decay factor, counts as its own strategy), best mean first:
    ``verdict`` is 'best'; 'tied' where the run-aware paired test against
    the best (matched seeds and images, ``paired``), Holm-corrected over the
    comparisons with the best, is not significant at ``alpha``; 'worse'
    where it is; 'untested' with one seed (run-to-run variation unknown:
    nothing is tied or worse). Choosing the best by its mean and then testing
    the others against it favours the best a little (the winner's curse),
    so read 'worse' near the boundary with care. ``pareto`` marks strategies
    no other beats on both mean and trainable parameters. Columns also hold
    each strategy's trainable and extra parameters (adapters) and its mean
    own training time per run (``seconds``; NaN where the bundle ran as one
    program and one run's time is not separable).

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

      analysis.load('runs/strategies').recommend()
    """
    table = self.summary(by, metric, domain=domain)
    if table.empty:
      return table
    best = table[by].iloc[0]
    rows = self._rows(metric, by, domain)
    runs = self.runs if domain is None else self.runs[self.runs['domain'] == domain]
    tests = {name: self.paired(name, best, metric, by=by, domain=domain)
             for name in table[by].iloc[1:]}
    p = pd.Series({name: t.p for name, t in tests.items()}, dtype=np.float64)
    p_holm = pd.Series(stats.holm(p.to_numpy()), index=p.index) if len(p) else p
    out = []
    for row in table.itertuples():
      name = getattr(row, by)
      members = runs[runs['experiment'].isin(rows[rows[by] == name]['experiment'].unique())]
      t = tests.get(name)
      if t is None:
        verdict = 'best'
      elif not t.runs_known:
        verdict = 'untested'
      else:
        verdict = 'worse' if p_holm[name] < alpha and t.favours(1.0) == best else 'tied'
      out.append({by: name, 'verdict': verdict, 'mean': row.mean, 'ci_lo': row.ci_lo,
                  'ci_hi': row.ci_hi, 'diff_vs_best': np.nan if t is None else t.mean_diff,
                  'p_holm': np.nan if t is None else p_holm[name], 'n_runs': row.n_runs,
                  'trainable_params': float(members['trainable_params'].mean()),
                  'extra_params': float(members['extra_params'].mean()),
                  'seconds': float(members['seconds'].mean()),
                  'best_step': float(members['best_step'].mean()),
                  'stopped_step': float(members['stopped_at_step'].mean()),
                  'seconds_to_best': float(members['seconds_to_best'].mean()),
                  'at_cap': int((members['stop_reason'] == 'cap').sum())})
    frame = pd.DataFrame(out)
    frame['pareto'] = _pareto(frame['mean'].to_numpy() * (1 if self.higher[metric] else -1),
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
    to :data:`DOMAIN_KINDS`.
    """
    from unet_jax.analysis import findings  # noqa: PLC0415 - it builds on this module
    return findings.evaluate(self, alpha, {**DOMAIN_KINDS, **(domain_kinds or {})})


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
