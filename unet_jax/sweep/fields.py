"""Reading one field of a sweep config: present or missing, its type and bounds, its choices.

Each function names the field in the UserError it raises (``config field 'x' must be ...;
got ...``), so ``settings`` reads a config in one pass of plain calls. No JAX.
"""

from __future__ import annotations

from typing import Any

from unet_jax.errors import UserError


def optional(config, field: str, default) -> Any:
  """A field that configs written before it existed leave out."""
  try:
    return field_value(config, field)
  except UserError:
    return default


def field_value(config, field: str) -> Any:
  node = config
  for part in field.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise UserError(f'config field {field!r} is missing') from None
  return node


def int_problem(value, minimum) -> str:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    return f'must be an integer >= {minimum}'
  return ''


def float_problem(value, lo, hi) -> str:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
    return f'must be a number in [{lo}, {hi}]'
  return ''


def int_field(config, field, minimum) -> int:
  value = field_value(config, field)
  problem = int_problem(value, minimum)
  if problem:
    raise UserError(f'config field {field!r} {problem}; got {value!r}')
  return value


def float_field(config, field, lo, hi) -> float:
  value = field_value(config, field)
  problem = float_problem(value, lo, hi)
  if problem:
    raise UserError(f'config field {field!r} {problem}; got {value!r}')
  return float(value)


# The bounds of the fields a grid axis can take several values of; a single
# value and a grid value are checked against the same ones.
NUMBERS = {'seed': (int, 0), 'steps': (int, 1), 'batch_size': (int, 1),
            'learning_rate': (float, 1e-12, 1e3), 'weight_decay': (float, 0.0, 1.0),
            'layer_decay': (float, 1e-6, 1.0), 'l2sp': (float, 0.0, 100.0)}


def number_problem(axis: str, value) -> str:
  if axis == 'layer_decay':  # a factor in (0, 1]: 1 is no decay
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or \
        not 0 < value <= 1
    return 'must be a number in (0, 1]' if bad else ''
  kind, *bounds = NUMBERS[axis]
  return int_problem(value, *bounds) if kind is int else float_problem(value, *bounds)


def number(config, field: str):
  """A field of ``NUMBERS`` (by its last name part), checked and cast."""
  axis = field.rsplit('.', 1)[-1]
  value = field_value(config, field)
  problem = number_problem(axis, value)
  if problem:
    raise UserError(f'config field {field!r} {problem}; got {value!r}')
  return NUMBERS[axis][0](value)


def bool_field(config, field) -> bool:
  value = field_value(config, field)
  if not isinstance(value, bool):
    raise UserError(f'config field {field!r} must be True or False; got {value!r}')
  return value


def optional_bool(config, field, default: bool = False) -> bool:
  """A True/False field that configs written before it existed leave out."""
  value = optional(config, field, default)
  if not isinstance(value, bool):
    raise UserError(f'config field {field!r} must be True or False; got {value!r}')
  return value


def optional_choice(config, field, choices) -> str:
  """One of ``choices`` (the first when a config written before the field leaves it out)."""
  return checked_choice(field, optional(config, field, choices[0]), choices)


def choice(config, field, choices) -> str:
  return checked_choice(field, field_value(config, field), choices)


def checked_choice(field, value, choices) -> str:
  if value not in choices:
    raise UserError(f'config field {field!r} is {value!r}; valid choices: '
                    f'{", ".join(choices)}')
  return value
