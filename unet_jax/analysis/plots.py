"""Figures of a sweep as PNG files (matplotlib, Agg backend: no display needed).

- :func:`plot_scores`: mean metric per experiment with its 95% CI;
- :func:`plot_tradeoff`: mean Dice against trainable parameters or training
  time, the recommendation's verdicts coloured, the Pareto front joined;
- :func:`plot_curves`: validation Dice against step (needs ``history.jsonl``);
- :func:`plot_schedules`: which blocks train at each step, per experiment;
- :func:`plot_overlays`: image, ground truth and each experiment's prediction.

Each takes what it draws and an output path and returns the path, or None
when there is nothing to draw (the caller says so in its report).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import matplotlib.ticker  # noqa: E402

from unet_jax import files  # noqa: E402
from unet_jax.analysis.results import Results  # noqa: E402
from unet_jax.records import ExperimentSummary  # noqa: E402


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  try:
    with files.atomic_path(path, suffix='.png') as tmp:  # a reader never sees half a PNG
      fig.savefig(tmp, dpi=100, bbox_inches='tight')
  finally:
    plt.close(fig)
  return path


def plot_scores(res: Results, path: str, metric: str = 'dice', *, by: str = 'base',
                domain: str | None = None) -> str:
  """Mean ``metric`` per group with its run-aware 95% CI, best at the top."""
  table = res.summary(by, metric, domain=domain)
  table = table.iloc[::-1]  # barh draws bottom-up
  fig, ax = plt.subplots(figsize=(6, 0.35 * len(table) + 1.2))
  y = np.arange(len(table))
  err = np.vstack([table['mean'] - table['ci_lo'], table['ci_hi'] - table['mean']])
  ax.barh(y, table['mean'], color='#8fb3d9')
  ax.errorbar(table['mean'], y, xerr=err, fmt='none', ecolor='black', capsize=3)
  ax.set_yticks(y, table[by])
  ax.set_xlabel(f'{metric} (mean, 95% CI over seeds and images)')
  if res.higher[metric] and metric in ('dice', 'iou'):
    ax.set_xlim(0, 1)
  ax.grid(axis='x', alpha=0.3)
  return _save(fig, path)


_VERDICT_COLOURS = {'best': '#d62728', 'within delta': '#2ca02c',
                    'not shown worse': '#ff7f0e', 'worse': '#7f7f7f', 'untested': '#1f77b4'}


def plot_tradeoff(table: pd.DataFrame, path: str, x: str, *, by: str = 'condition',
                  metric: str = 'dice') -> str | None:
  """``Results.recommend``'s table: mean against ``x`` ('trainable_params' or
  'seconds'), CI bars, coloured by verdict; the Pareto front (fewest
  trainable parameters for the score) joined when ``x`` is parameters."""
  table = table[np.isfinite(table[x].to_numpy(dtype=float))]
  if table.empty:
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for verdict, group in table.groupby('verdict'):
    err = np.vstack([group['mean'] - group['ci_lo'], group['ci_hi'] - group['mean']])
    ax.errorbar(group[x], group['mean'], yerr=err, fmt='o', capsize=2,
                color=_VERDICT_COLOURS.get(verdict, 'black'), label=verdict)
  for row in table.itertuples():
    ax.annotate(getattr(row, by), (getattr(row, x), row.mean), fontsize=7,
                xytext=(3, 3), textcoords='offset points')
  if x == 'trainable_params':
    front = table[table['pareto']].sort_values(x)
    ax.plot(front[x], front['mean'], '--', color='black', lw=0.8, label='Pareto front')
    positive = table[x][table[x] > 0]
    ax.set_xscale('symlog', linthresh=float(positive.min()) if len(positive) else 1.0)
    ax.set_xlabel('trainable parameters (log scale)')
  else:
    ax.set_xlabel('training time per run (s, own steps)')
  ax.set_ylabel(f'{metric} (mean, 95% CI)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_curves(res: Results, path: str, *, domain: str | None = None) -> str | None:
  """Validation Dice against step, one line per base (mean over its runs).

  None when no run has a ``history.jsonl`` with ``val_dice``.
  """
  runs = res.runs if domain is None else res.runs[res.runs['domain'] == domain]
  curves: dict[str, list] = {}
  for run in runs.itertuples():
    h = res.history(run.experiment, run.domain)
    if h is not None and 'val_dice' in h and h['val_dice'].notna().any():
      curves.setdefault(run.base, []).append(h.dropna(subset=['val_dice']))
  if not curves:
    return None
  fig, ax = plt.subplots(figsize=(7, 4))
  for base, hs in curves.items():
    mean = pd.concat(hs).groupby('step')['val_dice'].agg(['mean', 'min', 'max'])
    (line,) = ax.plot(mean.index, mean['mean'], label=base)
    if len(hs) > 1:
      ax.fill_between(mean.index, mean['min'], mean['max'], color=line.get_color(), alpha=0.15)
  ax.set_xlabel('step')
  ax.set_ylabel('validation Dice (mean; band: min-max over seeds)')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small', loc='lower right')
  return _save(fig, path)


@dataclasses.dataclass(frozen=True)
class BlockSchedule:
  """Fraction of each block's parameters trained in each stage."""

  starts: tuple[int, ...]
  blocks: tuple[str, ...]  # data-flow order
  trained: np.ndarray  # (stages, blocks) in [0, 1]


def block_schedule(summary: ExperimentSummary) -> BlockSchedule:
  """A run's schedule as the share of each block trained per stage (its summary record)."""
  blocks = summary.blocks
  trained = [[stage.block_fractions[b] for b in blocks] for stage in summary.schedule]
  return BlockSchedule(tuple(stage.start for stage in summary.schedule), blocks,
                       np.asarray(trained))


def plot_schedules(schedules: Mapping[str, BlockSchedule], steps: int, path: str) -> str:
  """One panel per experiment: blocks (rows) against steps, dark where trained."""
  names = list(schedules)
  blocks = schedules[names[0]].blocks
  fig, axes = plt.subplots(len(names), 1, sharex=True, squeeze=False,
                           figsize=(7, 0.25 * len(blocks) * len(names) + 0.8))
  for ax, name in zip(axes[:, 0], names):
    s = schedules[name]
    edges = list(s.starts) + [max(steps, s.starts[-1] + 1)]
    ax.pcolormesh(edges, np.arange(len(blocks) + 1), s.trained.T, cmap='Greys',
                  vmin=0, vmax=1.3, shading='flat')
    ax.set_yticks(np.arange(len(blocks)) + 0.5, blocks, fontsize=6)
    ax.invert_yaxis()
    ax.set_ylabel(name, rotation=0, ha='right', va='center', fontsize=8)
    ax.set_xlim(0, steps)  # stages that start after the last step never happen
  axes[-1, 0].set_xlabel('step (dark: trained; grey: partly trained)')
  return _save(fig, path)


def plot_overlays(images: np.ndarray, masks: np.ndarray,
                  predictions: Mapping[str, np.ndarray], path: str,
                  titles: Sequence[str] | None = None) -> str:
  """Rows of cases: the image, its ground truth, then each experiment's prediction.

  ``images`` (N, H, W[, C]), ``masks`` and every prediction (N, H, W[, 1])
  binary. Ground truth is drawn green and predictions red, as contours over
  the image; masks of several structures (N, H, W, K) draw each structure in its
  colour (:data:`STRUCTURE_COLOURS`), ground truth dashed under the predictions.
  ``titles`` label the rows (image ids, Dice).
  """
  images, masks = np.asarray(images), np.asarray(masks)
  several = masks.ndim == 4 and masks.shape[-1] > 1
  n, cols = len(images), 2 + len(predictions)
  fig, axes = plt.subplots(n, cols, squeeze=False, figsize=(1.6 * cols, 1.7 * n))
  for i in range(n):
    grey = images[i, ..., 0] if images.ndim == 4 else images[i]
    panels = [('image', None), ('ground truth', masks[i])] + [
        (name, np.asarray(p)[i]) for name, p in predictions.items()]
    for ax, (label, mask) in zip(axes[i], panels):
      ax.imshow(grey, cmap='gray')
      if mask is not None and several:  # one colour per structure; truth dashed
        for k in range(masks.shape[-1]):
          colour = STRUCTURE_COLOURS[k % len(STRUCTURE_COLOURS)]
          if label != 'ground truth':
            _contour(ax, mask[..., k], colour, 0.8)
          _contour(ax, masks[i, ..., k], colour, 0.5 if label != 'ground truth' else 0.8,
                   'dashed' if label != 'ground truth' else 'solid')
      elif mask is not None and label != 'ground truth':
        _contour(ax, masks[i], 'lime', 0.5)
        _contour(ax, mask, 'red', 0.8)
      elif mask is not None:
        _contour(ax, mask, 'lime', 0.8)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(label, fontsize=7)
    if titles is not None:
      axes[i, 0].set_ylabel(titles[i], fontsize=6)
  return _save(fig, path)


STRUCTURE_COLOURS = ('red', 'yellow', 'cyan', 'magenta', 'orange', 'lime')


def _contour(ax, mask, colour: str, width: float, style: str = 'solid') -> None:
  mask = np.squeeze(np.asarray(mask, np.float32))
  if 0 < mask.sum() < mask.size:  # an empty or full mask has no contour
    ax.contour(mask, levels=[0.5], colors=colour, linewidths=width, linestyles=style)


def plot_race(race: Mapping, path: str) -> str | None:
  """A race (race.json): each strategy's mean per look, a cross where it was
  eliminated, and the indifference zone below the leader shaded."""
  looks = race.get('looks') or []
  if not looks:
    return None
  fig, ax = plt.subplots(figsize=(7, 4.5))
  steps = [look['replicates'] for look in looks]
  leader = [max(look['means'][n] for n in look['means']
                if race['eliminated'].get(n, 10 ** 9) >= look['replicates']) for look in looks]
  ax.fill_between(steps, np.asarray(leader) - race['delta'], leader, color='#ff7f0e',
                  alpha=0.15, label=f'within delta = {race["delta"]:g} of the leader')
  for name in race['strategies']:
    out = race['eliminated'].get(name)
    kept = [(look['replicates'], look['means'][name]) for look in looks
            if out is None or look['replicates'] <= out]
    xs, ys = zip(*kept)
    line, = ax.plot(xs, ys, marker='.', label=name)
    if out is not None:
      ax.plot(xs[-1], ys[-1], marker='x', markersize=10, color=line.get_color())
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel('replicates (seeds) per strategy')
  ax.set_ylabel('mean test Dice so far')
  ax.set_title(f'race: {"decided" if race["decided"] else "undecided"} '
               f'(x: eliminated; alpha {race["alpha"]:g})')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='best', ncol=2)
  return _save(fig, path)
