"""Segmentation metrics on binary masks, jittable, one image or a batch.

Overlap: ``dice``, ``iou``. Boundary distances, in the units of ``spacing``:
``hd95`` (95th-percentile Hausdorff distance) and ``assd`` (average symmetric
surface distance). ``score_masks`` gives all four per image.

Shapes: one image ``(H, W)`` or ``(H, W, 1)``; a batch ``(N, H, W)`` or
``(N, H, W, 1)`` (a 3-D array is one image when its last axis is 1). A batch
gives one value per image. Any non-zero value counts as foreground.

Empty-mask convention (MONAI issues 4160, 7504), recorded with every result
as :data:`EMPTY_MASK_CONVENTION`:

- Dice, IoU: prediction and ground truth both empty -> 1.0; exactly one
  empty -> 0.0.
- HD95, ASSD: undefined when either mask is empty (both included) -> NaN.
  Summaries leave NaN out of means and report how many were left out
  (``unet_jax.analysis``).

Boundary distances follow MONAI (``compute_hausdorff_distance`` with
``percentile=95``, ``compute_average_surface_distance(symmetric=True)``):

- a mask's surface is its pixels with a 4-neighbour (3x3 cross) outside the
  mask; outside the image counts as background, so a mask touching the border
  has a surface along the border;
- d(A->B) is, for every surface pixel of A, the Euclidean distance to the
  nearest surface pixel of B, with ``spacing = (row, column)`` pixel sizes;
- ``hd95`` has two conventions, :data:`HD95_CONVENTIONS`, P95 the 95th
  percentile with linear interpolation (``numpy.percentile``'s default):
  ``'max'`` (the default, MONAI) ``max(P95(d(P->T)), P95(d(T->P)))``;
  ``'pooled'`` (medpy's ``hd95``) ``P95`` of the union (concatenation) of
  d(P->T) and d(T->P). Both are NaN when either mask is empty. ``'pooled'``
  lies between the two directed P95s up to one interpolation step: with
  ``lo(d)``, ``hi(d)`` the sorted d at the floor and ceiling of position
  ``0.95 (len(d) - 1)``, ``min(lo(d(P->T)), lo(d(T->P))) <= 'pooled' <=
  max(hi(d(P->T)), hi(d(T->P)))``. So it is mostly, not always, <= ``'max'``;
  with few surface pixels it can exceed it (P = {(0, 0), (0, 1)}, T = {(0, 1),
  (0, 2)}: d = [1, 0] both ways, ``'max'`` 0.95, ``'pooled'`` 1.0);
- ``assd`` = the mean over the union of d(P->T) and d(T->P), i.e.
  ``(sum d(P->T) + sum d(T->P)) / (|surface P| + |surface T|)``.

Cost: an exact squared Euclidean distance transform, separable: along columns
by two running scans (O(H W)), then along rows by the lower envelope over all
columns (O(H W^2) time and an (H, W, W) float32 temporary, 67 MB at 256x256),
one image at a time under ``lax.map`` so a batch does not multiply the memory.
That is what ``hd95`` and ``assd`` compute (jittable, on the device).
``score_masks``, which scores a sweep's test images on the host, computes
the same distances with SciPy's exact transform (``ndimage.
distance_transform_edt``, linear time, in float64, as medpy does) on the
bounding box of the two surfaces (which holds every nearest surface pixel):
at 128 x 128 about fifty times faster on a CPU. The two agree to float32
rounding (tests/metrics_test.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Defined without JAX, so that readers of results can state them.
from unet_jax.conventions import EMPTY_MASK_CONVENTION, HD95_CONVENTIONS, METRICS  # noqa: F401


def _as_batch(x) -> tuple[jax.Array, bool]:
  """``(N, H, W)`` view of the masks and whether the input was a batch."""
  x = jnp.asarray(x)
  if x.ndim == 2:
    return x[None], False
  if x.ndim == 3 and x.shape[-1] == 1:
    return x[None, ..., 0], False
  if x.ndim == 3:
    return x, True
  if x.ndim == 4 and x.shape[-1] == 1:
    return x[..., 0], True
  raise ValueError('masks must be (H, W), (H, W, 1), (N, H, W) or (N, H, W, 1); '
                   f'got shape {x.shape}')


def _pair(pred, target) -> tuple[jax.Array, jax.Array, bool]:
  p, batched = _as_batch(pred)
  t, _ = _as_batch(target)
  if p.shape != t.shape:
    raise ValueError(f'prediction {jnp.shape(pred)} and target {jnp.shape(target)} '
                     'masks differ in shape')
  return p, t, batched


def dice(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Dice = 2|P & T| / (|P| + |T|) per image; 1.0 when both are empty.

  Inputs are {0, 1} masks of the shapes in the module docstring; returns a
  scalar for one image or (N,) for a batch.
  """
  p, t, batched = _pair(pred, target)
  p, t = p.astype(jnp.float32), t.astype(jnp.float32)
  inter = jnp.sum(p * t, axis=(1, 2))
  total = jnp.sum(p, axis=(1, 2)) + jnp.sum(t, axis=(1, 2))
  out = jnp.where(total == 0, 1.0, 2 * inter / jnp.maximum(total, 1))
  return out if batched else out[0]


def mean_dice(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Dice per image averaged over structures: (N, H, W, K) masks -> (N,).

  One structure (K = 1) is :func:`dice` itself; for several, each channel is
  scored as its own binary mask (both empty -> 1.0) and the K values averaged.
  """
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  if pred.shape[-1] == 1:
    return dice(pred, target)
  return jnp.mean(jnp.stack([dice(pred[..., k], target[..., k])
                             for k in range(pred.shape[-1])], axis=-1), axis=-1)


def iou(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Intersection over union per image, same shapes and convention as dice."""
  p, t, batched = _pair(pred, target)
  p, t = p.astype(jnp.float32), t.astype(jnp.float32)
  inter = jnp.sum(p * t, axis=(1, 2))
  union = jnp.sum(jnp.maximum(p, t), axis=(1, 2))
  out = jnp.where(union == 0, 1.0, inter / jnp.maximum(union, 1))
  return out if batched else out[0]


def surface(mask: jax.Array) -> jax.Array:
  """Surface pixels of one (H, W) boolean mask: in it, with a 4-neighbour out.

  Outside the image is background, so mask pixels on the border are surface.
  """
  padded = jnp.pad(mask, 1, constant_values=False)
  interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return mask & ~interior


def _nearest_along_rows(features: jax.Array) -> jax.Array:
  """Distance in pixels to the nearest feature in the same column (inf if none)."""
  h = features.shape[0]
  rows = jnp.arange(h, dtype=jnp.float32)[:, None]
  above = jax.lax.cummax(jnp.where(features, rows, -jnp.inf), axis=0)
  below = jax.lax.cummin(jnp.where(features, rows, jnp.inf), axis=0, reverse=True)
  return jnp.minimum(rows - above, below - rows)


def squared_distance_to(features: jax.Array, spacing) -> jax.Array:
  """Exact squared Euclidean distance from each pixel to the nearest feature.

  ``features`` is one (H, W) boolean mask; ``spacing`` (row, column) pixel
  sizes. Everything is inf when there is no feature.
  """
  sy, sx = spacing[0], spacing[1]
  column = (_nearest_along_rows(features) * sy) ** 2  # (H, W), inf if none
  w = features.shape[1]
  cols = jnp.arange(w, dtype=jnp.float32)
  across = ((cols[:, None] - cols[None, :]) * sx) ** 2  # (W target, W source)
  return jnp.min(column[:, None, :] + across[None], axis=-1)


def _percentile_of_masked(values: jax.Array, keep: jax.Array, q: float) -> jax.Array:
  """``numpy.percentile(values[keep], q)`` (linear), NaN when nothing is kept."""
  v = jnp.sort(jnp.where(keep, values, jnp.inf).ravel())
  n = jnp.sum(keep)
  pos = q / 100.0 * jnp.maximum(n - 1, 0).astype(jnp.float32)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
  out = v[lo] + (v[hi] - v[lo]) * (pos - lo)
  return jnp.where(n > 0, out, jnp.nan)


def _surface_distances_one(pred: jax.Array, target: jax.Array, spacing: jax.Array,
                           convention: str) -> tuple[jax.Array, jax.Array]:
  """(hd95, assd) of one (H, W) pair; NaN when either mask is empty."""
  p, t = pred != 0, target != 0
  sp, st = surface(p), surface(t)
  to_t = jnp.sqrt(squared_distance_to(st, spacing))  # distance of every pixel to T's surface
  to_p = jnp.sqrt(squared_distance_to(sp, spacing))
  if convention == 'max':
    hd = jnp.maximum(_percentile_of_masked(to_t, sp, 95.0),
                     _percentile_of_masked(to_p, st, 95.0))
  else:  # 'pooled': d(P->T) at P's surface and d(T->P) at T's, as one set
    hd = _percentile_of_masked(jnp.concatenate([to_t.ravel(), to_p.ravel()]),
                               jnp.concatenate([sp.ravel(), st.ravel()]), 95.0)
  total = jnp.sum(jnp.where(sp, to_t, 0.0)) + jnp.sum(jnp.where(st, to_p, 0.0))
  count = jnp.sum(sp) + jnp.sum(st)
  assd = total / jnp.maximum(count, 1)
  defined = jnp.any(p) & jnp.any(t)
  return jnp.where(defined, hd, jnp.nan), jnp.where(defined, assd, jnp.nan)


@functools.partial(jax.jit, static_argnames='convention')
def _distances(pred: jax.Array, target: jax.Array, spacing: jax.Array, convention: str
               ) -> tuple[jax.Array, jax.Array]:
  """(hd95, assd) of (N, H, W) masks, one image at a time (memory, see above)."""
  return jax.lax.map(lambda pt: _surface_distances_one(pt[0], pt[1], spacing, convention),
                     (pred, target))


def _surface_distances(pred, target, spacing, convention='max'
                       ) -> tuple[jax.Array, jax.Array, bool]:
  if convention not in HD95_CONVENTIONS:
    raise ValueError(f'unknown hd95 convention {convention!r}; '
                     f'choose one of {tuple(HD95_CONVENTIONS)}')
  p, t, batched = _pair(pred, target)
  spacing = jnp.asarray(spacing, jnp.float32)
  if spacing.shape != (2,):
    raise ValueError(f'spacing must be (row, column) pixel sizes; got {spacing.shape}')
  hd, out = _distances(p, t, spacing, convention=convention)
  return hd, out, batched


def hd95(pred: jax.Array, target: jax.Array, spacing=(1.0, 1.0), *, convention: str = 'max'
         ) -> jax.Array:
  """95th-percentile symmetric Hausdorff distance per image, in spacing units.

  ``convention='max'`` (MONAI): ``max(P95(d(P->T)), P95(d(T->P)))`` over
  surface pixels; ``'pooled'`` (medpy): P95 of d(P->T) and d(T->P) together
  (module docstring, :data:`HD95_CONVENTIONS`). NaN when either mask is
  empty. ``spacing`` is (row, column) pixel size. ``convention`` is a Python
  string (static under ``jax.jit``); an unknown one raises ``ValueError``.

  Example::

    hd95(pred, masks, spacing=(0.1, 0.1))   # (N,) in mm for 0.1 mm pixels
  """
  hd, _, batched = _surface_distances(pred, target, spacing, convention)
  return hd if batched else hd[0]


def assd(pred: jax.Array, target: jax.Array, spacing=(1.0, 1.0)) -> jax.Array:
  """Average symmetric surface distance per image, in spacing units.

  The mean over the union of both directed surface distances; NaN when
  either mask is empty. Shapes and ``spacing`` as for :func:`hd95`.
  """
  _, out, batched = _surface_distances(pred, target, spacing)
  return out if batched else out[0]


def _surface_np(mask: np.ndarray) -> np.ndarray:
  padded = np.pad(mask, 1)
  interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
  return mask & ~interior


def _distances_np(p: np.ndarray, t: np.ndarray, spacing: tuple[float, float],
                  convention: str) -> tuple[float, float]:
  """(hd95, assd) of one (H, W) boolean pair on the host; NaN when either is empty."""
  from scipy import ndimage  # only the host path needs it

  if not (p.any() and t.any()):
    return np.nan, np.nan
  sp, st = _surface_np(p), _surface_np(t)
  rows, cols = np.nonzero(sp | st)  # every nearest surface pixel lies in their box
  box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
  sp, st = sp[box], st[box]
  to_t = ndimage.distance_transform_edt(~st, sampling=spacing)[sp]  # d(P->T)
  to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)[st]  # d(T->P)
  if convention == 'max':
    hd = max(np.percentile(to_t, 95.0), np.percentile(to_p, 95.0))
  else:
    hd = np.percentile(np.concatenate([to_t, to_p]), 95.0)
  return float(hd), float((to_t.sum() + to_p.sum()) / (to_t.size + to_p.size))


def score_masks(pred, target, spacing=(1.0, 1.0), *, hd95_convention: str = 'max'
                ) -> dict[str, np.ndarray]:
  """Per-image ``dice``, ``iou``, ``hd95``, ``assd``, as (N,) numpy arrays, on the host.

  The definitions and conventions of :func:`dice`, :func:`iou`, :func:`hd95`
  and :func:`assd`; the distances come from SciPy's exact distance transform
  (module docstring), computed once for both. NaN marks undefined distances.
  ``hd95_convention`` is one of :data:`HD95_CONVENTIONS`.
  """
  if hd95_convention not in HD95_CONVENTIONS:
    raise ValueError(f'unknown hd95 convention {hd95_convention!r}; '
                     f'choose one of {tuple(HD95_CONVENTIONS)}')
  p, t, _ = _pair(np.asarray(pred) != 0, np.asarray(target) != 0)
  p, t = np.asarray(p), np.asarray(t)
  spacing = tuple(float(x) for x in np.asarray(spacing, np.float64).reshape(-1))
  if len(spacing) != 2:
    raise ValueError(f'spacing must be (row, column) pixel sizes; got {spacing}')
  inter = (p & t).sum(axis=(1, 2)).astype(np.float64)
  size = p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
  union = (p | t).sum(axis=(1, 2))
  distances = np.array([_distances_np(a, b, spacing, hd95_convention) for a, b in zip(p, t)],
                       np.float64).reshape(-1, 2)
  # float32, as the device functions return.
  as32 = lambda x: np.asarray(x, np.float32)
  return {'dice': as32(np.where(size == 0, 1.0, 2 * inter / np.maximum(size, 1))),
          'iou': as32(np.where(union == 0, 1.0, inter / np.maximum(union, 1))),
          'hd95': as32(distances[:, 0]), 'assd': as32(distances[:, 1])}
