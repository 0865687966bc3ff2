"""data.intensity: z-scored inputs for pretraining, training, scoring and export alike."""

import os

import numpy as np
import pytest
from repo import CONFIGS, set_fields

import unet_jax
from unet_jax import data, files
from unet_jax.errors import UserError
from unet_jax.model import UNetSpec, init_model
from unet_jax.model import predict as predict_batches
from unet_jax.sweep.checkpoint import load_weights
from unet_jax.sweep.run import experiment_fingerprint, run_sweep
from unet_jax.sweep.settings import SweepSettings, load_config

TINY = os.path.join(CONFIGS, 'default.py') + ':tiny'


def test_zscore_standardises_each_image_and_unit_changes_nothing():
  rng = np.random.default_rng(0)
  images = rng.random((4, 9, 7, 1)).astype(np.float32) * [[[[0.2]]], [[[0.5]]], [[[1]]], [[[0]]]]
  assert data.normalise(images, 'unit') is images
  z = data.normalise(images, 'zscore')
  assert z.dtype == np.float32
  np.testing.assert_allclose(z[:3].mean(axis=(1, 2, 3)), 0, atol=1e-6)
  np.testing.assert_allclose(z[:3].std(axis=(1, 2, 3)), 1, atol=1e-5)
  np.testing.assert_array_equal(z[3], 0)  # a constant image
  with pytest.raises(UserError, match='unit, zscore'):
    data.normalise(images, 'minmax')


def test_a_zscore_sweep_trains_scores_and_exports_on_standardised_images(tmp_path):
  config = set_fields(load_config(TINY), {'only': 'full', 'grid.seed': (0,),
                                          'data.intensity': 'zscore'})
  s = SweepSettings.from_config(config)
  plain = SweepSettings.from_config(set_fields(load_config(TINY), {'only': 'full'}))
  run = s.runs()[0]
  assert experiment_fingerprint(s, run) != experiment_fingerprint(plain, plain.runs()[0])
  workdir = str(tmp_path / 'run')
  run_sweep(config, workdir, progress=False)
  tested = np.load(os.path.join(workdir, 'test_set.npz'))['images']
  np.testing.assert_allclose(tested.mean(axis=(1, 2, 3)), 0, atol=1e-5)
  assert files.read_json(os.path.join(workdir, 'data.json'))['intensity'] == 'zscore'
  # Exported, the model standardises raw [0, 1] images itself.
  out = unet_jax.export_experiment(workdir, 'full', str(tmp_path / 'model'))
  raw = np.random.default_rng(1).random((2, 32, 32, 1)).astype(np.float32)
  graphdef = init_model(UNetSpec(base_width=4, depth=2), 0)[0]
  params, stats = load_weights(os.path.join(workdir, 'experiments', 'full', 'weights'))
  np.testing.assert_allclose(unet_jax.predict(out, raw),
                             predict_batches(graphdef, params, stats,
                                             data.normalise(raw, 'zscore')), atol=1e-5)


def test_a_bad_intensity_is_named():
  with pytest.raises(UserError, match="'data.intensity' is 'minmax'; valid choices: unit, zscore"):
    SweepSettings.from_config(set_fields(load_config(TINY), {'data.intensity': 'minmax'}))


def test_imagenet_normalises_per_channel_and_grey_by_the_channels_mean():
  rng = np.random.default_rng(2)
  rgb = rng.random((2, 5, 4, 3)).astype(np.float32)
  got = data.normalise(rgb, 'imagenet')
  np.testing.assert_allclose(got[..., 1], (rgb[..., 1] - 0.456) / 0.224, rtol=1e-6)
  grey = data.normalise(rgb[..., :1], 'imagenet')
  np.testing.assert_allclose(grey[..., 0], (rgb[..., 0] - 0.449) / 0.226, rtol=1e-5)
  with pytest.raises(UserError, match="'imagenet' needs 1 or 3 channels"):
    data.normalise(rng.random((1, 4, 4, 2)), 'imagenet')


def test_the_summed_stem_of_normalised_grey_is_the_rgb_stem_up_to_a_constant():
  # Away from the border, a grey image normalised once through the summed stem
  # gives the RGB stem's response to the image repeated and normalised per
  # channel, minus sum_c w_c (m - m_c) / s_c: one constant per filter.
  from unet_jax import encoder_weights
  rng = np.random.default_rng(3)
  kernel = rng.standard_normal((7, 7, 3, 5)).astype(np.float32)  # HWIO
  summed = encoder_weights.grey_stem(kernel, (7, 7, 1, 5), 'sum', 'file', True)
  x = rng.random((16, 16)).astype(np.float32)
  rgb = data.normalise(np.repeat(x[None, ..., None], 3, axis=-1), 'imagenet')[0]
  grey = data.normalise(x[None, ..., None], 'imagenet')[0]
  mean, sd = data.IMAGENET_GREY
  offset = np.einsum('hwco,c->o', kernel, (mean - np.float32(data.IMAGENET_MEAN))
                     / np.float32(data.IMAGENET_SD))
  for r, c in ((0, 0), (4, 7), (9, 9)):  # top-left corners of valid 7 x 7 windows
    want = np.einsum('hwc,hwco->o', rgb[r:r + 7, c:c + 7], kernel)
    got = np.einsum('hwc,hwco->o', grey[r:r + 7, c:c + 7], summed)
    np.testing.assert_allclose(got, want - offset, rtol=1e-4, atol=1e-4)
  # Without normalisation the stem is summed as before.
  np.testing.assert_array_equal(
      encoder_weights.grey_stem(kernel, (7, 7, 1, 5), 'sum', 'file'),
      kernel.sum(axis=2, keepdims=True))
