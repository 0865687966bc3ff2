"""How many validation images early stopping needs, and what patience costs.

Trains a few layer subsets of the default sweep (pretrained U-Net, simulated
breast ultrasound, 64x64) to a step cap with no early stopping, scoring a
large separate validation set image by image at every evaluation. Then, with
no more training, replays the stopping rule (``unet_jax.engine.stopping``)
on validation sets of N images drawn from one half of it ("selection pool"),
and judges the network each replay keeps on the other half ("truth"):

- regret: the truth set's best Dice over all evaluations minus its Dice at
  the step the replay kept (what a noisy validation set costs);
- stop: the step the replay stopped at (what patience costs in training).

Prints one table per patience and ends with one JSON line of every figure.

  python benchmarks/validation_size.py            # ~10 min on 2 CPU cores (8 runs x 300 steps)
  python benchmarks/validation_size.py --cap=400 --seeds=0,1,2
"""

import argparse
import ast
import json
import os
import platform
import time

import numpy as np
import tqdm

from unet_jax import data, encoders, freeze
from unet_jax.engine.experiment import Experiment
from unet_jax.engine.run import BundleData, RunOptions, Weights, run_bundle
from unet_jax.engine.step import BundleContext
from unet_jax.engine.stopping import StopRule, StopTracker
from unet_jax.model import init_model
from unet_jax.schedules import Schedule
from unet_jax.sweep import load_config
from unet_jax.sweep.pretraining import pretrain
from unet_jax.sweep.run import load_target
from unet_jax.sweep.settings import SweepSettings
from unet_jax.workdir import prepare_workdir


def replay(curve: np.ndarray, steps: np.ndarray, rule: StopRule) -> tuple[int, int]:
  """(index of the kept evaluation, step stopped at) of the rule on one mean curve."""
  tracker = StopTracker(rule, [0])
  for step, value in zip(steps, curve):
    tracker.update(int(step), [value], [False])
    if not tracker.active[0]:
      break
  tracker.finish(int(steps[-1]), True)
  run = tracker.runs[0]
  return int(np.flatnonzero(steps == run.best_step)[0]), run.stopped_at


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='/tmp/unet_jax_validation_size')
  parser.add_argument('--subsets', default='full,contracting,shallow,last')
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--cap', type=int, default=300)
  parser.add_argument('--chunk', type=int, default=20)
  parser.add_argument('--pool', type=int, default=96, help='selection pool images')
  parser.add_argument('--truth', type=int, default=96, help='truth images')
  parser.add_argument('--sizes', default='16,24,32,48,64,96')
  parser.add_argument('--patience', default='2,3,5,8')
  parser.add_argument('--min_delta', type=float, default=0.0)
  parser.add_argument('--draws', type=int, default=400)
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='a field of configs/default.py, e.g. finetune.learning_rate=3e-3')
  parser.add_argument('--replay', action='store_true',
                      help='no training: replay on the scores the last run saved')
  args = parser.parse_args()
  began = time.time()

  config = load_config('configs/default.py')
  for item in args.set:
    field, value = item.split('=', 1)
    *parents, last = field.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[last] = ast.literal_eval(value)
  s = SweepSettings.from_config(config)
  saved = os.path.join(args.workdir, 'val_scores.npz')
  if args.replay:
    scores = np.load(saved, allow_pickle=True)
    names, evals = list(scores['names']), list(scores['evals'])
    report(args, names, evals, float(scores['seconds']))
    return
  paths = prepare_workdir(args.workdir)
  target = load_target(s, paths)
  fit = target.splits[0].fit
  extra = data.open_source(s.target_source, num=args.pool + args.truth, size=s.image_size,
                           seed=s.seed + 1000)
  graphdef, params, stats = init_model(s.model, s.seed)
  with tqdm.tqdm(disable=True) as bar:
    weights = pretrain(s, Weights(params, stats), paths, bar)
  layout = encoders.layout(s.model)
  runs = [Experiment(f'{name}_s{seed}', name,
                     Schedule.constant(freeze.preset_rules(name, layout)), 'pretrained',
                     seed, s.finetune.learning_rate, s.finetune.weight_decay, args.cap,
                     s.finetune.batch_size, s.frozen_norm)
          for name in args.subsets.split(',') for seed in map(int, args.seeds.split(','))]
  result = run_bundle(
      BundleContext(s.model, s.finetune.batch_size), runs, [weights] * len(runs),
      BundleData(target.dataset.images, target.dataset.masks, [fit] * len(runs),
                 [(extra.images, extra.masks)] * len(runs)),
      RunOptions('static', 'auto', args.chunk, 0, StopRule(patience=0),
                 keep_val_per_image=True))
  trained = time.time() - began
  names = [run.name for run in runs]
  evals = [[(step, d) for step, d in ev] for ev in result.val_per_image]
  np.savez(saved, names=np.asarray(names), seconds=trained,
           evals=np.asarray(evals, dtype=object), allow_pickle=True)
  report(args, names, evals, trained)


def report(args, names, evals_by_run, trained):
  """The replay tables and the JSON line."""
  rng = np.random.default_rng(0)
  sizes = [int(n) for n in args.sizes.split(',')]
  patiences = [int(p) for p in args.patience.split(',')]
  figures = []
  for patience in patiences:
    rule = StopRule(patience, args.min_delta)
    rows = []
    for n in sizes:
      regrets, stops = [], []
      for evals in evals_by_run:
        steps = np.asarray([step for step, _ in evals])
        scores = np.stack([d for _, d in evals])  # [evaluations, images]
        truth = scores[:, args.pool:].mean(axis=1)
        for _ in range(args.draws):
          pick = rng.choice(args.pool, n, replace=False)
          kept, stopped = replay(scores[:, pick].mean(axis=1), steps, rule)
          regrets.append(truth.max() - truth[kept])
          stops.append(stopped)
      regrets = np.asarray(regrets)
      rows.append({'patience': patience, 'val_images': n,
                   'mean_regret': float(regrets.mean()),
                   'p90_regret': float(np.quantile(regrets, 0.9)),
                   'mean_stop_step': float(np.mean(stops)),
                   'at_cap': float(np.mean(np.asarray(stops) >= args.cap))})
    figures += rows
    print(f'\npatience {patience} evaluations of {args.chunk} steps, min_delta '
          f'{args.min_delta}, cap {args.cap}: regret = truth-set Dice lost by stopping on N '
          'images')
    print(f'{"N":>5} {"mean regret":>12} {"p90 regret":>11} {"mean stop":>10} {"at cap":>7}')
    for r in rows:
      print(f'{r["val_images"]:>5} {r["mean_regret"]:>12.4f} {r["p90_regret"]:>11.4f} '
            f'{r["mean_stop_step"]:>10.0f} {r["at_cap"]:>7.2f}')
  best_steps = {name: int(np.asarray([s for s, _ in ev])[
      np.argmax([d[args.pool:].mean() for _, d in ev])]) for name, ev in
      zip(names, evals_by_run)}
  print('\ntruth-set best step per run:', best_steps)
  print(json.dumps({'benchmark': 'validation_size', 'machine': platform.machine(),
                    'processor': platform.processor(), 'date': time.strftime('%Y-%m-%d'),
                    'train_seconds': round(trained, 1), 'subsets': args.subsets,
                    'seeds': args.seeds, 'set': args.set, 'cap': args.cap, 'chunk': args.chunk,
                    'pool': args.pool, 'truth': args.truth, 'draws': args.draws,
                    'truth_best_steps': best_steps, 'rows': figures}))


if __name__ == '__main__':
  main()
