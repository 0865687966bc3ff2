"""A sweep work directory with made-up scores whose comparisons are known."""

import json
import os

import numpy as np

from unet_jax import freeze, results
from unet_jax.schedules import Schedule, gradual

DEPTH = 2
TOTAL_PARAMS = 1000
# Fraction of parameters each preset trains in the fake network.
TRAINABLE = {'full': 1.0, 'scratch': 1.0, 'contracting': 0.45, 'expanding': 0.5,
             'shallow': 0.2, 'deep': 0.6, 'last': 0.1, 'head': 0.01}


def _schedule_json(schedule: Schedule) -> list[dict]:
  return [{'start': s, 'rules': [[r.pattern, r.action] for r in rules]}
          for s, rules in zip(schedule.starts, schedule.stages)]


def _schedule(base: str) -> tuple[Schedule, str]:
  """(schedule, init) of a preset name or 'gradual_<order>_<direction>'."""
  if base.startswith('gradual_'):
    _, order, direction = base.split('_', 2)
    return gradual(order, direction, 5, DEPTH), 'pretrained'
  preset = 'full' if base == 'scratch' else base
  init = 'random' if base == 'scratch' else 'pretrained'
  return Schedule.constant(freeze.preset_rules(preset, DEPTH)), init


def write(workdir, means: dict[str, float], *, seeds=(1, 2, 3, 4, 5), images=20,
          source='ultrasound', noise=0.03, histories: dict[str, list[dict]] | None = None,
          distances=False, shared_noise=False, seed=0) -> str:
  """Writes results.jsonl, summaries and config.json; returns the directory.

  Dice of (experiment, seed, image) = mean + image effect + seed effect +
  noise. ``histories`` maps a base to its history rows (same for every seed);
  ``shared_noise`` gives every experiment the same noise, so equal means give
  identical scores.
  """
  rng = np.random.default_rng(seed)
  workdir = os.fspath(workdir)
  image_effect = rng.normal(0, 0.05, images)
  seed_effect = {s: rng.normal(0, 0.01) for s in seeds}
  shared = {s: rng.normal(0, noise, images) for s in seeds}
  rows = []
  for base, mean in means.items():
    schedule, init = _schedule(base)
    for s in seeds:
      name = f'{base}-seed{s}' if len(seeds) > 1 else base
      eps = shared[s] if shared_noise else rng.normal(0, noise, images)
      dice = np.clip(mean + image_effect + seed_effect[s] + eps, 0, 1)
      exp_rows = []
      for i in range(images):
        row = {'experiment': name, 'seed': s, 'image_id': f'us_{i:05d}',
               'label': 'benign' if i % 3 else 'malignant', 'dice': float(dice[i]),
               'iou': float(dice[i] / (2 - dice[i])), 'pred_pixels': 100,
               'true_pixels': 100}
        if distances:
          row['hd95'] = float('nan') if i == 0 else float(10 * (1 - dice[i]))
          row['assd'] = float('nan') if i == 0 else float(3 * (1 - dice[i]))
        exp_rows.append(row)
      rows += exp_rows
      folder = os.path.join(workdir, 'experiments', name)
      os.makedirs(folder, exist_ok=True)
      frac = 1.0 if base.startswith('gradual') else TRAINABLE[base]
      results.write_json(os.path.join(folder, 'summary.json'), {
          'name': name, 'base': base, 'init': init, 'seed': s, 'learning_rate': 1e-3,
          'weight_decay': 0.0, 'schedule': _schedule_json(schedule),
          'rules': _schedule_json(schedule)[0]['rules'], 'frozen': [],
          'trainable_params': int(frac * TOTAL_PARAMS), 'total_params': TOTAL_PARAMS,
          'steps': 40, 'mean_dice': float(dice.mean()), 'dice_ci95': [0.0, 1.0]})
      results.write_jsonl(os.path.join(folder, 'results.jsonl'), exp_rows)
      if histories and base in histories:
        results.write_jsonl(os.path.join(folder, 'history.jsonl'), histories[base])
  results.write_jsonl(os.path.join(workdir, 'results.jsonl'), rows)
  config = {'data': {'source': source, 'num_images': 5 * images, 'test_fraction': 0.2},
            'model': {'depth': DEPTH, 'base_width': 4, 'norm': 'batch', 'in_channels': 1,
                      'group_size': 8, 'bn_momentum': 0.9},
            'experiments': {b: {} for b in means}, 'only': ''}
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config, f)
  return workdir


def curve(rise_steps: int, best: float, steps=40, every=5) -> list[dict]:
  """A validation curve reaching ``best`` linearly by ``rise_steps``."""
  return [{'step': t, 'loss': 1.0 - best * min(1, t / rise_steps),
           'val_dice': best * min(1.0, t / rise_steps), 'lr': 1e-3,
           'trainable_fraction': 1.0} for t in range(every, steps + 1, every)]
