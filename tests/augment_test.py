"""Augmentation policies as data: identity at strength zero, masks aligned, one bundle."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from repo import CONFIGS, set_fields

from unet_jax import augment
from unet_jax.engine.step import draw_batch
from unet_jax.errors import UserError
from unet_jax.sweep.run import run_sweep
from unet_jax.sweep.settings import SweepSettings, load_config

TINY = os.path.join(CONFIGS, 'default.py') + ':tiny'


def _batch(n=6, size=24, seed=0):
  rng = np.random.default_rng(seed)
  masks = np.zeros((n, size, size, 1), np.float32)
  for i in range(n):
    r, c = rng.integers(3, size - 12, 2)
    masks[i, r:r + 9, c:c + 7] = 1
  images = (0.3 + 0.4 * masks + 0.1 * rng.random(masks.shape)).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(masks)


def _policy(**fields):
  return jnp.asarray(augment.values(fields), jnp.float32)


def test_strength_zero_is_the_identity_bit_for_bit():
  images, masks = _batch()
  key = jax.random.key(3)
  for name in ('none', 'flip'):
    got = jax.jit(augment.apply)(images, masks, key, _policy(**augment.POLICIES[name]))
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(images))
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(masks))
  # The flip probability as data draws the flips that the constant 0.5 draws.
  plain = draw_batch(images, masks, key, 7, 4)
  as_data = jax.jit(lambda p: draw_batch(images, masks, key, 7, 4, flip=p))(jnp.float32(0.5))
  for a, b in zip(plain, as_data):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_geometric_transforms_keep_image_and_mask_aligned():
  _, masks = _batch(n=8)
  # An image that is its mask: after any rotation and zoom its thresholded
  # warp must be the warped mask.
  policy = _policy(rotate_p=1.0, rotate_deg=40.0, scale_p=1.0, scale_lo=0.7, scale_hi=1.4)
  images, warped = augment.apply(masks, masks, jax.random.key(0), policy)
  assert not np.array_equal(np.asarray(warped), np.asarray(masks))  # something moved
  np.testing.assert_array_equal(np.asarray(images) >= 0.5, np.asarray(warped) > 0)
  assert set(np.unique(np.asarray(warped))) <= {0.0, 1.0}
  # Areas follow the zoom: the masks stay the same shapes, not noise.
  ratio = np.asarray(warped).sum() / np.asarray(masks).sum()
  assert 0.3 < ratio < 2.5


def test_masks_of_several_structures_are_warped_with_the_image_and_stay_one_hot():
  rng = np.random.default_rng(4)
  masks = np.zeros((4, 24, 24, 3), np.float32)
  masks[:, 4:12, 4:20, 0] = 1
  masks[:, 12:16, 4:20, 1] = 1
  masks[:, 16:22, 6:14, 2] = 1
  labels = (masks * np.arange(1, 4)).sum(-1, keepdims=True) / 3  # the image is its label map
  images = jnp.asarray(labels + 0.0 * rng.random(labels.shape), jnp.float32)
  policy = _policy(rotate_p=1.0, rotate_deg=30.0, scale_p=1.0, scale_lo=0.8, scale_hi=1.2)
  got_images, warped = augment.apply(images, jnp.asarray(masks), jax.random.key(5), policy)
  warped = np.asarray(warped)
  assert warped.shape == masks.shape and set(np.unique(warped)) <= {0.0, 1.0}
  assert (warped.sum(-1) <= 1).all() and not np.array_equal(warped, masks)
  # Away from edges, the warped image's level is the warped mask's label.
  level = np.rint(np.asarray(got_images)[..., 0] * 3)
  label = (warped * np.arange(1, 4)).sum(-1)
  assert (level == label).mean() > 0.95
  # Strength zero leaves them as they were, bit for bit.
  same = augment.apply(images, jnp.asarray(masks), jax.random.key(5),
                       _policy(**augment.POLICIES['none']))
  np.testing.assert_array_equal(np.asarray(same[1]), masks)


def test_the_nnunet_policy_changes_intensities_draws_per_image_and_repeats_in_the_key():
  images, masks = _batch(n=16)
  policy = _policy(**augment.POLICIES['nnunet'])
  a = augment.apply(images, masks, jax.random.key(1), policy)
  b = augment.apply(images, masks, jax.random.key(1), policy)
  c = augment.apply(images, masks, jax.random.key(2), policy)
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
  changed = [not np.array_equal(np.asarray(a[0][i]), np.asarray(images[i])) for i in range(16)]
  assert 0 < sum(changed) < 16  # each image draws its own transforms
  assert np.isfinite(np.asarray(a[0])).all()


@pytest.mark.parametrize('fields, message', [
    ({'rotate': 1.0}, "unknown field 'rotate'"),
    ({'flip': 1.5}, 'flip=1.5 is outside [0, 1]'),
    ({'gamma_lo': 2.0, 'gamma_hi': 1.0}, 'gamma_lo=2 is above gamma_hi=1'),
])
def test_bad_policies_are_named(fields, message):
  config = load_config(TINY)
  config.augmentation['mine'] = fields
  with pytest.raises(UserError, match=message.replace('[', r'\[').replace(']', r'\]')):
    SweepSettings.from_config(config)


def test_unknown_policy_names_the_valid_ones():
  with pytest.raises(UserError, match='valid policies: none, flip, nnunet'):
    SweepSettings.from_config(set_fields(load_config(TINY), {'augment': 'strong'}))
  with pytest.raises(UserError, match='valid policies: none, flip, nnunet'):
    SweepSettings.from_config(set_fields(load_config(TINY), {'grid.augment': ('strong',)}))


def test_policies_cross_the_grid_in_one_bundle_and_flip_trains_as_before(tmp_path):
  fields = {'only': 'full', 'grid.seed': (0,), 'executor': 'static'}
  plain = run_sweep(set_fields(load_config(TINY), fields), str(tmp_path / 'plain'),
                    progress=False)
  crossed = run_sweep(set_fields(load_config(TINY), {**fields,
                                                      'grid.augment': ('flip', 'nnunet')}),
                      str(tmp_path / 'crossed'), progress=False)
  by_name = {s.name: s for s in crossed}
  assert set(by_name) == {'full-augflip', 'full-augnnunet'}
  assert {s.bundle for s in crossed} == {0}  # one program for both policies
  assert by_name['full-augnnunet'].grid['augment'] == 'nnunet'
  assert by_name['full-augnnunet'].augmentation['rotate_deg'] == 15.0
  # The flip policy in a bundle that augments trains exactly as a plain sweep.
  assert by_name['full-augflip'].chunk_losses == plain[0].chunk_losses
  assert by_name['full-augflip'].mean_dice == plain[0].mean_dice
  assert by_name['full-augnnunet'].chunk_losses != plain[0].chunk_losses
