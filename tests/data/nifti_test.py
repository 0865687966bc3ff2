"""2-D NIfTI images and masks in a `folder` set, through nibabel."""

import nibabel
import numpy as np
import pytest
from PIL import Image

from unet_jax import data
from unet_jax.errors import UserError


def _save(array: np.ndarray, path) -> None:
  # NIfTI's first axis runs across the image: store the (rows, columns) array transposed.
  nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(array.T), np.eye(4)), str(path))


def _set(root, suffix: str, n: int = 6):
  rng = np.random.default_rng(0)
  (root / 'images').mkdir(parents=True)
  (root / 'masks').mkdir()
  grey, masks = [], []
  for i in range(n):
    image = rng.integers(0, 256, (20, 28), dtype=np.uint8)
    mask = np.zeros((20, 28), np.uint8)
    mask[3 + i:12 + i, 5:15] = 1
    grey.append(image)
    masks.append(mask)
    _save(image, root / 'images' / f'case{i}{suffix}')
    _save(mask, root / 'masks' / f'case{i}{suffix}')
  return grey, masks


@pytest.mark.parametrize('suffix', ['.nii', '.nii.gz'])
def test_nifti_images_and_masks_read_as_their_png_twins(tmp_path, suffix):
  grey, masks = _set(tmp_path / 'nifti', suffix)
  (tmp_path / 'png' / 'images').mkdir(parents=True)
  (tmp_path / 'png' / 'masks').mkdir()
  for i, (image, mask) in enumerate(zip(grey, masks)):
    Image.fromarray(image).save(tmp_path / 'png' / 'images' / f'case{i}.png')
    Image.fromarray(mask * 255).save(tmp_path / 'png' / 'masks' / f'case{i}.png')
  got = data.load('folder', tmp_path / 'nifti', 16)
  want = data.load('folder', tmp_path / 'png', 16)
  assert got.ids == want.ids == [f'case{i}' for i in range(6)]
  np.testing.assert_array_equal(got.images, want.images)
  np.testing.assert_array_equal(got.masks, want.masks)


def test_a_volume_is_refused_naming_the_file(tmp_path):
  _set(tmp_path / 'set', '.nii.gz', n=3)
  nibabel.save(nibabel.Nifti1Image(np.zeros((28, 20, 5), np.uint8), np.eye(4)),
               str(tmp_path / 'set' / 'images' / 'case1.nii.gz'))
  with pytest.raises(UserError, match=r'case1.nii.gz.*shape \(28, 20, 5\).*2-D images'):
    data.load('folder', tmp_path / 'set', 16)


def test_a_label_map_in_nifti_is_refused_as_in_png(tmp_path):
  _set(tmp_path / 'set', '.nii', n=3)
  labels = np.zeros((20, 28), np.uint8)
  labels[2:8, 2:8], labels[10:16, 10:16] = 1, 2
  _save(labels, tmp_path / 'set' / 'masks' / 'case0.nii')
  with pytest.raises(UserError, match='label map'):
    data.load('folder', tmp_path / 'set', 16)
