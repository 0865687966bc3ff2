"""Layer-subset freezing: ordered rules ``pattern -> train | freeze``.

A rule's pattern is a regular expression over a parameter's path, written with
``/`` between names (``enc1/conv1/kernel``). A pattern matches a leaf when it
matches the whole path or a leading part of it that ends at a ``/``, so a bare
block name (``enc1``) covers the whole block and ``enc.*`` every encoder block.
The first matching rule wins and every leaf must be covered by some rule.

Example::

  rules = [FreezeRule('enc.*|bottleneck', 'train'), FreezeRule('.*', 'freeze')]
  labels = freeze_labels(params, rules)          # same tree, 'train'/'freeze'
  print(describe_labels(params, rules))          # which rule matched each leaf
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, NamedTuple, Sequence

import jax

from unet_jax.errors import UserError
from unet_jax.model import norm_layer_tree

TRAIN, FREEZE = 'train', 'freeze'
ACTIONS = (TRAIN, FREEZE)

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FreezeRule:
  """One rule: leaves whose path matches ``pattern`` get ``action``."""

  pattern: str
  action: str

  def __post_init__(self):
    if self.action not in ACTIONS:
      raise UserError(f'freeze rule {self.pattern!r}: action {self.action!r} '
                      f'is not one of {", ".join(ACTIONS)}')
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise UserError(f'freeze rule {self.pattern!r} is not a valid regular '
                      f'expression: {e}') from None

  def matches(self, path: str) -> bool:
    return re.fullmatch(f'(?:{self.pattern})(?:/.*)?', path) is not None


# The layer subsets of the study. Each ends with a catch-all so that every
# leaf is covered; 'scratch' trains everything from a random initialisation
# (the init is chosen by the experiment, not by the rules).
PRESETS: dict[str, tuple[tuple[str, str], ...]] = {
    'full': (('.*', TRAIN),),
    'contracting': (('enc.*|bottleneck', TRAIN), ('.*', FREEZE)),
    'expanding': (('dec.*|head', TRAIN), ('.*', FREEZE)),
    'shallow': (('enc1|dec1', TRAIN), ('.*', FREEZE)),
    'deep': (('{deepest_enc}|bottleneck|{deepest_dec}', TRAIN), ('.*', FREEZE)),
    'last': (('dec1|head', TRAIN), ('.*', FREEZE)),
    'head': (('head', TRAIN), ('.*', FREEZE)),
    'none': (('.*', FREEZE),),
}


def preset_rules(name: str, depth: int) -> tuple[FreezeRule, ...]:
  """The rules of a named preset for a U-Net of the given depth."""
  if name not in PRESETS:
    raise UserError(f'unknown freeze preset {name!r}; valid presets: '
                    f'{", ".join(sorted(PRESETS))}')
  fill = {'deepest_enc': f'enc{depth}', 'deepest_dec': f'dec{depth}'}
  return tuple(FreezeRule(p.format(**fill), a) for p, a in PRESETS[name])


def parse_rules(spec: Iterable[Sequence[str]] | str, depth: int
                ) -> tuple[FreezeRule, ...]:
  """Rules from a preset name or a sequence of (pattern, action) pairs."""
  if isinstance(spec, str):
    return preset_rules(spec, depth)
  rules = []
  for item in spec:
    if len(item) != 2:
      raise UserError(f'freeze rule {item!r} must be a (pattern, action) pair')
    rules.append(FreezeRule(str(item[0]), str(item[1])))
  if not rules:
    raise UserError('a freeze rule list is empty; give at least one rule')
  return tuple(rules)


def leaf_paths(tree: PyTree) -> list[str]:
  """Paths of every leaf as ``a/b/c`` strings, in flattening order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [path_str(path) for path, _ in flat]


def path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def _block_names(paths: Sequence[str]) -> list[str]:
  return sorted({p.split('/')[0] for p in paths})


def matching_rules(tree: PyTree, rules: Sequence[FreezeRule]) -> list[int]:
  """Index of the first rule matching each leaf (flattening order).

  Raises UserError naming the uncovered leaves, or a rule that matches no
  leaf at all (usually a misspelt block name) with the valid block names.
  """
  paths = leaf_paths(tree)
  for rule in rules:
    if not any(rule.matches(p) for p in paths):
      raise UserError(
          f'freeze rule {rule.pattern!r} matches no parameter; valid block '
          f'names: {", ".join(_block_names(paths))}')
  chosen = []
  uncovered = []
  for p in paths:
    idx = next((i for i, r in enumerate(rules) if r.matches(p)), None)
    if idx is None:
      uncovered.append(p)
    chosen.append(idx)
  if uncovered:
    shown = ', '.join(uncovered[:8]) + (' ...' if len(uncovered) > 8 else '')
    raise UserError(f'freeze rules leave {len(uncovered)} parameter(s) '
                    f'uncovered: {shown}; end the rules with a catch-all such '
                    f"as ('.*', 'freeze')")
  return chosen


def freeze_labels(tree: PyTree, rules: Sequence[FreezeRule]) -> PyTree:
  """A tree like ``tree`` whose leaves are 'train' or 'freeze'."""
  idx = matching_rules(tree, rules)
  treedef = jax.tree.structure(tree)
  return jax.tree.unflatten(treedef, [rules[i].action for i in idx])


def trainable_mask(tree: PyTree, rules: Sequence[FreezeRule]) -> PyTree:
  """A tree of Python bools, True where the leaf is trained."""
  return jax.tree.map(lambda a: a == TRAIN, freeze_labels(tree, rules))


def frozen_paths(tree: PyTree, rules: Sequence[FreezeRule]) -> list[str]:
  idx = matching_rules(tree, rules)
  return [p for p, i in zip(leaf_paths(tree), idx) if rules[i].action == FREEZE]


def trained_blocks(tree: PyTree, rules: Sequence[FreezeRule]) -> dict:
  """Blocks (top-level names, in the tree's order) by how much of them ``rules`` train.

  ``{'trained': [...], 'partly': [...], 'block_fractions': {block: share}}``:
  blocks with every parameter trained, with some of them, and each block's
  share of parameters (by count) trained; the other blocks are frozen.
  """
  counts: dict[str, list[int]] = {}
  for path, leaf, trained in zip(leaf_paths(tree), jax.tree.leaves(tree),
                                 jax.tree.leaves(trainable_mask(tree, rules))):
    entry = counts.setdefault(path.split('/')[0], [0, 0])
    size = int(getattr(leaf, 'size', 1))
    entry[0] += size if trained else 0
    entry[1] += size
  fractions = {b: t / n if n else 0.0 for b, (t, n) in counts.items()}
  return {'trained': [b for b, f in fractions.items() if f == 1.0],
          'partly': [b for b, f in fractions.items() if 0.0 < f < 1.0],
          'block_fractions': fractions}


def describe_labels(tree: PyTree, rules: Sequence[FreezeRule]) -> str:
  """One line per leaf: path, action, and the rule that decided it."""
  idx = matching_rules(tree, rules)
  paths = leaf_paths(tree)
  width = max(len(p) for p in paths)
  lines = []
  for p, i in zip(paths, idx):
    r = rules[i]
    lines.append(f'{p:<{width}}  {r.action:<6}  rule {i}: {r.pattern!r}')
  return '\n'.join(lines)


# How frozen blocks' BatchNorm layers behave during fine-tuning
# (finetune.frozen_norm; docs/DESIGN.md section 3, "Normalisation under
# freezing"). Trained layers always normalise with batch statistics in
# training and update their running statistics.
FROZEN_NORM = {
    'inference': 'a frozen layer normalises with its pretrained running statistics in '
                 'training as in evaluation, and they stay as pretrained '
                 "(Keras trainable=False, PyTorch module.eval())",
    'adapt': 'every layer normalises with batch statistics in training and updates its '
             'running statistics, frozen layers included (AdaBN-like)',
}


class NormMasks(NamedTuple):
  """What a freeze means for the BatchNorm layers under a ``FROZEN_NORM`` policy."""

  update: PyTree  # like the statistics: True = this running statistic is updated
  running: PyTree  # per layer (model.norm_layer_tree): True = running stats in training


def norm_masks(stats: PyTree, params: PyTree, rules: Sequence[FreezeRule],
               policy: str) -> NormMasks:
  """Python-bool masks of one stage's rules under ``policy`` (a FROZEN_NORM key)."""
  if policy not in FROZEN_NORM:
    raise UserError(f'unknown frozen_norm policy {policy!r}; valid: '
                    f'{", ".join(FROZEN_NORM)}')
  trained = block_stats_mask(stats, params, rules)
  adapt = policy == 'adapt'
  update = jax.tree.map(lambda t: bool(t or adapt), trained)
  running = jax.tree.map(lambda t: bool(not t and not adapt), norm_layer_tree(trained))
  return NormMasks(update, running)


def block_stats_mask(stats: PyTree, params: PyTree,
                     rules: Sequence[FreezeRule]) -> PyTree:
  """True for each BatchNorm statistic whose block's parameters are trained.

  A statistic follows the normalisation layer it belongs to: it counts as
  trained when that layer's scale (or bias) is trained.
  """
  mask = dict(zip(leaf_paths(params),
                  jax.tree.leaves(trainable_mask(params, rules))))
  def owner_trained(path, _):
    layer = path_str(path).rsplit('/', 1)[0]
    owned = [v for k, v in mask.items() if k.rsplit('/', 1)[0] == layer]
    return any(owned)
  return jax.tree_util.tree_map_with_path(owner_trained, stats)
