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
from unet_jax.errors import UserError
from unet_jax.freeze import FreezeRule, parse_rules
from unet_jax.model import NORMS, UNetSpec
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
  name: str
  rules: tuple[FreezeRule, ...]
  init: str  # 'pretrained' or 'random'


@dataclasses.dataclass(frozen=True)
class SweepSettings:
  seed: int
  image_size: int
  model: UNetSpec
  pretrain_source: str
  pretrain_images: int
  pretrain: TrainSettings
  target_source: str
  target_images: int
  test_fraction: float
  finetune: TrainSettings
  update_frozen_stats: bool
  chunk_steps: int
  loop: str
  experiments: tuple[ExperimentSpec, ...]
  bootstrap_samples: int

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
        pretrain_source=_choice(config, 'pretrain.source', tuple(data.SOURCES)),
        pretrain_images=_int(config, 'pretrain.num_images', 1),
        pretrain=_train(config, 'pretrain'),
        target_source=_choice(config, 'data.source', tuple(data.SOURCES)),
        target_images=_int(config, 'data.num_images', 2),
        test_fraction=_float(config, 'data.test_fraction', 0.0, 1.0),
        finetune=_train(config, 'finetune'),
        update_frozen_stats=bool(_get(config, 'finetune.update_frozen_stats')),
        chunk_steps=_int(config, 'chunk_steps', 1),
        loop=_choice(config, 'loop', LOOPS),
        experiments=experiments,
        bootstrap_samples=_int(config, 'bootstrap_samples', 100))
    n_test = round(settings.target_images * settings.test_fraction)
    if not 1 <= n_test < settings.target_images:
      raise UserError(
          f'data.test_fraction={settings.test_fraction} of data.num_images='
          f'{settings.target_images} leaves no train or no test images')
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
      parsed = parse_rules(rules, depth)
    except UserError as e:
      raise UserError(f'config field {field + ".rules"!r}: {e}') from None
    specs.append(ExperimentSpec(name, parsed, _choice(config, f'{field}.init', INITS)))
  if not specs:
    raise UserError("config field 'experiments' is empty; add at least one")
  return tuple(specs)


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
