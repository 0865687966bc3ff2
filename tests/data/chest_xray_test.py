"""Anatomy of the simulated chest radiographs: two lungs, darker than the mediastinum."""

import functools

import jax
import numpy as np
import pytest
from scipy import ndimage

from unet_jax.data import chest_xray


@functools.lru_cache(maxsize=None)
def _batch(num=16, size=64):
  return chest_xray.chest_images(jax.random.key(0), num, chest_xray.ChestXray(size=size),
                                 batch=num)


def test_masks_cover_a_plausible_share_of_the_image():
  # Montgomery / JSRT lung masks cover about a quarter to a third of the frame.
  _, masks, _ = _batch()
  fractions = masks.mean(axis=(1, 2, 3))
  assert np.all(fractions > 0.15) and np.all(fractions < 0.5)
  assert fractions.std() > 0.005  # pose, size and inspiration vary


def test_two_lungs_one_each_side():
  _, masks, _ = _batch()
  size = masks.shape[1]
  for mask in masks[..., 0].astype(bool):
    # 8-connected: the sharp costophrenic angle may rasterise to a diagonal tip.
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    assert count == 2
    centres = sorted(ndimage.center_of_mass(mask, labels, [1, 2]), key=lambda c: c[1])
    assert centres[0][1] < size / 2 < centres[1][1]
    sizes = ndimage.sum(mask, labels, [1, 2])
    assert min(sizes) > 0.5 * max(sizes)  # the heart takes a bite of one, no more


def test_lungs_are_darker_than_the_mediastinum():
  images, masks, _ = _batch()
  for image, mask in zip(images[..., 0], masks[..., 0].astype(bool)):
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    left, right = sorted([labels == 1, labels == 2], key=lambda m: np.argmax(m.any(0)))
    rows = left.any(1) & right.any(1)
    between = np.zeros_like(mask)
    for r in np.flatnonzero(rows):  # between the lungs, row by row
      between[r, np.flatnonzero(left[r]).max() + 1:np.flatnonzero(right[r]).min()] = True
    assert image[mask].mean() + 0.15 < image[between].mean()


def test_labels_and_opacities():
  images, masks, abnormal = _batch()
  assert set(abnormal.tolist()) == {0, 1}  # both classes in 16 images
  # Same key, opacities switched off: only the abnormal images change, and
  # only inside the lungs, where they brighten.
  clear, clear_masks, _ = chest_xray.chest_images(
      jax.random.key(0), 16, chest_xray.ChestXray(size=64, abnormal_fraction=0.0), batch=16)
  np.testing.assert_array_equal(masks, clear_masks)
  changed = np.abs(images - clear).max(axis=(1, 2, 3)) > 0.05
  np.testing.assert_array_equal(changed, abnormal.astype(bool))
  for i in np.flatnonzero(abnormal):
    lung = masks[i, ..., 0].astype(bool)
    assert (images[i, ..., 0] - clear[i, ..., 0])[lung].max() > 0.1


def test_anatomy_does_not_depend_on_resolution():
  # The same key draws the same patient at any size: the lung share agrees.
  _, masks, _ = _batch()
  _, large, _ = chest_xray.chest_images(jax.random.key(0), 1, chest_xray.ChestXray(size=128))
  assert large.mean() == pytest.approx(masks[0].mean(), abs=0.01)
