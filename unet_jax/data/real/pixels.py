"""Decoding image and mask files to grey [0, 1] floats and binary masks, and resizing them.

Grey values, by how a file stores them:
- 8-bit grey (PIL mode ``L``): value / 255.
- RGB, RGBA, palette, grey+alpha: ITU-R 601 luma of the colour channels / 255; alpha is
  ignored (BUSI ships grey scans as RGB or RGBA PNGs, where luma is the grey value exactly).
- 16-bit grey (``I;16``, ``I``): value / (2**bits - 1), where ``bits`` is the smallest of 8, 10,
  12, 14, 16 that holds the image's maximum. A 12-bit scan stored in a 16-bit PNG thus fills
  [0, 1] instead of [0, 1/16]; the bit depth used is recorded per image.
- JSRT raw ``.IMG``: big-endian 16-bit words holding 12-bit values on a square grid whose side
  comes from the file size. JSRT stores the image inverted (bone dark, lungs bright), so the
  grey value is ``1 - min(value, 4095) / 4095``, which gives the usual radiograph display
  (lungs dark, bone bright) like the PNG sets.

Masks: a pixel is foreground when any colour channel is > 127 on the 8-bit scale (16-bit
values are divided by 257 first, unless the mask only uses 0-255). A mask whose values are all
0 or 1 is read as 0/1 labels. Several mask files of one image are OR-merged. Values that
binarisation would misread are refused, naming the file and the values: nonzero pixels none
of which is above the threshold (a label map 0, 1, 2 would read as empty), or at most 8
distinct values of which two or more nonzero ones each cover 10% of the foreground (0, 128,
255 would merge two structures). Anti-aliased and JPEG masks, whose edge values are many and
each rare, are read as before.

Label maps (a set declared with several structures, ``data.structures``): each mask file
holds integers, 0 for background and each structure's declared value (1..K unless declared
otherwise), as 8- or 16-bit grey, palette indices (a palette PNG's index, not its colour), grey
stored as RGB, or a NIfTI slice. Any other value is refused naming the file and the values
found. Several files of one image are merged; two structures claiming one pixel are refused.

Resizing is a plain resize to a ``size x size`` square by default (``resize='stretch'``: aspect
ratio not kept, as most papers on these sets do), or with ``resize='pad'`` the longer side to
``size`` and the image centred on a zero square (background in the masks). Images with
Pillow's bilinear filter on 32-bit floats, which is anti-aliased when shrinking (its support
grows with the scale factor) and stays in [0, 1]; masks by area: the fraction of foreground
under each output pixel (Pillow's box filter), foreground when >= 0.5; label maps by area too,
each output pixel taking the label (background included) that covers most of it, the lower
label on a tie.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

JSRT_MAX = 4095  # 12-bit values
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

# What Pillow raises on a truncated, corrupt or hostile file.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class BadFile(Exception):
  """A file that cannot be used; the message says why, ``path`` which file when not obvious."""

  def __init__(self, message: str, path=None):
    super().__init__(message)
    self.path = path


def read_grey(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """Reads an image file as grey values.

  Args:
    path: a PNG, JPEG, BMP, TIFF or GIF file, a NIfTI file holding one 2-D slice
      (``.nii``, ``.nii.gz``, through nibabel), or a JSRT raw ``.IMG`` file.

  Returns:
    (image, bits): float32 (H, W) in [0, 1] and the bit depth the values were scaled by.

  Raises:
    BadFile: the file cannot be decoded.
  """
  if os.fspath(path).lower().endswith('.img'):
    return read_jsrt(path), 12
  if _is_nifti(path):
    return _nifti_grey(path)
  with _open(path) as im:
    mode = im.mode
    if mode in ('P', 'PA', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
      im, mode = im.convert('RGB'), 'RGB'
    elif mode == '1':
      im, mode = im.convert('L'), 'L'
    array = _pixels(im, path)
  if mode in ('RGB', 'RGBA'):
    return (array[..., :3].astype(np.float32) @ _LUMA) / 255.0, 8
  if mode in ('L', 'LA'):
    grey = array[..., 0] if array.ndim == 3 else array
    return grey.astype(np.float32) / 255.0, 8
  if mode.startswith('I'):
    if array.size and array.min() < 0:
      raise BadFile(f'negative pixel values in a {mode} image')
    bits = effective_bits(int(array.max()) if array.size else 0)
    return (array.astype(np.float32) / (2 ** bits - 1)).astype(np.float32), bits
  raise BadFile(f'unsupported pixel format {mode!r}')


def effective_bits(maximum: int) -> int:
  """Smallest of 8, 10, 12, 14, 16 bits that holds ``maximum``."""
  for bits in (8, 10, 12, 14, 16):
    if maximum < 2 ** bits:
      return bits
  raise BadFile(f'pixel value {maximum} does not fit in 16 bits')


def read_jsrt(path: str | os.PathLike) -> np.ndarray:
  """A JSRT raw image as float32 (S, S) in [0, 1], inverted to the usual display."""
  nbytes = os.path.getsize(path)
  side = math.isqrt(nbytes // 2)
  if nbytes == 0 or side * side * 2 != nbytes:
    raise BadFile(f'{nbytes} bytes is not a square image of 16-bit words '
                  '(JSRT .IMG files are 2048 x 2048 big-endian 16-bit, 8,388,608 bytes)')
  try:
    raw = np.fromfile(path, dtype='>u2').reshape(side, side)
  except OSError as e:
    raise BadFile(str(e)) from e
  return (1.0 - np.minimum(raw, JSRT_MAX).astype(np.float32) / JSRT_MAX).astype(np.float32)


def read_mask(paths: list[str | os.PathLike]) -> np.ndarray:
  """Reads and OR-merges mask files.

  Args:
    paths: one or more mask files of the same image, all of one size.

  Returns:
    bool (H, W), foreground where any file is foreground.

  Raises:
    BadFile: a file cannot be decoded or the files differ in size.
  """
  return _merged(paths, lambda path, _: _read_one_mask(path),
                 lambda merged, mask, *_: merged | mask)


def _merged(paths, read, combine) -> np.ndarray:
  """``read(path, k)`` of each file (k = 1, 2, ...) folded by ``combine(merged, new, first,
  path)``; a file's BadFile names it, and files of different sizes are refused."""
  merged, first = None, None
  for k, path in enumerate(paths, 1):
    try:
      array = read(path, k)
    except BadFile as e:
      raise BadFile(str(e), e.path or path) from e
    if merged is None:
      merged, first = array, path
    elif array.shape != merged.shape:
      raise BadFile(f'mask sizes differ: {_wh(merged.shape)} in {first}, '
                    f'{_wh(array.shape)} in {path}', path)
    else:
      merged = combine(merged, array, first, path)
  if merged is None:
    raise BadFile('no mask file')
  return merged


def _read_one_mask(path) -> np.ndarray:
  if _is_nifti(path):
    array, mode = _nifti_mask(path), 'I'
  else:
    with _open(path) as im:
      if im.mode in ('1', 'P', 'PA', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
        im = im.convert('RGB' if im.mode in ('P', 'PA') else 'L')
      mode = im.mode
      array = _pixels(im, path)
  if mode in ('RGB', 'RGBA', 'LA'):
    array = array[..., :3] if mode != 'LA' else array[..., :1]
    array = array.max(axis=-1)
  elif mode not in ('L',) and not mode.startswith('I'):
    raise BadFile(f'unsupported pixel format {mode!r} for a mask')
  if array.dtype.kind == 'i' and array.size and array.min() < 0:
    raise BadFile('negative values in a mask')
  top = int(array.max()) if array.size else 0
  if top <= 1:
    return array == 1
  # > 127 on the 8-bit scale; a 16-bit value v is v / 257 there, and 127 * 257 = 32639.
  full = 255 if mode in ('L', 'RGB', 'RGBA', 'LA') or top <= 255 else 65535
  threshold = 127 * full // 255
  _refuse_label_map(array, threshold)
  return array > threshold


# A mask is read as a label map, and refused, when it has at most this many
# distinct values and two or more nonzero ones each cover at least this share
# of its nonzero pixels (anti-aliased or JPEG edges have many values, each rare).
LABEL_MAP_VALUES, LABEL_MAP_SHARE = 8, 0.10


def _shown(values) -> str:
  """The first few distinct values of a mask, for a message."""
  return ', '.join(str(int(v)) for v in values[:LABEL_MAP_VALUES + 1]) + (
      ', ...' if len(values) > LABEL_MAP_VALUES + 1 else '')


def _refuse_label_map(array: np.ndarray, threshold: int) -> None:
  """Raises BadFile for values that binarisation would misread: nonzero pixels with
  none above the threshold (a 0, 1, 2 label map reads as empty), or several
  prominent structure values (0, 128, 255 would merge into one)."""
  values, counts = np.unique(array, return_counts=True)
  nonzero = values > 0
  if not nonzero.any():
    return
  shown = _shown(values)
  if values.max() <= threshold:
    raise BadFile(f'mask values {{{shown}}} are nonzero but none is above {threshold}: as a '
                  'binary mask (0/255, or 0/1) it would be empty. A label map of several '
                  "structures? Name them in config field 'data.structures', e.g. "
                  "'cavity,wall' for values 1 and 2 (load(..., structures=, label_values=))")
  share = counts[nonzero] / counts[nonzero].sum()
  if len(values) <= LABEL_MAP_VALUES and (share >= LABEL_MAP_SHARE).sum() >= 2:
    raise BadFile(f'mask values {{{shown}}} look like a label map of several structures '
                  f'(each nonzero value covers at least {LABEL_MAP_SHARE:.0%} of the '
                  'foreground); read as binary they would be merged or dropped. Name the '
                  "structures in config field 'data.structures' with their values, e.g. "
                  "'gland=128,nodule=255' (load(..., structures=, label_values=))")


def read_label_map(paths: list[str | os.PathLike], values: tuple[int, ...]) -> np.ndarray:
  """Reads and merges label-map files.

  Args:
    paths: one or more mask files of the same image, all of one size.
    values: the pixel value of each structure, in structure order.

  Returns:
    uint8 (H, W) labels: 0 background, k for the structure of ``values[k - 1]``.

  Raises:
    BadFile: a file cannot be decoded, holds other values, or the files differ in size
      or claim one pixel for two structures.
  """
  lookup = {0: 0, **{v: k for k, v in enumerate(values, 1)}}

  def read(path, _):
    raw = _read_label_values(path)
    found = np.unique(raw)
    if any(int(v) not in lookup for v in found):
      declared = ', '.join(str(v) for v in sorted(lookup))
      raise BadFile(f'mask values {{{_shown(found)}}} are not all declared label values '
                    f'{{{declared}}} (0 background; data.structures gives the others)')
    labels = np.zeros(raw.shape, np.uint8)
    for value, k in lookup.items():
      labels[raw == value] = k
    return labels

  def combine(merged, labels, first, path):
    clash = (merged > 0) & (labels > 0) & (merged != labels)
    if clash.any():
      raise BadFile(f'{int(clash.sum())} pixels have one structure in {first} and another '
                    f'in {path}', path)
    return np.maximum(merged, labels)

  return _merged(paths, read, combine)


def read_structure_masks(paths: list[str | os.PathLike]) -> np.ndarray:
  """One binary mask file per structure, in structure order -> uint8 (H, W) labels (k
  where the k-th file is foreground; each file read as :func:`read_mask` reads one).

  Raises:
    BadFile: a file cannot be used, the files differ in size, or two claim one pixel.
  """
  def combine(merged, labels, first, path):
    both = int(((merged > 0) & (labels > 0)).sum())
    if both:
      raise BadFile(f'{both} pixels are foreground in {path} and in the mask of an earlier '
                    'structure: structures may not overlap', path)
    return merged + labels

  return _merged(paths, lambda path, k: read_mask([path]).astype(np.uint8) * k, combine)


def _read_label_values(path) -> np.ndarray:
  """A label-map file's integer values (H, W): grey, palette indices, grey as RGB, NIfTI."""
  if _is_nifti(path):
    return _nifti_mask(path)
  with _open(path) as im:
    mode = im.mode
    if mode == 'PA':
      im, mode = im.convert('P'), 'P'
    elif mode == '1':
      im, mode = im.convert('L'), 'L'
    array = _pixels(im, path)
  if mode in ('RGB', 'RGBA', 'LA'):
    colours = array[..., :3] if mode != 'LA' else array[..., :1]
    if (colours != colours[..., :1]).any():
      raise BadFile('a colour label map: store the labels as grey values or palette '
                    'indices (0 background, then each structure\'s value)')
    return colours[..., 0].astype(np.int64)
  if mode in ('L', 'P') or mode.startswith('I'):
    return array.astype(np.int64)
  raise BadFile(f'unsupported pixel format {mode!r} for a label map')


def _is_nifti(path) -> bool:
  name = os.fspath(path).lower()
  return name.endswith('.nii') or name.endswith('.nii.gz')


def _nifti_2d(path) -> np.ndarray:
  """The one 2-D slice a NIfTI file holds, as rows x columns (the file's second
  axis down, its first across), through nibabel."""
  try:
    import nibabel  # noqa: PLC0415 - only NIfTI sets need it
  except ImportError:
    raise BadFile('reading NIfTI needs nibabel (pip install nibabel)') from None
  try:
    array = np.asanyarray(nibabel.load(os.fspath(path)).dataobj)
  except Exception as e:  # noqa: BLE001 - nibabel raises many kinds for a damaged file
    raise BadFile(f'cannot decode as NIfTI: {e}') from e
  squeezed = array.reshape([n for n in array.shape if n != 1] or [1])
  if squeezed.ndim != 2:
    raise BadFile(f'a NIfTI volume of shape {array.shape}: unet_jax reads 2-D images; save '
                  'each slice (or frame) as its own file')
  return np.ascontiguousarray(squeezed.T)


def _nifti_grey(path) -> tuple[np.ndarray, int]:
  """A NIfTI image in [0, 1]: non-negative integers scaled by their bit depth (as
  PNGs are), floats by their own minimum and maximum."""
  array = _nifti_2d(path)
  if array.dtype.kind in 'iu':
    if array.size and array.min() < 0:
      raise BadFile('negative pixel values in a NIfTI image of integers')
    bits = effective_bits(int(array.max()) if array.size else 0)
    return (array.astype(np.float32) / (2 ** bits - 1)).astype(np.float32), bits
  if array.dtype.kind != 'f' or not np.isfinite(array).all():
    raise BadFile(f'NIfTI values of type {array.dtype} (or not finite) are not an image')
  lo, hi = float(array.min()), float(array.max())
  return ((array - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32), 32


def _nifti_mask(path) -> np.ndarray:
  """A NIfTI mask as non-negative integers (floats must hold whole numbers)."""
  array = _nifti_2d(path)
  if array.dtype.kind == 'f':
    if not (np.isfinite(array).all() and (array == np.round(array)).all()):
      raise BadFile('a NIfTI mask must hold whole numbers (0/1 or 0/255)')
    array = array.astype(np.int64)
  elif array.dtype.kind not in 'iub':
    raise BadFile(f'NIfTI values of type {array.dtype} are not a mask')
  return array.astype(np.int64)


def _open(path):
  try:
    im = Image.open(path)
    im.load()
  except DECODE_ERRORS as e:
    raise BadFile(f'cannot decode: {e}') from e
  return im


def _pixels(im, path) -> np.ndarray:
  try:
    return np.asarray(im)
  except DECODE_ERRORS as e:
    raise BadFile(f'cannot decode: {e}') from e


def _wh(shape) -> str:
  return f'{shape[1]}x{shape[0]}'


# How an image of another shape becomes a size x size square: 'stretch' resizes each axis
# to size (aspect not kept: what most papers on these sets do); 'pad' scales the longer
# side to size, keeping the aspect ratio, and centres the result on a zero (background)
# square, as nnU-Net and MONAI's ResizeWithPadOrCrop do.
RESIZES = ('stretch', 'pad')


def placement(height: int, width: int, size: int, resize: str = 'stretch'
              ) -> tuple[int, int, int, int]:
  """(rows, cols, top, left): the resized image's shape and its offset in the square."""
  if resize == 'stretch' or height == width:
    return size, size, 0, 0
  scale = size / max(height, width)
  rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
  return rows, cols, (size - rows) // 2, (size - cols) // 2


def _fit(array: np.ndarray, size: int, resize: str, scale) -> np.ndarray:
  """``scale(array, rows, cols)`` placed as :func:`placement` says, zeros around it."""
  rows, cols, top, left = placement(*array.shape, size, resize)
  scaled = scale(array, rows, cols)
  if (rows, cols) == (size, size):
    return scaled
  out = np.zeros((size, size), scaled.dtype)
  out[top:top + rows, left:left + cols] = scaled
  return out


def resize_image(image: np.ndarray, size: int, resize: str = 'stretch') -> np.ndarray:
  """float32 (H, W) in [0, 1] -> (size, size), anti-aliased bilinear (:data:`RESIZES`)."""
  def scale(a, rows, cols):
    if a.shape == (rows, cols):
      return a.astype(np.float32)
    out = Image.fromarray(a.astype(np.float32)).resize((cols, rows), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, np.float32), 0.0, 1.0)
  return _fit(image, size, resize, scale)


def resize_labels(labels: np.ndarray, size: int, num_structures: int,
                  resize: str = 'stretch') -> np.ndarray:
  """uint8 (H, W) labels 0..K -> (size, size): each pixel the label covering most of
  its area (box filter per label, background included; the lower label on a tie)."""
  def scale(a, rows, cols):
    if a.shape == (rows, cols):
      return a.astype(np.uint8)
    areas = [np.asarray(Image.fromarray((a == k).astype(np.float32)).resize(
        (cols, rows), Image.Resampling.BOX)) for k in range(num_structures + 1)]
    return np.argmax(np.stack(areas), axis=0).astype(np.uint8)
  return _fit(labels, size, resize, scale)


def resize_mask(mask: np.ndarray, size: int, resize: str = 'stretch') -> np.ndarray:
  """bool (H, W) -> bool (size, size): foreground where >= half the area was foreground."""
  def scale(a, rows, cols):
    if a.shape == (rows, cols):
      return a.copy()
    area = Image.fromarray(a.astype(np.float32)).resize((cols, rows), Image.Resampling.BOX)
    return np.asarray(area) >= 0.5
  return _fit(mask, size, resize, scale)
