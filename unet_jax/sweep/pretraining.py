"""Pretraining, once per work directory: on a natural-image-like source, or no steps at all
when an encoder's weights come from a file (``pretrain.source='torchvision'``).

The weights are saved with the fingerprint of what they depend on (``pretrain/meta.json``);
a later sweep with an equal fingerprint reuses them. A pretraining of another head width
(a binary source before a set of several structures) hands fine-tuning a random head.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys

import numpy as np
import tqdm

from unet_jax import data, encoders, files, freeze, structures, weights_file
from unet_jax.engine.distributed import is_writer
from unet_jax.engine.experiment import Experiment
from unet_jax.engine.resume import BundleCheckpoints, StopRequest
from unet_jax.engine.run import BundleData, RunOptions, Weights, run_bundle
from unet_jax.engine.step import BundleContext
from unet_jax.errors import UserError
from unet_jax.model import UNetSpec, init_model
from unet_jax.schedules import Schedule
from unet_jax.sweep import checkpoint
from unet_jax.sweep.settings import TORCHVISION, SweepSettings
from unet_jax.workdir import WorkdirPaths

# Pretraining was last changed by engine version 2 (common random numbers).
_PRETRAIN_VERSION = 2


def fingerprint_hash(obj) -> str:
  """A short sha256 of ``obj`` as sorted JSON: how fingerprints are compared and named."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain_fingerprint(s: SweepSettings) -> dict:
  """Everything pretrained weights depend on: equal, a work directory's are reused."""
  if s.pretrain_source == TORCHVISION:
    # No training: the random initialisation (seed, model) with the file's encoder.
    return {'seed': s.seed, 'model': s.model.identity(), 'source': s.pretrain_source,
            'weights': _file_identity(s.pretrain_weights), 'grey': s.pretrain_grey,
            'engine': _PRETRAIN_VERSION,
            **({'intensity': s.intensity} if s.intensity != data.INTENSITIES[0] else {})}
  return {'seed': s.seed, 'image_size': s.image_size,
          'model': pretrain_model(s).identity(), 'source': s.pretrain_source,
          'root': s.pretrain_root, 'engine': _PRETRAIN_VERSION,
          'num_images': s.pretrain_images, 'train': dataclasses.asdict(s.pretrain),
          **({'intensity': s.intensity} if s.intensity != data.INTENSITIES[0] else {})}


def _file_identity(path: str) -> dict:
  """A weights file by content (sha256 and size), wherever it lies; hashed once per version."""
  stat = os.stat(path)
  return _file_digest(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> dict:
  del mtime_ns  # part of the cache key only: a rewritten file is hashed again
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return {'sha256': digest.hexdigest(), 'bytes': size}


def pretrain_model(s: SweepSettings) -> UNetSpec:
  """The network pretraining trains: the sweep's, with the head its source's masks need
  (``unet_jax.structures``); fine-tuning replaces a head of another width (:func:`pretrain`)."""
  if s.pretrain_source == TORCHVISION:
    return s.model
  names, _ = data.structures_of(s.pretrain_source)
  return dataclasses.replace(s.model, out_channels=structures.out_channels(len(names)))


def _target_head(s: SweepSettings, weights: Weights, init: Weights) -> Weights:
  """Pretrained weights with ``init``'s head when pretraining's head differs from the
  sweep's (a binary source before a set of several structures): a new task's head starts
  from random weights, as torchvision's classifiers do on a new set of classes."""
  if pretrain_model(s) == s.model:
    return weights
  return Weights({**weights.params, 'head': init.params['head']}, weights.stats)


def pretrain_steps(s: SweepSettings) -> int:
  """Training steps of pretraining: none when the encoder comes from a weights file."""
  return 0 if s.pretrain_source == TORCHVISION else s.pretrain.steps


def bundle_checkpoints(paths: WorkdirPaths, key: str) -> BundleCheckpoints:
  """The checkpoints of one bundle (or of pretraining) under the work directory."""
  return BundleCheckpoints(paths.checkpoints(key), writer=is_writer())


def pretrain(s: SweepSettings, init: Weights, paths: WorkdirPaths, bar: tqdm.tqdm,
             stop: StopRequest | None = None) -> Weights:
  """Pretrains on the natural-image-like source, or reuses a matching run.

  With ``pretrain.source='torchvision'`` nothing trains: ``init`` with its encoder
  read from the weights file, saved like a pretraining run's weights.
  """
  # As meta.json reads back (tuples as lists: a ResNet's decoder widths).
  fingerprint = json.loads(json.dumps(pretrain_fingerprint(s)))
  if os.path.exists(paths.pretrain_meta):
    if files.read_json(paths.pretrain_meta).get('fingerprint') == fingerprint:
      bar.write(f'reusing pretrained weights from {paths.pretrain_dir}', file=sys.stderr)
      bar.update(pretrain_steps(s))
      return _target_head(s, Weights(*checkpoint.load_weights(paths.pretrain_weights)), init)
    bar.write('pretrain settings changed: pretraining again', file=sys.stderr)
  if s.pretrain_source == TORCHVISION:
    bar.write(f'{s.model.encoder} encoder from {s.pretrain_weights} (no pretraining steps)',
              file=sys.stderr)
    weights = encoder_from_file(s, init)
    if is_writer():
      os.makedirs(paths.pretrain_dir, exist_ok=True)
      checkpoint.save_weights(paths.pretrain_weights, weights.params, weights.stats)
      files.write_json(paths.pretrain_meta, {'fingerprint': fingerprint, 'losses': [],
                                             'seconds': 0.0, 'file': s.pretrain_weights})
    return weights
  spec = pretrain_model(s)
  start = init if spec == s.model else Weights(*init_model(spec, s.seed)[1:])
  dataset = data.open_source(s.pretrain_source, num=s.pretrain_images, size=s.image_size,
                             seed=s.seed + 1, root=s.pretrain_root, cache_dir=paths.cache,
                             on_bad=s.on_bad).with_channels(
                                 s.model.in_channels).normalised(s.intensity)
  # Everything is trained, so every BatchNorm layer uses batch statistics
  # and updates its running ones whatever the policy.
  run = Experiment('pretrain', 'pretrain',
                   Schedule.constant(freeze.preset_rules('full', encoders.layout(spec))),
                   'random', s.seed + 2, s.pretrain.learning_rate, s.pretrain.weight_decay,
                   s.pretrain.steps, s.pretrain.batch_size, frozen_norm='adapt')
  key = fingerprint_hash(fingerprint)
  checkpoints = bundle_checkpoints(paths, f'pretrain-{key}')
  result = run_bundle(
      BundleContext(spec, s.pretrain.batch_size), [run], [start],
      BundleData(dataset.images, dataset.masks, [np.arange(len(dataset))]),
      RunOptions('static', s.loop, s.chunk_steps, s.checkpoint_every), bar=bar,
      checkpoints=checkpoints, fingerprint=key, stop=stop)  # no validation: all steps
  if result.diverged_at[0] is not None:
    raise UserError(f'pretraining diverged at step {result.diverged_at[0]} (a loss or '
                    'weight became NaN or Inf); lower pretrain.learning_rate')
  weights = result.weights[0]
  if is_writer():
    os.makedirs(paths.pretrain_dir, exist_ok=True)
    checkpoint.save_weights(paths.pretrain_weights, weights.params, weights.stats)
    files.write_json(paths.pretrain_meta, {'fingerprint': fingerprint,
                                           'losses': result.losses[0],
                                           'seconds': result.report.seconds})
  checkpoints.remove()
  return _target_head(s, weights, init)


def encoder_from_file(s: SweepSettings, init: Weights) -> Weights:
  """``init`` with stem and layer1..layer4 from ``s.pretrain_weights`` (torchvision names)."""
  state = weights_file.read_state_dict(s.pretrain_weights)
  read = encoders.network_module(s.model.encoder).encoder_from_torchvision
  params, stats = read(state, init.params, init.stats, s.model, source=s.pretrain_weights,
                       grey=s.pretrain_grey, imagenet=s.intensity == 'imagenet')
  return Weights(params, stats)
