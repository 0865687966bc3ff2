"""Gradual fine-tuning schedules: which blocks train at each step, as data.

A :class:`Schedule` is a list of stages; stage i starts at step
``starts[i]`` and trains the leaves its rules mark 'train'. The stage of a
step is looked up inside the compiled step, so experiments with different
schedules (or plain layer subsets: one-stage schedules) share one program.

The paper's gradual schedules (DESIGN.md F2, F6) add blocks one group at a
time, cumulatively, in one of two orders of "shallow to deep":

- ``flow``: data-flow order, enc1, enc2, ..., bottleneck, decD, ..., dec1, head;
- ``depth``: depth in the U, the full-resolution blocks of both paths first
  ({enc1, dec1, head}, {enc2, dec2}, ..., {bottleneck}).

``gradual(order, 'shallow_to_deep' | 'deep_to_shallow', stage_steps)`` gives
them; ``unfreeze_at(rules, step)`` trains ``rules`` first and everything from
``step`` on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from unet_jax.errors import UserError
from unet_jax.freeze import FreezeRule, parse_rules, trainable_mask

PyTree = Any

ORDERS = ('flow', 'depth')
DIRECTIONS = ('shallow_to_deep', 'deep_to_shallow')
NEVER = np.iinfo(np.int32).max  # start step of padding stages


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Stages of freeze rules; ``starts[0]`` is 0 and starts increase."""

  starts: tuple[int, ...]
  stages: tuple[tuple[FreezeRule, ...], ...]

  def __post_init__(self):
    if not self.stages or len(self.starts) != len(self.stages):
      raise UserError('a schedule needs one start step per stage')
    if self.starts[0] != 0 or any(b <= a for a, b in zip(self.starts, self.starts[1:])):
      raise UserError(f'schedule start steps must begin at 0 and increase; '
                      f'got {list(self.starts)}')

  @classmethod
  def constant(cls, rules: Sequence[FreezeRule]) -> 'Schedule':
    return cls((0,), (tuple(rules),))

  def stage_at(self, step: int) -> int:
    return int(np.searchsorted(np.asarray(self.starts), step, side='right') - 1)


def block_groups(order: str, depth: int) -> list[list[str]]:
  """Groups of block names from shallowest to deepest under ``order``."""
  if order == 'flow':
    names = ([f'enc{i}' for i in range(1, depth + 1)] + ['bottleneck'] +
             [f'dec{i}' for i in range(depth, 0, -1)] + ['head'])
    return [[n] for n in names]
  if order == 'depth':
    groups = [['enc1', 'dec1', 'head']]
    groups += [[f'enc{i}', f'dec{i}'] for i in range(2, depth + 1)]
    return groups + [['bottleneck']]
  raise UserError(f'unknown block order {order!r}; valid orders: {", ".join(ORDERS)}')


def gradual(order: str, direction: str, stage_steps: int, depth: int) -> Schedule:
  """Cumulative gradual unfreezing, one block group per stage.

  ``flow`` + ``deep_to_shallow`` starts from the head end of the data flow
  (head, dec1, ...), the classifier habit; ``depth`` + ``deep_to_shallow``
  starts from the bottleneck.
  """
  if direction not in DIRECTIONS:
    raise UserError(f'unknown schedule direction {direction!r}; valid: '
                    f'{", ".join(DIRECTIONS)}')
  if stage_steps < 1:
    raise UserError(f'stage_steps must be >= 1; got {stage_steps}')
  groups = block_groups(order, depth)
  if direction == 'deep_to_shallow':
    groups = groups[::-1]
  stages = []
  for i in range(len(groups)):
    blocks = [b for g in groups[:i + 1] for b in g]
    stages.append((FreezeRule('|'.join(blocks), 'train'), FreezeRule('.*', 'freeze')))
  return Schedule(tuple(i * stage_steps for i in range(len(groups))), tuple(stages))


def unfreeze_at(rules: Sequence[FreezeRule], step: int) -> Schedule:
  """Train ``rules`` until ``step``, then everything."""
  if step < 1:
    raise UserError(f'unfreeze step must be >= 1; got {step}')
  return Schedule((0, step), (tuple(rules), (FreezeRule('.*', 'train'),)))


def parse_schedule(spec, depth: int) -> Schedule:
  """A schedule from config: a preset / rule list (one stage) or a dict.

  Dict forms: ``{'gradual': 'depth', 'direction': 'shallow_to_deep',
  'stage_steps': 50}``; ``{'unfreeze_at': 100, 'rules': 'head'}``;
  ``{'starts': (0, 100), 'stages': ('head', 'full')}``.
  """
  if isinstance(spec, str) or isinstance(spec, (list, tuple)):
    return Schedule.constant(parse_rules(spec, depth))
  spec = dict(spec)
  if 'gradual' in spec:
    return gradual(spec['gradual'], spec.get('direction', 'shallow_to_deep'),
                   int(spec.get('stage_steps', 50)), depth)
  if 'unfreeze_at' in spec:
    return unfreeze_at(parse_rules(spec.get('rules', 'head'), depth),
                       int(spec['unfreeze_at']))
  if 'stages' in spec:
    return Schedule(tuple(int(s) for s in spec['starts']),
                    tuple(parse_rules(s, depth) for s in spec['stages']))
  raise UserError(f'cannot read schedule {spec!r}; give a preset name, a rule '
                  "list, or a dict with 'gradual', 'unfreeze_at' or 'stages'")


def stage_table(params: PyTree, schedule: Schedule, num_stages: int) -> dict:
  """``{'starts': [S] int32, 'masks': tree of [S] float32 (1 = train)}``.

  Padded to ``num_stages`` with stages that never start, so experiments with
  different numbers of stages stack on one axis.
  """
  if num_stages < len(schedule.stages):
    raise ValueError('num_stages is smaller than the schedule')
  masks = [jax.tree.leaves(trainable_mask(params, rules)) for rules in schedule.stages]
  masks += [masks[-1]] * (num_stages - len(masks))
  starts = list(schedule.starts) + [NEVER] * (num_stages - len(schedule.starts))
  treedef = jax.tree.structure(params)
  per_leaf = [np.asarray([m[i] for m in masks], np.float32)
              for i in range(treedef.num_leaves)]
  return {'starts': np.asarray(starts, np.int32),
          'masks': jax.tree.unflatten(treedef, per_leaf)}
