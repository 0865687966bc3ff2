"""Simulated apical echocardiography: well-formed, deterministic labels and sane speckle."""

import jax
import numpy as np
import pytest

from unet_jax.data.cardiac import STRUCTURES, CardiacView, cardiac_images

# Half the hearts dilated, so that 16 images hold both classes.
VIEW = CardiacView(size=32, dilated_fraction=0.5)
NUM = 16


@pytest.fixture(scope='module')
def batch():
  return cardiac_images(jax.random.key(0), NUM, VIEW)


def test_shapes_dtypes_and_range(batch):
  images, masks, dilated = batch
  assert images.shape == (NUM, 32, 32, 1) and images.dtype == np.float32
  assert masks.shape == (NUM, 32, 32, len(STRUCTURES)) and masks.dtype == np.float32
  assert dilated.shape == (NUM,) and dilated.dtype == bool
  assert 0.0 <= images.min() and images.max() <= 1.0
  assert images.std() > 0.1  # not blank
  # The window's top corners lie outside the sector: black, unlabelled.
  assert np.all(images[:, 0, [0, -1]] == 0) and np.all(masks[:, 0, [0, -1]] == 0)


def test_masks_are_one_hot_and_exclusive(batch):
  _, masks, _ = batch
  assert set(np.unique(masks)) == {0.0, 1.0}
  per_pixel = masks.sum(axis=-1)
  assert per_pixel.max() == 1.0  # at most one structure per pixel
  assert np.mean(per_pixel == 0) > 0.5  # background (none) is most of the window


def test_every_structure_is_in_most_images_and_large_enough(batch):
  _, masks, _ = batch
  present = (masks.sum(axis=(1, 2)) > 0).mean(axis=0)
  assert np.all(present >= 0.9), dict(zip(STRUCTURES, present))
  # Each structure covers a learnable share of the image on average.
  area = masks.mean(axis=(0, 1, 2))
  assert np.all(area > 0.03), dict(zip(STRUCTURES, area))


def test_deterministic_and_image_i_does_not_depend_on_num(batch):
  images, masks, dilated = batch
  again = cardiac_images(jax.random.key(0), NUM, VIEW)
  for a, b in zip(batch, again):
    np.testing.assert_array_equal(a, b)
  # A batch of 4 is another program: the same draws, up to float rounding
  # (and a mask pixel on a border may flip).
  first = cardiac_images(jax.random.key(0), 4, VIEW)
  np.testing.assert_allclose(first[0], images[:4], atol=1e-4)
  assert np.mean(first[1] == masks[:4]) > 0.999
  np.testing.assert_array_equal(first[2], dilated[:4])
  assert not np.array_equal(images[0], images[1])  # images differ from each other
  other, _, _ = cardiac_images(jax.random.key(1), 4, VIEW)
  assert not np.array_equal(images[:4], other)


def test_dilated_hearts_have_larger_cavities(batch):
  _, masks, dilated = batch
  assert 0 < dilated.sum() < NUM
  cavity = masks[..., STRUCTURES.index('cavity')].mean(axis=(1, 2))
  # Cavity 1.3x wider and 1.1x longer: about 1.4x the area.
  assert cavity[dilated].mean() > 1.2 * cavity[~dilated].mean()


def test_blood_is_darker_than_myocardium(batch):
  # Blood (-30..-24 dB) against the myocardium (-3..1 dB): through speckle,
  # haze, clutter and log compression the cavity and the atrium stay darker
  # than the wall in the mean, and in nearly every image.
  images, masks, _ = batch
  cavity, wall, atrium = (masks[..., k].astype(bool) for k in range(len(STRUCTURES)))
  image = images[..., 0]
  def region_means(mask):
    return np.array([im[m].mean() if m.any() else np.nan for im, m in zip(image, mask)])
  cav, myo, la = region_means(cavity), region_means(wall), region_means(atrium)
  assert np.nanmean(cav) < np.nanmean(myo) - 0.15
  assert np.nanmean(la) < np.nanmean(myo) - 0.15
  assert np.nanmean(cav < myo) >= 0.9 and np.nanmean(la < myo) >= 0.9


def test_two_chamber_view_has_the_same_structures():
  images, masks, _ = cardiac_images(jax.random.key(0), 4, CardiacView(size=32, chambers=2))
  assert images.shape == (4, 32, 32, 1) and masks.shape == (4, 32, 32, 3)
  assert masks.sum(axis=-1).max() == 1.0
  assert np.all(masks.sum(axis=(1, 2)) > 0)  # every structure in every image


def test_an_unknown_view_is_refused():
  with pytest.raises(ValueError, match='chambers'):
    CardiacView(chambers=3)

