"""The training loss: cross-entropy plus a soft Dice term (``unet_jax.structures``).

One structure: binary cross-entropy of the sigmoid plus soft Dice. Several:
softmax cross-entropy over background and structures plus the soft Dice of
each structure, averaged over the structures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def segmentation_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
  """Cross-entropy plus soft Dice loss, averaged over the batch.

  ``logits`` (B, H, W, 1) with masks (B, H, W, 1), or (B, H, W, K + 1) with
  one-hot masks (B, H, W, K) of K >= 2 structures (background implied).
  """
  if logits.shape[-1] == 1:
    bce = optax.sigmoid_binary_cross_entropy(logits, masks).mean()
    return bce + soft_dice_loss(jax.nn.sigmoid(logits), masks)
  background = 1.0 - jnp.sum(masks, axis=-1, keepdims=True)
  target = jnp.concatenate([background, masks], axis=-1)
  ce = optax.softmax_cross_entropy(logits, target).mean()
  probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
  return ce + soft_dice_loss(probs, masks)


def soft_dice_loss(probs: jax.Array, target: jax.Array, eps: float = 1.0
                   ) -> jax.Array:
  """1 - smoothed soft Dice, averaged over the batch and the structures (channels),
  differentiable."""
  axes = (1, 2, 3) if target.shape[-1] == 1 else (1, 2)  # per image, or per image and structure
  inter = jnp.sum(probs * target, axis=axes)
  total = jnp.sum(probs, axis=axes) + jnp.sum(target, axis=axes)
  return 1.0 - jnp.mean((2 * inter + eps) / (total + eps))
