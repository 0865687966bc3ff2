"""The training loss: binary cross-entropy plus a soft Dice term."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def segmentation_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
  """Binary cross-entropy plus soft Dice loss, averaged over the batch."""
  bce = optax.sigmoid_binary_cross_entropy(logits, masks).mean()
  return bce + soft_dice_loss(jax.nn.sigmoid(logits), masks)


def soft_dice_loss(probs: jax.Array, target: jax.Array, eps: float = 1.0
                   ) -> jax.Array:
  """1 - smoothed soft Dice over a batch, differentiable."""
  inter = jnp.sum(probs * target, axis=(1, 2, 3))
  total = jnp.sum(probs, axis=(1, 2, 3)) + jnp.sum(target, axis=(1, 2, 3))
  return 1.0 - jnp.mean((2 * inter + eps) / (total + eps))
