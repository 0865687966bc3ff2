"""One experiment as a standalone model: export it, then segment new images.

An exported folder holds ``weights/`` (a plain orbax checkpoint, as in the
work directory; low-rank adapters merged into their kernels) and
``model.json`` (architecture, input size, the BatchNorm policy it was
fine-tuned under, and the experiment's summary), which is all
:func:`predict` needs.

Example::

  export_experiment('runs/default', 'contracting', 'models/contracting')
  probs = predict('models/contracting', images)   # (N, H, W) or (N, H, W, 1)
  labels = segment('models/contracting', images)  # (N, H, W) 0/1, or 0..K for K structures
"""

from __future__ import annotations

import os

import jax
import numpy as np

from unet_jax import data, files, structures
from unet_jax.data.real.pixels import placement
from unet_jax.errors import UserError
from unet_jax.model import UNetSpec, merge_adapters, model_graphdef
from unet_jax.model import predict as predict_batches
from unet_jax.records import read_summary, read_sweep
from unet_jax.sweep import checkpoint
from unet_jax.workdir import ExportPaths, WorkdirPaths


def export_experiment(workdir: str, experiment: str, out: str) -> str:
  """Writes ``out/weights`` and ``out/model.json`` for one experiment."""
  paths = WorkdirPaths(workdir)
  if not os.path.isfile(paths.config):
    raise UserError(f'{workdir} is not a sweep work directory (no config.json)')
  names = [n for n in paths.listed_experiments()
           if os.path.isfile(paths.experiment(n).summary)]
  if experiment not in names:
    raise UserError(f'no finished experiment {experiment!r} in {workdir}; '
                    f'finished experiments: {", ".join(names) or "none"}')
  sweep = read_sweep(paths.config)
  summary = read_summary(paths.experiment(experiment).summary)
  params, stats = checkpoint.load_weights(paths.experiment(experiment).weights)
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create {out}: {e.strerror or e}') from None
  exported = ExportPaths(out)
  # Adapters are folded into their kernels: the exported network is the plain
  # U-Net, so predict needs nothing new.
  model = dict(sweep.model)
  if model.get('adapter_rank'):
    params = merge_adapters(params)
    model['adapter_rank'] = 0
  checkpoint.save_weights(exported.weights, params, stats)
  # How its frozen blocks' BatchNorm was trained; predict always runs every
  # layer on its running statistics.
  files.write_json(exported.model, {
      'model': model, 'image_size': sweep.image_size,
      'frozen_norm': summary.frozen_norm, 'experiment': summary.to_json(),
      'intensity': sweep.settings.get('intensity', data.INTENSITIES[0]),
      'structures': list(sweep.structures),
      'resize': sweep.settings.get('resize', 'stretch'),
      'adapters_merged': bool(sweep.model.get('adapter_rank'))})
  return out


def _load(checkpoint_dir: str):
  exported = ExportPaths(checkpoint_dir)
  if not os.path.isfile(exported.model):
    raise UserError(f'{checkpoint_dir} is not an exported model (no model.json); '
                    'make one with launch/export.py')
  meta = files.read_json(exported.model)
  spec = UNetSpec(**meta['model'])
  graphdef = model_graphdef(spec)
  params, stats = checkpoint.load_weights(exported.weights)
  return (spec, graphdef, params, stats, meta['image_size'], meta.get('intensity', 'unit'),
          meta.get('resize', 'stretch'))


def predict(checkpoint_dir: str, images) -> np.ndarray:
  """Structure probabilities for new images, at the images' own size.

  Args:
    checkpoint_dir: a folder written by ``export_experiment``.
    images: (N, H, W) or (N, H, W, 1) grey values in [0, 1], any H and W;
      standardised here when the model was trained on z-scored images
      (``model.json`` 'intensity'); fitted to the model's square as it was trained
      ('resize': stretched, or scaled with the aspect ratio kept and padded).

  Returns:
    (N, H, W) float32 foreground probabilities (or (N, H, W, 1) for 4-D input);
    a model of K > 1 structures gives (N, H, W, K), one channel per structure in
    ``model.json``'s 'structures' order. Images are resized (anti-aliased) to the
    model's input, segmented, and the probabilities resized back.
  """
  spec, graphdef, params, stats, size, intensity, resize = _load(checkpoint_dir)
  images = np.asarray(images, np.float32)
  squeeze = images.ndim == 3
  if squeeze:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] != 1:
    raise UserError(f'images must be (N, H, W) or (N, H, W, 1); got {images.shape}')
  n, h, w, _ = images.shape
  rows, cols, top, left = placement(h, w, size, resize)
  small = np.zeros((n, size, size, 1), np.float32)
  small[:, top:top + rows, left:left + cols] = np.asarray(
      jax.image.resize(images, (n, rows, cols, 1), 'linear', antialias=True))
  small = data.normalise(np.repeat(small, spec.in_channels, axis=-1), intensity)
  probs = predict_batches(graphdef, params, stats, small)[:, top:top + rows, left:left + cols]
  k = probs.shape[-1]
  full = np.asarray(jax.image.resize(probs, (n, h, w, k), 'linear'))
  full = np.clip(full, 0.0, 1.0)
  return full[..., 0] if squeeze and k == 1 else full


def segment(checkpoint_dir: str, images) -> np.ndarray:
  """Label maps for new images, at their own size: (N, H, W) uint8, 0 background and
  k the structure ``model.json`` lists k-th (a binary model: 0 or 1). Each pixel
  takes the most probable class of :func:`predict`'s probabilities (for one
  structure, probability > 0.5)."""
  images = np.asarray(images, np.float32)
  probs = predict(checkpoint_dir, images[..., None] if images.ndim == 3 else images)
  return structures.label_map(structures.masks_from_probabilities(probs))
