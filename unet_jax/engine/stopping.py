"""Early stopping on validation Dice, one decision per experiment and evaluation.

Every experiment of a bundle is evaluated on its validation images at each
chunk boundary. An evaluation *improves* when its Dice exceeds the best so
far by more than ``min_delta`` (the first evaluation always improves); the
experiment's weights and BatchNorm statistics at its last improving
evaluation are kept as its result. It stops, ``'converged'``, once
``patience`` evaluations in a row have not improved, counted only from the
start of its schedule's last stage (a gradual schedule has not finished
unfreezing before that); ``'diverged'`` at the first evaluation after a step
whose loss or gradients were not finite; ``'cap'`` when it reaches its step
cap still improving. ``patience=0`` never stops early (fixed budget), but
the result is still the best-validation network.

The decisions are a pure function of the logged validation Dice, kept as
plain JSON (:meth:`StopTracker.to_json`) in the bundle's checkpoints, so a
resumed bundle decides exactly as one that ran straight through. Nothing
here draws random numbers: a stopped experiment changes no other
experiment's batches (those depend on each run's seed and step alone).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

REASONS = ('converged', 'cap', 'diverged', 'no_validation')


@dataclasses.dataclass(frozen=True)
class StopRule:
  """When an experiment has finished training (see the module docstring)."""

  patience: int = 5  # evaluations without improvement; 0 = train to the cap
  min_delta: float = 0.0  # Dice an evaluation must gain over the best to count


@dataclasses.dataclass
class RunProgress:
  """One experiment's early-stopping state."""

  best_val_dice: float = -math.inf
  best_step: int = 0  # 0: no evaluation yet (the initial weights)
  since_best: int = 0  # evaluations without improvement (in the last stage)
  stopped_at: int | None = None  # the step it stopped at; None while training
  reason: str | None = None  # REASONS, once stopped or at the cap


class StopTracker:
  """The early-stopping decisions of a bundle's experiments.

  ``last_stage_starts[e]`` is the first step of experiment e's last schedule
  stage: patience counts from there.

  Example::

    tracker = StopTracker(StopRule(patience=3), [0, 0])
    improved, stopped = tracker.update(step=20, val_dice=[0.5, 0.7], diverged=[False] * 2)
  """

  def __init__(self, rule: StopRule, last_stage_starts: Sequence[int],
               progress: Sequence[RunProgress] | None = None):
    self.rule = rule
    self.last_stage_starts = [int(s) for s in last_stage_starts]
    self.runs = (list(progress) if progress is not None
                 else [RunProgress() for _ in self.last_stage_starts])

  @property
  def active(self) -> np.ndarray:
    """[E] bool: the experiments still training."""
    return np.asarray([r.stopped_at is None for r in self.runs])

  def update(self, step: int, val_dice: Sequence[float], diverged: Sequence[bool]
             ) -> tuple[np.ndarray, np.ndarray]:
    """Records the evaluation at ``step`` of the active experiments.

    Returns (improved, stopped): [E] bool, which experiments' weights at
    ``step`` are their new best, and which stop now.
    """
    improved = np.zeros(len(self.runs), bool)
    stopped = np.zeros(len(self.runs), bool)
    for e, run in enumerate(self.runs):
      if run.stopped_at is not None:
        continue
      dice = float(val_dice[e])
      if math.isnan(dice):
        pass  # no validation set: nothing to decide on
      elif dice > run.best_val_dice + self.rule.min_delta:
        run.best_val_dice, run.best_step, run.since_best = dice, step, 0
        improved[e] = True
      elif step > self.last_stage_starts[e]:
        run.since_best += 1
      # A diverged run's weights are those before its failed step, scored
      # above like any others; it cannot improve again.
      if diverged[e]:
        run.stopped_at, run.reason, stopped[e] = step, 'diverged', True
      elif self.rule.patience and run.since_best >= self.rule.patience:
        run.stopped_at, run.reason, stopped[e] = step, 'converged', True
    return improved, stopped

  def finish(self, step: int, has_validation: bool) -> None:
    """Marks the experiments still training at the cap ``step``."""
    for run in self.runs:
      if run.stopped_at is None:
        run.stopped_at, run.reason = step, ('cap' if has_validation else 'no_validation')

  def to_json(self) -> list[dict]:
    return [dataclasses.asdict(r) | {'best_val_dice': _finite_or_none(r.best_val_dice)}
            for r in self.runs]

  @classmethod
  def from_json(cls, rule: StopRule, last_stage_starts: Sequence[int], rows: list[dict]
                ) -> 'StopTracker':
    progress = [RunProgress(**(row | {'best_val_dice': -math.inf
                                      if row['best_val_dice'] is None
                                      else row['best_val_dice']})) for row in rows]
    return cls(rule, last_stage_starts, progress)


def _finite_or_none(value: float) -> float | None:
  return None if math.isinf(value) else value
