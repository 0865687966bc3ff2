"""Scoring a trained network: test metrics per image, and the BatchNorm check.

:func:`evaluate` scores a network on its test images (Dice, IoU, HD95,
ASSD). :func:`check_norm` asks whether the network scored is the network
trained: in training a BatchNorm layer normalises with the batch's
statistics and keeps a running average (momentum ``bn_momentum``) for
evaluation; if the running statistics do not describe what the layer saw in
training (a frozen block whose pretrained statistics were kept while it
normalised with batch statistics, or a running average lagging behind the
weights), the scored network is not the trained one. :func:`reestimate_stats`
recomputes the statistics a ``frozen_norm`` policy lets follow the target
data, from the training images with the final weights ("precise BN", Wu &
Johnson 2021): each layer's batch mean and variance averaged over batches,
in training mode, so every layer sees what it saw in training. Scoring with
them and without shows how much the scores depend on the running averages
rather than on the weights (``evaluation.norm_check``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import data, freeze, metrics, structures
from unet_jax.engine.experiment import Experiment
from unet_jax.engine.run import Weights
from unet_jax.errors import UserError
from unet_jax.model import UNetSpec, apply_model, model_graphdef, predict
from unet_jax.records import read_sweep
from unet_jax.sweep import checkpoint
from unet_jax.workdir import WorkdirPaths

PyTree = Any


def evaluate(graphdef, weights: Weights, test: data.Dataset, *,
             hd95_convention: str = 'max') -> list[dict]:
  """One record per test image: Dice, IoU, HD95, ASSD (pixels) and mask sizes.

  Distances are in pixels of the network's input (``image_size``); they are
  NaN when a mask is empty (``conventions.EMPTY_MASK_CONVENTION``).
  """
  return score(predicted_masks(graphdef, weights, test.images), test,
               hd95_convention=hd95_convention)


def predicted_masks(graphdef, weights: Weights, images: np.ndarray) -> np.ndarray:
  """Predicted masks (N, H, W, K) float32 {0, 1} in evaluation mode: probability above
  0.5 for one structure, the most probable class for several (``unet_jax.structures``)."""
  probs = predict(graphdef, weights.params, weights.stats, images)
  return structures.masks_from_probabilities(probs)


def score(pred: np.ndarray, test: data.Dataset, *, hd95_convention: str = 'max'
          ) -> list[dict]:
  """The records of :func:`evaluate` for predictions already made.

  A set of several structures is scored one structure at a time, each as a binary
  mask, into columns ``dice:<name>``, ``iou:<name>``, ``hd95:<name>``, ``assd:<name>``,
  ``pred_pixels:<name>`` and ``true_pixels:<name>``; ``dice`` and ``iou`` are the
  means over the structures, ``hd95`` and ``assd`` the means when every structure's
  distance is defined (NaN otherwise, as for a binary mask that is missed), and the
  pixel counts the totals.
  """
  names = test.structures
  if len(names) == 1:
    scores = metrics.score_masks(pred, test.masks, hd95_convention=hd95_convention)
    return [{'image_id': test.ids[i], 'label': test.labels[i],
             **{name: float(values[i]) for name, values in scores.items()},
             'pred_pixels': int(pred[i].sum()), 'true_pixels': int(test.masks[i].sum())}
            for i in range(len(test))]
  each = [metrics.score_masks(pred[..., k], test.masks[..., k], hd95_convention=hd95_convention)
          for k in range(len(names))]
  pred_px = pred.reshape(len(pred), -1, len(names)).sum(axis=1).astype(int)
  true_px = test.masks.reshape(len(pred), -1, len(names)).sum(axis=1).astype(int)
  rows = []
  for i in range(len(test)):
    row = {'image_id': test.ids[i], 'label': test.labels[i]}
    for metric in metrics.METRICS:
      values = np.array([scores[metric][i] for scores in each], np.float64)
      row[metric] = float(values.mean())  # NaN when any structure's distance is undefined
    row['pred_pixels'], row['true_pixels'] = int(pred_px[i].sum()), int(true_px[i].sum())
    for k, name in enumerate(names):
      row.update({f'{metric}:{name}': float(each[k][metric][i]) for metric in metrics.METRICS})
      row[f'pred_pixels:{name}'] = int(pred_px[i, k])
      row[f'true_pixels:{name}'] = int(true_px[i, k])
    rows.append(row)
  return rows


def check_norm(spec: UNetSpec, graphdef, exp: Experiment, weights: Weights,
               fit: data.Dataset, test: data.Dataset, mean_dice: float) -> dict | None:
  """Test Dice again with re-estimated BatchNorm statistics (module docstring).

  Only the statistics the policy lets follow the target data are
  re-estimated, on the fit images, with the final weights; a large change
  means the scores depend on the running averages rather than the weights.
  None for a network without BatchNorm.
  """
  if not jax.tree.leaves(weights.stats):
    return None
  masks = freeze.norm_masks(weights.stats, weights.params, exp.schedule.stages[-1],
                            exp.frozen_norm)
  fresh = reestimate_stats(spec, weights.params, weights.stats, fit.images,
                           update=masks.update, running=masks.running,
                           batch_size=exp.batch_size)
  probs = predict(graphdef, weights.params, fresh, test.images)
  dice = np.asarray(metrics.mean_dice(structures.masks_from_probabilities(probs), test.masks))
  return {'mean_dice_reestimated': float(dice.mean()),
          'change': float(dice.mean() - mean_dice)}


def evaluation_settings(hd95_convention: str, norm_check: bool) -> dict:
  """What scoring a trained network depends on, apart from the network and the data.

  A finished experiment whose summary records other values is scored again
  from its saved weights, without training again.
  """
  return {'hd95_convention': hd95_convention, 'norm_check': norm_check}


def score_fields(rows: list[dict], norm: dict | None, *, hd95_convention: str,
                 norm_check: bool, bootstrap_samples: int, seed: int,
                 seconds: dict | None = None) -> dict:
  """The ``records.ExperimentSummary`` fields that come from scoring the test images
  (``seconds``: how long scoring and the BatchNorm check took)."""
  dice = [r['dice'] for r in rows]
  return {
      'mean_dice': float(np.mean(dice)),
      'dice_ci95': list(bootstrap_ci(dice, bootstrap_samples, seed=seed)),
      'mean_iou': float(np.mean([r['iou'] for r in rows])),
      'mean_hd95_px': _nanmean([r['hd95'] for r in rows]),
      'mean_assd_px': _nanmean([r['assd'] for r in rows]),
      'undefined_distances': int(np.sum(np.isnan([r['hd95'] for r in rows]))),
      'test_images': len(rows), 'norm_check': norm,
      'empty_mask_convention': metrics.EMPTY_MASK_CONVENTION,
      'hd95_convention': hd95_convention,
      'evaluation': evaluation_settings(hd95_convention, norm_check),
      'scoring_seconds': seconds,
  }


def bootstrap_ci(values, num_samples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap CI of the mean over the given values.

  Example::

    lo, hi = bootstrap_ci(per_image_dice)   # 95% CI of the mean Dice
  """
  values = np.asarray(values, dtype=np.float64)
  if values.size == 0:
    return float('nan'), float('nan')
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, values.size, size=(num_samples, values.size))
  means = values[idx].mean(axis=1)
  alpha = (1 - level) / 2
  lo, hi = np.quantile(means, [alpha, 1 - alpha])
  return float(lo), float(hi)


def _nanmean(values) -> float | None:
  values = np.asarray(values, float)
  return float(np.nanmean(values)) if np.isfinite(values).any() else None


@functools.partial(jax.jit, static_argnums=0)
def _batch_stats(graphdef, params, stats, running, images):
  # With momentum 0 the "running" statistics a training-mode pass returns are
  # the batch's own statistics.
  _, batch = apply_model(graphdef, params, stats, images, train=True, running=running)
  return batch


def reestimate_stats(spec: UNetSpec, params: PyTree, stats: PyTree, images: np.ndarray, *,
                     update: PyTree, running: PyTree, batch_size: int, seed: int = 0
                     ) -> PyTree:
  """Running statistics recomputed on ``images`` where ``update`` is True.

  ``update`` and ``running`` are the masks of ``freeze.norm_masks`` (which
  statistics follow the target data; which layers normalise with running
  statistics in training). The images are shuffled (fixed ``seed``: a real
  set's files come grouped by class, and a batch of one class would bias
  the variances) and cut into batches of ``batch_size`` (a last, smaller one
  is used when it has at least 2 images); the new mean and variance are the
  averages of each batch's mean and (biased) variance, weighted by batch
  size: the quantities the running average tracks.
  """
  if not jax.tree.leaves(stats):
    return stats
  graphdef = model_graphdef(dataclasses.replace(spec, bn_momentum=0.0))
  flags = jax.tree.map(jnp.float32, running)
  order = np.random.default_rng(seed).permutation(len(images))
  sums, count = None, 0
  for start in range(0, len(images), batch_size):
    batch = images[order[start:start + batch_size]]
    if len(batch) < 2:
      break
    got = jax.tree.map(lambda x, n=len(batch): np.asarray(x) * n,
                       _batch_stats(graphdef, params, stats, flags, batch))
    sums = got if sums is None else jax.tree.map(np.add, sums, got)
    count += len(batch)
  if not count:
    raise ValueError('re-estimating BatchNorm statistics needs at least 2 images')
  return jax.tree.map(lambda keep, total, old: total / count if keep else old,
                      update, sums, stats)


def predictions_from_weights(workdir: str, images: np.ndarray,
                             experiments: Sequence[str]) -> dict[str, np.ndarray]:
  """Predicted masks (N, H, W, K) of saved experiments on ``images``: the overlays of a
  work directory scored before the sweep saved its predictions
  (``analysis.report.write_report(predict=...)``)."""
  paths = WorkdirPaths(workdir)
  sweep = read_sweep(paths.config)
  graphdef = model_graphdef(UNetSpec(**sweep.model))
  out = {}
  for name in experiments:
    path = paths.experiment(name).weights
    if not os.path.isdir(path):
      raise UserError(f'no weights for experiment {name!r} at {path}')
    out[name] = predicted_masks(graphdef, Weights(*checkpoint.load_weights(path)), images)
  return out
