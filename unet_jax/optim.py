"""Optimizers whose frozen leaves never move.

The freeze is static: ``optax.partition`` routes 'train' leaves to Adam and
'freeze' leaves to ``set_to_zero``, so a frozen leaf has no Adam moments at
all and its update is exactly zero.
"""

from __future__ import annotations

from typing import Any

import optax

from unet_jax.freeze import FREEZE, TRAIN

PyTree = Any


def make_adam(learning_rate: float, weight_decay: float = 0.0
              ) -> optax.GradientTransformation:
  if weight_decay:
    return optax.adamw(learning_rate, weight_decay=weight_decay)
  return optax.adam(learning_rate)


def make_optimizer(labels: PyTree, learning_rate: float,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam on leaves labelled 'train', zero updates on leaves labelled 'freeze'.

  Args:
    labels: tree like the parameters with 'train' / 'freeze' leaves, from
      ``unet_jax.freeze.freeze_labels``.
    learning_rate: Adam step size.
    weight_decay: decoupled weight decay (AdamW) on trained leaves; 0 = Adam.

  Example::

    labels = freeze_labels(params, preset_rules('contracting', depth=4))
    tx = make_optimizer(labels, 1e-3)
  """
  return optax.partition(
      {TRAIN: make_adam(learning_rate, weight_decay), FREEZE: optax.set_to_zero()},
      labels)
