"""Physics of the simulated B-mode: speckle statistics, contrast, speckle size."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.data import fields, ultrasound
from unet_jax.data.ultrasound import BreastScan, Probe, envelope

FWHM_PER_SIGMA = 2 * np.sqrt(2 * np.log(2))  # 2.355


@functools.lru_cache(maxsize=None)
def _envelopes(echo_key, spacing, probe=Probe(), num=8, seed=0):
  """(num, H, W) envelopes of one echogenicity map, one jitted batch."""
  echo = _ECHO_MAPS[echo_key]
  gen = jax.jit(jax.vmap(lambda k: envelope(
      k, echo, spacing, fc_mhz=probe.fc_mhz, bandwidth=probe.bandwidth,
      f_number=probe.f_number)))
  return np.asarray(gen(jax.random.split(jax.random.key(seed), num)), np.float64)


_INSIDE = (slice(32, 96), slice(32, 96))
_ECHO_MAPS = {
    'uniform': jnp.ones((128, 128)),
    # -20 dB (0.01 in intensity) inside a 64 x 64 square, 1 outside.
    'square': jnp.ones((128, 128)).at[_INSIDE].set(0.01),
}


def test_homogeneous_speckle_is_rayleigh():
  # Wagner et al. 1983: fully developed speckle has a Rayleigh envelope,
  # mean/std = sqrt(pi / (4 - pi)) = 1.913, an exponential intensity
  # (mean/std = 1) and a log envelope with std 5.57 dB.
  env = _envelopes('uniform', 0.05)
  ratio = np.mean(env.mean(axis=(1, 2)) / env.std(axis=(1, 2)))
  assert ratio == pytest.approx(np.sqrt(np.pi / (4 - np.pi)), abs=0.05)
  intensity = env ** 2
  assert intensity.mean() == pytest.approx(1.0, abs=0.05)  # mean intensity = T
  assert np.mean(intensity.mean(axis=(1, 2)) / intensity.std(axis=(1, 2))) == pytest.approx(
      1.0, abs=0.05)
  assert np.std(20 * np.log10(env)) == pytest.approx(5.57, abs=0.15)


def test_minus_20_db_region_measures_minus_20_db():
  # Before haze, the envelope of a region of echogenicity 0.01 has a mean
  # intensity 20 dB below its surroundings. Measured away from the edge by
  # 8 px, over 4 times the PSF FWHM (sigma 1.6 px here), so no blur leaks in.
  intensity = _envelopes('square', 0.05) ** 2
  margin = 8
  inside = intensity[:, 32 + margin:96 - margin, 32 + margin:96 - margin]
  outside = np.ones((128, 128), bool)
  outside[32 - margin:96 + margin, 32 - margin:96 + margin] = False
  ratio_db = 10 * np.log10(inside.mean() / intensity[:, outside].mean())
  assert ratio_db == pytest.approx(-20.0, abs=3.0)


def _autocovariance_fwhm(intensity, axis, max_lag=40):
  """FWHM in pixels of the normalised intensity autocovariance along ``axis``."""
  centred = intensity - intensity.mean(axis=(1, 2), keepdims=True)
  n = intensity.shape[axis]
  cov = [np.mean(np.take(centred, range(n - lag), axis=axis) *
                 np.take(centred, range(lag, n), axis=axis)) for lag in range(max_lag)]
  cov = np.asarray(cov) / cov[0]
  first = np.argmax(cov < 0.5)  # first lag below half maximum
  assert first > 0, 'autocovariance never falls to half: widen max_lag'
  half_width = first - 1 + (cov[first - 1] - 0.5) / (cov[first - 1] - cov[first])
  return 2 * half_width


@pytest.mark.parametrize('probe, spacing', [
    (Probe(fc_mhz=7.6, bandwidth=0.48, f_number=0.85), 0.02),  # the default, near-round speckle
    (Probe(fc_mhz=5.0, bandwidth=0.8, f_number=2.0), 0.04),  # lateral 3.6x axial
])
def test_speckle_size_follows_the_psf(probe, spacing):
  # The field is F = n * h, complex white scatterers n and a Gaussian PSF
  # envelope h of std sigma. Its autocorrelation is (h * h)(d), a Gaussian of
  # std sigma sqrt(2); for a circular complex Gaussian field the intensity
  # autocovariance is |autocorrelation|^2 (Isserlis / Siegert), a Gaussian of
  # std sigma: its FWHM is 2.355 sigma, per axis (0.19 mm axially and 0.17 mm
  # laterally for the default probe, DESIGN.md 4.1). A PSF squared twice or
  # not at all would be off by sqrt(2); swapped axes fail the second probe.
  intensity = _envelopes('uniform', spacing, probe) ** 2
  for axis, sigma_mm in zip((1, 2), probe.psf_sigmas_mm()):
    expected_px = FWHM_PER_SIGMA * sigma_mm / spacing
    assert _autocovariance_fwhm(intensity, axis) == pytest.approx(expected_px, rel=0.2)


def test_normal_pair_is_standard_and_independent():
  a, b = np.asarray(fields.normal_pair(jax.random.key(0), (200_000,)), np.float64)
  for v in (a, b):
    assert v.mean() == pytest.approx(0.0, abs=0.01)
    assert v.var() == pytest.approx(1.0, abs=0.01)
    assert np.mean(v ** 4) == pytest.approx(3.0, abs=0.06)  # Gaussian kurtosis
  assert np.mean(a * b) == pytest.approx(0.0, abs=0.01)
  assert np.mean(a ** 2 * b ** 2) == pytest.approx(1.0, abs=0.03)


def test_lesions_are_darker_than_their_surroundings():
  # The whole B-mode chain (layers, posterior effects, haze, log compression):
  # lesions of -20..-3 dB are darker than the tissue ring around them.
  scan = BreastScan(size=64)
  images, masks, _ = ultrasound.breast_images(jax.random.key(0), 16, scan, batch=16)
  darker = []
  for image, mask in zip(images[..., 0], masks[..., 0].astype(bool)):
    ring = _dilate(mask, 4) & ~_dilate(mask, 1)
    darker.append(image[mask].mean() < image[ring].mean())
  assert np.mean(darker) >= 0.8


def _dilate(mask, steps):
  out = mask.copy()
  for _ in range(steps):
    out[1:] |= out[:-1].copy()
    out[:-1] |= out[1:].copy()
    out[:, 1:] |= out[:, :-1].copy()
    out[:, :-1] |= out[:, 1:].copy()
  return out
