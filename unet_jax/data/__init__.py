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
from unet_jax.data import cardiac, chest_xray, dead_leaves, ultrasound
from unet_jax.data import pets as pets_module
from unet_jax.data.dataset import (
  IMAGENET_GREY,
  IMAGENET_MEAN,
  IMAGENET_SD,
  INTENSITIES,
  Dataset,
  normalise,
)
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
    'EMPTY_MASKS', 'IMAGENET_GREY', 'IMAGENET_MEAN', 'IMAGENET_SD', 'INTENSITIES', 'LOADERS',
    'RESIZES', 'SOURCES', 'SOURCE_STRUCTURES', 'Dataset', 'Generator', 'Split', 'holdout_split',
    'is_real', 'kfold_split', 'leave_out_empty', 'load', 'make_dataset', 'normalise',
    'open_source', 'plan_splits', 'source_names', 'structures_of',
]
