"""What a network's output channels mean: one structure, or several in a label map.

Masks are one channel per structure, ``(N, H, W, K)`` in {0, 1}, the channels
mutually exclusive (a pixel belongs to at most one structure; background is
none of them). A binary set has K = 1 and is what it always was.

The head follows from K (:func:`out_channels`):

- K = 1: one logit per pixel, a sigmoid; foreground where the logit is > 0
  (probability > 0.5). Loss: binary cross-entropy plus soft Dice.
- K > 1: K + 1 logits, background first, a softmax; each pixel takes the
  channel of its largest logit (``argmax``). Loss: softmax cross-entropy over
  the K + 1 classes plus the soft Dice of each structure, averaged over the
  structures (nnU-Net's Dice + CE, without the background's Dice).

A label map (what files hold and what ``predict`` returns for K > 1) is the
``(N, H, W)`` integers 0..K, 0 the background and k the structure in channel
k - 1 (:func:`label_map`, :func:`one_hot`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.errors import UserError

BINARY = ('foreground',)  # the one structure of a binary set


def out_channels(num_structures: int) -> int:
  """Head width for ``num_structures`` structures: 1 (sigmoid) or K + 1 (softmax)."""
  return 1 if num_structures == 1 else num_structures + 1


def count(out_channels_: int) -> int:
  """Number of structures a head of ``out_channels_`` logits segments."""
  return 1 if out_channels_ == 1 else out_channels_ - 1


def probabilities(logits: jax.Array) -> jax.Array:
  """(..., K) probability of each structure: the sigmoid of one logit, or the
  softmax over K + 1 logits without its background channel."""
  if logits.shape[-1] == 1:
    return jax.nn.sigmoid(logits)
  return jax.nn.softmax(logits, axis=-1)[..., 1:]


def masks_from_logits(logits: jax.Array) -> jax.Array:
  """(..., K) float32 {0, 1} masks: logit > 0, or the largest of K + 1 logits."""
  if logits.shape[-1] == 1:
    return (logits > 0).astype(jnp.float32)
  return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1],
                        dtype=jnp.float32)[..., 1:]


def masks_from_probabilities(probs: np.ndarray) -> np.ndarray:
  """(..., K) float32 {0, 1} masks from :func:`probabilities`: > 0.5 for one
  structure; for several, the largest of the background's 1 - sum and each
  structure's probability (the argmax of the logits, up to rounding)."""
  probs = np.asarray(probs)
  if probs.shape[-1] == 1:
    return (probs > 0.5).astype(np.float32)
  full = np.concatenate([1.0 - probs.sum(axis=-1, keepdims=True), probs], axis=-1)
  return one_hot(np.argmax(full, axis=-1), probs.shape[-1])


def label_map(masks: np.ndarray) -> np.ndarray:
  """(..., H, W, K) one-hot masks -> (..., H, W) uint8 labels 0..K (0: background)."""
  masks = np.asarray(masks) > 0.5
  ks = np.arange(1, masks.shape[-1] + 1, dtype=np.uint8)
  return (masks * ks).max(axis=-1).astype(np.uint8)


def one_hot(labels: np.ndarray, num_structures: int) -> np.ndarray:
  """(..., H, W) labels 0..K -> (..., H, W, K) float32 masks (background dropped)."""
  labels = np.asarray(labels)
  return (labels[..., None] == np.arange(1, num_structures + 1)).astype(np.float32)


def parse(spec: str, field: str = 'data.structures') -> tuple[tuple[str, ...], tuple[int, ...]]:
  """``'cavity,wall,atrium'`` or ``'cavity=1,wall=2,atrium=3'`` -> (names, values).

  Names are the structures in label order; values are the pixel values of each in a
  label-map file (1..K when not given). Raises UserError naming ``field``.
  """
  items = [item.strip() for item in str(spec).split(',') if item.strip()]
  if not items:
    raise UserError(f"config field {field!r} is empty; give structure names, e.g. "
                    "'cavity,wall,atrium' or 'cavity=1,wall=2,atrium=3'")
  names, values = [], []
  for k, item in enumerate(items, 1):
    name, _, value = item.partition('=')
    name = name.strip()
    if not name.replace('_', '').replace('-', '').isalnum():
      raise UserError(f'config field {field!r}: structure name {name!r} must be letters, '
                      'digits, _ or -')
    if value:
      try:
        number = int(value)
      except ValueError:
        number = -1
      if not 1 <= number <= 65535:
        raise UserError(f'config field {field!r}: the label value of {name!r} must be an '
                        f'integer from 1 to 65535; got {value.strip()!r}')
    else:
      number = k
    names.append(name)
    values.append(number)
  for what, seq in (('names', names), ('label values', values)):
    repeated = sorted({str(x) for x in seq if seq.count(x) > 1})
    if repeated:
      raise UserError(f'config field {field!r}: structure {what} repeat: '
                      f'{", ".join(repeated)}')
  return tuple(names), tuple(values)
