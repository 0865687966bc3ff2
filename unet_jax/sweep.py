"""A layer-subset sweep, end to end: pretrain once, fine-tune every experiment, evaluate.

Experiments (``config.experiments`` x ``config.grid``) are grouped into
bundles that each run as one compiled program (``unet_jax.engine``).

Work directory layout::

  config.json                      the resolved config
  pretrain/weights/                orbax checkpoint of the pretrained U-Net
  pretrain/meta.json               what it was trained with (reused if equal)
  experiments/<name>/weights/      orbax checkpoint after fine-tuning
  experiments/<name>/summary.json  rules, frozen paths, Dice, CI, bundle, timings
  experiments/<name>/rules.txt     the rule that decided each parameter, per stage
  bundles.json                     each bundle's strategy and autotuning timings
  autotune.json                    cached strategy choices
  .lock                            held while a sweep runs
  results.jsonl                    one row per (experiment, test image)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import sys

import jax
import numpy as np
import tqdm

from unet_jax import checkpoint, data, freeze, grid, metrics, results, stats
from unet_jax.bundle import BundleContext
from unet_jax.distributed import is_writer
from unet_jax.engine import BundleReport, Weights, run_bundle
from unet_jax.errors import UserError
from unet_jax.model import count_params, init_model
from unet_jax.schedules import Schedule
from unet_jax.settings import SweepSettings
from unet_jax.train import predict


class WorkdirLock:
  """An exclusive lock on a work directory, so two sweeps never write one.

  ``fcntl.flock`` on ``<workdir>/.lock``: the kernel releases it when the
  process dies, so a crashed or killed sweep never leaves a stale lock.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, '.lock')
    self._file = None

  def __enter__(self):
    self._file = open(self.path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._file.seek(0)
      owner = self._file.read().strip() or 'another process'
      self._file.close()
      raise UserError(f'work directory {os.path.dirname(self.path)} is in use by '
                      f'another sweep ({owner}); wait for it to finish or choose '
                      'another --workdir') from None
    self._file.truncate(0)
    self._file.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    self._file.flush()
    return self

  def __exit__(self, *exc):
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


def prepare_workdir(workdir: str) -> str:
  """Creates the work directory and proves it is writable."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(os.path.join(workdir, 'experiments'), exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.unlink(probe)
  except OSError as e:
    raise UserError(f'work directory {workdir} is not writable: '
                    f'{e.strerror or e}') from None
  return workdir


def _pretrain_fingerprint(s: SweepSettings) -> dict:
  return {'seed': s.seed, 'image_size': s.image_size,
          'model': dataclasses.asdict(s.model), 'source': s.pretrain_source,
          'num_images': s.pretrain_images, 'train': dataclasses.asdict(s.pretrain)}


def pretrain(s: SweepSettings, init: Weights, workdir: str, bar: tqdm.tqdm) -> Weights:
  """Pretrains on the natural-image-like source, or reuses a matching run."""
  folder = os.path.join(workdir, 'pretrain')
  meta_path = os.path.join(folder, 'meta.json')
  fingerprint = _pretrain_fingerprint(s)
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get('fingerprint') == fingerprint:
      bar.write(f'reusing pretrained weights from {folder}', file=sys.stderr)
      bar.update(s.pretrain.steps)
      return Weights(*checkpoint.load_weights(os.path.join(folder, 'weights')))
    bar.write('pretrain settings changed: pretraining again', file=sys.stderr)
  dataset = data.make_dataset(s.pretrain_source, s.pretrain_images, s.image_size,
                              s.seed + 1).with_channels(s.model.in_channels)
  run = grid.Experiment('pretrain', 'pretrain',
                        Schedule.constant(freeze.preset_rules('full', s.model.depth)),
                        'random', s.seed + 2, s.pretrain.learning_rate,
                        s.pretrain.weight_decay, s.pretrain.steps, s.pretrain.batch_size)
  ctx = BundleContext(s.model, s.pretrain.batch_size, update_frozen_stats=True)
  (weights,), (losses,), report = run_bundle(
      ctx, [run], [init], dataset.images, dataset.masks, strategy='static',
      loop=s.loop, chunk_steps=s.chunk_steps, bar=bar)
  if is_writer():
    os.makedirs(folder, exist_ok=True)
    checkpoint.save_weights(os.path.join(folder, 'weights'), weights.params, weights.stats)
    results.write_json(meta_path, {'fingerprint': fingerprint, 'losses': losses,
                                   'seconds': report.seconds})
  return weights


def evaluate(graphdef, weights: Weights, test: data.Dataset) -> list[dict]:
  """One record per test image: Dice, IoU and mask sizes."""
  probs = predict(graphdef, weights.params, weights.stats, test.images)
  pred = (probs > 0.5).astype(np.float32)
  dice = np.asarray(metrics.dice(pred, test.masks))
  iou = np.asarray(metrics.iou(pred, test.masks))
  return [{'image_id': test.ids[i], 'label': test.labels[i],
           'dice': float(dice[i]), 'iou': float(iou[i]),
           'pred_pixels': int(pred[i].sum()), 'true_pixels': int(test.masks[i].sum())}
          for i in range(len(test))]


def _describe_schedule(params, schedule: Schedule) -> str:
  parts = []
  for start, rules in zip(schedule.starts, schedule.stages):
    parts.append(f'# stage from step {start}\n' + freeze.describe_labels(params, rules))
  return '\n\n'.join(parts) + '\n'


def summarise(s: SweepSettings, exp: grid.Experiment, weights: Weights, rows: list[dict],
              losses: list[float], bundle: int, report: BundleReport) -> dict:
  """The summary.json of one experiment."""
  last = exp.schedule.stages[-1]
  mask = jax.tree.leaves(freeze.trainable_mask(weights.params, last))
  trainable = sum(int(x.size) for x, m in zip(jax.tree.leaves(weights.params), mask) if m)
  dice = [r['dice'] for r in rows]
  return {
      'name': exp.name, 'base': exp.base, 'init': exp.init, 'seed': exp.seed,
      'learning_rate': exp.learning_rate, 'weight_decay': exp.weight_decay,
      'schedule': [{'start': start, 'rules': [[r.pattern, r.action] for r in rules]}
                   for start, rules in zip(exp.schedule.starts, exp.schedule.stages)],
      'rules': [[r.pattern, r.action] for r in exp.schedule.stages[0]],
      'frozen': freeze.frozen_paths(weights.params, exp.schedule.stages[0]),
      'trainable_params': trainable, 'total_params': count_params(weights.params),
      'steps': exp.steps, 'batch_size': exp.batch_size,
      'seconds': report.seconds / len(report.experiments),
      'bundle': bundle, 'strategy': report.strategy,
      'mean_dice': float(np.mean(dice)),
      'dice_ci95': list(stats.bootstrap_ci(dice, s.bootstrap_samples, seed=s.seed)),
      'mean_iou': float(np.mean([r['iou'] for r in rows])),
      'test_images': len(rows), 'chunk_losses': losses,
      'empty_mask_convention': metrics.EMPTY_MASK_CONVENTION,
  }


def run_sweep(config, workdir: str, *, progress: bool = True) -> list[dict]:
  """Runs the sweep a config describes into ``workdir``; returns the summaries.

  Example::

    from unet_jax.settings import load_config
    summaries = run_sweep(load_config('configs/default.py:tiny'), '/tmp/run')
  """
  s = SweepSettings.from_config(config)
  if s.compilation_cache:
    # Reruns and resumed sweeps load compiled programs instead of compiling.
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(s.compilation_cache))
  writer = is_writer()
  workdir = prepare_workdir(workdir) if writer else os.path.abspath(workdir)
  # Only the writing process takes the work directory's lock.
  with WorkdirLock(workdir) if writer else contextlib.nullcontext():
    return _run(s, config, workdir, progress)


def _run(s: SweepSettings, config, workdir: str, progress: bool) -> list[dict]:
  """The body of run_sweep, inside the work directory's lock."""
  runs = s.runs()
  bundles, split_by = grid.group_bundles(runs, s.max_bundle)
  writer = is_writer()
  if writer:
    results.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  target = data.make_dataset(s.target_source, s.target_images, s.image_size,
                             s.seed + 3).with_channels(s.model.in_channels)
  train_idx, test_idx = data.holdout_split(target.labels, s.test_fraction, s.seed)
  train_set, test_set = target.take(train_idx), target.take(test_idx)
  graphdef, params, batch_stats = init_model(s.model, s.seed)
  tuning_path = os.path.join(workdir, 'autotune.json')
  tuning = {}
  if os.path.exists(tuning_path):
    with open(tuning_path) as f:
      tuning = json.load(f)
  total = s.pretrain.steps + sum(r.steps for r in runs)
  summaries, rows, reports = [], [], []
  with tqdm.tqdm(total=total, unit='step', disable=not (progress and writer),
                 file=sys.stderr, dynamic_ncols=True) as bar:
    if split_by:
      bar.write(f'{len(bundles)} bundles: different {", ".join(split_by)} need '
                'separate programs', file=sys.stderr)
    pretrained = pretrain(s, Weights(params, batch_stats), workdir, bar)
    for b, members in enumerate(bundles):
      inits = [pretrained if e.init == 'pretrained'
               else Weights(*init_model(s.model, e.seed + 4)[1:]) for e in members]
      ctx = BundleContext(s.model, members[0].batch_size,
                          update_frozen_stats=s.update_frozen_stats,
                          rewarmup_steps=s.rewarmup_steps)
      trained, losses, report = run_bundle(
          ctx, members, inits, train_set.images, train_set.masks, strategy=s.strategy,
          loop=s.loop, chunk_steps=s.chunk_steps, bar=bar, tuning_cache=tuning)
      reports.append(dataclasses.asdict(report))
      bar.write(f'bundle {b}: {len(members)} experiment(s), strategy {report.strategy}, '
                f'{report.exp_steps_per_s:.2f} exp-steps/s', file=sys.stderr)
      for exp, weights, exp_losses in zip(members, trained, losses):
        exp_rows = [dict(experiment=exp.name, seed=exp.seed, **r)
                    for r in evaluate(graphdef, weights, test_set)]
        summary = summarise(s, exp, weights, exp_rows, exp_losses, b, report)
        summaries.append(summary)
        rows.extend(exp_rows)
        if writer:
          folder = os.path.join(workdir, 'experiments', exp.name)
          checkpoint.save_weights(os.path.join(folder, 'weights'), weights.params,
                                  weights.stats)
          results.write_json(os.path.join(folder, 'summary.json'), summary)
          results.write_atomic(os.path.join(folder, 'rules.txt'),
                               _describe_schedule(weights.params, exp.schedule))
      if writer:
        results.write_jsonl(os.path.join(workdir, 'results.jsonl'), rows)
        results.write_json(os.path.join(workdir, 'bundles.json'),
                           {'split_by': split_by, 'bundles': reports})
        results.write_json(tuning_path, tuning)
  return summaries
