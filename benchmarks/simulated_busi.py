"""Writes simulated breast ultrasound in BUSI's published folder layout.

The real BUSI set cannot be downloaded on a machine without network access,
so this writes what its loader reads (``Dataset_BUSI_with_GT/benign/benign
(1).png`` with ``benign (1)_mask.png``, the same under ``malignant/``, RGB
PNGs of a grey image, masks 0/255, and for every tenth lesion the mask split
over ``_mask.png`` and ``_mask_1.png`` to be OR-merged) from the built-in
simulator, at a larger size than the sweep reads, so that the sweep's
file-reading path runs end to end. ``--normal`` (default 0.17, BUSI's 133 of
780) of the images are lesion-free scans under ``normal/`` with empty masks,
as BUSI's are:

  python benchmarks/simulated_busi.py --root=/tmp/busi --num=240
  python launch/sweep.py --config.data.source=busi --config.data.root=/tmp/busi
"""

import argparse
import os

import jax
import numpy as np
from PIL import Image

from unet_jax.data import ultrasound


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--num', type=int, default=240)
  parser.add_argument('--size', type=int, default=128)
  parser.add_argument('--seed', type=int, default=11)
  parser.add_argument('--normal', type=float, default=0.17,
                      help='share of lesion-free images with empty masks (BUSI: 133 of 780)')
  args = parser.parse_args()
  scan = ultrasound.BreastScan(size=args.size, normal_fraction=args.normal)
  images, masks, kinds = ultrasound.breast_images(jax.random.key(args.seed), args.num, scan)
  top = os.path.join(args.root, 'Dataset_BUSI_with_GT')
  counts = {}
  for image, mask, kind in zip(images, masks, np.asarray(kinds)):
    label = ultrasound.KINDS[kind]
    counts[label] = n = counts.get(label, 0) + 1
    folder = os.path.join(top, label)
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, f'{label} ({n})')
    grey = np.clip(image[..., 0] * 255 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(stem + '.png')
    binary = (mask[..., 0] > 0.5).astype(np.uint8) * 255
    if n % 10 == 0:  # a lesion drawn as two masks, as 17 of BUSI's are
      half = binary.shape[1] // 2
      left, right = binary.copy(), binary.copy()
      left[:, half:], right[:, :half] = 0, 0
      Image.fromarray(left).save(stem + '_mask.png')
      Image.fromarray(right).save(stem + '_mask_1.png')
    else:
      Image.fromarray(binary).save(stem + '_mask.png')
  print(f'{sum(counts.values())} images in {top}: '
        + ', '.join(f'{k} {v}' for k, v in sorted(counts.items())))


if __name__ == '__main__':
  main()
