"""Deterministic train/test splits, stratified by class: hold-out and k-fold.

Both shuffle each class with ``numpy.random.default_rng(seed)``, taking classes in sorted order,
so a split depends only on the labels and the seed. A class such as ``'unknown'`` is a stratum
like any other; with a single class the split is a plain shuffled one.
"""

from __future__ import annotations

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
