"""One experiment: what the engine trains and what makes it differ from the others."""

from __future__ import annotations

import dataclasses

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
