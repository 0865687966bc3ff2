"""What "shallow" and "deep" mean for the U-Net's blocks: the two orders of DESIGN.md F6.

- ``flow``: data-flow order, enc1, enc2, ..., bottleneck, decD, ..., dec1, head;
- ``depth``: depth in the U, the full-resolution blocks of both paths first
  ({enc1, dec1, head}, {enc2, dec2}, ..., {bottleneck}).

Plain Python (no JAX), so the analysis of results can use it.
"""

from __future__ import annotations

from unet_jax.errors import UserError

ORDERS = ('flow', 'depth')
DIRECTIONS = ('shallow_to_deep', 'deep_to_shallow')


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


def cumulative(order: str, depth: int, k: int, direction: str) -> frozenset[str]:
  """The blocks of the k shallowest (or deepest) groups under ``order``."""
  groups = block_groups(order, depth)
  chosen = groups[:k] if direction == 'shallow_to_deep' else groups[len(groups) - k:]
  return frozenset(b for g in chosen for b in g)
