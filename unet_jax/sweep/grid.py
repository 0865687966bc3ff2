"""Sweep grids: experiments x axes expanded into named runs, grouped into bundles.

A config names its layer subsets / schedules in ``config.experiments`` and
the other axes in ``config.grid`` (seed, learning_rate, weight_decay, steps,
batch_size, frozen_norm, fold, layer_decay, l2sp, augment); the sweep is their
product, except that a strategy axis (layer_decay, l2sp) crosses only the
experiments that use that strategy (set the field in their entry). Learning rate,
weight decay, seed, normalisation policy, cross-validation fold, subset,
schedule and augmentation policy are data inside a compiled program, so they bundle together; steps
and batch size change the program, so experiments that differ in them go to
separate bundles, and the sweep says which axes did that.

Names: the experiment's name, plus ``-<axis><value>`` for every grid axis
with more than one value (``contracting-seed1-lr0.0003``, ``full-normadapt-fold2``).
An experiment's *variant* is that suffix without the seed and the fold, the
axes over which runs are replicates: runs of one base and variant are
compared and pooled over seeds and folds.
"""

from __future__ import annotations

import itertools
from typing import Sequence

from unet_jax import augment
from unet_jax.engine.experiment import STRATEGY_DEFAULTS, Experiment

# Grid axes: config key -> (name suffix, does it force separate bundles).
AXES = {
    'seed': ('seed', False),
    'learning_rate': ('lr', False),
    'weight_decay': ('wd', False),
    'steps': ('steps', True),
    'batch_size': ('bs', True),
    'frozen_norm': ('norm', False),
    'fold': ('fold', False),
    'layer_decay': ('decay', False),
    'l2sp': ('l2sp', False),
    'augment': ('aug', False),
}
# Axes of one strategy's setting: they cross the experiments whose entry sets
# the field; an empty axis leaves each experiment its own value.
STRATEGY_AXES = ('layer_decay', 'l2sp')
# Axes whose values are replicates of one procedure, not a variant of it.
REPLICATE_AXES = ('seed', 'fold')


def bundle_key(exp: Experiment) -> tuple:
  """The values of the axes that change the compiled program (steps, batch size)."""
  return tuple(getattr(exp, axis) for axis, (_, forces) in AXES.items() if forces)


def _suffix(value) -> str:
  return f'{value:g}' if isinstance(value, float) else str(value)


def expand(bases: Sequence[tuple], axes: dict[str, tuple],
           policies: dict[str, tuple[float, ...]] | None = None) -> list[Experiment]:
  """The product of ``bases`` and the grid ``axes``.

  A base is (name, schedule, init, strategy): ``schedule`` a Schedule or a
  function of the number of steps returning one (LP-FT's share of steps),
  ``strategy`` the Experiment strategy fields its entry sets
  (``Experiment.strategy_fields``). ``policies``: augmentation policy name ->
  its numbers (``unet_jax.augment.values``), for the ``augment`` axis; the
  built-in ``augment.POLICIES`` when None.
  """
  if policies is None:
    policies = augment.built_in()
  axes = {'augment': (augment.DEFAULT,), **axes}  # grids written before the axis
  names = list(AXES)
  out = []
  for base, schedule, init, strategy in bases:
    values_of = {a: _axis_values(a, axes, strategy) for a in names}
    varying = [a for a in names if len(values_of[a]) > 1]
    for values in itertools.product(*(values_of[a] for a in names)):
      point = dict(zip(names, values))
      name = base + ''.join(f'-{AXES[a][0]}{_suffix(point[a])}' for a in varying)
      variant = ''.join(f'-{AXES[a][0]}{_suffix(point[a])}' for a in varying
                        if a not in REPLICATE_AXES)
      fixed = {k: v for k, v in strategy.items() if k not in point}
      stages = schedule(point['steps']) if callable(schedule) else schedule
      out.append(Experiment(name, base, stages, init, **point, **fixed, variant=variant,
                            augment_values=policies[point['augment']]))
  return out


def _axis_values(axis: str, axes: dict[str, tuple], strategy: dict) -> tuple:
  if axis not in STRATEGY_AXES:
    return axes[axis]
  if axis in strategy:
    return axes.get(axis) or (strategy[axis],)
  return (STRATEGY_DEFAULTS[axis],)


def group_bundles(experiments: Sequence[Experiment], max_size: int = 0
                  ) -> tuple[list[list[Experiment]], list[str]]:
  """Groups experiments that can share a program; returns (bundles, axes).

  ``axes`` lists the grid axes whose different values forced separate
  bundles. ``max_size`` > 0 caps a bundle's size (memory).
  """
  groups: dict[tuple, list[Experiment]] = {}
  for exp in experiments:
    groups.setdefault(bundle_key(exp), []).append(exp)
  forcing = [a for a, (_, forces) in AXES.items() if forces]
  split_by = [a for i, a in enumerate(forcing)
              if len({key[i] for key in groups}) > 1]
  bundles = []
  for members in groups.values():
    size = max_size or len(members)
    bundles += [members[i:i + size] for i in range(0, len(members), size)]
  return bundles, split_by
