"""Reading results into a Results: from work directories or from any table.

``load(workdir)`` reads what a sweep wrote, through the typed records and
paths the sweep writes them with (``unet_jax.records``,
``unet_jax.workdir``): ``results.jsonl``, every
``experiments/<name>/summary.json``, ``config.json`` (the resolved
settings: the domain, the sweep's run names) and, when the engine wrote
them, ``history.jsonl`` curves. ``from_frame(df)`` takes a table of
per-image scores from anywhere (nnU-Net, MONAI, a PyTorch loop).

A work directory may be loaded while its sweep is still running or after it
was interrupted. The rows are those of ``results.jsonl`` (rewritten whole,
atomically, after each bundle) plus, for this sweep's runs it does not list
yet, ``experiments/<name>/results.jsonl`` of those marked finished (their
``summary.json`` exists, written last); folders of other runs (an earlier
sweep's in the same folder) are left out. :attr:`Results.notes` says what
was added, left out or is still missing.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import pandas as pd

from unet_jax import files
from unet_jax.analysis.results import HIGHER_IS_BETTER, LoadedRun, Results, structure_metrics
from unet_jax.errors import UserError
from unet_jax.records import ExperimentSummary, SweepRecord, read_summary, read_sweep
from unet_jax.workdir import WorkdirPaths


def load(workdirs: str | os.PathLike | Sequence[str | os.PathLike]) -> Results:
  """Loads one work directory, or several (for instance one per domain).

  Each directory's domain is its sweep's target source (``config.json``).
  Directories of one domain are compared as one set of conditions, their
  runs named ``<folder>:<experiment>`` (:func:`_labels`): for instance the
  same data from two pretrainings. Raises UserError when a directory has no
  results.
  """
  if isinstance(workdirs, (str, os.PathLike)):
    workdirs = [workdirs]
  notes: list[str] = []
  frames, loaded, sweeps = [], [], {}
  roots = [os.path.abspath(os.fspath(w)) for w in workdirs]
  labels = _labels(roots)
  for root in roots:
    rows, runs, sweep = _load_one(WorkdirPaths(root), notes, labels.get(root, ''))
    frames.append(rows)
    loaded += runs
    sweeps.setdefault(sweep.target_source, sweep)
  runs = pd.DataFrame([_run_row(r) for r in loaded])
  clash = runs[runs.duplicated(['domain', 'experiment'], keep=False)]
  if len(clash):
    raise UserError('several work directories hold the same domain and experiment: '
                    + ', '.join(sorted(set(clash['domain'] + '/' + clash['experiment']))))
  return _results(pd.concat(frames, ignore_index=True), runs, loaded, sweeps, notes)


def _labels(roots: Sequence[str]) -> dict[str, str]:
  """Work directory -> label, for directories whose domain another one shares.

  Two sweeps of one target domain (the paper's U-Net and an ImageNet ResNet
  encoder on the same data, say) are compared as one set of conditions:
  their runs are named ``<label>:<experiment>``, the label being the folder's
  name (its parent's too where two folders share a name).
  """
  domains = {r: read_sweep(WorkdirPaths(r).config).target_source for r in roots}
  shared = [r for r in roots if list(domains.values()).count(domains[r]) > 1]
  names = {r: os.path.basename(r) for r in shared}
  if len(set(names.values())) < len(names):
    names = {r: '/'.join(r.split(os.sep)[-2:]) for r in shared}
  return names


def _load_one(paths: WorkdirPaths, notes: list[str], label: str = ''
              ) -> tuple[pd.DataFrame, list[LoadedRun], SweepRecord]:
  """Rows, runs and settings of one work directory (module docstring); with a
  ``label``, its runs and experiments are named ``<label>:<name>``."""
  sweep = read_sweep(paths.config)
  listed = paths.listed_experiments()
  records = files.read_jsonl(paths.results) if os.path.exists(paths.results) else []
  have = {r['experiment'] for r in records}
  # The sweep rewrites results.jsonl after each bundle, but marks each
  # experiment finished (summary.json after its own results.jsonl) as it goes.
  extra = []
  for name in (n for n in listed if n not in have and n in sweep.runs):
    where = paths.experiment(name)
    if os.path.exists(where.summary) and os.path.exists(where.results):
      extra += files.read_jsonl(where.results)
  if extra:
    added = sorted({r['experiment'] for r in extra})
    notes.append(f'{paths.root}: {", ".join(added)} read from experiments/<name>/results.jsonl '
                 '(finished after the last results.jsonl was written)')
  rows = pd.DataFrame(records + extra)
  if rows.empty:
    raise UserError(f'no results in {paths.root}: not a sweep work directory, or its sweep '
                    'has not finished an experiment yet')
  rows['domain'] = sweep.target_source
  runs = [_loaded_run(paths, name, rows, sweep.target_source, notes)
          for name in dict.fromkeys(rows['experiment'])]
  _note_missing(paths, sweep, listed, set(rows['experiment']), runs, notes)
  if label:
    rows['experiment'] = label + ':' + rows['experiment'].astype(str)
    runs = [dataclasses.replace(r, folder=r.summary.name, summary=dataclasses.replace(
        r.summary, name=f'{label}:{r.summary.name}', base=f'{label}:{r.summary.base}'))
            for r in runs]
  return rows, runs, sweep


def _loaded_run(paths: WorkdirPaths, name: str, rows: pd.DataFrame, domain: str,
                notes: list[str]) -> LoadedRun:
  where = paths.experiment(name)
  if os.path.exists(where.summary):
    summary = read_summary(where.summary)
  else:
    notes.append(f'{paths.root}: {name} has results but no summary.json')
    seed = int(rows.loc[rows['experiment'] == name, 'seed'].iloc[0])
    summary = ExperimentSummary(name=name, base=name, seed=seed)
  return LoadedRun(domain, paths.root, summary)


def _note_missing(paths: WorkdirPaths, sweep: SweepRecord, listed: list[str],
                  with_rows: set[str], runs: list[LoadedRun], notes: list[str]) -> None:
  pending = [n for n in listed if n not in with_rows and n in sweep.runs]
  if pending:
    notes.append(f'{paths.root}: no results yet for {", ".join(pending)} (sweep running or '
                 'interrupted)')
  others = [n for n in listed if n not in sweep.runs]
  if others:
    notes.append(f'{paths.root}: left out {len(others)} experiment folder(s) of another sweep '
                 f'({", ".join(others[:4])}{" ..." if len(others) > 4 else ""})')
  bases = {r.summary.base for r in runs}
  missing = [n for n in sweep.experiments if n not in bases]
  if missing:
    notes.append(f'{paths.root}: config.json lists {", ".join(missing)} but no results of '
                 'theirs exist yet')


def _results(df: pd.DataFrame, runs: pd.DataFrame, loaded: list[LoadedRun], sweeps,
             notes, higher: dict[str, bool] | None = None) -> Results:
  """Joins the per-image rows with the runs table into a Results."""
  df = df.drop(columns=[c for c in ('base', 'variant', 'condition', 'init') if c in df])
  df = df.merge(runs[['domain', 'experiment', 'base', 'variant', 'condition', 'init']],
                on=['domain', 'experiment'], how='left')
  df['image_id'] = df['image_id'].astype(str)
  if 'fold' not in df:
    df['fold'] = None
  if 'label' not in df:
    df['label'] = ''
  higher = higher or {**HIGHER_IS_BETTER, **structure_metrics(df.columns)}
  front = ['domain', 'experiment', 'base', 'variant', 'condition', 'seed', 'fold', 'init',
           'image_id', 'label'] + [m for m in higher if m in df]
  df = df[front + [c for c in df.columns if c not in front]]
  return Results(df, runs, loaded, sweeps, notes, higher)


def from_frame(frame: pd.DataFrame, *, higher_is_better: dict[str, bool] | None = None
               ) -> Results:
  """Results from any table of per-image scores, e.g. of nnU-Net, MONAI or a PyTorch loop.

  Args:
    frame: one row per (experiment, seed, image_id) with one or more metric
      columns (``dice``, ``iou``, ``hd95``, ``assd`` or others) and
      optionally ``domain``, ``fold``, ``label`` (the image's class, for
      ``by_class``) and ``true_pixels`` / ``pred_pixels`` (mask areas, for
      ``empty_truth`` and ``images(empty=...)``). ``experiment`` names the procedure
      compared (``full``, ``head``, ...), ``seed`` the training run.
    higher_is_better: direction of metrics other than the four above
      (``{'surface_dice': True}``).

  Returns:
    A :class:`Results` with ``summary``, ``paired``, ``pairwise`` and
    ``rank_stability``; the statistics are those of a sweep's results.

  Example::

    df = pd.read_csv('my_runs.csv')      # experiment, seed, image_id, dice
    res = analysis.from_frame(df)
    res.paired('decoder', 'full')
  """
  if not isinstance(frame, pd.DataFrame):
    raise UserError(f'from_frame needs a pandas DataFrame; got {type(frame).__name__}')
  required = ('experiment', 'seed', 'image_id')
  missing = [c for c in required if c not in frame]
  if missing:
    raise UserError(f'the frame lacks column(s) {", ".join(missing)}; it needs '
                    f'{", ".join(required)} and one or more metric columns')
  higher = {**HIGHER_IS_BETTER, **structure_metrics(frame.columns), **(higher_is_better or {})}
  areas = {c for c in frame.columns
           if str(c).partition(':')[0] in ('true_pixels', 'pred_pixels')}
  metrics = _metric_columns(frame, higher, set(required) | {'domain', 'fold', 'label'} | areas)
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
  if 'fold' in df and df['fold'].notna().any():  # a run is one fold of one seed
    df['experiment'] += '-fold' + df['fold'].astype(str)
  else:
    df['fold'] = None
  firsts = df.drop_duplicates(['domain', 'experiment'])
  loaded = [LoadedRun(r.domain, None, ExperimentSummary(name=r.experiment, base=r.base,
                                                         seed=r.seed, fold=r.fold))
            for r in firsts.itertuples()]
  runs = pd.DataFrame([_run_row(r) for r in loaded])
  return _results(df, runs, loaded, {}, [], {m: higher[m] for m in metrics})


def _metric_columns(frame: pd.DataFrame, higher: dict[str, bool], keys: set[str]) -> list[str]:
  extra = [c for c in frame if c not in keys]
  unknown = [c for c in extra if c not in higher and pd.api.types.is_numeric_dtype(frame[c])]
  if unknown:
    raise UserError(f'column(s) {", ".join(unknown)}: say whether higher is better with '
                    f"higher_is_better={{{unknown[0]!r}: True}}, or drop them")
  metrics = [c for c in extra if c in higher]
  if not metrics:
    raise UserError(f'the frame has no metric column; give one of {", ".join(higher)} '
                    '(or others with higher_is_better)')
  return metrics


def _number(value) -> float:
  """A summary's optional number as a float; NaN when it is absent (None)."""
  return np.nan if value is None else float(value)


def _run_row(run: LoadedRun) -> dict:
  """One row of ``Results.runs``, from a run's summary record.

  ``stop_reason`` (``'converged'``, ``'cap'``, ``'diverged'``,
  ``'no_validation'``), ``stopped_at_step``, ``best_step`` (the step whose
  weights were scored), ``best_val_dice`` and ``seconds_to_best`` come from
  runs trained to convergence; a summary written before them (an older work
  directory, or ``from_frame``) gives None and NaN.
  """
  s = run.summary
  kind = s.schedule_kind or {}
  gradual = kind.get('kind') == 'gradual'
  total = s.total_params or np.nan
  return {'domain': run.domain, 'experiment': s.name, 'base': s.base, 'variant': s.variant,
          'condition': s.base + s.variant, 'seed': s.seed, 'fold': s.fold, 'init': s.init,
          'stages': max(len(s.schedule), 1),
          'order': kind.get('order') if gradual else None,
          'direction': kind.get('direction') if gradual else None,
          'stage_steps': kind.get('stage_steps') if gradual else None,
          'steps': s.steps if s.steps is not None else np.nan,
          'trainable_fraction': (s.trainable_params if s.trainable_params is not None
                                 else np.nan) / total,
          'trainable_params': (s.trainable_params if s.trainable_params is not None
                               else np.nan),
          'extra_params': s.extra_params,
          'seconds': s.own_seconds if s.own_seconds is not None else np.nan,
          'stop_reason': s.stop_reason, 'stopped_at_step': _number(s.stopped_at_step),
          'best_step': _number(s.best_step), 'best_val_dice': _number(s.best_val_dice),
          'seconds_to_best': _number(s.seconds_to_best),
          'frozen_norm': s.frozen_norm, 'trained': s.trained_blocks,
          'blocks': frozenset(s.blocks) or None,
          'train_images': s.train_images if s.train_images is not None else np.nan,
          'workdir': run.workdir, 'folder': run.folder or s.name}
