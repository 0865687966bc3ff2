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

Each encoder family has its own groups of both orders (``unet_jax.block_order``).
``gradual(order, 'shallow_to_deep' | 'deep_to_shallow', stage_steps, network)``
gives them, ``network`` being the network's ``Layout`` (``encoders.layout(spec)``)
or the paper U-Net's depth; ``unfreeze_at(rules, step)`` trains ``rules`` first
and everything from ``step`` on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.block_order import DIRECTIONS, ORDERS, Layout, block_groups  # noqa: F401
from unet_jax.errors import UserError
from unet_jax.freeze import FreezeRule, lr_multipliers, parse_rules

PyTree = Any

NEVER = np.iinfo(np.int32).max  # start step of padding stages


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Stages of freeze rules; ``starts[0]`` is 0 and starts increase."""

  starts: tuple[int, ...]
  stages: tuple[tuple[FreezeRule, ...], ...]
  # How it was made, recorded with the results so that readers need not
  # reverse-engineer it: {'kind': 'gradual', 'order': ..., 'direction': ...,
  # 'stage_steps': ...}, {'kind': 'unfreeze_at', 'step': ...}, or None.
  kind: tuple[tuple[str, Any], ...] | None = None

  def describe_kind(self) -> dict | None:
    return dict(self.kind) if self.kind else None

  def __post_init__(self):
    if not self.stages or len(self.starts) != len(self.stages):
      raise UserError('a schedule needs one start step per stage')
    if self.starts[0] != 0 or any(b <= a for a, b in zip(self.starts, self.starts[1:])):
      raise UserError(f'schedule start steps must begin at 0 and increase; '
                      f'got {list(self.starts)}')

  @classmethod
  def constant(cls, rules: Sequence[FreezeRule]) -> 'Schedule':
    return cls((0,), (tuple(rules),))

  def first(self, rule: FreezeRule) -> 'Schedule':
    """The schedule with ``rule`` ahead of every stage's rules (it wins where it matches)."""
    return dataclasses.replace(self, stages=tuple((rule,) + tuple(s) for s in self.stages))


def stage_index(starts, step):
  """The stage ``step`` is in: the last stage whose start is <= step.

  ``starts`` is [S] (or [E, S] with ``step`` [E]); on numpy input the answer
  is numpy (an int for one experiment), on traced input it is traced, so the
  host and the compiled step look stages up the same way.
  """
  if isinstance(starts, jax.Array) or isinstance(step, jax.Array):
    return jnp.sum(jnp.asarray(step)[..., None] >= starts, axis=-1) - 1
  found = np.sum(np.asarray(step)[..., None] >= np.asarray(starts), axis=-1) - 1
  return int(found) if np.ndim(found) == 0 else found


def gradual(order: str, direction: str, stage_steps: int, network: Layout | int) -> Schedule:
  """Cumulative gradual unfreezing, one block group per stage.

  ``flow`` + ``deep_to_shallow`` starts from the head end of the data flow
  (head, dec1, ...), the classifier habit; ``depth`` + ``deep_to_shallow``
  starts from the bottleneck (a ResNet's layer4).
  """
  if direction not in DIRECTIONS:
    raise UserError(f'unknown schedule direction {direction!r}; valid: '
                    f'{", ".join(DIRECTIONS)}')
  if stage_steps < 1:
    raise UserError(f'stage_steps must be >= 1; got {stage_steps}')
  groups = block_groups(order, network)
  if direction == 'deep_to_shallow':
    groups = groups[::-1]
  stages = []
  for i in range(len(groups)):
    blocks = [b for g in groups[:i + 1] for b in g]
    stages.append((FreezeRule('|'.join(blocks), 'train'), FreezeRule('.*', 'freeze')))
  kind = (('kind', 'gradual'), ('order', order), ('direction', direction),
          ('stage_steps', stage_steps))
  return Schedule(tuple(i * stage_steps for i in range(len(groups))), tuple(stages), kind)


def unfreeze_at(rules: Sequence[FreezeRule], step: int) -> Schedule:
  """Train ``rules`` until ``step``, then everything."""
  if step < 1:
    raise UserError(f'unfreeze step must be >= 1; got {step}')
  return Schedule((0, step), (tuple(rules), (FreezeRule('.*', 'train'),)),
                  (('kind', 'unfreeze_at'), ('step', step)))


def lp_ft(fraction: float, steps: int) -> Schedule:
  """LP-FT (Kumar et al., ICLR 2022): the head alone for ``fraction`` of the
  steps (linear probing), then everything."""
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
      not 0 < fraction < 1:
    raise UserError(f"'lp_ft' is the share of steps that train the head alone, a number "
                    f'in (0, 1); got {fraction!r}')
  step = max(1, min(steps - 1, round(fraction * steps)))
  return Schedule((0, step), ((FreezeRule('head', 'train'), FreezeRule('.*', 'freeze')),
                              (FreezeRule('.*', 'train'),)),
                  (('kind', 'lp_ft'), ('fraction', float(fraction)), ('step', step)))


def parse_schedule(spec, network: Layout | int, steps: int | None = None) -> Schedule:
  """A schedule from config: a preset / rule list (one stage) or a dict.

  Dict forms: ``{'gradual': 'depth', 'direction': 'shallow_to_deep',
  'stage_steps': 50}``; ``{'unfreeze_at': 100, 'rules': 'head'}``;
  ``{'lp_ft': 0.5}`` (the head for half of ``steps``, then everything);
  ``{'starts': (0, 100), 'stages': ('head', 'full')}``; ``{'lr': {block:
  multiplier}}`` (one stage of per-block learning rates, ``freeze.parse_rules``).
  ``network``: its ``block_order.Layout`` (``encoders.layout(spec)``) or the paper U-Net's
  depth.
  """
  if isinstance(spec, str) or isinstance(spec, (list, tuple)):
    return Schedule.constant(parse_rules(spec, network))
  spec = dict(spec)
  if 'lr' in spec:
    return Schedule.constant(parse_rules(spec, network))
  if 'lp_ft' in spec:
    if steps is None:
      raise ValueError('an lp_ft schedule needs the number of steps')
    return lp_ft(spec['lp_ft'], steps)
  if 'gradual' in spec:
    return gradual(spec['gradual'], spec.get('direction', 'shallow_to_deep'),
                   int(spec.get('stage_steps', 50)), network)
  if 'unfreeze_at' in spec:
    return unfreeze_at(parse_rules(spec.get('rules', 'head'), network),
                       int(spec['unfreeze_at']))
  if 'stages' in spec:
    return Schedule(tuple(int(s) for s in spec['starts']),
                    tuple(parse_rules(s, network) for s in spec['stages']))
  raise UserError(f'cannot read schedule {spec!r}; give a preset name, a rule '
                  "list, or a dict with 'gradual', 'unfreeze_at', 'lp_ft', 'stages' or 'lr'")


def stack_stages(trees: Sequence[PyTree]) -> PyTree:
  """S trees of Python bools or floats (one per stage) -> one tree of [S] float32 arrays."""
  columns = [jax.tree.leaves(t) for t in trees]
  return jax.tree.unflatten(jax.tree.structure(trees[0]),
                            [np.asarray(stage, np.float32) for stage in zip(*columns)])


def stage_table(params: PyTree, schedule: Schedule, num_stages: int,
                block_scale: dict[str, float] | None = None) -> dict:
  """``{'starts': [S] int32, 'masks': tree of [S] float32}``.

  A mask value is the leaf's learning-rate multiplier in that stage: 0 =
  frozen, 1 = trained at the experiment's rate, others from multiplier
  rules and ``block_scale`` (``freeze.lr_multipliers``). Padded to
  ``num_stages`` with stages that never start, so experiments with
  different numbers of stages stack on one axis.
  """
  if num_stages < len(schedule.stages):
    raise ValueError('num_stages is smaller than the schedule')
  masks = [lr_multipliers(params, rules, block_scale) for rules in schedule.stages]
  masks += [masks[-1]] * (num_stages - len(masks))
  starts = list(schedule.starts) + [NEVER] * (num_stages - len(schedule.starts))
  return {'starts': np.asarray(starts, np.int32), 'masks': stack_stages(masks)}
