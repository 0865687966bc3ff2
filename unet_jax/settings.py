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
from unet_jax.grid import AXES, Experiment, expand
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
  test_fraction: float
  val_fraction: float  # of the training images, held out for validation Dice
  finetune: TrainSettings
  update_frozen_stats: bool
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
        finetune=_train(config, 'finetune'),
        update_frozen_stats=bool(_get(config, 'finetune.update_frozen_stats')),
        chunk_steps=_int(config, 'chunk_steps', 1),
        checkpoint_every=_int(config, 'checkpoint_every', 0),
        loop=_choice(config, 'loop', LOOPS),
        experiments=experiments,
        grid=_grid(config),
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
    if settings.target_source in data.SOURCES:
      settings.check_split(settings.target_images)
    return settings

  def check_split(self, num_images: int) -> None:
    """Raises UserError unless the split leaves train and test images."""
    n_test = round(num_images * self.test_fraction)
    if not 1 <= n_test < num_images:
      raise UserError(f'data.test_fraction={self.test_fraction} of {num_images} images '
                      'leaves no train or no test images')
    n_train = num_images - n_test
    if round(n_train * self.val_fraction) >= n_train:
      raise UserError(f'data.val_fraction={self.val_fraction} of the {n_train} training '
                      'images leaves none to train on')


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
                  'batch_size': 'finetune.batch_size'}


def _grid(config) -> dict:
  """config.grid with empty axes filled from the single-valued fields."""
  grid = {}
  for axis in AXES:
    field = f'grid.{axis}'
    values = _get(config, field)
    if isinstance(values, (int, float)) and not isinstance(values, bool):
      values = (values,)
    if not isinstance(values, (tuple, list)):
      raise UserError(f'config field {field!r} must be a tuple of values; got {values!r}')
    values = tuple(values) or (_get(config, _GRID_DEFAULTS[axis]),)
    number = int if axis in ('seed', 'steps', 'batch_size') else float
    for v in values:
      ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (
          number is float or float(v).is_integer())
      if not ok or v < (1 if axis in ('steps', 'batch_size') else 0):
        raise UserError(f'config field {field!r} has a bad value {v!r}')
    if len(set(values)) != len(values):
      raise UserError(f'config field {field!r} repeats a value: {values}')
    grid[axis] = tuple(number(v) for v in values)
  return grid


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
