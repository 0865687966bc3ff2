"""A sweep's report: ``report.md`` with tables, findings and figures.

``write_report(workdir)`` reads only saved results (``unet_jax.analysis.load``),
so it can be rerun at any time, also on an interrupted sweep; figures go to
``<workdir>/report/``. Overlays of predictions come from the sweep's
``test_set.npz`` and the predictions it saved (:func:`saved_overlays`), or from
:class:`Overlays` a notebook passes. The analysis runs no network and imports no JAX:
for work directories scored before predictions were saved, ``predict`` (for instance
``unet_jax.sweep.evaluate.predictions_from_weights``, as ``launch/report.py`` passes it)
runs them.

Example::

  path = write_report('runs/default')                    # runs/default/report.md
  path = write_report('runs/us', also=['runs/xray'])     # F4 needs two domains
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from unet_jax import files
from unet_jax.analysis import plots
from unet_jax.analysis.loading import load
from unet_jax.analysis.results import Results
from unet_jax.conventions import EMPTY_MASK_CONVENTION, HD95_CONVENTIONS
from unet_jax.workdir import WorkdirPaths


@dataclasses.dataclass(frozen=True)
class Overlays:
  """Test images with their masks and each experiment's binary predictions."""

  images: np.ndarray  # (N, H, W, C)
  masks: np.ndarray  # (N, H, W, 1)
  ids: Sequence[str]  # image ids as in results.jsonl
  predictions: Mapping[str, np.ndarray]  # experiment name -> (N, H, W, 1)


# (workdir, images, experiment names) -> name -> predicted masks (N, H, W, K)
Predict = Callable[[str, np.ndarray, Sequence[str]], Mapping[str, np.ndarray]]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """A GitHub-flavoured markdown table; floats with 3 decimals."""
  def cell(v) -> str:
    if isinstance(v, (float, np.floating)):
      return '-' if np.isnan(v) else f'{v:.3f}'
    return str(v).replace('|', '\\|').replace('\n', ' ')
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def _percent(fraction: float) -> str:
  return '<1%' if 0 < fraction < 0.01 else f'{fraction:.0%}'


def _span(lo: int, hi: int) -> str:
  return f'{lo}' if lo == hi else f'{lo}-{hi}'


def _p(value: float) -> str:
  return 'nan' if np.isnan(value) else f'{value:.2g}'


def _hd95_conventions(res: Results) -> str:
  names = sorted({run.summary.hd95_convention for run in res.loaded})
  return '; '.join(f'{n}, {HD95_CONVENTIONS[n]}' for n in names
                   if n in HD95_CONVENTIONS)


def _summary_section(res: Results, domain: str) -> list[str]:
  """One table per metric, one row per experiment and variant (seeds pooled, not variants)."""
  out, one_seed = [], False
  for metric in res.metrics():
    if ':' in metric:  # one structure's: "By structure"
      continue
    table = res.summary('condition', metric, domain=domain)
    if table['mean'].isna().all():
      continue
    one_seed |= bool((table['n_runs'] < 2).any())
    out += [f'### {metric}', '', markdown_table(
        ('experiment', 'mean', 'median', '95% CI', 'seed SD', 'seeds', 'images',
         'undefined', 'trained'),
        [(r.condition, r.mean, r.median, f'[{r.ci_lo:.3f}, {r.ci_hi:.3f}]', r.seed_sd,
          r.n_runs, r.n_images, r.n_nan, _percent(r.trainable_fraction))
         for r in table.itertuples()]), '']
  if one_seed:
    out += ['With one seed the CI is over test images only: it says nothing of how '
            'another training run would score.', '']
  return out


def _answer_section(res: Results, domain: str, alpha: float, folder: str, tag: str,
                    delta: float | None = None) -> list[str]:
  """The answer first: the best strategy, and which others MCB shows worse (or within delta)."""
  table = res.recommend(domain=domain, alpha=alpha, delta=delta)
  if table.empty:
    return []
  best = table.iloc[0]
  named = lambda verdict: ', '.join(f'**{c}**' for c in
                                    table[table['verdict'] == verdict]['condition'])
  within, open_ = named('within delta'), named('not shown worse')
  head = f'Train **{best["condition"]}** (Dice {best["mean"]:.3f})'
  if (table['verdict'] == 'untested').any():
    sentence = (f'**{best["condition"]}** scored best (Dice {best["mean"]:.3f}), but with '
                'one seed run-to-run variation is unknown: no strategy is shown worse or '
                'close to it. Run 3 or more seeds (`grid.seed`) for an answer.')
  elif len(table) == 1:
    sentence = f'{head}: the only strategy in the results.'
  elif within or open_:
    parts = ([f'within {delta:g} of the best: {within}'] if within else []) + (
        [f'not shown worse: {open_}'] if open_ else [])
    sentence = f'{head}; ' + '; '.join(parts) + '.'
    if within:
      sentence += (f' Those within {delta:g} are at most {delta:g} below the best of the '
                   'others: among them, the one with fewest trainable parameters or the '
                   'shortest time gives up at most that.')
    if open_:
      sentence += (' Those not shown worse may or may not be as good as the best: this data '
                   'cannot tell (more seeds narrow the intervals).')
  else:
    sentence = f'{head}: every other strategy is shown worse.'
  empty = _empty_truth_count(res, domain)
  if empty:
    images = res.df[res.df['domain'] == domain]['image_id'].nunique()
    sentence += (f' Ranked on Dice over all {images} test images, {empty} of which have an '
                 'empty mask (Dice 1 for an empty prediction, 0 for any foreground); '
                 '"By image class" gives them as detection, and '
                 '`analysis.load(workdir).images(empty=False).recommend()` ranks on the '
                 'others.')
  stops = _stops(res, domain)
  verdict = lambda v: f'within {delta:g}' if v == 'within delta' else v
  rows = [(r.condition, f'**{verdict(r.verdict)}**', r.mean, f'[{r.ci_lo:.3f}, {r.ci_hi:.3f}]',
           r.diff_vs_best, _interval(r.mcb_lo, r.mcb_hi), int(r.n_runs),
           _count(r.trainable_params), _count(r.extra_params), _seconds(r.seconds),
           _step(r.best_step),
           _seconds(r.seconds_to_best), _at_cap(stops[stops['condition'] == r.condition]),
           'yes' if r.pareto else '')
          for r in table.itertuples()]
  out = [sentence, '',
         markdown_table(('strategy', 'verdict', 'Dice', '95% CI', 'vs best', 'MCB interval',
                         'runs', 'trainable', 'extra', 'time/run', 'steps to best',
                         'time to best', 'at cap', 'Pareto'), rows), '',
         _stopping_sentence(stops), '',
         _mcb_sentence(len(table), alpha, delta), '',
         'Vs best: mean paired difference from the best. Trainable: parameters trained in '
         'the last stage; extra: parameters added (adapters); time/run: seconds of its own '
         'training steps where its bundle ran experiment by experiment (on a CPU two at a '
         'time, so they compare '
         "strategies; '-' where one program trained them all). Steps to best: mean step of "
         "each run's best validation Dice, whose weights were scored; time to best: its own "
         'seconds per step x that step; at cap: runs that reached the step cap still '
         'improving, of those trained.',
         '']
  for x, title, name in (('trainable_params', 'Dice against trainable parameters', 'params'),
                         ('seconds', 'Dice against training time', 'time')):
    figure = plots.plot_tradeoff(table, os.path.join(folder, f'tradeoff-{name}{tag}.png'), x)
    if figure:
      out += [f'![{title}]({os.path.relpath(figure, os.path.dirname(folder))})', '']
  return out


def _empty_truth_count(res: Results, domain: str) -> int:
  rows = res.df[res.df['domain'] == domain]
  if 'true_pixels' not in rows:
    return 0
  return int(rows[rows['true_pixels'] == 0]['image_id'].nunique())


def _unit_interval(lo: float, hi: float) -> str:
  """A CI of a quantity in [0, 1] (Dice, a rate), clipped to it: with few seeds the
  t interval of a mean can reach past the range."""
  return f'[{max(lo, 0.0):.3f}, {min(hi, 1.0):.3f}]'


def _class_section(res: Results, domain: str) -> list[str]:
  """Dice per image class, and the images with an empty mask scored as detection."""
  classes = res.classes(domain)
  out = []
  if len(classes) > 1:
    table = res.by_class('condition', domain=domain)
    cell = {(name, label): f'{mean:.3f} {_unit_interval(lo, hi)}' for name, label, mean, lo, hi
            in table[['condition', 'class', 'mean', 'ci_lo', 'ci_hi']].itertuples(index=False)}
    order = list(dict.fromkeys(table['condition']))
    counts = table.groupby('class')['n_images'].max()
    out += [markdown_table(('experiment',) + tuple(f'{c} ({counts[c]})' for c in classes),
                           [(name,) + tuple(cell.get((name, c), '-') for c in classes)
                            for name in order]), '']
    best = {c: table[table['class'] == c].sort_values('mean', ascending=False)
            .iloc[0]['condition'] for c in classes}
    if len(set(best.values())) > 1:
      out += ['The best by mean differs by class: ' + ', '.join(
          f'{b} on {c}' for c, b in best.items()) + '. Which class matters is a clinical '
              'choice; `analysis.load(workdir).images(label=...).recommend()` answers '
              'for one.', '']
    else:
      out += [f'{best[classes[0]]} has the best mean on every class.', '']
  detection = res.empty_truth('condition', domain=domain)
  if len(detection):
    out += [f'{int(detection["n_images"].max())} test images have an empty mask. Scored as '
            'detection: the share of runs x images with any predicted foreground (false '
            'positives, run-aware 95% CI), the mean predicted area on them, and Dice on the '
            'images that have a structure. Intervals in this section are clipped to [0, 1].',
            '',
            markdown_table(('experiment', 'false positives', '95% CI', 'predicted px',
                            'Dice with structure'),
                           [(r.condition, r.false_positive_rate,
                             _unit_interval(r.fp_ci_lo, r.fp_ci_hi),
                             f'{r.predicted_pixels:.1f}', r.dice_with_structure)
                            for r in detection.itertuples()]), '']
  return out


def _structure_section(res: Results, domain: str) -> list[str]:
  """Dice and HD95 per structure of a set of several (run-aware 95% CIs)."""
  names = res.structures(domain)
  if len(names) < 2:
    return []
  out = ['Each structure scored as its own binary mask, in rows ordered by mean Dice. Dice '
         'in the tables above is the mean over the structures, HD95 and ASSD their mean where '
         'every structure has a distance. `analysis.load(workdir).recommend(metric='
         '"dice:<structure>")` answers for one structure. Dice intervals are clipped to '
         '[0, 1].', '']
  order = list(res.summary('condition', 'dice', domain=domain)['condition'])
  for metric, unit in (('dice', ''), ('hd95', ' (px)')):
    tables = {n: res.summary('condition', f'{metric}:{n}', domain=domain) for n in names
              if f'{metric}:{n}' in res.metrics()}
    if not tables:
      continue
    interval = _unit_interval if metric == 'dice' else _interval
    cell = {(n, r.condition): '-' if np.isnan(r.mean) else
            f'{r.mean:.3f} {interval(r.ci_lo, r.ci_hi)}'
            for n, t in tables.items() for r in t.itertuples()}
    out += [f'### {metric}{unit}', '',
            markdown_table(('experiment',) + tuple(tables),
                           [(c,) + tuple(cell.get((n, c), '-') for n in tables)
                            for c in order]), '']
    if metric == 'dice':
      best = {n: t.iloc[0]['condition'] for n, t in tables.items()}
      if len(set(best.values())) > 1:
        out += ['The best by mean Dice differs by structure: ' + ', '.join(
            f'{b} on {n}' for n, b in best.items()) + '.', '']
      else:
        out += [f'{best[names[0]]} has the best mean Dice on every structure.', '']
  return out


def _interval(lo: float, hi: float) -> str:
  return '-' if np.isnan(lo) or np.isnan(hi) else f'[{lo:.3f}, {hi:.3f}]'


def _mcb_sentence(k: int, alpha: float, delta: float | None) -> str:
  """How the answer's verdicts are made (``Results.recommend``, ``stats.mcb``)."""
  margin = (f" **within {delta:g}**: the interval starts above -{delta:g}, so it is at most "
            f'{delta:g} below the best of the others (whether or not also shown worse).'
            if delta is not None else
            " (`write_report(delta=...)` adds 'within delta': shown at most delta below.)")
  return (f"Verdicts: Hsu's multiple comparisons with the best (constrained MCB, Hsu 1984). "
          f'MCB interval: for each strategy, its Dice minus the best Dice of the others, '
          f'simultaneous {1 - alpha:.0%} intervals for all {k} (alpha = {alpha}), from the '
          'run-aware paired differences of every pair (matched seeds and images), with the '
          f'one-sided Bonferroni-t critical value t(1 - alpha/{max(k - 1, 1)}), which is '
          "conservative (`Results.recommend`). Every interval contains 0. **worse**: it "
          'ends at 0, so another strategy is better. **not shown worse**: it reaches above '
          '0, so the strategy may be the best; not a claim that it is as good.' + margin)


def _stops(res: Results, domain: str) -> pd.DataFrame:
  """One row per run of ``domain``: condition, base, stop_reason and its early-stopping rule.

  ``kind`` sorts the runs for the report: 'converged'; 'cap' (reached the step
  cap still improving); 'budget' (at the cap with ``finetune.patience`` = 0:
  no early stopping); 'old' (a summary from before training to convergence,
  stop_reason None); 'diverged'; 'no_validation'.
  """
  runs = res.runs[res.runs['domain'] == domain]
  out = []
  for run in runs.itertuples():
    rule = res.record(run.experiment, domain).early_stop or {}
    reason = run.stop_reason
    kind = ('old' if reason is None else
            'budget' if reason == 'cap' and rule.get('patience') == 0 else reason)
    out.append({'experiment': run.experiment, 'condition': run.condition, 'base': run.base,
                'stop_reason': reason, 'kind': kind, 'patience': rule.get('patience'),
                'min_delta': rule.get('min_delta')})
  return pd.DataFrame(out, columns=['experiment', 'condition', 'base', 'stop_reason', 'kind',
                                    'patience', 'min_delta'])


def _at_cap(stops: pd.DataFrame) -> str:
  """'k/n': runs of a group at the cap still improving, of n; '-' for older summaries only."""
  known = stops[stops['kind'] != 'old']
  return '-' if known.empty else f'{int((known["kind"] == "cap").sum())}/{len(known)}'


def _rules(stops: pd.DataFrame) -> str:
  """The early-stopping rules of ``stops``' runs, as 'patience P evaluations, min_delta D'."""
  rules = sorted({(int(r.patience), float(r.min_delta)) for r in stops.itertuples()
                  if r.patience is not None and r.min_delta is not None})
  return '; '.join(f'patience {p} evaluations, min_delta {d:g}' for p, d in rules) \
      or 'early-stopping rule not recorded'


def _named(stops: pd.DataFrame, kind: str, by: str = 'condition') -> str:
  """The groups with runs of ``kind``, bold, each with 'k/n' of its runs."""
  parts = []
  for name, group in stops.groupby(by, sort=False):
    k = int((group['kind'] == kind).sum())
    if k:
      parts.append(f'**{name}** ({k}/{len(group)} runs)')
  return ', '.join(parts)


# What each kind of stop means for the Dice it leaves (``_stops``), in report order.
_KIND_SENTENCES = {
    'cap': 'reached the step cap still improving: their Dice is a lower bound and the '
           'ranking may change with a longer cap (raise `finetune.steps` or `finetune.epochs`).',
    'budget': 'trained to the step cap without early stopping (`finetune.patience` = 0): a '
              'ranking at that budget.',
    'old': 'trained a fixed number of steps (older version): ranking at a budget.',
    'diverged': 'diverged: scored with their best weights before it.',
    'no_validation': 'had no validation images: their last weights were scored.',
}


def _stopping_sentence(stops: pd.DataFrame) -> str:
  """Whether the Dice of the table is converged: at the cap, converged, or an older budget."""
  kinds = set(stops['kind'])
  if kinds == {'converged'}:
    return (f'Every run converged ({_rules(stops)}): the weights scored are each run\'s '
            'best-validation ones.')
  if kinds == {'old'}:
    return ('Every run trained a fixed number of steps (older version of unet_jax, no early '
            'stopping): this is a ranking at that budget, not at convergence.')
  parts = [f'{_named(stops, kind)} {text}' for kind, text in _KIND_SENTENCES.items()
           if kind in kinds]
  if 'converged' in kinds:
    converged = stops[stops['kind'] == 'converged']
    parts.append(f'The other runs converged ({_rules(converged)}) and are scored with their '
                 'best-validation weights.')
  return ' '.join(parts)


def _step(value: float) -> str:
  """A step count (a mean or median), to one decimal where it has one; '-' when unknown."""
  return '-' if not np.isfinite(value) else f'{round(float(value), 1):g}'


def _count(value: float) -> str:
  if not np.isfinite(value):
    return '-'
  return f'{value / 1e6:.2f}M' if value >= 1e6 else f'{value / 1e3:.1f}k' if value >= 1e3 \
      else f'{value:.0f}'


def _seconds(value: float) -> str:
  return '-' if not np.isfinite(value) else f'{value:.1f} s'


def _norm_section(res: Results, domain: str) -> list[str]:
  """How far re-estimated BatchNorm statistics move each experiment's Dice."""
  rows = [(run.summary.base, run.summary.norm_check['change']) for run in res.loaded
          if run.domain == domain and run.summary.norm_check]
  if not rows:
    return []
  changes = pd.DataFrame(rows, columns=['base', 'change']).groupby('base')['change']
  table = changes.agg(['mean', 'min', 'max']).sort_values('mean')
  policies = sorted({str(run.summary.frozen_norm) for run in res.loaded
                     if run.domain == domain})
  worst = float(table[['min', 'max']].abs().to_numpy().max())
  verdict = ('within 0.02 for every run: the scores are those of the trained weights'
             if worst <= 0.02 else
             f'up to {worst:.3f}: these scores depend on the BatchNorm running averages, '
             'not only on the weights (docs/DESIGN.md, "Normalisation under freezing")')
  return [f'Test Dice with BatchNorm statistics re-estimated on the training images '
          f'(those the policy lets follow the target data: frozen_norm = '
          f'{", ".join(policies)}), minus the reported Dice; {verdict}.', '',
          markdown_table(('experiment', 'mean change', 'min', 'max'),
                         [(name, r['mean'], r['min'], r['max'])
                          for name, r in table.iterrows()]), '']


def _paired_section(res: Results, domain: str) -> list[str]:
  if 'full' not in res.groups('base', domain):
    return ['No experiment named `full`: no comparisons against it.', '']
  table = res.pairwise(metric='dice', reference='full', domain=domain)
  if table.empty:
    return []
  rows = [(r.a, r.mean_a, r.mean_b, f'{r.mean_diff:+.3f}',
           f'[{r.ci_lo:+.3f}, {r.ci_hi:+.3f}]', f'{r.rank_biserial:+.2f}', _p(r.p),
           _p(r.p_holm), f'{r.n_runs} x {r.n_images}')
          for r in table.itertuples()]
  out = [markdown_table(('experiment', 'Dice', 'full', 'diff', '95% CI', 'rank-biserial',
                         'p', 'p Holm', 'seeds x images'), rows), '']
  if (table['n_runs'] < 2).any():
    return out + ['One seed: differences and CIs over this run\'s test images only; no '
                  'p-values, since run-to-run variation is unknown.', '']
  test = ('each run\'s mean as one replicate (every seed drew its own split: '
          '`unet_jax.analysis.stats.resampled_mean`)' if res.resampled else
          'seeds and images as crossed random factors '
          '(`unet_jax.analysis.stats.crossed_mean`)')
  return out + [f'Paired on seed and image; p from a t-test with {test}, Holm-corrected '
                'over the rows of this table; rank-biserial over images.', '']


def _ci_sentence(res: Results) -> str:
  """How the scores' CIs were made, and what a replicate covers."""
  if res.resampled:
    return ('Means over seeds and test images; every seed drew its own split '
            '(`data.split_per_seed`), so each run\'s mean is one replicate and the 95% CI is '
            'over runs (`unet_jax.analysis.stats.resampled_mean`): it covers the training and '
            'the choice of split, on this data set.')
  return ('Means over seeds and test images; 95% CI with seeds and images as crossed random '
          'factors (`unet_jax.analysis.stats.crossed_mean`): every seed shares one split, so '
          'the statements are about this test set.')


def _stability_section(res: Results, domain: str) -> list[str]:
  runs = res.runs[res.runs['domain'] == domain]
  if runs.groupby('base')['seed'].nunique().max() < 2:
    return ['One seed per experiment: no rank stability across seeds.', '']
  rs = res.rank_stability(domain=domain)
  ranks = rs.ranks.loc[rs.ranks.mean(axis=1).sort_values().index]
  return [f"Kendall's W = {rs.kendall_w:.3f} (Friedman p = {_p(rs.p_value)}), mean "
          f'Spearman between seeds = {rs.mean_spearman:.3f}; ranks by mean Dice, 1 = best.',
          '', markdown_table(['experiment'] + list(ranks.columns),
                             [[name] + [f'{v:g}' for v in row]
                              for name, row in ranks.iterrows()]), '']


F5_CONVENTION = ("F5 (shallow reaches good Dice faster) is judged on the steps until validation "
                 "Dice first reaches 90% of full's best-validation Dice in the same seed "
                 "(interpolated between evaluations); full's best is its converged value, a "
                 "lower bound where full reached the step cap.")


def _convergence_section(res: Results, domain: str) -> list[str]:
  """Per base: best validation Dice, when it was reached, when training stopped, at what cost."""
  runs = res.runs[res.runs['domain'] == domain]
  conv = res.convergence(0.9)
  conv = conv[conv['domain'] == domain].set_index('experiment')
  # The summary's best validation Dice (the weights scored); else the curve's best.
  best = runs.set_index('experiment')['best_val_dice'].fillna(conv['best_val_dice'])
  if best.isna().all():
    return ['No validation Dice (no `experiments/<name>/history.jsonl`, none in the '
            'summaries): convergence speed (F5) cannot be judged.', '']
  with_full = 'full' in set(runs['base']) and conv.loc[
      conv['base'] == 'full', 'best_val_dice'].notna().any()
  reach = (res.convergence(0.9, reference='full') if with_full else res.convergence(0.9))
  reach = reach[reach['domain'] == domain].set_index('experiment')['steps']
  stops = _stops(res, domain).set_index('experiment')
  rows = []
  for base, group in runs.groupby('base', sort=False):
    names = group['experiment']
    rows.append((base, float(best[names].mean()), _step(group['best_step'].median()),
                 _step(group['stopped_at_step'].median()), _at_cap(stops.loc[names]),
                 _seconds(group['seconds_to_best'].mean()), _step(reach[names].median())))
  target = "full's best" if with_full else 'own best'
  out = [markdown_table(('experiment', 'best val Dice', 'median best step',
                         'median stopped step', 'at cap', 'mean time to best',
                         f'median steps to 90% of {target}'), rows), '',
         F5_CONVENTION + ('' if with_full else ' (No curves of full here: the last column '
                          "is against each run's own best.)"), '']
  without = sorted(set(runs.loc[runs['experiment'].map(conv['best_val_dice']).isna(),
                                'base']))
  if without:
    out += [f'No validation curves for: {", ".join(without)}.', '']
  return out


def _figures(res: Results, domain: str, folder: str, tag: str,
             overlays: Overlays | None) -> list[str]:
  out = []
  def link(title, path):
    out.extend([f'![{title}]({os.path.relpath(path, os.path.dirname(folder))})', ''])
  link('Dice per experiment', plots.plot_scores(
      res, os.path.join(folder, f'dice{tag}.png'), by='condition', domain=domain))
  curves = plots.plot_curves(res, os.path.join(folder, f'curves{tag}.png'), domain=domain)
  if curves:
    link('validation Dice against step', curves)
  else:
    out += ['(No validation curves to plot.)', '']
  firsts = res.runs[res.runs['domain'] == domain].drop_duplicates('base')
  records = [res.record(e, domain) for e in firsts['experiment']]
  if all(r.schedule for r in records):
    schedules = {r.base: plots.block_schedule(r) for r in records}
    steps = int(np.nanmax(firsts['steps']))
    link('trained blocks per step', plots.plot_schedules(
        schedules, steps, os.path.join(folder, f'schedules{tag}.png')))
  else:
    out += ['(No schedules recorded: no schedule chart.)', '']
  if overlays is None:
    out += ['(No prediction overlays: pass the test images to `write_report(overlays=...)`.)',
            '']
  else:
    out += _overlay_figure(res, domain, folder, tag, overlays, link)
  return out


def _overlay_figure(res, domain, folder, tag, overlays: Overlays, link) -> list[str]:
  """Best and worst two test images by mean Dice over all runs."""
  df = res.df[res.df['domain'] == domain]
  per_image = df.groupby('image_id')['dice'].mean()
  ids = [str(i) for i in overlays.ids]
  per_image = per_image[per_image.index.isin(ids)].sort_values(ascending=False)
  if per_image.empty:
    return ['(Overlay images match no image id in the results.)', '']
  chosen = list(dict.fromkeys(list(per_image.index[:2]) + list(per_image.index[-2:])))
  index = [ids.index(i) for i in chosen]
  preds = {name: np.asarray(p)[index] for name, p in overlays.predictions.items()}
  titles = [f'{i}\nmean Dice {per_image[i]:.2f}' for i in chosen]
  link('best and worst test images', plots.plot_overlays(
      np.asarray(overlays.images)[index], np.asarray(overlays.masks)[index], preds,
      os.path.join(folder, f'overlays{tag}.png'), titles))
  return []


def saved_overlays(workdir: str, res: Results, predict: Predict | None = None
                   ) -> Overlays | None:
  """Overlays from the sweep's ``test_set.npz`` and the predictions it saved, one run per
  base.

  Only images that every chosen run was tested on are shown (with folds, a
  run's test images are its fold's). None when the work directory has no
  test set file or no weights. A work directory scored before predictions were saved has
  none to show unless ``predict`` runs the networks (``launch/report.py`` passes
  ``unet_jax.sweep.evaluate.predictions_from_weights``; the analysis itself runs no network).
  """
  paths = WorkdirPaths(workdir)
  path = paths.test_set
  if not os.path.exists(path):
    return None
  runs = res.runs[res.runs['domain'] == res.df['domain'].iloc[0]]
  first = runs.drop_duplicates('base')['experiment']
  names = [n for n in first
           if os.path.isdir(paths.experiment(n).weights)]
  if not names:
    return None
  tested = set.intersection(*(set(res.df.loc[res.df['experiment'] == n, 'image_id'])
                              for n in names))
  with np.load(path) as f:
    ids = [str(i) for i in f['ids']]
    keep = [i for i, name in enumerate(ids) if name in tested]
    if not keep:
      return None
    images, masks = f['images'][keep], f['masks'][keep]
  ids = [ids[i] for i in keep]
  saved = [paths.experiment(n).predictions for n in names]
  if all(os.path.exists(p) for p in saved):  # written when the runs were scored
    predictions = {}
    for name, path in zip(names, saved):
      got, masks_of = files.read_masks(path)
      where = {image: i for i, image in enumerate(got)}
      predictions[name] = masks_of[[where[i] for i in ids]]
    return Overlays(images, masks, ids, predictions)
  if predict is None:  # scored before predictions were saved
    return None
  return Overlays(images, masks, ids, predict(workdir, images, names))


def _mean_seconds(seconds: list[float]) -> str:
  finite = [s for s in seconds if np.isfinite(s)]
  return f'{np.mean(finite):.1f}' if finite else '-'


def console_summary(res: Results, alpha: float = 0.05) -> str:
  """The table a sweep prints: one row per experiment and variant, best first, then verdicts.

  ``dice`` is the mean over seeds and test images with its run-aware 95%
  CI; ``seed SD`` and ``seeds`` show how much single runs differ;
  ``best@/stop`` is the median step of the best validation Dice (whose
  weights were scored) over the median step training stopped at, marked
  ``*`` when a run reached the step cap still improving (a footnote says so).
  """
  blocks, marked = [], False
  for domain in res.domains:
    table = res.summary('condition', domain=domain)
    runs = res.runs[res.runs['domain'] == domain]
    stops = _stops(res, domain).set_index('experiment')
    rows = []
    for r in table.itertuples():
      mine = runs[runs['condition'] == r.condition]
      run_means = res.df[(res.df['domain'] == domain) & (res.df['condition'] == r.condition)
                         ].groupby(['seed'])['dice'].mean()
      # Its own training time where the bundle ran one experiment at a time,
      # else its share of the bundle's.
      records = [res.record(e, domain) for e in mine['experiment']]
      seconds = [(r.own_seconds if r.own_seconds is not None else r.seconds) or np.nan
                 for r in records]
      # Median step of the best validation Dice / median step it stopped at
      # (older summaries: the steps it trained); '*': a run at the cap still improving.
      stopped = mine['stopped_at_step'].fillna(mine['steps'])
      capped = bool((stops.loc[mine['experiment'], 'kind'] == 'cap').any())
      marked |= capped
      rows.append((r.condition, _percent(r.trainable_fraction), f'{r.mean:.3f}',
                   '-' if np.isnan(r.seed_sd) else f'{r.seed_sd:.3f}',
                   f'{run_means.min():.3f}-{run_means.max():.3f} ({len(run_means)})',
                   f'[{r.ci_lo:.3f}, {r.ci_hi:.3f}]',
                   f'{_step(mine["best_step"].median())}/{_step(stopped.median())}'
                   + ('*' if capped else ''),
                   _mean_seconds(seconds)))
    header = ('experiment', 'trained', 'dice', 'seed SD', 'seed means (n)', '95% CI',
              'best@/stop', 's/run')
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    line = lambda cells: '  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    title = [f'{domain}:'] if len(res.domains) > 1 else []
    blocks.append('\n'.join(title + [line(header), line(['-' * w for w in widths])]
                            + [line(row) for row in rows]))
  if marked:
    blocks[-1] += ('\n* a run reached the step cap still improving: its Dice is a lower bound '
                   '(raise finetune.steps or finetune.epochs)')
  found = res.findings(alpha)
  verdicts = '\n'.join(f'{f.id} {f.verdict:<13} {f.claim}' for f in found)
  return '\n\n'.join(blocks + [verdicts])


def _data_lines(paths: WorkdirPaths) -> list[str]:
  """The target set from data.json: classes, split sizes, files skipped, copies kept together."""
  if not os.path.exists(paths.data):
    return []
  info = files.read_json(paths.data)
  classes = ', '.join(f'{n} {c}' for c, n in info['classes'].items())
  sizes = ', '.join(f'{n} {part}' for part, n in info['split_sizes'].items())
  split = ('every seed its own split (`data.split_per_seed`)' if info['split_per_seed']
           else 'one split for every seed')
  out = [f'Data: {info["images"]} images of {info["source"]} ({classes}); {sizes} '
         f'({split}).']
  if info['skipped']:
    out.append(f'Skipped as unusable: {len(info["skipped"])} (listed in data.json), e.g. '
               f'{info["skipped"][0]}.')
  if info['duplicates']:
    shown = '; '.join(' = '.join(g) for g in info['duplicates'][:3])
    out.append(f'Copies: {len(info["duplicates"])} group(s) of images identical after '
               f'decoding, each kept in one split part (all in data.json): {shown}.')
  return out + ['']


def _race_section(race: dict, folder: str, res: Results, alpha: float) -> list[str]:
  """The race's decision first (race.json), then who went out when, each strategy's
  MCB interval against the best on all its replicates, and the race's figure."""
  settings = race['settings']
  # Each strategy's mean at its last look: where it went out, or the final one.
  at = {look['replicates']: look['means'] for look in race['looks']}
  final = race['looks'][-1]['replicates'] if race['looks'] else 0
  last = {n: at.get(race['eliminated'].get(n, final), {}).get(n, float('nan'))
          for n in race['strategies']}
  domain = res.df['domain'].iloc[0]
  metric = settings.get('metric', 'dice')
  table = res.recommend(metric, domain=domain, alpha=alpha,
                        delta=race['delta']).set_index('condition')
  rows = []
  for name in sorted(race['strategies'], key=lambda n: (race['eliminated'].get(n, 10 ** 9),
                                                        last[n]), reverse=True):
    out = race['eliminated'].get(name)
    r = table.loc[name] if name in table.index else None
    rows.append((name, 'survivor' if out is None else f'after {out}',
                 race['replicates'][name], last[name],
                 '-' if r is None else _interval(r['mcb_lo'], r['mcb_hi']),
                 '-' if r is None else _count(r['trainable_params']),
                 '-' if r is None else _seconds(r['seconds'])))
  kind = ('A replicate is a seed that drew its own split (`data.split_per_seed`): the '
          'guarantee is about this data set, averaged over its splits; not about other data '
          'sets of the same size (docs/DESIGN.md 5e).' if race.get('resampled') else
          'A replicate is a seed on this sweep\'s one data split: the guarantee is about this '
          'test set; `data.split_per_seed=True` makes it about the data set (docs/DESIGN.md '
          '5e).')
  out = ['## The race', '', f'**{race["answer"]}**', '',
         *([f'Ranked on `{metric}` (race.metric), one structure\'s Dice.', '']
           if metric != 'dice' else []),
         markdown_table(('strategy', 'eliminated', 'replicates', 'mean at its last look',
                         f'MCB interval ({1 - alpha:.0%})', 'trainable', 'time/run'), rows), '',
         f'Kim & Nelson (2001) fully sequential procedure on paired replicate means: delta '
         f'= {settings["delta"]:g} Dice, alpha = {settings["alpha"]:g}, n0 = {settings["n0"]}, '
         f'{settings["per_round"]} replicate(s) per round, at most '
         f'{settings["max_replicates"]}; {len(race["rounds"])} round(s), '
         f'{sum(race["replicates"].values())} runs in all. {kind} MCB interval: the '
         "strategy's Dice minus the best of the others on all its replicates (Hsu's "
         'multiple comparisons with the best, as in the next section); it describes the '
         'results and decides nothing in the race, whose decisions are the eliminations.', '']
  figure = plots.plot_race(race, os.path.join(folder, 'race.png'))
  if figure:
    out += [f'![The race]({os.path.relpath(figure, os.path.dirname(folder))})', '']
  return out


def write_report(workdir: str, *, overlays: Overlays | None = None,
                 also: Sequence[str] = (), alpha: float = 0.05,
                 delta: float | None = None, predict: Predict | None = None) -> str:
  """Writes ``<workdir>/report.md`` and its figures; returns the report's path.

  ``also`` adds work directories of other domains (F4 compares ultrasound
  with chest X-ray); ``overlays`` adds a figure of predictions on the best and
  worst test images (of ``workdir``'s domain); by default they come from the
  sweep's ``test_set.npz`` and saved predictions, or ``predict`` (:func:`saved_overlays`).
  ``delta`` (Dice units) adds the
  answer's 'within delta' verdict (``Results.recommend``).
  """
  workdir = os.path.abspath(workdir)
  res = load([workdir, *also])
  paths = WorkdirPaths(workdir)
  if overlays is None:
    overlays = saved_overlays(workdir, res, predict)
  folder = paths.report_dir
  os.makedirs(folder, exist_ok=True)
  main_domain = res.df['domain'].iloc[0]  # workdir's rows come first
  seeds = res.runs.groupby(['domain', 'base'])['seed'].nunique()
  lines = [f'# Sweep report: {os.path.basename(workdir)}', '',
           f'Work directory `{workdir}`; generated '
           f'{datetime.datetime.now().isoformat(timespec="seconds")}.',
           f'{len(res.runs)} runs of {res.runs["base"].nunique()} experiments, '
           f'{_span(seeds.min(), seeds.max())} seed(s) each, '
           f'{res.df["image_id"].nunique()} test images; domains: {", ".join(res.domains)}.',
           f'Empty masks: {EMPTY_MASK_CONVENTION}. HD95: '
           f'{_hd95_conventions(res)}.', '']
  lines += _data_lines(paths)
  if res.notes:
    lines += ['**Incomplete results:**', ''] + [f'- {n}' for n in res.notes] + ['']
  if os.path.exists(paths.race):
    race = files.read_json(paths.race)
    lines += _race_section(race, folder, res, alpha)
    delta = race['delta'] if delta is None else delta
  ordered = [main_domain] + [d for d in res.domains if d != main_domain]
  for domain in ordered:  # the work directory's own domain first
    tag = '' if domain == main_domain else f'-{domain}'
    lines += [f'## What to train ({domain})', '']
    lines += _answer_section(res, domain, alpha, folder, tag, delta)
  found = res.findings(alpha)
  lines += ['## Findings (DESIGN.md F1-F6)', '',
            markdown_table(('id', 'verdict', 'claim', 'evidence'),
                           [(f.id, f'**{f.verdict}**', f.claim, f.evidence) for f in found]),
            '', f'Two-sided tests at alpha = {alpha}; see `unet_jax/analysis/findings.py` for the '
            'rule behind each verdict.', '']
  for domain in res.domains:
    tag = '' if domain == main_domain else f'-{domain}'
    head = f' ({domain})' if len(res.domains) > 1 else ''
    lines += [f'## Scores{head}', '', _ci_sentence(res), '']
    lines += _summary_section(res, domain)
    by_structure = _structure_section(res, domain)
    if by_structure:
      lines += [f'## By structure{head}', ''] + by_structure
    classes = _class_section(res, domain)
    if classes:
      lines += [f'## By image class{head}', ''] + classes
    lines += [f'## Against full fine-tuning{head}', ''] + _paired_section(res, domain)
    norm = _norm_section(res, domain)
    if norm:
      lines += [f'## BatchNorm check{head}', ''] + norm
    lines += [f'## Rank stability across seeds{head}', ''] + _stability_section(res, domain)
    lines += [f'## Convergence{head}', ''] + _convergence_section(res, domain)
    lines += [f'## Figures{head}', '']
    lines += _figures(res, domain, folder, tag,
                      overlays if domain == main_domain else None)
  files.write_atomic(paths.report, '\n'.join(lines).rstrip() + '\n')
  return paths.report

