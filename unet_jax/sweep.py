"""A layer-subset sweep, end to end: pretrain once, fine-tune each subset, evaluate.

Work directory layout::

  config.json                    the resolved config
  pretrain/weights/              orbax checkpoint of the pretrained U-Net
  pretrain/meta.json             what it was trained with (reused if equal)
  experiments/<name>/weights/    orbax checkpoint after fine-tuning
  experiments/<name>/summary.json  rules, frozen paths, Dice, CI, timings
  results.jsonl                  one row per (experiment, test image)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import zlib
from typing import Any

import jax
import numpy as np
import tqdm

from unet_jax import checkpoint, data, freeze, metrics, results, stats
from unet_jax.errors import UserError
from unet_jax.model import count_params, init_model
from unet_jax.optim import make_optimizer
from unet_jax.settings import ExperimentSpec, SweepSettings, TrainSettings
from unet_jax.train import init_state, make_train_chunk, predict

PyTree = Any


@dataclasses.dataclass
class Weights:
  params: PyTree
  stats: PyTree


def prepare_workdir(workdir: str) -> str:
  """Creates the work directory and proves it is writable."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(os.path.join(workdir, 'experiments'), exist_ok=True)
    probe = os.path.join(workdir, '.write-test')
    with open(probe, 'w') as f:
      f.write('ok')
    os.unlink(probe)
  except OSError as e:
    raise UserError(f'work directory {workdir} is not writable: '
                    f'{e.strerror or e}') from None
  return workdir


def train(graphdef, weights: Weights, rules, settings: TrainSettings,
          dataset: data.Dataset, key: jax.Array, *, chunk_steps: int, loop: str,
          update_frozen_stats: bool, bar: tqdm.tqdm) -> tuple[Weights, list[float]]:
  """Trains ``weights`` under freeze ``rules``; returns them and chunk losses."""
  labels = freeze.freeze_labels(weights.params, rules)
  optimizer = make_optimizer(labels, settings.learning_rate, settings.weight_decay)
  stats_mask = (jax.tree.map(lambda _: True, weights.stats) if update_frozen_stats
                else freeze.block_stats_mask(weights.stats, weights.params, rules))
  train_chunk = make_train_chunk(graphdef, optimizer, stats_mask,
                                 settings.batch_size, loop=loop)
  state = init_state(weights.params, weights.stats, optimizer)
  images, masks = jax.device_put(dataset.images), jax.device_put(dataset.masks)
  losses = []
  done = 0
  while done < settings.steps:
    n = min(chunk_steps, settings.steps - done)
    state, chunk_losses = train_chunk(state, images, masks, key, num_steps=n)
    losses.append(float(np.mean(chunk_losses)))
    done += n
    bar.set_postfix(loss=f'{losses[-1]:.3f}', refresh=False)
    bar.update(n)
  return Weights(state.params, state.stats), losses


def _pretrain_fingerprint(s: SweepSettings) -> dict:
  return {'seed': s.seed, 'image_size': s.image_size,
          'model': dataclasses.asdict(s.model), 'source': s.pretrain_source,
          'num_images': s.pretrain_images,
          'train': dataclasses.asdict(s.pretrain)}


def pretrain(s: SweepSettings, graphdef, init: Weights, workdir: str,
             bar: tqdm.tqdm) -> Weights:
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
  bar.set_description('pretrain')
  dataset = data.make_dataset(s.pretrain_source, s.pretrain_images,
                              s.image_size, s.seed + 1).with_channels(s.model.in_channels)
  start = time.perf_counter()
  weights, losses = train(graphdef, init, freeze.preset_rules('full', s.model.depth),
                          s.pretrain, dataset, jax.random.key(s.seed + 2),
                          chunk_steps=s.chunk_steps, loop=s.loop, update_frozen_stats=True,
                          bar=bar)
  os.makedirs(folder, exist_ok=True)
  checkpoint.save_weights(os.path.join(folder, 'weights'), weights.params,
                          weights.stats)
  results.write_json(meta_path, {'fingerprint': fingerprint, 'losses': losses,
                                 'seconds': time.perf_counter() - start})
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


def run_experiment(s: SweepSettings, exp: ExperimentSpec, graphdef,
                   pretrained: Weights, scratch: Weights, train_set, test_set,
                   workdir: str, bar: tqdm.tqdm) -> tuple[dict, list[dict]]:
  """Fine-tunes one layer subset, saves it, and returns (summary, rows)."""
  bar.set_description(exp.name)
  start = time.perf_counter()
  init = pretrained if exp.init == 'pretrained' else scratch
  # The training key depends on the name only, so adding experiments to a
  # sweep does not change the others.
  key = jax.random.fold_in(jax.random.key(s.seed), zlib.crc32(exp.name.encode()))
  weights, losses = train(graphdef, init, exp.rules, s.finetune, train_set, key,
                          chunk_steps=s.chunk_steps, loop=s.loop,
                          update_frozen_stats=s.update_frozen_stats, bar=bar)
  rows = [dict(experiment=exp.name, **r) for r in evaluate(graphdef, weights, test_set)]
  seconds = time.perf_counter() - start
  folder = os.path.join(workdir, 'experiments', exp.name)
  checkpoint.save_weights(os.path.join(folder, 'weights'), weights.params,
                          weights.stats)
  dice = [r['dice'] for r in rows]
  mask = freeze.trainable_mask(weights.params, exp.rules)
  trainable = sum(int(x.size) for x, m in zip(jax.tree.leaves(weights.params),
                                              jax.tree.leaves(mask)) if m)
  summary = {
      'name': exp.name, 'init': exp.init,
      'rules': [[r.pattern, r.action] for r in exp.rules],
      'frozen': freeze.frozen_paths(weights.params, exp.rules),
      'trainable_params': trainable, 'total_params': count_params(weights.params),
      'steps': s.finetune.steps, 'seconds': seconds,
      'mean_dice': float(np.mean(dice)),
      'dice_ci95': list(stats.bootstrap_ci(dice, s.bootstrap_samples, seed=s.seed)),
      'mean_iou': float(np.mean([r['iou'] for r in rows])),
      'test_images': len(rows), 'chunk_losses': losses,
      'empty_mask_convention': metrics.EMPTY_MASK_CONVENTION,
  }
  results.write_json(os.path.join(folder, 'summary.json'), summary)
  results.write_atomic(os.path.join(folder, 'rules.txt'),
                       freeze.describe_labels(weights.params, exp.rules) + '\n')
  return summary, rows


def run_sweep(config, workdir: str, *, progress: bool = True) -> list[dict]:
  """Runs the sweep a config describes into ``workdir``; returns the summaries.

  Example::

    from configs import default
    summaries = run_sweep(default.get_config('tiny'), '/tmp/run')
  """
  s = SweepSettings.from_config(config)
  workdir = prepare_workdir(workdir)
  results.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  target = data.make_dataset(s.target_source, s.target_images, s.image_size,
                             s.seed + 3).with_channels(s.model.in_channels)
  train_idx, test_idx = data.holdout_split(target.labels, s.test_fraction, s.seed)
  train_set, test_set = target.take(train_idx), target.take(test_idx)
  graphdef, params, batch_stats = init_model(s.model, s.seed)
  _, scratch_params, scratch_stats = init_model(s.model, s.seed + 4)
  total = s.pretrain.steps + len(s.experiments) * s.finetune.steps
  summaries, rows = [], []
  with tqdm.tqdm(total=total, unit='step', disable=not progress,
                 file=sys.stderr, dynamic_ncols=True) as bar:
    pretrained = pretrain(s, graphdef, Weights(params, batch_stats), workdir, bar)
    scratch = Weights(scratch_params, scratch_stats)
    for exp in s.experiments:
      summary, exp_rows = run_experiment(s, exp, graphdef, pretrained, scratch,
                                         train_set, test_set, workdir, bar)
      summaries.append(summary)
      rows.extend(exp_rows)
      results.write_jsonl(os.path.join(workdir, 'results.jsonl'), rows)
  return summaries
