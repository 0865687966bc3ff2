"""Data sources by name: built-in generators and real sets from local folders.

``make_dataset(name, num, size, seed)`` returns a :class:`Dataset` of numpy
arrays: images (N, size, size, 1) float32 in [0, 1], masks (N, size, size, K)
in {0, 1} (one channel per structure, K = 1 for a binary set; ``cardiac`` has
three), string ids and a per-image class label. ``load(name, root, size)``
reads a real set (``LOADERS``: busi, udiat_b, montgomery, jsrt_scr, folder) as
distributed; ``holdout_split`` and ``kfold_split`` split either by class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from unet_jax import structures
from unet_jax.data import cardiac, chest_xray, dead_leaves, duplicates, ultrasound
from unet_jax.data import pets as pets_module
from unet_jax.data.real import LOADERS, load
from unet_jax.data.real.pixels import RESIZES
from unet_jax.data.splits import (
  EMPTY_MASKS,
  Split,
  holdout_split,
  kfold_split,
  leave_out_empty,
  plan_splits,
)
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


@dataclasses.dataclass(frozen=True)
class Generator:
  """A built-in source: ``make(key, num, settings(size))`` gives images, masks and, where
  the source has classes, each image's class index into ``classes``."""

  make: Callable
  settings: Callable[[int], Any]  # image size -> the generator's settings
  prefix: str  # image ids are prefix_00000, ...
  classes: tuple[str, ...]  # one class: every image has it
  structures: tuple[str, ...] = BINARY


SOURCES: dict[str, Generator] = {
    'ultrasound': Generator(ultrasound.breast_images,
                            lambda size: ultrasound.BreastScan(size=size), 'us',
                            ultrasound.KINDS),
    'chest_xray': Generator(chest_xray.chest_images,
                            lambda size: chest_xray.ChestXray(size=size), 'cxr',
                            ('normal', 'abnormal')),
    'dead_leaves': Generator(dead_leaves.dead_leaves_images,
                             lambda size: dead_leaves.DeadLeaves(size=size), 'dl', ('object',)),
    'cardiac': Generator(cardiac.cardiac_images, lambda size: cardiac.CardiacView(size=size),
                         'echo', cardiac.KINDS, cardiac.STRUCTURES),
}


# The structures of each built-in source's masks (one for a binary source).
SOURCE_STRUCTURES = {name: source.structures for name, source in SOURCES.items()}


def structures_of(name: str, declared: str = '') -> tuple[tuple[str, ...], tuple[int, ...] | None]:
  """(structure names, label values or None for binary masks) of a source.

  A built-in source has its own (``declared`` must be empty or name the same); a real
  set is binary unless ``declared`` (config ``data.structures``, :func:`unet_jax.
  structures.parse`) names its structures: several, or one with ``=value``, are read
  as label maps.
  """
  if name in SOURCE_STRUCTURES or name == pets_module.NAME:
    own = SOURCE_STRUCTURES.get(name, BINARY)
    if declared and structures.parse(declared)[0] != own:
      raise UserError(f"config field 'data.structures' is {declared!r}, but data source "
                      f"{name!r} has the structures {','.join(own)}; leave it empty")
    return own, None if len(own) == 1 else tuple(range(1, len(own) + 1))
  if not declared:
    return BINARY, None
  names, values = structures.parse(declared)
  if len(names) == 1 and '=' not in declared:
    return names, None
  return names, values


def source_names(*, pets: bool = False) -> tuple[str, ...]:
  """Every data source a config may name: built-in, real sets (and TFDS pets)."""
  return tuple(SOURCES) + tuple(LOADERS) + ((pets_module.NAME,) if pets else ())


def is_real(name: str) -> bool:
  """Whether ``name`` is a real set read from a folder (it needs a root)."""
  return name in LOADERS


def open_source(name: str, *, num: int, size: int, seed: int, root: str = '',
                cache_dir: str | None = None, on_bad: str = 'error',
                declared: str = '', resize: str = 'stretch') -> Dataset:
  """The one dispatch from a source name to its images.

  A built-in generator makes ``num`` images from ``seed``; a real set
  (``LOADERS``) is read whole from ``root`` (cached in ``cache_dir``), binary or
  the label maps of the structures ``declared`` (:func:`structures_of`), each
  image made square by ``resize`` (:data:`RESIZES`; generators make squares);
  Oxford-IIIT Pet comes from TFDS (``root`` = its data_dir).
  """
  names, values = structures_of(name, declared)
  if name in LOADERS:
    return load(name, root, size, cache_dir=cache_dir, on_bad=on_bad, structures=names,
                label_values=values, resize=resize)
  if name == pets_module.NAME:  # TFDS is imported only then
    return pets_module.load(num, size, root)
  return make_dataset(name, num, size, seed)


def make_dataset(name: str, num: int, size: int, seed: int) -> Dataset:
  """Generates ``num`` images of a built-in source, deterministic in ``seed``."""
  if name not in SOURCES:
    raise UserError(f'unknown data source {name!r}; valid sources: '
                    f'{", ".join(sorted(SOURCES))}')
  source = SOURCES[name]
  images, masks, *kinds = source.make(jax.random.key(seed), num, source.settings(size))
  kinds = np.asarray(kinds[0]).astype(int) if kinds else np.zeros(num, int)
  return Dataset(np.asarray(images), np.asarray(masks),
                 [f'{source.prefix}_{i:05d}' for i in range(num)],
                 [source.classes[k] for k in kinds], structures=source.structures)


__all__ = [
    'EMPTY_MASKS', 'INTENSITIES', 'LOADERS', 'RESIZES', 'SOURCES', 'SOURCE_STRUCTURES',
    'Dataset', 'Split', 'holdout_split', 'is_real', 'kfold_split', 'leave_out_empty', 'load',
    'make_dataset', 'normalise', 'open_source', 'plan_splits', 'source_names', 'structures_of',
]
