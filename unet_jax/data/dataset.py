"""A data set as numpy arrays, and the intensity conventions of a network's input.

Here, not in ``unet_jax.data``'s ``__init__``, so that the loaders (``data.real``,
``data.pets``) build one without importing the package that imports them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from unet_jax.data import duplicates
from unet_jax.errors import UserError
from unet_jax.structures import BINARY

# Intensity conventions of the network's input: 'unit' keeps the loaders'
# [0, 1] grey values; 'zscore' standardises each image (nnU-Net's default for
# every modality but CT); 'imagenet' is torchvision's normalisation of its
# pretrained encoders (per RGB channel; a grey channel takes the channels'
# mean mean and SD, IMAGENET_GREY, and resnet's 'sum' stem absorbs the rest).
INTENSITIES = ('unit', 'zscore', 'imagenet')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_SD = (0.229, 0.224, 0.225)
IMAGENET_GREY = (sum(IMAGENET_MEAN) / 3, sum(IMAGENET_SD) / 3)


def normalise(images: np.ndarray, intensity: str) -> np.ndarray:
  """(N, H, W, C) images in [0, 1] under ``intensity``: unchanged for 'unit';
  for 'zscore' each image minus its mean over pixels and channels, divided by
  its SD (a constant image becomes 0); for 'imagenet' each RGB channel minus
  ImageNet's mean, divided by its SD (one channel: :data:`IMAGENET_GREY`)."""
  if intensity not in INTENSITIES:
    raise UserError(f'intensity {intensity!r} is not one of {", ".join(INTENSITIES)}')
  if intensity == 'unit':
    return images
  if intensity == 'imagenet':
    channels = np.shape(images)[-1]
    if channels not in (1, 3):
      raise UserError(f"intensity 'imagenet' needs 1 or 3 channels; the images have {channels}")
    mean, sd = ((IMAGENET_MEAN, IMAGENET_SD) if channels == 3
                else ((IMAGENET_GREY[0],), (IMAGENET_GREY[1],)))
    return ((np.asarray(images, np.float32) - np.float32(mean)) / np.float32(sd)).astype(
        np.float32)
  x = np.asarray(images, np.float64)
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  sd = x.std(axis=(1, 2, 3), keepdims=True)
  return ((x - mean) / np.maximum(sd, 1e-6)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Dataset:
  images: np.ndarray
  masks: np.ndarray
  ids: list[str]
  labels: list[str]  # class per image ('benign', 'malignant', 'object', ...)
  # Real sets: per image class, source files, original size (see unet_jax.data.real.load).
  meta: list[dict] | None = None
  skipped: tuple[str, ...] = ()  # unusable pairs a loader left out under on_bad='skip'
  # Groups of indices of images that are copies of each other (data.duplicates);
  # plan_splits keeps each group in one part.
  duplicates: tuple[tuple[int, ...], ...] = ()
  # Names of the structures, one per mask channel (unet_jax.structures); one for a
  # binary set.
  structures: tuple[str, ...] = BINARY

  def take(self, index) -> 'Dataset':
    index = np.asarray(index)
    where = {int(old): new for new, old in enumerate(index)}
    kept = tuple(sorted((g for g in (tuple(sorted(where[i] for i in group if i in where))
                                     for group in self.duplicates) if len(g) > 1),
                        key=lambda g: g[0]))
    return dataclasses.replace(
        self, images=self.images[index], masks=self.masks[index],
        ids=[self.ids[i] for i in index], labels=[self.labels[i] for i in index],
        meta=None if self.meta is None else [self.meta[i] for i in index],
        duplicates=kept)

  def empty(self) -> np.ndarray:
    """Per image, whether its mask is empty (nothing to segment)."""
    return self.masks.reshape(len(self.masks), -1).max(axis=1) == 0

  def groups(self) -> np.ndarray:
    """Per image, the index of the first image of its copies (its own when unique)."""
    return duplicates.group_ids(len(self.ids), list(self.duplicates))

  def normalised(self, intensity: str) -> 'Dataset':
    """The images under an intensity convention (:data:`INTENSITIES`, :func:`normalise`)."""
    return self if intensity == INTENSITIES[0] else dataclasses.replace(
        self, images=normalise(self.images, intensity))

  def with_channels(self, channels: int) -> 'Dataset':
    """Grey images repeated over ``channels`` (for RGB-shaped networks)."""
    if channels == self.images.shape[-1]:
      return self
    if self.images.shape[-1] != 1:
      raise UserError(f'cannot turn {self.images.shape[-1]}-channel images '
                      f'into {channels} channels')
    return dataclasses.replace(self, images=np.repeat(self.images, channels, axis=-1))

  def __len__(self):
    return len(self.ids)
