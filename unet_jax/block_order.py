"""What "shallow" and "deep" mean for a U-Net's blocks (the two orders of DESIGN.md F6), and
which blocks each freeze preset's role names.

A :class:`Layout` lists a network's blocks by role. Two kinds of layout are built here
(each encoder family's is named in ``unet_jax.encoders``):

- the paper's U-Net of depth D (``model.encoder='unet'``): contracting path ``enc1 .. encD,
  bottleneck``, expanding path ``decD .. dec1, head``;

  - ``flow``: enc1, enc2, ..., bottleneck, decD, ..., dec1, head;
  - ``depth``: the full-resolution blocks of both paths first: {enc1, dec1, head},
    {enc2, dec2}, ..., {encD, decD}, {bottleneck};

- an encoder with smp's decoder (:func:`pyramid_layout`), e.g. the ResNet U-Net
  (``unet_jax.resnet``): contracting path ``stem, layer1 .. layer4``, expanding path
  ``dec5 .. dec1, head``; EfficientNet's (``stem, stage1 .. stage7``) follows the same rule;

  - ``flow``: stem, layer1, ..., layer4, dec5, ..., dec1, head;
  - ``depth``, by the resolution a block works at: {dec1, head} (H), {stem, dec2} (H/2),
    {layer1, dec3} (H/4), {layer2, dec4} (H/8), {layer3, dec5} (H/16), {layer4} (H/32, the
    deepest group, in the bottleneck's place).

Roles of the freeze presets (``unet_jax.freeze.PRESETS``), paper U-Net / ResNet U-Net:

- ``contracting``: enc1..encD, bottleneck / stem, layer1..layer4;
- ``expanding``: decD..dec1, head / dec5..dec1, head;
- ``shallow``: enc1, dec1 (full resolution, head excluded) / stem, dec2, dec1: the shallowest
  encoder block and the decoder blocks at its resolution or finer (dec1 has no skip, so it
  alone would train no block of the contracting path);
- ``deep``: encD, bottleneck, decD / layer3, layer4, dec5: the two deepest depth groups;
- ``last``: dec1, head; ``head``: head, for both.

Functions here and in ``freeze`` and ``schedules`` take the network as its ``Layout``, built
once from the model by ``unet_jax.encoders.layout``; a paper U-Net's depth (an int) is
accepted as shorthand for its layout (:func:`as_layout`).

Plain Python (no JAX), so the analysis of results can use it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from unet_jax.errors import UserError

ORDERS = ('flow', 'depth')
DIRECTIONS = ('shallow_to_deep', 'deep_to_shallow')
ROLES = ('contracting', 'expanding', 'shallow', 'deep', 'last', 'head')

PYRAMID_EXPANDING = ('dec5', 'dec4', 'dec3', 'dec2', 'dec1', 'head')


@dataclasses.dataclass(frozen=True)
class Layout:
  """A U-Net's blocks by role: what the two orders and the freeze presets are written against."""

  contracting: tuple[str, ...]  # in data-flow order, the deepest (bottleneck-like) last
  expanding: tuple[str, ...]  # in data-flow order, the head last
  depth_groups: tuple[tuple[str, ...], ...]  # shallowest to deepest by depth in the U
  patterns: tuple[tuple[str, str], ...]  # (role, rule pattern) for every role of ROLES

  @property
  def flow(self) -> tuple[str, ...]:
    """Every block in data-flow order."""
    return self.contracting + self.expanding

  @property
  def bottleneck(self) -> str:
    """The deepest block: 'bottleneck', or 'layer4' for a ResNet encoder."""
    return self.contracting[-1]

  def groups(self, order: str) -> list[list[str]]:
    """Groups of block names from shallowest to deepest under ``order``."""
    if order == 'flow':
      return [[b] for b in self.flow]
    if order == 'depth':
      return [list(g) for g in self.depth_groups]
    raise UserError(f'unknown block order {order!r}; valid orders: {", ".join(ORDERS)}')

  def pattern(self, role: str) -> str:
    """The rule pattern (a regular expression over paths) of a preset role."""
    return dict(self.patterns)[role]

  def blocks(self, role: str) -> tuple[str, ...]:
    """The blocks a role's pattern names, in data-flow order."""
    return tuple(b for b in self.flow if re.fullmatch(self.pattern(role), b))


def unet_layout(depth: int) -> Layout:
  """The paper U-Net's layout; its patterns are those results were always recorded with."""
  if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
    raise UserError(f'a U-Net depth must be an integer >= 1; got {depth!r}')
  enc = tuple(f'enc{i}' for i in range(1, depth + 1))
  dec = tuple(f'dec{i}' for i in range(depth, 0, -1))
  groups = (('enc1', 'dec1', 'head'),) + tuple((f'enc{i}', f'dec{i}')
                                               for i in range(2, depth + 1))
  patterns = (('contracting', 'enc.*|bottleneck'), ('expanding', 'dec.*|head'),
              ('shallow', 'enc1|dec1'), ('deep', f'enc{depth}|bottleneck|dec{depth}'),
              ('last', 'dec1|head'), ('head', 'head'))
  return Layout(enc + ('bottleneck',), dec + ('head',), groups + (('bottleneck',),), patterns)


def pyramid_layout(encoder: Sequence[tuple[str, int]]) -> Layout:
  """The layout of an encoder with smp's decoder (``unet_jax.decoder``).

  ``encoder``: its blocks in data-flow order, each with the factor by which it has
  reduced the resolution (2 .. 32). The decoder block ``decL`` works at 1/2**(L-1), the head
  at full resolution. Depth groups are the blocks working at one resolution, the finest
  first (encoder blocks before the decoder block); ``shallow`` is the encoder's blocks at
  its finest resolution and the decoder blocks at that resolution or finer, ``deep`` the two
  coarsest groups.
  """
  contracting = tuple(name for name, _ in encoder)
  at = {1: ['dec1', 'head']}
  for level in range(2, 6):
    at[2 ** (level - 1)] = [f'dec{level}']
  at[32] = []
  for name, factor in reversed(encoder):
    at[factor].insert(0, name)
  groups = tuple(tuple(at[f]) for f in sorted(at) if at[f])
  flow = contracting + PYRAMID_EXPANDING
  finest = min(factor for _, factor in encoder)
  shallow = {name for name, factor in encoder if factor == finest}
  shallow |= {f'dec{level}' for level in range(1, 6) if 2 ** (level - 1) <= finest}
  deep = set(groups[-2] + groups[-1])
  roles = {'contracting': contracting, 'expanding': PYRAMID_EXPANDING,
           'shallow': tuple(b for b in flow if b in shallow),
           'deep': tuple(b for b in flow if b in deep), 'last': ('dec1', 'head'),
           'head': ('head',)}
  return Layout(contracting, PYRAMID_EXPANDING, groups,
                tuple((role, '|'.join(roles[role])) for role in ROLES))


def as_layout(network: Layout | int) -> Layout:
  """``network`` if it is a Layout; an int is the paper U-Net's depth."""
  if isinstance(network, Layout):
    return network
  if isinstance(network, int) and not isinstance(network, bool):
    return unet_layout(network)
  raise TypeError(f'not a Layout nor a U-Net depth: {network!r} (build the layout of a '
                  'model once with unet_jax.encoders.layout)')


def block_groups(order: str, network: Layout | int) -> list[list[str]]:
  """Groups of block names from shallowest to deepest under ``order`` (:func:`as_layout`)."""
  return as_layout(network).groups(order)


def cumulative(order: str, network: Layout | int, k: int, direction: str) -> frozenset[str]:
  """The blocks of the k shallowest (or deepest) groups under ``order``."""
  groups = block_groups(order, network)
  chosen = groups[:k] if direction == 'shallow_to_deep' else groups[len(groups) - k:]
  return frozenset(b for g in chosen for b in g)
