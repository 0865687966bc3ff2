"""Comparing the experiments of a sweep: tables, paired tests, ranks, findings.

``load(workdir)`` reads what a sweep wrote (``results.jsonl``, the
``experiments/<name>/summary.json`` files, ``config.json`` and, when the
engine wrote them, ``experiments/<name>/history.jsonl`` curves) into a
:class:`Results`; its methods answer the study's questions::

  res = compare.load('runs/default')
  res.summary()                               # mean, median, 95% CI per experiment
  res.paired('contracting', 'expanding')      # run-aware paired test
  res.pairwise(reference='full')              # every experiment vs full, Holm
  res.findings()                              # F1..F6 of DESIGN.md, with numbers

Any table of per-image scores can be analysed the same way:
``compare.from_frame(df)`` (columns ``experiment``, ``seed``, ``image_id``,
metrics, optional ``domain``), for runs of nnU-Net, MONAI or a PyTorch loop.

Vocabulary: a *run* is one trained network (one experiment name such as
``full-seed1``); its ``base`` is the entry of ``config.experiments`` it came
from (``full``); its ``variant`` is the grid point other than the seed and
the fold (``-lr0.001``, usually empty; recorded in the summary);
``condition`` is base + variant. Grouping ``by='base'`` pools seeds, folds
and variants; pairs are always matched on every key the two sides share
(domain, variant, seed, image), so a paired test compares like with like.

Statistics (``unet_jax.stats``): the training run is the unit of
replication. A group's scores form a matrix of seeds x test images (with
cross-validation each image scored by the fold model that did not train
on it), and every CI and test treats seeds and images as crossed random
factors (``stats.crossed_mean``); with one seed no test is made, since
run-to-run variation is unknown.

A work directory may be loaded while its sweep is still running or after it
was interrupted. The rows are those of ``results.jsonl`` (rewritten whole,
atomically, after each bundle) plus, for experiments it does not list yet,
``experiments/<name>/results.jsonl`` of those marked finished (their
``summary.json`` exists, written last) whose base is in ``config.json``, so
results left from another sweep in the same folder are not mixed in.
:attr:`Results.notes` says what was added and what is still missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from unet_jax import stats
from unet_jax.errors import UserError

if TYPE_CHECKING:
  from unet_jax.findings import Finding

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


@dataclasses.dataclass(frozen=True)
class RankStability:
  ranks: pd.DataFrame  # groups x runs (seeds), 1 = best
  kendall_w: float
  p_value: float  # Friedman test of W = 0
  mean_spearman: float
  dropped: tuple[str, ...]  # groups missing from some run, left out


@dataclasses.dataclass
class Results:
  """A sweep's results: ``df`` has one row per (run, test image)."""

  df: pd.DataFrame
  runs: pd.DataFrame  # one row per run: keys, init, schedule, sizes, workdir
  summaries: list[dict]  # the summary.json files, with 'domain' added
  configs: dict[str, dict]  # domain -> config.json
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
    """Cells of a and b matched on their shared keys: (frame of keys + a, b; keys)."""
    rows = self._rows(metric, by, domain)
    names = set(rows[by])
    for name in (a, b):
      if name not in names:
        raise UserError(f'no {by} named {name!r} in the results; valid: '
                        f'{", ".join(sorted(names))}')
    identity = {'base': (), 'condition': ('variant',), 'experiment': ('variant', 'seed')}[by]
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
    path = os.path.join(run['workdir'], 'experiments', experiment, 'history.jsonl')
    if not os.path.exists(path):
      return None
    return pd.DataFrame(_read_jsonl(path))

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

  def findings(self, alpha: float = 0.05, *, domain_kinds: dict[str, str] | None = None
               ) -> list[Finding]:
    """F1..F6 of DESIGN.md judged on these results; rules in ``unet_jax.findings``.

    ``domain_kinds`` adds ``data.source -> 'ultrasound' | 'xray'`` entries
    to :data:`DOMAIN_KINDS`.
    """
    from unet_jax import findings  # noqa: PLC0415 - it builds on this module
    return findings.evaluate(self, alpha, {**DOMAIN_KINDS, **(domain_kinds or {})})


def paired_test(a: str, b: str, metric: str, matched: pd.DataFrame, keys: Sequence[str], *,
                higher_is_better: bool = True) -> PairedTest:
  """The PairedTest of matched cells: columns ``keys`` + a, b (see Results.matched).

  Keys other than ``domain`` and ``image_id`` identify runs; concatenating the
  matched cells of several pairs with an extra key pools them in one test.
  Every number comes from the same cells: images with a value in every run
  on both sides (``n_excluded`` counts the matched cells left out).
  """
  run_keys = [k for k in keys if k not in ('domain', 'image_id')] or ['run']
  image_keys = [k for k in keys if k in ('domain', 'image_id')]
  cells = matched.assign(run=0)
  side = {c: cells.pivot_table(index=run_keys, columns=image_keys, values=c, dropna=False)
          for c in ('a', 'b')}
  complete = side['a'].notna().all() & side['b'].notna().all()
  a_cells, b_cells = side['a'].loc[:, complete], side['b'].loc[:, complete]
  est = stats.crossed_mean((a_cells - b_cells).to_numpy())
  per_image_a, per_image_b = a_cells.mean(), b_cells.mean()
  per_image = per_image_a - per_image_b
  return PairedTest(
      a=a, b=b, metric=metric, n_images=est.n_images, n_runs=est.n_runs,
      n_excluded=len(matched) - int(a_cells.size),
      mean_a=float(a_cells.to_numpy().mean()), mean_b=float(b_cells.to_numpy().mean()),
      mean_diff=est.mean, diff_ci95=est.ci(), se=est.se, df=est.df,
      p=est.p_value() if est.runs_known else float('nan'),
      p_images=stats.wilcoxon(per_image), rank_biserial=stats.rank_biserial(per_image),
      wins=int((per_image > 0).sum()), losses=int((per_image < 0).sum()),
      higher_is_better=higher_is_better)


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


# -- loading -------------------------------------------------------------------


def _read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _finished_rows(workdir: str, listed: Sequence[str], runs: Sequence[str] | None,
                   bases: Sequence[str]) -> list[dict]:
  """Rows of finished experiments (summary.json written) of this sweep's runs.

  ``runs`` are the run names the sweep wrote into config.json; folders of
  other runs (an earlier sweep with other seeds, say) are left out. Work
  directories of older versions, without that list, fall back to the bases.
  """
  out = []
  for name in listed:
    folder = os.path.join(workdir, 'experiments', name)
    summary = _read_json(os.path.join(folder, 'summary.json'))
    path = os.path.join(folder, 'results.jsonl')
    ours = name in runs if runs is not None else (summary or {}).get('base') in bases
    if summary is not None and ours and os.path.exists(path):
      out += _read_jsonl(path)
  return out


def _load_one(workdir: str, notes: list[str]) -> tuple[pd.DataFrame, list[dict], dict]:
  """Rows, summaries and config of one work directory (module docstring)."""
  config = _read_json(os.path.join(workdir, 'config.json')) or {}
  wanted = [n.strip() for n in str(config.get('only', '')).split(',') if n.strip()]
  wanted = wanted or list(config.get('experiments', {}))
  folder = os.path.join(workdir, 'experiments')
  listed = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
  path = os.path.join(workdir, 'results.jsonl')
  records = _read_jsonl(path) if os.path.exists(path) else []
  have = {r['experiment'] for r in records}
  # The sweep rewrites results.jsonl after each bundle, but marks each
  # experiment finished (summary.json after its own results.jsonl) as it goes.
  runs = config.get('runs')
  extra = _finished_rows(workdir, [n for n in listed if n not in have], runs, wanted)
  if extra:
    added = sorted({r['experiment'] for r in extra})
    notes.append(f'{workdir}: {", ".join(added)} read from experiments/<name>/results.jsonl '
                 '(finished after the last results.jsonl was written)')
  rows = pd.DataFrame(records + extra)
  if rows.empty:
    raise UserError(f'no results in {workdir}: not a sweep work directory, or its sweep '
                    'has not finished an experiment yet')
  domain = str(config.get('data', {}).get('source', 'unknown'))
  rows['domain'] = rows['domain'].fillna(domain) if 'domain' in rows else domain
  summaries = []
  for name in dict.fromkeys(rows['experiment']):
    summary = _read_json(os.path.join(folder, name, 'summary.json'))
    if summary is None:
      notes.append(f'{workdir}: {name} has results but no summary.json')
      seed = rows.loc[rows['experiment'] == name, 'seed'].iloc[0]
      summary = {'name': name, 'base': name, 'seed': int(seed), 'init': 'unknown',
                 'variant': ''}
    summaries.append({**summary, 'domain': summary.get('domain', domain),
                      'workdir': workdir})
  pending = [n for n in listed if n not in set(rows['experiment'])
             and (runs is None or n in runs)]
  if pending:
    notes.append(f'{workdir}: no results yet for {", ".join(pending)} (sweep running or '
                 'interrupted, or left from another sweep)')
  others = [n for n in listed if runs is not None and n not in runs]
  if others:
    notes.append(f'{workdir}: left out {len(others)} experiment folder(s) of another sweep '
                 f'({", ".join(others[:4])}{" ..." if len(others) > 4 else ""})')
  bases = {s.get('base') for s in summaries}
  missing = [n for n in wanted if n not in bases]
  if missing:
    notes.append(f'{workdir}: config.json lists {", ".join(missing)} but no results of '
                 'theirs exist yet')
  return rows, summaries, config


def load(workdirs: str | os.PathLike | Sequence[str | os.PathLike]) -> Results:
  """Loads one work directory, or several (for instance one per domain).

  Each directory's domain is its ``config.json`` ``data.source`` (or a row's
  ``domain`` field). Raises UserError when a directory has no results, or
  when two directories share a domain and an experiment name.
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  notes: list[str] = []
  frames, summaries, configs = [], [], {}
  for w in workdirs:
    w = os.path.abspath(os.fspath(w))
    rows, sums, config = _load_one(w, notes)
    frames.append(rows)
    summaries += sums
    for d in rows['domain'].unique():
      configs.setdefault(d, config)
  runs = pd.DataFrame([_run_row(s) for s in summaries])
  clash = runs[runs.duplicated(['domain', 'experiment'], keep=False)]
  if len(clash):
    raise UserError('several work directories hold the same domain and experiment: '
                    + ', '.join(sorted(set(clash['domain'] + '/' + clash['experiment']))))
  return _results(pd.concat(frames, ignore_index=True), runs, summaries, configs, notes)


def _results(df: pd.DataFrame, runs: pd.DataFrame, summaries, configs, notes,
             higher: dict[str, bool] | None = None) -> Results:
  """Joins the per-image rows with the runs table into a Results."""
  df = df.drop(columns=[c for c in ('base', 'variant', 'condition', 'init') if c in df])
  df = df.merge(runs[['domain', 'experiment', 'base', 'variant', 'condition', 'init']],
                on=['domain', 'experiment'], how='left')
  df['image_id'] = df['image_id'].astype(str)
  if 'fold' not in df:
    df['fold'] = None
  if 'label' not in df:
    df['label'] = ''
  higher = higher or dict(HIGHER_IS_BETTER)
  front = ['domain', 'experiment', 'base', 'variant', 'condition', 'seed', 'fold', 'init',
           'image_id', 'label'] + [m for m in higher if m in df]
  df = df[front + [c for c in df.columns if c not in front]]
  return Results(df, runs, summaries, configs, notes, higher)


def from_frame(frame: pd.DataFrame, *, higher_is_better: dict[str, bool] | None = None
               ) -> Results:
  """Results from any table of per-image scores, e.g. of nnU-Net, MONAI or a PyTorch loop.

  Args:
    frame: one row per (experiment, seed, image_id) with one or more metric
      columns (``dice``, ``iou``, ``hd95``, ``assd`` or others) and
      optionally ``domain`` and ``fold``. ``experiment`` names the procedure
      compared (``full``, ``head``, ...), ``seed`` the training run.
    higher_is_better: direction of metrics other than the four above
      (``{'surface_dice': True}``).

  Returns:
    A :class:`Results` with ``summary``, ``paired``, ``pairwise`` and
    ``rank_stability``; the statistics are those of a sweep's results.

  Example::

    df = pd.read_csv('my_runs.csv')      # experiment, seed, image_id, dice
    res = compare.from_frame(df)
    res.paired('decoder', 'full')
  """
  if not isinstance(frame, pd.DataFrame):
    raise UserError(f'from_frame needs a pandas DataFrame; got {type(frame).__name__}')
  required = ('experiment', 'seed', 'image_id')
  missing = [c for c in required if c not in frame]
  if missing:
    raise UserError(f'the frame lacks column(s) {", ".join(missing)}; it needs '
                    f'{", ".join(required)} and one or more metric columns')
  higher = {**HIGHER_IS_BETTER, **(higher_is_better or {})}
  keys = set(required) | {'domain', 'fold', 'label'}
  extra = [c for c in frame if c not in keys]
  metrics = [c for c in extra if c in higher]
  unknown = [c for c in extra if c not in higher and pd.api.types.is_numeric_dtype(frame[c])]
  if unknown:
    raise UserError(f'column(s) {", ".join(unknown)}: say whether higher is better with '
                    f"higher_is_better={{{unknown[0]!r}: True}}, or drop them")
  if not metrics:
    raise UserError(f'the frame has no metric column; give one of {", ".join(higher)} '
                    '(or others with higher_is_better)')
  df = frame.copy()
  if 'domain' not in df:
    df['domain'] = 'data'
  df['domain'] = df['domain'].astype(str)
  df['base'] = df['experiment'].astype(str)
  repeated = df.duplicated(['domain', 'base', 'seed', 'image_id'])
  if repeated.any():
    first = df[repeated].iloc[0]
    raise UserError(f'{int(repeated.sum())} row(s) repeat an (experiment, seed, image_id), '
                    f'first {first["base"]!r}, seed {first["seed"]}, image '
                    f'{str(first["image_id"])!r}: give one row per trained run and image')
  df['experiment'] = df['base'] + '-seed' + df['seed'].astype(str)
  folds = 'fold' in df and df['fold'].notna().any()
  if folds:  # a run is one fold of one seed
    df['experiment'] += '-fold' + df['fold'].astype(str)
  else:
    df['fold'] = None
  runs = (df.drop_duplicates(['domain', 'experiment'])
          [['domain', 'experiment', 'base', 'seed', 'fold']].reset_index(drop=True))
  runs = runs.assign(variant='', condition=runs['base'], init='unknown', stages=1,
                     order=None, direction=None, stage_steps=None, steps=np.nan,
                     trainable_fraction=np.nan, frozen_norm=None, trained=None,
                     blocks=None, train_images=np.nan, workdir=None)
  summaries = [{'name': r.experiment, 'base': r.base, 'seed': r.seed, 'domain': r.domain}
               for r in runs.itertuples()]
  return _results(df, runs, summaries, {}, [], {m: higher[m] for m in metrics})


def _blocks(s: dict) -> tuple[frozenset | None, frozenset | None]:
  """(blocks the first stage trains fully, every block) from a summary, if recorded."""
  stage = (s.get('schedule') or [{}])[0]
  if 'trained' not in stage:
    return None, None
  trained = frozenset(stage['trained'])
  every = trained | set(stage.get('partly', ())) | {p.split('/')[0] for p in s.get('frozen', [])}
  return trained if not stage.get('partly') else None, frozenset(every)


def _run_row(s: dict) -> dict:
  kind = s.get('schedule_kind') or {}
  gradual = kind.get('kind') == 'gradual'
  total = s.get('total_params') or np.nan
  variant = s.get('variant', '')
  trained, blocks = _blocks(s)
  return {'domain': s['domain'], 'experiment': s['name'], 'base': s['base'],
          'variant': variant, 'condition': s['base'] + variant, 'seed': s['seed'],
          'fold': s.get('fold'), 'init': s.get('init', 'unknown'),
          'stages': len(s.get('schedule') or [1]),
          'order': kind.get('order') if gradual else None,
          'direction': kind.get('direction') if gradual else None,
          'stage_steps': kind.get('stage_steps') if gradual else None,
          'steps': s.get('steps', np.nan),
          'trainable_fraction': s.get('trainable_params', np.nan) / total,
          'frozen_norm': s.get('frozen_norm'), 'trained': trained, 'blocks': blocks,
          'train_images': s.get('train_images', np.nan), 'workdir': s['workdir']}
