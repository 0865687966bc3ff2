import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import data
from unet_jax.data.ultrasound import Probe, envelope
from unet_jax.errors import UserError


@pytest.mark.parametrize('source', ['ultrasound', 'dead_leaves'])
def test_sources_are_deterministic_and_well_formed(source):
  a = data.make_dataset(source, 6, 32, seed=3)
  b = data.make_dataset(source, 6, 32, seed=3)
  c = data.make_dataset(source, 6, 32, seed=4)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.masks, b.masks)
  assert not np.array_equal(a.images, c.images)
  assert a.images.shape == a.masks.shape == (6, 32, 32, 1)
  assert a.images.dtype == np.float32
  assert 0.0 <= a.images.min() and a.images.max() <= 1.0
  assert set(np.unique(a.masks)) <= {0.0, 1.0}
  # Every image has a visible target, never the whole frame.
  fractions = a.masks.mean(axis=(1, 2, 3))
  assert np.all(fractions > 0) and np.all(fractions < 0.9)
  assert len(set(a.ids)) == 6


def test_unknown_source_lists_sources():
  with pytest.raises(UserError, match='valid sources: dead_leaves, ultrasound'):
    data.make_dataset('busi', 4, 32, 0)


def test_homogeneous_speckle_is_rayleigh():
  keys = jax.random.split(jax.random.key(0), 24)
  env = jax.vmap(lambda k: envelope(k, jnp.ones((96, 96)), 0.05))(keys)
  ratio = float(jnp.mean(env.mean(axis=(1, 2)) / env.std(axis=(1, 2))))
  assert ratio == pytest.approx(np.sqrt(np.pi / (4 - np.pi)), abs=0.05)
  assert float(jnp.mean(env ** 2)) == pytest.approx(1.0, abs=0.05)


def test_psf_sigmas_follow_the_formula():
  axial, lateral = Probe(fc_mhz=7.6, bandwidth=0.48, f_number=0.85).psf_sigmas_mm()
  sigma_t = np.sqrt(2 * np.log(2)) / (np.pi * 0.48 * 7.6e6)
  assert axial == pytest.approx(1540 * sigma_t / 2 * 1e3)
  assert lateral * 2 * np.sqrt(2 * np.log(2)) == pytest.approx(1540 / 7.6e6 * 0.85 * 1e3)


def test_holdout_split_is_stratified_and_deterministic():
  labels = ['benign'] * 10 + ['malignant'] * 5
  train, test = data.holdout_split(labels, 0.4, seed=0)
  train2, test2 = data.holdout_split(labels, 0.4, seed=0)
  np.testing.assert_array_equal(test, test2)
  assert sorted(np.concatenate([train, test])) == list(range(15))
  assert sum(labels[i] == 'malignant' for i in test) == 2
  assert sum(labels[i] == 'benign' for i in test) == 4
