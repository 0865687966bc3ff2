"""A sweep work directory with made-up scores whose comparisons are known.

Written through the records and paths the sweep writes with
(``unet_jax.records``, ``unet_jax.workdir``): summaries with the
blocks each stage trains and the schedule's kind, config.json with the runs.
"""

import os

import numpy as np

from unet_jax import files, freeze
from unet_jax.block_order import ORDERS, block_groups, cumulative
from unet_jax.records import ExperimentSummary, StageRecord
from unet_jax.schedules import Schedule, gradual
from unet_jax.workdir import WorkdirPaths

DEPTH = 2
TOTAL_PARAMS = 1000
BLOCKS = [b for g in block_groups('flow', DEPTH) for b in g]
PRESET_BLOCKS = {
    'full': BLOCKS, 'scratch': BLOCKS, 'contracting': ['enc1', 'enc2', 'bottleneck'],
    'expanding': ['dec2', 'dec1', 'head'], 'shallow': ['enc1', 'dec1'],
    'deep': ['enc2', 'bottleneck', 'dec2'], 'last': ['dec1', 'head'], 'head': ['head'],
}


def blocks_of(base: str) -> list[str]:
  """The blocks a fake experiment trains, from its name.

  Presets; ``alone_<a>+<b>``; cumulative ``[<order>_]s2d_<k>`` / ``d2s_<k>``
  (flow when no order is given); ``<anything>@<preset>`` for a preset under
  another name.
  """
  if '@' in base:
    return PRESET_BLOCKS[base.split('@')[1]]
  if base in PRESET_BLOCKS:
    return PRESET_BLOCKS[base]
  if base.startswith('alone_'):
    return base[len('alone_'):].split('+')
  parts = base.split('_')
  order = parts[0] if parts[0] in ORDERS else 'flow'
  kind, k = parts[-2], int(parts[-1])
  direction = 'shallow_to_deep' if kind == 's2d' else 'deep_to_shallow'
  return sorted(cumulative(order, DEPTH, k, direction), key=BLOCKS.index)


def _schedule(base: str) -> tuple[Schedule, str]:
  """(schedule, init) of a fake experiment's name (``gradual_<order>_<direction>``)."""
  if base.startswith('gradual_'):
    _, order, direction = base.split('_', 2)
    direction = {'s2d': 'shallow_to_deep', 'd2s': 'deep_to_shallow'}.get(direction, direction)
    return gradual(order, direction, 5, DEPTH), 'pretrained'
  blocks = blocks_of(base)
  init = 'random' if base == 'scratch' else 'pretrained'
  rules = (freeze.FreezeRule('|'.join(blocks), 'train'), freeze.FreezeRule('.*', 'freeze'))
  return Schedule.constant(rules), init


def _stage_blocks(rules) -> list[str]:
  pattern = rules[0].pattern if rules[0].action == 'train' else ''
  return [b for b in BLOCKS if b in pattern.split('|') or pattern == '.*']


def write(workdir, means: dict[str, float], *, seeds=(1, 2, 3, 4, 5), images=20,
          source='ultrasound', noise=0.03, seed_sd=0.01, histories=None,
          distances=False, shared_noise=False, seed=0, folds=0, specs=None, stops=None,
          early_stop=None, old=False) -> str:
  """Writes results.jsonl, summaries and config.json; returns the directory.

  Dice of (experiment, seed, image) = mean + image effect + run effect
  (``seed_sd``, one per experiment and seed) + noise. ``histories`` maps a
  base to its history rows, or to a function of the seed returning them;
  ``shared_noise`` gives every experiment the same noise and run effects,
  so equal means give identical scores. With ``folds`` >= 2 each image is
  scored by the run of its fold (image i in fold i % folds). ``specs`` maps
  a base to its (schedule, init) where the name does not say it.

  Every run converged by default (:func:`stopping`: best step 15, stopped at
  40, or the best and last step of its history); ``stops`` maps a base to
  summary fields that replace those (``stop_reason``, ``best_step``,
  ``stopped_at_step``, ``best_val_dice``, ``seconds_to_best``,
  ``own_seconds``), or to a function of the seed returning them;
  ``early_stop`` is the rule recorded (default patience 5, min_delta 0).
  ``old`` writes summaries as an older version did, without those fields.
  """
  rng = np.random.default_rng(seed)
  workdir = os.fspath(workdir)
  image_effect = rng.normal(0, 0.05, images)
  shared = {s: rng.normal(0, noise, images) for s in seeds}
  shared_runs = {s: rng.normal(0, seed_sd) for s in seeds}
  fold_list = list(range(folds)) if folds > 1 else [None]
  rows = []
  for base, mean in means.items():
    schedule, init = (specs or {}).get(base) or _schedule(base)
    for s in seeds:
      eps = shared[s] if shared_noise else rng.normal(0, noise, images)
      run = {f: shared_runs[s] if shared_noise else rng.normal(0, seed_sd) for f in fold_list}
      fold_of = [None if folds <= 1 else i % folds for i in range(images)]
      dice = np.clip(mean + image_effect + np.asarray([run[f] for f in fold_of]) + eps, 0, 1)
      for fold in fold_list:
        name = _name(base, s, seeds, fold)
        exp_rows = []
        for i in range(images):
          if fold_of[i] != fold:
            continue
          row = {'experiment': name, 'seed': s, 'fold': fold, 'image_id': f'us_{i:05d}',
                 'label': 'benign' if i % 3 else 'malignant', 'dice': float(dice[i]),
                 'iou': float(dice[i] / (2 - dice[i])), 'pred_pixels': 100,
                 'true_pixels': 100}
          if distances:
            row['hd95'] = float('nan') if i == 0 else float(10 * (1 - dice[i]))
            row['assd'] = float('nan') if i == 0 else float(3 * (1 - dice[i]))
          exp_rows.append(row)
        rows += exp_rows
        _write_run(workdir, name, base, s, fold, folds, schedule, init, exp_rows,
                   histories, images, stops, early_stop, old)
  paths = WorkdirPaths(workdir)
  files.write_jsonl(paths.results, rows)
  runs = [name for name in _names(means, seeds, fold_list)]
  files.write_json(paths.config, {
      'target_source': source, 'runs': runs,
      'experiments': [{'name': b} for b in means],
      'model': {'depth': DEPTH, 'base_width': 4, 'norm': 'batch', 'in_channels': 1,
                'group_size': 8, 'bn_momentum': 0.9},
      'image_size': 16, 'folds': folds})
  return workdir


def _name(base, seed, seeds, fold) -> str:
  return base + (f'-seed{seed}' if len(seeds) > 1 else '') + (
      f'-fold{fold}' if fold is not None else '')


def _names(means, seeds, folds) -> list[str]:
  return [_name(b, s, seeds, f) for b in means for s in seeds for f in folds]


# Summary fields of training to convergence, absent from an older version's summaries.
STOP_FIELDS = ('stop_reason', 'stopped_at_step', 'best_step', 'best_val_dice',
               'seconds_to_best', 'early_stop')


def stopping(history=None) -> dict:
  """A converged run's stop fields: best at 15 and stopped at 40, or as its history says."""
  if not history:
    return {'stop_reason': 'converged', 'best_step': 15, 'stopped_at_step': 40,
            'best_val_dice': None}
  best = max(history, key=lambda row: row['val_dice'])  # the first of equal maxima
  return {'stop_reason': 'converged', 'best_step': best['step'],
          'stopped_at_step': history[-1]['step'], 'best_val_dice': best['val_dice']}


def _write_run(workdir, name, base, seed, fold, folds, schedule, init, rows, histories,
               images, stops=None, early_stop=None, old=False):
  where = WorkdirPaths(workdir).experiment(name)
  os.makedirs(where.folder, exist_ok=True)
  stages = []
  for start, rules in zip(schedule.starts, schedule.stages):
    trained = _stage_blocks(rules)
    stages.append(StageRecord(start, [[r.pattern, r.action] for r in rules], trained, [],
                              {b: float(b in trained) for b in BLOCKS}))
  trained = stages[-1].trained
  dice = [r['dice'] for r in rows]
  history = (histories or {}).get(base)
  history = history(seed) if callable(history) else history
  fields = stopping(history)
  given = (stops or {}).get(base) or {}
  fields.update(given(seed) if callable(given) else given)
  summary = ExperimentSummary(
      name=name, base=base, seed=seed, init=init, fold=fold, folds=folds,
      learning_rate=1e-3, weight_decay=0.0, frozen_norm='inference', steps=40,
      schedule=stages, schedule_kind=schedule.describe_kind(),
      frozen=[f'{b}/kernel' for b in BLOCKS if b not in stages[0].trained],
      trainable_params=int(TOTAL_PARAMS * len(trained) / len(BLOCKS)),
      total_params=TOTAL_PARAMS, train_images=4 * images, test_images=len(rows),
      mean_dice=float(np.mean(dice)), dice_ci95=[0.0, 1.0],
      early_stop=early_stop or {'patience': 5, 'min_delta': 0.0}, **fields)
  record = summary.to_json()
  if old:
    for key in STOP_FIELDS:
      del record[key]
  files.write_json(where.summary, record)
  files.write_jsonl(where.results, rows)
  if history is not None:
    files.write_jsonl(where.history, history)


def curve(rise_steps: int, best: float, steps=40, every=5) -> list[dict]:
  """A validation curve reaching ``best`` linearly by ``rise_steps``."""
  return [{'step': t, 'loss': 1.0 - best * min(1, t / rise_steps),
           'val_dice': best * min(1.0, t / rise_steps), 'lr': 1e-3,
           'trainable_fraction': 1.0} for t in range(every, steps + 1, every)]
