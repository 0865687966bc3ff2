"""One experiment: what the engine trains and what makes it differ from the others."""

from __future__ import annotations

import dataclasses

from unet_jax import augment as augmentation
from unet_jax import freeze
from unet_jax.block_order import Layout
from unet_jax.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class Experiment:
  name: str
  base: str  # the entry of config.experiments it came from
  schedule: Schedule
  init: str
  seed: int
  learning_rate: float
  weight_decay: float
  steps: int
  batch_size: int
  frozen_norm: str  # freeze.FROZEN_NORM
  fold: int | None = None  # cross-validation fold; None: the hold-out split
  variant: str = ''  # name suffix of the non-replicate grid axes (unet_jax.sweep.grid)
  # Fine-tuning strategies beyond the rules (README "Strategies"); the
  # defaults are plain fine-tuning.
  layer_decay: float = 1.0  # per block group learning-rate decay, freeze.layer_decay_scale
  decay_order: str = 'flow'  # block_order.ORDERS: the order layer_decay counts in
  l2sp: float = 0.0  # strength of the pull toward the initial weights (L2-SP)
  lr_scaling: str = 'none'  # 'rgn': Auto-RGN per-tensor rates (engine.masked_adam)
  # Training-time augmentation (unet_jax.augment): the policy's name and its
  # numbers in augment.NAMES order; by default a lateral flip half the time.
  augment: str = augmentation.DEFAULT
  augment_values: tuple[float, ...] = augmentation.DEFAULT_VALUES

  def block_scale(self, model: Layout) -> dict[str, float] | None:
    """Per-block learning-rate factors of its layer decay; None without one.

    ``model``: the network's ``block_order.Layout`` (``encoders.layout(spec)``).
    """
    if self.layer_decay == 1.0:
      return None
    return freeze.layer_decay_scale(self.layer_decay, self.decay_order, model)

  def strategy_fields(self) -> dict:
    """The strategy fields that differ from plain fine-tuning."""
    return {f: getattr(self, f) for f, default in STRATEGY_DEFAULTS.items()
            if getattr(self, f) != default}


STRATEGY_DEFAULTS = {'layer_decay': 1.0, 'decay_order': 'flow', 'l2sp': 0.0,
                     'lr_scaling': 'none'}
LR_SCALINGS = ('none', 'rgn')
# An experiment's augmentation as it was before policies existed.
AUGMENT_DEFAULTS = {'augment': augmentation.DEFAULT,
                    'augment_values': augmentation.DEFAULT_VALUES}
