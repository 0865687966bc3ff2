"""Deterministic train/test splits, stratified by class: hold-out and k-fold.

Both shuffle each class with ``numpy.random.default_rng(seed)``, taking classes in sorted order,
so a split depends only on the labels and the seed. A class such as ``'unknown'`` is a stratum
like any other; with a single class the split is a plain shuffled one.

:func:`plan_splits` is the sweep's split of a target set into fit / validation / test parts
(one hold-out split, or one per fold); the sizes it gives are the sizes a sweep uses, and a
plan that leaves a part empty is refused with those sizes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from unet_jax.errors import UserError


def holdout_split(labels: list[str], test_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(train_index, test_index), stratified by label, deterministic in seed.

  Args:
    labels: class of each item.
    test_fraction: share of each class in the test part, rounded per class.
    seed: shuffling seed.

  Returns:
    Sorted int arrays of train and test indices; together they cover ``range(len(labels))``.
  """
  if not 0.0 <= test_fraction <= 1.0:
    raise UserError(f'test_fraction must be in [0, 1], got {test_fraction}')
  rng = np.random.default_rng(seed)
  labels_arr = np.asarray(labels)
  train, test = [], []
  for label in sorted(set(labels)):
    idx = rng.permutation(np.flatnonzero(labels_arr == label))
    n_test = int(round(len(idx) * test_fraction))
    test.extend(idx[:n_test])
    train.extend(idx[n_test:])
  return np.sort(np.asarray(train, int)), np.sort(np.asarray(test, int))


def kfold_split(labels: list[str], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """k (train_index, test_index) folds, stratified by label, deterministic in seed.

  Each class is shuffled and dealt to the folds in turn, the deal continuing from one class to
  the next, so fold sizes differ by at most one overall and by at most one within each class.

  Args:
    labels: class of each item.
    k: number of folds, 2 <= k <= len(labels).
    seed: shuffling seed.

  Returns:
    A list of k pairs of sorted int arrays; every index is in exactly one test part, and each
    train part is the complement of its test part.

  Example:
    >>> for train, test in kfold_split(ds.labels, 5, seed=0):
    ...   fit(ds.take(train)); score(ds.take(test))
  """
  n = len(labels)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise UserError(f'k-fold: k must be an integer, got {k!r}')
  if k < 2:
    raise UserError(f'k-fold: k must be at least 2, got {k}')
  if k > n:
    raise UserError(f'k-fold: k={k} folds need at least {k} images, got {n}')
  rng = np.random.default_rng(seed)
  labels_arr = np.asarray(labels)
  fold_of = np.empty(n, int)
  dealt = 0
  for label in sorted(set(labels)):
    idx = rng.permutation(np.flatnonzero(labels_arr == label))
    fold_of[idx] = (dealt + np.arange(len(idx))) % k
    dealt += len(idx)
  return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]


@dataclasses.dataclass(frozen=True)
class Split:
  """One train/validation/test split of a target set, as sorted indices into it."""

  fit: np.ndarray  # trained on
  val: np.ndarray  # scored after every chunk (validation Dice)
  test: np.ndarray  # scored once, at the end

  def sizes(self) -> dict[str, int]:
    return {'fit': len(self.fit), 'val': len(self.val), 'test': len(self.test)}


def plan_splits(labels: list[str], *, test_fraction: float, val_fraction: float, folds: int,
                seed: int, groups=None) -> list[Split]:
  """The sweep's splits: one hold-out split (``folds`` <= 1) or one per fold.

  Test parts come from :func:`holdout_split` with ``test_fraction`` or from
  :func:`kfold_split` (every image tested once); each training part is split
  again by class into fit and validation parts with ``val_fraction``
  (shuffled with ``seed + 1``). ``groups`` (per image, a group id; copies of
  one image share one, ``Dataset.groups``) keeps every group in one part: the
  groups are split, each with the class of its first image, and a set without
  copies splits exactly as without ``groups``. Raises UserError, with the
  sizes it would give, when a fit or test part would be empty, or a
  validation part while ``val_fraction`` > 0.

  Example::

    splits = plan_splits(ds.labels, test_fraction=0.4, val_fraction=0.2, folds=0, seed=0)
    train = ds.take(splits[0].fit)
  """
  if folds > len(labels):
    raise UserError(f'data.folds={folds} needs at least {folds} images; the set has '
                    f'{len(labels)}')
  # Split units: the groups (each image its own unless it has copies).
  ids = np.arange(len(labels)) if groups is None else np.asarray(groups)
  first = {}
  for i, g in enumerate(ids):
    first.setdefault(int(g), i)
  units = np.asarray(list(first.values()), int)  # each group's first image, in order
  members = lambda chosen: np.flatnonzero(np.isin(ids, ids[units[chosen]]))
  unit_labels = [labels[i] for i in units]
  if folds > 1:
    outer = kfold_split(unit_labels, folds, seed)
  else:
    outer = [holdout_split(unit_labels, test_fraction, seed)]
  splits = []
  for train, test in outer:
    fit, val = holdout_split([unit_labels[i] for i in train], val_fraction, seed + 1)
    splits.append(Split(members(train[fit]), members(train[val]), members(test)))
  empty = [(i, s) for i, s in enumerate(splits)
           if not len(s.fit) or not len(s.test) or (val_fraction > 0 and not len(s.val))]
  if empty:
    i, split = empty[0]
    where = f'fold {i} of {folds}' if folds > 1 else (
        f'data.test_fraction={test_fraction}')
    counts = ', '.join(f'{n} {part}' for part, n in split.sizes().items())
    classes = ', '.join(f'{n} {c}' for c, n in zip(*np.unique(labels, return_counts=True)))
    raise UserError(f'the split of {len(labels)} images ({classes}) with {where} and '
                    f'data.val_fraction={val_fraction} gives {counts} images (split per '
                    'class); every part needs at least one: change the fractions, '
                    'data.folds or the number of images')
  return splits


# data.empty_masks: what happens to images whose mask is empty (BUSI's
# 'normal' class): kept everywhere, or left out of training (fit and
# validation), of test, or of both.
EMPTY_MASKS = ('keep', 'out_of_training', 'out_of_test', 'out')


def leave_out_empty(split: Split, empty: np.ndarray, rule: str) -> Split:
  """``split`` without the images whose mask is empty, where ``rule`` says.

  ``empty`` is one bool per image of the set; ``rule`` one of
  :data:`EMPTY_MASKS`. The split is drawn on every image first, so the
  images kept are split exactly as under ``'keep'``. Raises UserError when a
  part would be left with nothing.
  """
  if rule not in EMPTY_MASKS:
    raise UserError(f'data.empty_masks is {rule!r}; valid choices: {", ".join(EMPTY_MASKS)}')
  empty = np.asarray(empty, bool)
  drop = lambda part, where: part[~empty[part]] if where else part
  training = rule in ('out_of_training', 'out')
  out = Split(fit=drop(split.fit, training), val=drop(split.val, training),
              test=drop(split.test, rule in ('out_of_test', 'out')))
  for part in ('fit', 'test'):
    if len(getattr(split, part)) and not len(getattr(out, part)):
      raise UserError(f'data.empty_masks={rule!r} leaves the {part} part with no images: '
                      f'all of its {len(getattr(split, part))} masks are empty')
  return out

