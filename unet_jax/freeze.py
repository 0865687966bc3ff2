"""Which parameters train, and how fast: ordered rules ``pattern -> action``.

A rule's pattern is a regular expression over a parameter's path, written with
``/`` between names (``enc1/conv1/kernel``). A pattern matches a leaf when it
matches the whole path or a leading part of it that ends at a ``/``, so a bare
block name (``enc1``) covers the whole block and ``enc.*`` every encoder block.
A rule may also name a leaf *kind* (``KINDS``: kernels, biases, normalisation
scales and shifts, adapters), and then matches only leaves of that kind:
``('.*', 'train', 'bias')`` is BitFit. The first matching rule wins and every
leaf must be covered by some rule.

An action is ``'train'``, ``'freeze'`` or a positive number: train with the
learning rate multiplied by it (``'train'`` is 1, ``'freeze'`` is 0), the
explicit form of layer-wise learning rates.

Example::

  rules = [FreezeRule('enc.*|bottleneck', 'train'), FreezeRule('.*', 'freeze')]
  labels = freeze_labels(params, rules)          # same tree, 'train'/'freeze'
  print(describe_labels(params, rules))          # which rule matched each leaf
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, NamedTuple, Sequence

import jax

from unet_jax.block_order import ORDERS, Layout, as_layout, block_groups
from unet_jax.errors import UserError
from unet_jax.model import norm_layer_tree

TRAIN, FREEZE = 'train', 'freeze'
ACTIONS = (TRAIN, FREEZE)

PyTree = Any

# Leaf kinds a rule can select, each a set of the basic kinds of
# :func:`leaf_kind`. A normalisation layer's leaves are its 'scale' and the
# 'bias' next to it; a convolution's are its 'kernel' and its own 'bias'.
KINDS = {
    'kernel': {'kernel'},
    'bias': {'conv_bias', 'norm_bias'},  # BitFit: every bias term
    'conv_bias': {'conv_bias'},
    'norm': {'norm_scale', 'norm_bias'},  # normalisation scale and shift
    'norm_scale': {'norm_scale'},
    'norm_bias': {'norm_bias'},
    'adapter': {'adapter'},  # low-rank adapter factors
}


def leaf_kind(path: str, siblings: Iterable[str]) -> str:
  """The basic kind of the leaf at ``path`` whose module holds ``siblings``."""
  name = path.rsplit('/', 1)[-1]
  if name == 'kernel':
    return 'kernel'
  if name.startswith('lora_'):
    return 'adapter'
  if name == 'scale':
    return 'norm_scale'
  if name == 'bias':
    return 'norm_bias' if 'scale' in siblings else 'conv_bias'
  return 'other'


def leaf_kinds(tree: PyTree) -> list[str]:
  """The basic kind of every leaf, in flattening order."""
  paths = leaf_paths(tree)
  children: dict[str, set[str]] = {}
  for p in paths:
    parent, _, name = p.rpartition('/')
    children.setdefault(parent, set()).add(name)
  return [leaf_kind(p, children[p.rpartition('/')[0]]) for p in paths]


def _action_problem(action) -> str:
  if isinstance(action, str):
    return '' if action in ACTIONS else 'bad'
  if isinstance(action, bool) or not isinstance(action, (int, float)):
    return 'bad'
  return '' if math.isfinite(action) and action > 0 else 'bad'


@dataclasses.dataclass(frozen=True)
class FreezeRule:
  """One rule: leaves whose path matches ``pattern`` (and of ``kind``) get ``action``."""

  pattern: str
  action: str | float
  kind: str | None = None  # a key of KINDS; None: every kind

  def __post_init__(self):
    if _action_problem(self.action):
      raise UserError(f'freeze rule {self.pattern!r}: action {self.action!r} is not one '
                      f'of {", ".join(ACTIONS)} or a learning-rate multiplier > 0')
    if self.kind is not None and self.kind not in KINDS:
      raise UserError(f'freeze rule {self.pattern!r}: kind {self.kind!r} is not one of '
                      f'{", ".join(KINDS)}')
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise UserError(f'freeze rule {self.pattern!r} is not a valid regular '
                      f'expression: {e}') from None

  @property
  def multiplier(self) -> float:
    """The learning-rate multiplier of the leaves it decides (0: frozen)."""
    if isinstance(self.action, str):
      return 1.0 if self.action == TRAIN else 0.0
    return float(self.action)

  @property
  def label(self) -> str:
    return FREEZE if self.multiplier == 0 else TRAIN

  def as_list(self) -> list:
    """[pattern, action] or [pattern, action, kind], as configs write it."""
    return [self.pattern, self.action] + ([self.kind] if self.kind else [])

  def matches(self, path: str, kind: str | None = None) -> bool:
    """Whether the rule decides the leaf at ``path`` of basic kind ``kind``.

    Adapter leaves are matched only by rules that name kind 'adapter'.
    """
    if self.kind is not None and kind not in KINDS[self.kind]:
      return False
    if kind == 'adapter' and self.kind != 'adapter':
      return False
    return re.fullmatch(f'(?:{self.pattern})(?:/.*)?', path) is not None


# The layer subsets of the study, and the parameter-kind strategies. Each
# ends with a catch-all so that every leaf is covered; 'scratch' trains
# everything from a random initialisation (the init is chosen by the
# experiment, not by the rules). '{role}' is the network's pattern for a
# role of unet_jax.block_order.ROLES (its docstring lists the blocks of each
# for the paper's U-Net and the ResNet U-Net). 'surgical:<block>' (Lee et al.,
# ICLR 2023) trains one block alone: ``preset_rules('surgical:enc2', depth)``.
PRESETS: dict[str, tuple[tuple, ...]] = {
    'full': (('.*', TRAIN),),
    'contracting': (('{contracting}', TRAIN), ('.*', FREEZE)),
    'expanding': (('{expanding}', TRAIN), ('.*', FREEZE)),
    'shallow': (('{shallow}', TRAIN), ('.*', FREEZE)),
    'deep': (('{deep}', TRAIN), ('.*', FREEZE)),
    'last': (('{last}', TRAIN), ('.*', FREEZE)),
    'head': (('{head}', TRAIN), ('.*', FREEZE)),
    'none': (('.*', FREEZE),),
    # BitFit (Ben Zaken et al., ACL 2022): every bias term, convolutions' and
    # normalisation layers' shifts.
    'bitfit': (('.*', TRAIN, 'bias'), ('.*', FREEZE)),
    'bitfit_head': (('{head}', TRAIN), ('.*', TRAIN, 'bias'), ('.*', FREEZE)),
    # Normalisation layers' scale and shift only (Frankle et al., ICLR 2021).
    'norm_only': (('.*', TRAIN, 'norm'), ('.*', FREEZE)),
    'norm_head': (('{head}', TRAIN), ('.*', TRAIN, 'norm'), ('.*', FREEZE)),
    # Low-rank adapters (LoRA, Hu et al., ICLR 2022, on convolutions as PEFT
    # does it; model.adapter_rank > 0) and the head; every kernel frozen.
    'lora': (('.*', TRAIN, 'adapter'), ('{head}', TRAIN), ('.*', FREEZE)),
}
SURGICAL = 'surgical:'


def preset_rules(name: str, network: Layout | int) -> tuple[FreezeRule, ...]:
  """The rules of a named preset for a network.

  ``network``: its ``block_order.Layout`` (``encoders.layout(spec)``), or the paper U-Net's
  depth.
  """
  if name.startswith(SURGICAL) and name[len(SURGICAL):]:
    return (FreezeRule(re.escape(name[len(SURGICAL):]), TRAIN), FreezeRule('.*', FREEZE))
  if name not in PRESETS:
    raise UserError(f'unknown freeze preset {name!r}; valid presets: '
                    f'{", ".join(sorted(PRESETS))}, or {SURGICAL}<block>')
  fill = dict(as_layout(network).patterns)
  return tuple(FreezeRule(p.format(**fill), *rest) for p, *rest in PRESETS[name])


def parse_rules(spec: Iterable[Sequence] | str, network: Layout | int
                ) -> tuple[FreezeRule, ...]:
  """Rules from a preset name, or (pattern, action[, kind]) items, or
  ``{'lr': {block: multiplier, ...}}``; ``network`` as for :func:`preset_rules`.

  The dict form gives each named block its learning-rate multiplier (0
  freezes it) and freezes the blocks it does not name.
  """
  if isinstance(spec, str):
    return preset_rules(spec, network)
  if isinstance(spec, dict) or hasattr(spec, 'keys'):
    table = dict(spec)
    if set(table) != {'lr'} or not hasattr(table['lr'], 'keys') or not table['lr']:
      raise UserError(f"cannot read rules {spec!r}: the dict form is {{'lr': {{block: "
                      "multiplier, ...}}}")
    rules = [FreezeRule(re.escape(str(block)), FREEZE if value == 0 else value)
             for block, value in dict(table['lr']).items()]
    return tuple(rules) + (FreezeRule('.*', FREEZE),)
  rules = []
  for item in spec:
    if isinstance(item, str) or len(item) not in (2, 3):
      raise UserError(f'freeze rule {item!r} must be a (pattern, action) pair or a '
                      '(pattern, action, kind) triple')
    action = item[1] if isinstance(item[1], (int, float)) else str(item[1])
    rules.append(FreezeRule(str(item[0]), action, *(str(k) for k in item[2:])))
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


# The rule after every rule list: adapters (low-rank updates, model.adapter_rank)
# train only where a rule names kind 'adapter', so a network with adapters
# under a plain subset is the network without them (their update stays zero).
ADAPTERS_FROZEN = FreezeRule('.*', FREEZE, 'adapter')


def with_implicit(rules: Sequence[FreezeRule]) -> tuple[FreezeRule, ...]:
  """``rules`` followed by :data:`ADAPTERS_FROZEN`: what :func:`matching_rules` indexes."""
  return tuple(rules) + (ADAPTERS_FROZEN,)


def matching_rules(tree: PyTree, rules: Sequence[FreezeRule]) -> list[int]:
  """Index into ``with_implicit(rules)`` of the first rule matching each leaf.

  Raises UserError naming the uncovered leaves, or a rule that matches no
  leaf at all (usually a misspelt block name) with the valid block names.
  """
  paths, kinds = leaf_paths(tree), leaf_kinds(tree)
  for rule in rules:
    if not any(rule.matches(p, k) for p, k in zip(paths, kinds)):
      what = f' of kind {rule.kind!r}' if rule.kind else ''
      raise UserError(
          f'freeze rule {rule.pattern!r} matches no parameter{what}; valid block '
          f'names: {", ".join(_block_names(paths))}')
  chosen = []
  uncovered = []
  for p, k in zip(paths, kinds):
    idx = next((i for i, r in enumerate(with_implicit(rules)) if r.matches(p, k)), None)
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
  idx, rules = matching_rules(tree, rules), with_implicit(rules)
  treedef = jax.tree.structure(tree)
  return jax.tree.unflatten(treedef, [rules[i].label for i in idx])


def trainable_mask(tree: PyTree, rules: Sequence[FreezeRule]) -> PyTree:
  """A tree of Python bools, True where the leaf is trained."""
  return jax.tree.map(lambda a: a == TRAIN, freeze_labels(tree, rules))


def lr_multipliers(tree: PyTree, rules: Sequence[FreezeRule],
                   block_scale: dict[str, float] | None = None) -> PyTree:
  """A tree of Python floats: each leaf's learning-rate multiplier (0 = frozen).

  ``block_scale`` (block name -> factor, :func:`layer_decay_scale`) multiplies
  the rules' multipliers block by block.
  """
  idx, rules = matching_rules(tree, rules), with_implicit(rules)
  scale = block_scale or {}
  values = [rules[i].multiplier * scale.get(p.split('/')[0], 1.0)
            for i, p in zip(idx, leaf_paths(tree))]
  return jax.tree.unflatten(jax.tree.structure(tree), values)


def layer_decay_scale(decay: float, order: str, network: Layout | int) -> dict[str, float]:
  """Layer-wise learning-rate decay (timm's ``layer_decay``, ULMFiT): block -> factor.

  Block groups (``block_order``; ``network`` as for :func:`preset_rules`) are counted from
  the group holding the head: under ``flow`` the head gets 1, the block before it (dec1)
  ``decay``, ... the first block (enc1, or a ResNet's stem) ``decay ** (blocks - 1)``;
  under ``depth`` the full-resolution group ({enc1, dec1, head}, or {dec1, head}) gets 1,
  the next ``decay``, ... the deepest (the bottleneck, or layer4) ``decay ** (groups - 1)``.
  """
  if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
    raise UserError(f'layer_decay must be a number in (0, 1]; got {decay!r}')
  if order not in ORDERS:
    raise UserError(f'decay_order {order!r} is not one of {", ".join(ORDERS)}')
  groups = block_groups(order, network)
  if order == 'flow':
    groups = groups[::-1]
  return {b: float(decay) ** k for k, g in enumerate(groups) for b in g}


def frozen_paths(tree: PyTree, rules: Sequence[FreezeRule]) -> list[str]:
  idx, rules = matching_rules(tree, rules), with_implicit(rules)
  return [p for p, i in zip(leaf_paths(tree), idx) if rules[i].label == FREEZE]


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


def describe_labels(tree: PyTree, rules: Sequence[FreezeRule],
                    block_scale: dict[str, float] | None = None) -> str:
  """One line per leaf: path, action (or learning-rate multiplier), the deciding rule."""
  idx, rules = matching_rules(tree, rules), with_implicit(rules)
  paths = leaf_paths(tree)
  width = max(len(p) for p in paths)
  lines = []
  for p, i in zip(paths, idx):
    r = rules[i]
    factor = r.multiplier * (block_scale or {}).get(p.split('/')[0], 1.0)
    action = r.label if factor in (0.0, 1.0) else f'x{factor:.4g}'
    kind = f' (kind {r.kind})' if r.kind else ''
    if r is ADAPTERS_FROZEN:
      lines.append(f'{p:<{width}}  {action:<6}  adapter: no rule names kind adapter')
      continue
    lines.append(f'{p:<{width}}  {action:<6}  rule {i}: {r.pattern!r}{kind}')
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
