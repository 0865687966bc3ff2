"""A sweep config, checked field by field and frozen into plain dataclasses.

``SweepSettings.from_config(config)`` is the only place that reads an
``ml_collections`` config; everything after it works on these dataclasses,
so derived values never get written back into the config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from unet_jax import data
from unet_jax.bundle import STRATEGIES
from unet_jax.data import pets
from unet_jax.errors import UserError
from unet_jax.freeze import FROZEN_NORM
from unet_jax.grid import AXES, Experiment, expand
from unet_jax.metrics import HD95_CONVENTIONS
from unet_jax.model import NORMS, UNetSpec
from unet_jax.schedules import Schedule, parse_schedule
from unet_jax.train import LOOPS

INITS = ('pretrained', 'random')


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  steps: int
  batch_size: int
  learning_rate: float
  weight_decay: float


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
  """An entry of ``config.experiments``: a subset or schedule and an init."""

  name: str
  schedule: Schedule
  init: str  # 'pretrained' or 'random'


@dataclasses.dataclass(frozen=True)
class SweepSettings:
  seed: int
  image_size: int
  model: UNetSpec
  pretrain_source: str
  pretrain_root: str  # folder of a real set (pretrain.source in data.LOADERS)
  pretrain_images: int
  pretrain: TrainSettings
  target_source: str
  target_root: str  # folder of a real set (data.source in data.LOADERS)
  on_bad: str  # 'error' or 'skip': what a real set's unusable image/mask pair does
  target_images: int
  test_fraction: float  # of the target images, held out for testing (folds <= 1)
  val_fraction: float  # of the training images, held out for validation Dice
  folds: int  # k-fold cross-validation of the target set; 0 or 1: one hold-out split
  finetune: TrainSettings
  frozen_norm: str  # freeze.FROZEN_NORM: frozen blocks' BatchNorm in fine-tuning
  hd95_convention: str  # metrics.HD95_CONVENTIONS
  norm_check: bool  # also score each run with re-estimated BatchNorm statistics
  chunk_steps: int
  checkpoint_every: int  # steps between bundle checkpoints; 0 = only on a signal
  loop: str
  experiments: tuple[ExperimentSpec, ...]
  grid: dict  # axis -> tuple of values, defaults filled in
  strategy: str  # 'auto' or one of unet_jax.bundle.STRATEGIES
  max_bundle: int  # 0 = no limit
  rewarmup_steps: int
  bootstrap_samples: int
  compilation_cache: str  # '' = off

  def runs(self) -> list[Experiment]:
    """Every experiment of the sweep: config.experiments x config.grid."""
    return expand([(e.name, e.schedule, e.init) for e in self.experiments], self.grid)


  @classmethod
  def from_config(cls, config) -> 'SweepSettings':
    """Validates ``config``; a bad field raises UserError naming it."""
    model = UNetSpec(
        base_width=_int(config, 'model.base_width', 1),
        depth=_int(config, 'model.depth', 1),
        norm=_choice(config, 'model.norm', NORMS),
        in_channels=_int(config, 'model.in_channels', 1),
        group_size=_int(config, 'model.group_size', 1),
        bn_momentum=_float(config, 'model.bn_momentum', 0.0, 1.0))
    size = _int(config, 'image_size', 8)
    if size % 2 ** model.depth:
      raise UserError(f'image_size={size} must be divisible by 2**model.depth '
                      f'= {2 ** model.depth}')
    only = [n.strip() for n in str(_get(config, 'only')).split(',') if n.strip()]
    experiments = _experiments(config, model.depth, only)
    _refuse_replaced_fields(config)
    folds = _int(config, 'data.folds', 0)
    settings = cls(
        seed=_int(config, 'seed', 0),
        image_size=size,
        model=model,
        pretrain_source=_choice(config, 'pretrain.source',
                                tuple(data.SOURCES) + tuple(data.LOADERS) + (pets.NAME,)),
        pretrain_root=os.path.expanduser(str(_get(config, 'pretrain.root'))),
        pretrain_images=_int(config, 'pretrain.num_images', 1),
        pretrain=_train(config, 'pretrain'),
        target_source=_choice(config, 'data.source',
                              tuple(data.SOURCES) + tuple(data.LOADERS)),
        target_root=os.path.expanduser(str(_get(config, 'data.root'))),
        on_bad=_choice(config, 'data.on_bad', ('error', 'skip')),
        target_images=_int(config, 'data.num_images', 2),
        test_fraction=_float(config, 'data.test_fraction', 0.0, 1.0),
        val_fraction=_float(config, 'data.val_fraction', 0.0, 0.9),
        folds=folds,
        finetune=_train(config, 'finetune'),
        frozen_norm=_choice(config, 'finetune.frozen_norm', tuple(FROZEN_NORM)),
        hd95_convention=_choice(config, 'evaluation.hd95', tuple(HD95_CONVENTIONS)),
        norm_check=_bool(config, 'evaluation.norm_check'),
        chunk_steps=_int(config, 'chunk_steps', 1),
        checkpoint_every=_int(config, 'checkpoint_every', 0),
        loop=_choice(config, 'loop', LOOPS),
        experiments=experiments,
        grid=_grid(config, folds),
        strategy=_choice(config, 'strategy', ('auto',) + STRATEGIES),
        max_bundle=_int(config, 'max_bundle', 0),
        rewarmup_steps=_int(config, 'finetune.rewarmup_steps', 0),
        bootstrap_samples=_int(config, 'bootstrap_samples', 100),
        compilation_cache=str(_get(config, 'compilation_cache')))
    if settings.pretrain_source in data.LOADERS and not settings.pretrain_root:
      raise UserError(f'pretrain.source={settings.pretrain_source!r} is a real data set: '
                      'give its folder as pretrain.root')
    if settings.target_source in data.LOADERS and not settings.target_root:
      raise UserError(f'data.source={settings.target_source!r} is a real data set: give '
                      'its folder as data.root')
    names = [r.name for r in settings.runs()]
    if len(set(names)) != len(names):
      raise UserError(f'experiment names collide after grid expansion: {names}')
    if settings.target_source in data.SOURCES and folds > settings.target_images:
      raise UserError(f'data.folds={folds} needs at least {folds} images; '
                      f'data.num_images is {settings.target_images}')
    # Split sizes are checked on the class labels once the data exist
    # (data.plan_splits), the same computation that makes the split.
    return settings


def _get(config, field: str) -> Any:
  node = config
  for part in field.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise UserError(f'config field {field!r} is missing') from None
  return node


def _int(config, field, minimum) -> int:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise UserError(f'config field {field!r} must be an integer >= {minimum}; '
                    f'got {value!r}')
  return value


def _float(config, field, lo, hi) -> float:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      lo <= value <= hi):
    raise UserError(f'config field {field!r} must be a number in [{lo}, {hi}]; '
                    f'got {value!r}')
  return float(value)


def _bool(config, field) -> bool:
  value = _get(config, field)
  if not isinstance(value, bool):
    raise UserError(f'config field {field!r} must be True or False; got {value!r}')
  return value


# Fields that were replaced: a config that still sets one gets told what to write.
_REPLACED = {
    'finetune.update_frozen_stats': "finetune.frozen_norm ('inference' | 'adapt'): "
                                    "update_frozen_stats=True is 'adapt'; False "
                                    'normalised frozen blocks with batch statistics '
                                    'in training but pretrained ones in evaluation, '
                                    'which no policy does any more (docs/DESIGN.md)',
}


def _refuse_replaced_fields(config) -> None:
  for field, instead in _REPLACED.items():
    try:
      _get(config, field)
    except UserError:
      continue
    raise UserError(f'config field {field!r} was replaced by {instead}; remove it')


def _choice(config, field, choices) -> str:
  value = _get(config, field)
  if value not in choices:
    raise UserError(f'config field {field!r} is {value!r}; valid choices: '
                    f'{", ".join(choices)}')
  return value


def _train(config, prefix) -> TrainSettings:
  return TrainSettings(
      steps=_int(config, f'{prefix}.steps', 1),
      batch_size=_int(config, f'{prefix}.batch_size', 1),
      learning_rate=_float(config, f'{prefix}.learning_rate', 1e-12, 1e3),
      weight_decay=_float(config, f'{prefix}.weight_decay', 0.0, 1.0))


def _experiments(config, depth, only) -> tuple[ExperimentSpec, ...]:
  table = _get(config, 'experiments')
  names = list(table.keys())
  unknown = [n for n in only if n not in names]
  if unknown:
    raise UserError(f'config field \'only\' names unknown experiment(s) '
                    f'{", ".join(unknown)}; valid names: {", ".join(names)}')
  specs = []
  for name in (only or names):
    field = f'experiments.{name}'
    rules = _get(config, f'{field}.rules')
    try:
      schedule = parse_schedule(rules, depth)
    except UserError as e:
      raise UserError(f'config field {field + ".rules"!r}: {e}') from None
    specs.append(ExperimentSpec(name, schedule, _choice(config, f'{field}.init', INITS)))
  if not specs:
    raise UserError("config field 'experiments' is empty; add at least one")
  return tuple(specs)


_GRID_DEFAULTS = {'seed': 'seed', 'learning_rate': 'finetune.learning_rate',
                  'weight_decay': 'finetune.weight_decay', 'steps': 'finetune.steps',
                  'batch_size': 'finetune.batch_size', 'frozen_norm': 'finetune.frozen_norm'}


def _grid(config, folds: int) -> dict:
  """config.grid with empty axes filled from the single-valued fields.

  ``fold`` defaults to every fold when ``data.folds`` > 1, else to the one
  hold-out split (None).
  """
  grid = {}
  for axis in AXES:
    field = f'grid.{axis}'
    values = _get(config, field)
    if isinstance(values, (int, float, str)) and not isinstance(values, bool):
      values = (values,)
    if not isinstance(values, (tuple, list)):
      raise UserError(f'config field {field!r} must be a tuple of values; got {values!r}')
    if axis == 'fold':
      grid[axis] = _folds(field, tuple(values), folds)
      continue
    values = tuple(values) or (_get(config, _GRID_DEFAULTS[axis]),)
    if axis == 'frozen_norm':
      bad = [v for v in values if not isinstance(v, str) or v not in FROZEN_NORM]
      if bad:
        raise UserError(f'config field {field!r} has a bad value {bad[0]!r}; valid: '
                        f'{", ".join(FROZEN_NORM)}')
    else:
      number = int if axis in ('seed', 'steps', 'batch_size') else float
      for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (
            number is float or float(v).is_integer())
        if not ok or v < (1 if axis in ('steps', 'batch_size') else 0):
          raise UserError(f'config field {field!r} has a bad value {v!r}')
      values = tuple(number(v) for v in values)
    if len(set(values)) != len(values):
      raise UserError(f'config field {field!r} repeats a value: {values}')
    grid[axis] = values
  return grid


def _folds(field: str, values: tuple, folds: int) -> tuple:
  if folds <= 1:
    if values:
      raise UserError(f'config field {field!r} needs data.folds >= 2 (k-fold '
                      f'cross-validation); data.folds is {folds}')
    return (None,)
  if not values:
    return tuple(range(folds))
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < folds:
      raise UserError(f'config field {field!r} has a bad value {v!r}; folds are '
                      f'0..{folds - 1} (data.folds={folds})')
  if len(set(values)) != len(values):
    raise UserError(f'config field {field!r} repeats a value: {values}')
  return tuple(values)


def load_config(spec: str):
  """Loads ``path/to/config.py[:variant]`` the way ``launch/sweep.py`` does.

  For notebooks and tests: ``load_config('configs/default.py:tiny')``.
  """
  path, _, variant = spec.partition(':')
  if not os.path.isfile(path):
    raise UserError(f'config file {path} does not exist')
  module_spec = importlib.util.spec_from_file_location('_unet_jax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)
