"""Overlap metrics on binary masks, jittable, one image or a batch.

Empty-mask convention (MONAI issues 4160, 7504), recorded with results:
both prediction and ground truth empty -> 1.0; exactly one empty -> 0.0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EMPTY_MASK_CONVENTION = 'both empty -> 1.0; one empty -> 0.0'


_IMAGE_AXES = {2: (0, 1), 3: (0, 1, 2), 4: (1, 2, 3)}


def _image_axes(x) -> tuple[int, ...]:
  """Axes of one image: (H, W), (H, W, 1) or a batch (N, H, W, 1)."""
  if x.ndim not in _IMAGE_AXES:
    raise ValueError(f'masks must be (H, W), (H, W, 1) or (N, H, W, 1); '
                     f'got shape {x.shape}')
  return _IMAGE_AXES[x.ndim]


def dice(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Dice = 2|P & T| / (|P| + |T|) per image; inputs are {0, 1} masks.

  Shapes (H, W), (H, W, 1) or (N, H, W, 1); returns a scalar or (N,).
  """
  pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
  axes = _image_axes(pred)
  inter = jnp.sum(pred * target, axis=axes)
  total = jnp.sum(pred, axis=axes) + jnp.sum(target, axis=axes)
  return jnp.where(total == 0, 1.0, 2 * inter / jnp.maximum(total, 1))


def iou(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Intersection over union per image, same shapes and convention as dice."""
  pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
  axes = _image_axes(pred)
  inter = jnp.sum(pred * target, axis=axes)
  union = jnp.sum(jnp.maximum(pred, target), axis=axes)
  return jnp.where(union == 0, 1.0, inter / jnp.maximum(union, 1))


def soft_dice_loss(probs: jax.Array, target: jax.Array, eps: float = 1.0
                   ) -> jax.Array:
  """1 - smoothed soft Dice over a batch, differentiable."""
  inter = jnp.sum(probs * target, axis=(1, 2, 3))
  total = jnp.sum(probs, axis=(1, 2, 3)) + jnp.sum(target, axis=(1, 2, 3))
  return 1.0 - jnp.mean((2 * inter + eps) / (total + eps))
