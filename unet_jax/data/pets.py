"""Oxford-IIIT Pet from TFDS: real natural images for pretraining, foreground = the pet.

Read with ``tfds.data_source`` (array_record files, random access, no
TensorFlow needed to read). The first use downloads and prepares the set into
``data_dir`` (TFDS's default, ``~/tensorflow_datasets``, when empty), which
needs the network; later uses read the prepared files. The trimap's
"foreground" and "border" classes form the mask, "background" does not.
Images are turned grey (ITU-R 601 luma) and resized like the real sets.

  python launch/sweep.py --config.pretrain.source=oxford_iiit_pet --config.pretrain.num_images=3680
"""

from __future__ import annotations

import numpy as np

from unet_jax.data.dataset import Dataset
from unet_jax.data.real import pixels
from unet_jax.errors import UserError

NAME = 'oxford_iiit_pet'
BACKGROUND = 2  # trimap values: 1 pet, 2 background, 3 border (counted as pet)


def load(num: int, size: int, data_dir: str = '') -> Dataset:
  """The first ``num`` images of the train and test splits, as a Dataset.

  Args:
    num: how many images (at most the 7,349 of the set).
    size: side of the square output.
    data_dir: TFDS data directory; '' for TFDS's default.

  Returns:
    A Dataset with class labels 'cat' or 'dog'.
  """
  import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy, only for this source


  try:
    sources = [tfds.data_source(NAME, split=split, data_dir=data_dir or None)
               for split in ('train', 'test')]
  except Exception as e:  # noqa: BLE001 - network, disk or format: all the user's to fix
    raise UserError(
        f'cannot read {NAME} from TFDS (data_dir={data_dir or "TFDS default"}): '
        f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}. The first '
        'use downloads it (network needed); or pretrain from a folder of images and masks '
        "with pretrain.source='folder'") from None
  available = sum(len(s) for s in sources)
  if num > available:
    raise UserError(f'pretrain.num_images={num} but {NAME} has {available} images')
  images, masks, ids, labels = [], [], [], []
  for source in sources:
    for i in range(min(len(source), num - len(ids))):
      example = source[i]
      rgb = np.asarray(example['image'], np.float32) / 255.0
      grey = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32) if rgb.ndim == 3 else rgb
      trimap = np.asarray(example['segmentation_mask'])[..., 0]
      images.append(pixels.resize_image(grey, size))
      masks.append(pixels.resize_mask(trimap != BACKGROUND, size))
      name = example['file_name']
      ids.append(name.decode() if isinstance(name, bytes) else str(name))
      labels.append(('cat', 'dog')[int(example['species'])])
  return Dataset(np.stack(images)[..., None].astype(np.float32),
                 np.stack(masks)[..., None].astype(np.float32), ids, labels)
