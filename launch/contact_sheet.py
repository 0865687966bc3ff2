"""Writes a grid of generated images with their mask outlines, to look at.

  python launch/contact_sheet.py --source=ultrasound --out=docs/images/ultrasound.png
  python launch/contact_sheet.py --source=chest_xray --out=/tmp/cxr.png --num=16 --size=128
  python launch/contact_sheet.py --source=cardiac --out=docs/images/cardiac.png

Each tile is one image at its own resolution, the mask outline (each
structure's, for a set of several) drawn in yellow and the class label in
the corner. Exit codes: 0 written, 2 a problem with the flags (one message,
no traceback).
"""

import math
import os
import sys

import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from unet_jax import data
from unet_jax.errors import UserError

# The built-in generators (real sets, data.LOADERS, need folders, not a seed).
GENERATORS = tuple(data.SOURCES)

_SOURCE = flags.DEFINE_string('source', 'ultrasound', f'One of {", ".join(GENERATORS)}.')
_OUT = flags.DEFINE_string('out', None, 'PNG file to write.')
_NUM = flags.DEFINE_integer('num', 16, 'Number of images.')
_SIZE = flags.DEFINE_integer('size', 128, 'Image side in pixels.')
_SEED = flags.DEFINE_integer('seed', 0, 'Generator seed.')
_GAP = 2  # pixels between tiles
_OUTLINE = (255, 220, 0)  # yellow
_OUTLINE_INDEX = 255  # its palette entry, after 255 greys


def outline(mask: np.ndarray) -> np.ndarray:
  """Pixels of a boolean mask with a 4-neighbour outside the mask."""
  padded = np.pad(mask, 1, mode='edge')
  interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return mask & ~interior


def contact_sheet(dataset: data.Dataset) -> Image.Image:
  """The dataset's images in a near-square grid, outlines drawn; a palette image.

  255 grey levels and one outline colour: a third of the bytes of RGB.
  """
  num, size = len(dataset), dataset.images.shape[1]
  cols = math.ceil(math.sqrt(num))
  rows = math.ceil(num / cols)
  sheet = np.zeros((rows * (size + _GAP) - _GAP, cols * (size + _GAP) - _GAP), np.uint8)
  for i in range(num):
    tile = np.round(np.clip(dataset.images[i, ..., 0], 0, 1) * 254).astype(np.uint8)
    for k in range(dataset.masks.shape[-1]):  # every structure's outline
      tile[outline(dataset.masks[i, ..., k] > 0.5)] = _OUTLINE_INDEX
    r, c = divmod(i, cols)
    sheet[r * (size + _GAP):r * (size + _GAP) + size,
          c * (size + _GAP):c * (size + _GAP) + size] = tile
  image = Image.fromarray(sheet, mode='P')
  greys = [round(v * 255 / 254) for v in range(255)]
  image.putpalette([g for v in greys for g in (v, v, v)] + list(_OUTLINE))
  draw = ImageDraw.Draw(image)
  for i, label in enumerate(dataset.labels):
    r, c = divmod(i, cols)
    draw.text((c * (size + _GAP) + 2, r * (size + _GAP) + 1), label, fill=_OUTLINE_INDEX)
  return image


def main(argv) -> int:
  try:
    try:
      flags.FLAGS(argv)
    except flags.Error as e:
      raise UserError(str(e)) from None
    if _SOURCE.value not in GENERATORS:
      raise UserError(f'unknown source {_SOURCE.value!r}; valid choices: '
                      f'{", ".join(GENERATORS)}')
    if not _OUT.value:
      raise UserError('--out=FILE.png is required')
    if _NUM.value < 1 or _SIZE.value < 8:
      raise UserError('--num must be at least 1 and --size at least 8')
    dataset = data.make_dataset(_SOURCE.value, _NUM.value, _SIZE.value, _SEED.value)
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    contact_sheet(dataset).save(_OUT.value, optimize=True)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {_OUT.value}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
