"""Real segmentation sets from local folders, as distributed: ``load(name, root, size)``.

Each set is found on disk by :mod:`unet_jax.data.real.layouts` (whose docstring gives every
set's exact layout and what ``root`` may point at), decoded and resized by
:mod:`unet_jax.data.real.pixels` (grey scaling, mask binarisation, plain resize to a square) and
optionally cached by :mod:`unet_jax.data.real.cache`.

Nothing is dropped silently: an image without a mask, a mask without an image, an unreadable
file or an image whose mask has another size raises a UserError naming the files, unless
``on_bad='skip'``, which leaves such pairs out, warns with how many and why, and lists them in
``Dataset.skipped``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from unet_jax.data import duplicates
from unet_jax.data.dataset import Dataset
from unet_jax.data.real import cache, layouts, pixels
from unet_jax.data.real.layouts import WHERE, Found, Pair, Problem
from unet_jax.errors import UserError
from unet_jax.structures import BINARY, one_hot

# Bump when decoding or resizing changes, so old caches are not read.
LOADER_VERSION = 2  # 2: label-map masks refused (label maps read when declared: same version)

LOADERS: dict[str, Callable[..., Found]] = {
    'busi': layouts.find_busi,
    'udiat_b': layouts.find_udiat_b,
    'montgomery': layouts.find_montgomery,
    'jsrt_scr': layouts.find_jsrt_scr,
    'folder': layouts.find_folder,
}
ON_BAD = ('error', 'skip')


def load(name: str, root, size: int, *, cache_dir: str | os.PathLike | None = None,
         on_bad: str = 'error', structures: tuple[str, ...] = BINARY,
         label_values: tuple[int, ...] | None = None, resize: str = 'stretch') -> Dataset:
  """Loads a real set from its folder, resized to ``size x size``.

  Args:
    name: one of ``LOADERS``: busi, udiat_b, montgomery, jsrt_scr, folder.
    root: the set's folder or the folder holding it (see ``unet_jax.data.real.layouts``); for
      ``folder`` also ``(images_dir, masks_dir)`` or the two joined by ``os.pathsep``.
    size: side of the square output in pixels (plain resize, aspect ratio not kept).
    cache_dir: folder for preprocessed ``.npz`` files, reused while no input file changes;
      None: no cache.
    on_bad: 'error' raises on the first unusable pair; 'skip' leaves unusable pairs out, warns
      and lists them in ``Dataset.skipped``.
    structures: names of the structures the masks hold (``Dataset.structures``).
    label_values: None: binary masks (one structure); else the pixel value of each structure
      in label-map files (``pixels.read_label_map``).
    resize: 'stretch' (each axis to ``size``) or 'pad' (aspect ratio kept, centred on a zero
      square; ``pixels.RESIZES``); with 'pad' each image's ``meta`` gives its ``placement``
      (rows, cols, top, left) in the square.

  Returns:
    A Dataset: images (N, size, size, 1) float32 in [0, 1], masks (N, size, size, K) float32
    in {0, 1} (one channel per structure), ids (file stems), labels (class per image) and
    ``meta`` per image: ``class``, ``image`` and ``masks`` (paths relative to the set's
    folder), original ``height`` and ``width``, ``bits`` (grey bit depth), and ``fold``
    (jsrt_scr) or ``label_source`` (udiat_b).

  Example:
    >>> ds = data.load('busi', '~/data/Dataset_BUSI_with_GT', 128, cache_dir='~/.cache/busi')
    >>> ds.images.shape, sorted(set(ds.labels))
    ((780, 128, 128, 1), ['benign', 'malignant', 'normal'])
  """

  if name not in LOADERS:
    raise UserError(f'unknown real data set {name!r}; valid names: {", ".join(LOADERS)}')
  if on_bad not in ON_BAD:
    raise UserError(f'on_bad must be one of {", ".join(ON_BAD)}, got {on_bad!r}')
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise UserError(f'size must be a positive integer, got {size!r}')
  size = int(size)
  if resize not in pixels.RESIZES:
    raise UserError(f'resize must be one of {", ".join(pixels.RESIZES)}, got {resize!r}')
  if label_values is None and len(structures) != 1:
    raise UserError(f'{name}: {len(structures)} structures need their label values')
  if label_values is not None and len(label_values) != len(structures):
    raise UserError(f'{name}: {len(structures)} structures but {len(label_values)} label values')
  options = ({} if label_values is None
             else {'labels': {'structures': list(structures), 'values': list(label_values)}})
  options |= {} if resize == 'stretch' else {'resize': resize}
  roots = _roots(name, root)
  where = roots[0] if len(roots) == 1 else tuple(roots)
  found = (LOADERS[name](where, tuple(structures)) if name == 'folder'
           else LOADERS[name](where))
  for note in found.notes:
    warnings.warn(f'{name}: {note}', stacklevel=2)
  if found.problems and on_bad == 'error':
    raise _bad_pairs(name, found.problems)
  if not found.pairs:
    raise UserError(f'{name}: no image with a mask under {root}'
                    + (f' ({len(found.problems)} unusable files, e.g. {found.problems[0]})'
                       if found.problems else '') + f'; expected {WHERE[name]}')

  path, arrays = None, None
  if cache_dir is not None:
    files = [f for p in found.pairs for f in (p.image, *p.masks)]
    files += [f for p in found.problems for f in p.files] + found.extra_files
    path = cache.cache_path(Path(cache_dir).expanduser(), name, roots, size, on_bad, files,
                            LOADER_VERSION, options)
    arrays = cache.read(path)
  if arrays is None:
    arrays = _read_pairs(name, found, size, on_bad, label_values, resize)
    if path is not None:
      cache.write(path, **arrays)

  skipped = [str(p) for p in found.problems] + arrays['skipped']
  if not arrays['ids']:
    raise UserError(f'{name}: every image under {root} is unusable, e.g. {skipped[0]}')
  if not arrays['masks'].any():
    raise UserError(f'{name}: every one of the {len(arrays["ids"])} masks under {root} is '
                    f'empty after resizing to {size}x{size}: nothing to segment (foreground '
                    'is a value above 127 of 255, or 1 in a 0/1 mask)')
  if skipped:
    shown = '; '.join(skipped[:3]) + ('; ...' if len(skipped) > 3 else '')
    warnings.warn(f'{name}: skipped {len(skipped)} unusable image/mask pairs and kept '
                  f'{len(arrays["ids"])} (all listed in Dataset.skipped): {shown}',
                  stacklevel=2)
  copies = duplicates.find(arrays['images'])
  if copies:
    ids = arrays['ids']
    shown = '; '.join(' = '.join(_where(arrays['meta'][i], ids[i]) for i in g)
                      for g in copies[:3]) + ('; ...' if len(copies) > 3 else '')
    groups = f'{len(copies)} group{"s" if len(copies) > 1 else ""}'
    warnings.warn(f'{name}: {sum(len(g) for g in copies)} images are copies of another '
                  f'({groups}, identical within {duplicates.NEAR * 255:.0f} grey level on '
                  f'average): {shown}. Each group is kept in one split part '
                  '(Dataset.duplicates lists them)', stacklevel=2)
  return Dataset(arrays['images'], arrays['masks'].astype(np.float32), arrays['ids'],
                 arrays['labels'], meta=arrays['meta'], skipped=tuple(skipped),
                 duplicates=tuple(copies), structures=tuple(structures))


def _where(meta: dict, image_id: str) -> str:
  return meta.get('image', image_id) if meta else image_id


def _roots(name: str, root) -> list[Path]:
  if isinstance(root, (tuple, list)):
    if name != 'folder':
      raise UserError(f"{name}: root must be one folder; only 'folder' takes "
                      '(images_dir, masks_dir)')
    return [Path(r).expanduser() for r in root]
  path = Path(root).expanduser()
  if name == 'folder' and not path.exists() and os.pathsep in str(root):
    return [Path(r).expanduser() for r in str(root).split(os.pathsep)]
  return [path]


def _bad_pairs(name: str, problems: list[Problem]) -> UserError:
  more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
  return UserError(f'{name}: {problems[0]}{more}; fix or remove the files, or pass '
                   "on_bad='skip' to leave such pairs out")


def _read_pairs(name: str, found: Found, size: int, on_bad: str,
                label_values: tuple[int, ...] | None, resize: str) -> dict:
  """Decodes and resizes every pair; unusable ones raise or are listed in 'skipped'."""
  images, masks, ids, labels, meta, skipped = [], [], [], [], [], []
  for pair in found.pairs:
    result = _read_pair(pair, size, found, label_values, resize)
    if isinstance(result, Problem):
      if on_bad == 'error':
        raise _bad_pairs(name, [result])
      skipped.append(str(result))
      continue
    image, mask, info = result
    images.append(image)
    masks.append(mask)
    ids.append(pair.id)
    labels.append(pair.label)
    meta.append(info)
  shape = (len(ids), size, size, 1)
  channels = 1 if label_values is None else len(label_values)
  return {'images': np.asarray(images, np.float32).reshape(shape),
          'masks': np.asarray(masks, np.float32).reshape(shape[:3] + (channels,)),
          'ids': ids, 'labels': labels, 'meta': meta, 'skipped': skipped}


def _read_pair(pair: Pair, size: int, found: Found, label_values: tuple[int, ...] | None,
               resize: str):
  """(image, mask, meta) resized, or the Problem that makes the pair unusable; the mask is
  (size, size) bool, or (size, size, K) one-hot for a label map."""
  try:
    image, bits = pixels.read_grey(pair.image)
  except pixels.BadFile as e:
    return Problem((pair.image,), f'unusable image ({e})')
  try:
    if found.per_structure:
      mask = pixels.read_structure_masks(list(pair.masks))
    elif label_values is None:
      mask = pixels.read_mask(list(pair.masks))
    else:
      mask = pixels.read_label_map(list(pair.masks), label_values)
  except pixels.BadFile as e:
    return Problem((e.path,) if e.path else pair.masks, f'unusable mask ({e})')
  (h, w), (mh, mw) = image.shape, mask.shape
  # SCR masks are 1024 px for 2048 px JSRT images: the same grid at half the resolution.
  if (h, w) != (mh, mw) and not (found.mask_scale and h * mw == w * mh):
    return Problem((pair.image, *pair.masks), f'image is {w}x{h} but its mask is {mw}x{mh}')
  info = {'class': pair.label, 'image': _rel(pair.image, found.base),
          'masks': [_rel(m, found.base) for m in pair.masks],
          'height': h, 'width': w, 'bits': bits, **pair.info}
  if resize != 'stretch':
    info['placement'] = list(pixels.placement(h, w, size, resize))
  grey = pixels.resize_image(image, size, resize)
  if label_values is None:
    return grey, pixels.resize_mask(mask, size, resize), info
  resized = pixels.resize_labels(mask, size, len(label_values), resize)
  return grey, one_hot(resized, len(label_values)), info


def _rel(path: Path, base: Path) -> str:
  try:
    return path.relative_to(base).as_posix()
  except ValueError:
    return str(path)
