"""Images that occur more than once in a set, found after decoding.

Public sets hold copies: BUSI stores one scan under two classes with slightly
different masks. A copy in the training part and another in the test part
leaks the answer, so copies are found when a set is loaded, kept in the same
split part (``plan_splits(groups=...)``) and reported by name.

Two images are copies when their mean absolute grey difference, at the size
they were loaded at, is at most :data:`NEAR` (one grey level of 255 on
average: the same scan re-saved, recompressed or resized). Candidates are
found on a 16 x 16 average-pooled signature with a looser bound, so a set of
a thousand images takes a fraction of a second.
"""

from __future__ import annotations

import numpy as np

NEAR = 1.0 / 255  # mean absolute grey difference (images in [0, 1])
_SIDE = 16  # signature: average-pooled to _SIDE x _SIDE


def find(images: np.ndarray) -> list[tuple[int, ...]]:
  """Groups of indices of copies (two or more each), in index order.

  Args:
    images: (N, H, W, C) floats in [0, 1], one size for all.

  Returns:
    Each group sorted; groups sorted by their first index. Copies are joined
    transitively (a ~ b and b ~ c put a, b and c in one group).
  """
  n = len(images)
  if n < 2:
    return []
  flat = np.asarray(images, np.float32).reshape(n, -1)
  signature, kept = _signature(np.asarray(images, np.float32))
  bound = NEAR / kept  # the signature leaves out edge rows: its share is kept
  parent = list(range(n))

  def root(i: int) -> int:
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  # The mean absolute difference of block means is at most the pixels' over
  # the blocks, which is at most NEAR / kept for a pair within NEAR overall:
  # the bound keeps every true pair.
  for i in range(n - 1):
    close = np.abs(signature[i + 1:] - signature[i]).mean(axis=1) <= bound
    for j in np.flatnonzero(close) + i + 1:
      if np.abs(flat[i] - flat[j]).mean() <= NEAR:
        parent[root(int(j))] = root(i)
  groups: dict[int, list[int]] = {}
  for i in range(n):
    groups.setdefault(root(i), []).append(i)
  return sorted((tuple(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def _signature(images: np.ndarray) -> tuple[np.ndarray, float]:
  """((N, blocks) block means of the channel-mean image, the share of pixels they cover)."""
  grey = images.mean(axis=-1)
  n, h, w = grey.shape
  bh, bw = max(h // _SIDE, 1), max(w // _SIDE, 1)
  rows, cols = h // bh, w // bw
  grey = grey[:, :rows * bh, :cols * bw]
  blocks = grey.reshape(n, rows, bh, cols, bw).mean(axis=(2, 4)).reshape(n, -1)
  return blocks, rows * bh * cols * bw / (h * w)


def group_ids(n: int, groups: list[tuple[int, ...]]) -> np.ndarray:
  """Per item, the index of the first item of its group (its own index when unique)."""
  out = np.arange(n)
  for g in groups:
    out[list(g)] = g[0]
  return out
