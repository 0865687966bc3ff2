"""Is the network scored the network trained? Re-estimating BatchNorm statistics.

In training a BatchNorm layer normalises with the batch's statistics and
keeps a running average (momentum ``bn_momentum``) for evaluation. If the
running statistics do not describe what the layer saw in training (a
frozen block whose pretrained statistics were kept while it normalised
with batch statistics, or a running average lagging behind the weights),
the scored network is not the trained one. :func:`reestimate_stats`
recomputes the statistics a ``frozen_norm`` policy lets follow the target
data, from the training images with the final weights ("precise BN", Wu &
Johnson 2021): each layer's batch mean and variance averaged over batches,
in training mode, so every layer sees what it saw in training. Scoring
with them and without shows how much the scores depend on the running
averages rather than on the weights (``evaluation.norm_check``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.model import UNetSpec, apply_model, init_model

PyTree = Any


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
  graphdef = init_model(dataclasses.replace(spec, bn_momentum=0.0), 0)[0]
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
