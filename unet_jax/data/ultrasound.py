"""Simulated breast ultrasound: the convolution model of B-mode imaging.

Physics (DESIGN.md 4.1). The RF image is ``(T . n) * h``: an echogenicity
map ``T`` times white Gaussian scatterers ``n``, convolved with the pulse-echo
point-spread function ``h``. We use the equivalent baseband form: complex
Gaussian scatterers weighted by ``sqrt(T)`` are convolved with the Gaussian
envelope of the PSF and the modulus is the envelope. Axially the pulse has
``sigma_t = sqrt(2 ln 2) / (pi B fc)`` and ``sigma_z = c sigma_t / 2``;
laterally the FWHM is ``lambda * F#``. In fully developed speckle the envelope
is Rayleigh distributed (mean/std = 1.913).

Anatomy: skin line, subcutaneous fat with Cooper's ligaments, a
fibroglandular band, retromammary fat and pectoral muscle; one lesion per
image, an ellipse with a Fourier-perturbed border (smooth = benign, irregular
= malignant), -20..-3 dB, posterior enhancement (benign) or shadowing
(malignant); depth attenuation with imperfect TGC, a little sidelobe haze and
log compression to a 40-60 dB dynamic range. Everything is JAX and
deterministic under a PRNG key, so it runs batched on any backend.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

SPEED_OF_SOUND = 1540.0  # m/s


@dataclasses.dataclass(frozen=True)
class Probe:
  """Transducer settings that set the PSF."""

  fc_mhz: float = 7.6
  bandwidth: float = 0.48  # fractional -6 dB bandwidth
  f_number: float = 0.85

  def psf_sigmas_mm(self) -> tuple[float, float]:
    """(axial, lateral) standard deviations of the PSF envelope in mm."""
    fc = self.fc_mhz * 1e6
    sigma_t = math.sqrt(2 * math.log(2)) / (math.pi * self.bandwidth * fc)
    axial = SPEED_OF_SOUND * sigma_t / 2 * 1e3
    wavelength_mm = SPEED_OF_SOUND / fc * 1e3
    lateral = wavelength_mm * self.f_number / (2 * math.sqrt(2 * math.log(2)))
    return axial, lateral


def gaussian_blur(field: jax.Array, sigma_px: tuple[float, float]) -> jax.Array:
  """Convolves the last two axes with a unit-area Gaussian (FFT, zero-padded)."""
  h, w = field.shape[-2:]
  ph = int(math.ceil(4 * sigma_px[0])) + 1
  pw = int(math.ceil(4 * sigma_px[1])) + 1
  pad = [(0, 0)] * (field.ndim - 2) + [(0, ph), (0, pw)]
  out = jnp.fft.ifft2(jnp.fft.fft2(jnp.pad(field, pad)) *
                      _gaussian_transfer((h + ph, w + pw), sigma_px))
  out = out[..., :h, :w]
  return out if jnp.iscomplexobj(field) else out.real


def _gaussian_transfer(shape, sigma_px):
  # Fourier transform of a unit-area Gaussian: exp(-2 pi^2 sigma^2 f^2).
  fy = jnp.fft.fftfreq(shape[0])[:, None]
  fx = jnp.fft.fftfreq(shape[1])[None, :]
  return jnp.exp(-2 * math.pi ** 2 * (sigma_px[0] ** 2 * fy ** 2 +
                                      sigma_px[1] ** 2 * fx ** 2))


def speckle_field(key: jax.Array, echogenicity: jax.Array,
                  sigma_px: tuple[float, float]) -> jax.Array:
  """Complex baseband field: sqrt(T)-weighted complex scatterers * PSF.

  The PSF filter is scaled so that white scatterers keep unit power on the
  discrete grid: a region of echogenicity T has mean intensity T, whether
  the PSF spans many pixels or less than one.
  """
  h, w = echogenicity.shape[-2:]
  ph = int(math.ceil(4 * sigma_px[0])) + 1
  pw = int(math.ceil(4 * sigma_px[1])) + 1
  kr, ki = jax.random.split(key)
  shape = echogenicity.shape
  scatterers = jax.random.normal(kr, shape) + 1j * jax.random.normal(ki, shape)
  scatterers = scatterers * jnp.sqrt(jnp.maximum(echogenicity, 0.0) / 2)
  transfer = _gaussian_transfer((h + ph, w + pw), sigma_px)
  transfer = transfer / jnp.sqrt(jnp.mean(transfer ** 2))
  pad = [(0, 0)] * (scatterers.ndim - 2) + [(0, ph), (0, pw)]
  field = jnp.fft.ifft2(jnp.fft.fft2(jnp.pad(scatterers, pad)) * transfer)
  return field[..., :h, :w]


def psf_sigmas_px(spacing_mm, probe: Probe) -> tuple[float, float]:
  if isinstance(spacing_mm, (int, float)):
    spacing_mm = (float(spacing_mm), float(spacing_mm))
  axial, lateral = probe.psf_sigmas_mm()
  return axial / spacing_mm[0], lateral / spacing_mm[1]


def envelope(key: jax.Array, echogenicity: jax.Array,
             spacing_mm: float | tuple[float, float], *, fc_mhz: float = 7.6,
             bandwidth: float = 0.48, f_number: float = 0.85) -> jax.Array:
  """Linear envelope (before log compression) of an echogenicity map.

  Args:
    key: PRNG key for the scatterers.
    echogenicity: (..., H, W) mean backscattered intensity (linear, >= 0);
      rows are depth (axial), columns lateral.
    spacing_mm: pixel size, one number or (axial, lateral).
    fc_mhz, bandwidth, f_number: probe centre frequency, fractional -6 dB
      bandwidth and F-number; they set the PSF.

  Returns:
    (..., H, W) envelope; a homogeneous region of echogenicity T has mean
    intensity (envelope squared) T, whatever the PSF.

  Example::

    env = envelope(jax.random.key(0), jnp.ones((128, 128)), 0.05)
    env.mean() / env.std()   # about 1.91: Rayleigh speckle
  """
  sigma = psf_sigmas_px(spacing_mm, Probe(fc_mhz, bandwidth, f_number))
  return jnp.abs(speckle_field(key, echogenicity, sigma))


@dataclasses.dataclass(frozen=True)
class BreastScan:
  """Settings of the simulated scan; one image is ``size`` x ``size`` pixels."""

  size: int = 64
  oversample: int = 2  # simulation grid = size * oversample, then averaged
  fov_mm: float = 30.0  # square field of view, depth x width
  probe: Probe = Probe()
  malignant_fraction: float = 0.33  # BUSI: 210 malignant of 647 lesions
  dynamic_range_db: tuple[float, float] = (40.0, 60.0)


def _smooth_curve(key, x, base, amplitude, max_freq):
  """base + a few random low-frequency sinusoids along x (mm)."""
  k1, k2, k3 = jax.random.split(key, 3)
  freqs = jax.random.uniform(k1, (3,), minval=0.5, maxval=max_freq) / 30.0
  phases = jax.random.uniform(k2, (3,), maxval=2 * math.pi)
  amps = amplitude * jax.random.uniform(k3, (3,), minval=0.2, maxval=1.0) / 3
  return base + jnp.sum(amps * jnp.sin(2 * math.pi * freqs * x[..., None] +
                                       phases), axis=-1)


def _db(x):
  return 10.0 ** (x / 10.0)


def _texture(key, shape, sigma_px, strength):
  """Log-normal multiplicative texture: low-pass noise, unit mean."""
  noise = gaussian_blur(jax.random.normal(key, shape), (sigma_px, sigma_px))
  noise = noise / (jnp.std(noise) + 1e-6)
  return jnp.exp(strength * noise - strength ** 2 / 2)


def breast_tissue(key, z, x, scan: BreastScan):
  """Echogenicity of the layered breast: skin, fat, glandular band, muscle."""
  n = z.shape[0]
  spacing = scan.fov_mm / n
  keys = jax.random.split(key, 9)
  xs = x[0]
  skin = jax.random.uniform(keys[0], minval=0.8, maxval=1.6)
  fg_top = _smooth_curve(keys[1], xs, jax.random.uniform(
      keys[2], minval=4.0, maxval=8.0), 3.0, 3.0)
  fg_bottom = fg_top + _smooth_curve(keys[3], xs, jax.random.uniform(
      keys[4], minval=10.0, maxval=16.0), 4.0, 2.0)
  muscle_top = fg_bottom + jax.random.uniform(keys[5], minval=2.0, maxval=5.0)
  fat_level = _db(jax.random.uniform(keys[6], minval=-12.0, maxval=-8.0))
  def soft_below(curve):  # 1 below the curve, 0 above, 0.2 mm transition
    return jax.nn.sigmoid((z - curve[None, :]) / 0.2)
  in_skin = soft_below(jnp.full_like(xs, skin)) - soft_below(
      jnp.full_like(xs, skin + 1.2))
  in_fg = soft_below(fg_top) - soft_below(fg_bottom)
  in_muscle = soft_below(muscle_top)
  tissue = fat_level * (1 - in_fg - in_muscle) * (1 - in_skin)
  tissue += in_skin * _db(-1.0)
  fg_texture = _texture(keys[7], z.shape, 1.5 / spacing, 0.6)
  tissue += in_fg * _db(-2.0) * fg_texture
  k_lig, k_mus = jax.random.split(keys[8])
  ligaments = _ligaments(k_lig, z, xs, skin + 1.5, fg_top)
  tissue = tissue + ligaments * (1 - in_fg) * (1 - in_muscle) * _db(-1.0)
  angle = jax.random.uniform(k_mus, minval=-0.25, maxval=0.25)
  stripes = jnp.sin(2 * math.pi * (z * jnp.cos(angle) + x * jnp.sin(angle)) / 1.6)
  tissue += in_muscle * _db(-7.0) * (1 + 2.0 * (stripes > 0.8))
  return tissue


def _ligaments(key, z, xs, top, bottom):
  """Cooper's ligaments: thin bright arcs crossing the subcutaneous fat."""
  k1, k2 = jax.random.split(key)
  frac = jax.random.uniform(k1, (3,), minval=0.2, maxval=0.8)
  phase = jax.random.uniform(k2, (3,), maxval=2 * math.pi)
  lines = 0.0
  for i in range(3):
    centre = top + frac[i] * (bottom - top) + 1.0 * jnp.sin(xs / 5.0 + phase[i])
    lines = lines + jnp.exp(-((z - centre[None, :]) / 0.15) ** 2)
  return jnp.clip(lines, 0.0, 1.0)


def lesion_mask(key, z, x, fg_depth, malignant, scan: BreastScan):
  """Soft lesion mask (0..1): ellipse with a Fourier-perturbed border."""
  keys = jax.random.split(key, 7)
  half = scan.fov_mm / 2
  cx = jax.random.uniform(keys[0], minval=-0.45, maxval=0.45) * half
  a = jax.random.uniform(keys[1], minval=2.5, maxval=7.0)
  aspect = jnp.where(malignant,
                     jax.random.uniform(keys[2], minval=0.7, maxval=1.3),
                     jax.random.uniform(keys[2], minval=0.45, maxval=0.85))
  b = a * aspect
  cz = jnp.clip(fg_depth + jax.random.uniform(keys[3], minval=-2.0, maxval=4.0),
                b + 3.0, scan.fov_mm - b - 4.0)
  theta0 = jax.random.uniform(keys[4], minval=-0.4, maxval=0.4)
  dx, dz = x - cx, z - cz
  u = dx * jnp.cos(theta0) + dz * jnp.sin(theta0)
  v = -dx * jnp.sin(theta0) + dz * jnp.cos(theta0)
  rho = jnp.sqrt((u / a) ** 2 + (v / b) ** 2)
  phi = jnp.arctan2(v / b, u / a)
  k = jnp.arange(2, 18, dtype=jnp.float32)
  # Benign: a few low harmonics, small. Malignant: many, larger (spiculated).
  decay = jnp.where(malignant, 0.16 / jnp.sqrt(k), 0.05 * (k <= 4))
  coef = decay * jax.random.normal(keys[5], k.shape)
  phases = jax.random.uniform(keys[6], k.shape, maxval=2 * math.pi)
  border = 1.0 + jnp.sum(coef * jnp.cos(k * phi[..., None] + phases), axis=-1)
  edge_mm = 0.15
  return jax.nn.sigmoid((border - rho) * jnp.minimum(a, b) / edge_mm)


def _posterior(lesion, z, gain_db, spacing):
  """Posterior acoustic enhancement / shadow below the lesion (dB map)."""
  occupied = jnp.cumsum(lesion, axis=0) * spacing  # mm of lesion above
  below = jnp.clip(occupied, 0.0, 1.0) * (1 - lesion)
  below = gaussian_blur(below, (1.0, 0.5 / spacing))
  lesion_bottom = jnp.argmax(jnp.cumsum(lesion, axis=0) >= lesion.sum(0) - 0.5,
                             axis=0) * spacing
  decay = jnp.exp(-jnp.maximum(z - lesion_bottom[None, :], 0.0) / 12.0)
  return gain_db * below * decay


def breast_image(key: jax.Array, scan: BreastScan = BreastScan()):
  """One simulated B-mode image.

  Returns:
    (image, mask, malignant): image (size, size) in [0, 1], mask (size, size)
    in {0, 1}, malignant a 0/1 int.
  """
  n = scan.size * scan.oversample
  spacing = scan.fov_mm / n
  coords = (jnp.arange(n) + 0.5) * spacing
  z, x = jnp.meshgrid(coords, coords - scan.fov_mm / 2, indexing='ij')
  keys = jax.random.split(key, 10)
  malignant = jax.random.uniform(keys[0]) < scan.malignant_fraction
  tissue = breast_tissue(keys[1], z, x, scan)
  fg_depth = jax.random.uniform(keys[2], minval=8.0, maxval=14.0)
  lesion = lesion_mask(keys[3], z, x, fg_depth, malignant, scan)
  contrast_db = jax.random.uniform(keys[4], minval=-20.0, maxval=-3.0)
  inner = _db(contrast_db) * jnp.where(
      malignant, _texture(keys[5], z.shape, 0.8 / spacing, 0.5), 1.0)
  echo = tissue * (1 - lesion) + _db(-6.0) * inner * lesion
  gain_db = jnp.where(malignant,
                      -jax.random.uniform(keys[6], minval=3.0, maxval=10.0),
                      jax.random.uniform(keys[6], minval=2.0, maxval=6.0))
  echo = echo * _db(_posterior(lesion, z, gain_db, spacing))
  # Round-trip attenuation, compensated by a TGC that is a little off.
  alpha = jax.random.uniform(keys[7], minval=0.5, maxval=0.9)  # dB/cm/MHz
  tgc_error = jax.random.uniform(keys[8], minval=-0.25, maxval=0.25)
  residual_db = -2 * alpha * tgc_error * scan.probe.fc_mhz * z / 10.0
  echo = echo * _db(residual_db)
  sigma = psf_sigmas_px(spacing, scan.probe)
  k_speckle, k_haze, k_range, k_gamma = jax.random.split(keys[9], 4)
  field = speckle_field(k_speckle, echo, sigma)
  # Sidelobes and clutter: an incoherent wide blur of the scene, ~-12 dB.
  haze = _db(-12.0) * gaussian_blur(echo, (1.0 / spacing, 1.5 / spacing))
  field = field + speckle_field(k_haze, haze, sigma)
  intensity = jnp.abs(field) ** 2
  ref = jnp.percentile(intensity, 99.0)
  dr = jax.random.uniform(k_range, minval=scan.dynamic_range_db[0],
                          maxval=scan.dynamic_range_db[1])
  bmode = jnp.clip(1 + 10 * jnp.log10(intensity / ref + 1e-12) / dr, 0.0, 1.0)
  # Scanner grey maps darken the mid-tones: fat looks dark, not mid-grey.
  bmode = bmode ** jax.random.uniform(k_gamma, minval=1.5, maxval=2.5)
  image = _downsample(bmode, scan.oversample)
  mask = (_downsample(lesion, scan.oversample) > 0.5).astype(jnp.float32)
  return image, mask, malignant.astype(jnp.int32)


def _downsample(a, factor):
  n = a.shape[0] // factor
  return a.reshape(n, factor, n, factor).mean(axis=(1, 3))


def breast_images(key: jax.Array, num: int, scan: BreastScan = BreastScan(),
                  batch: int = 64):
  """``num`` images as numpy-ready arrays (N, size, size, 1), masks, classes."""
  gen = jax.jit(jax.vmap(lambda k: breast_image(k, scan)))
  keys = jax.random.split(key, num)
  parts = [gen(keys[i:i + batch]) for i in range(0, num, batch)]
  images, masks, malignant = (jnp.concatenate(p) for p in zip(*parts))
  return images[..., None], masks[..., None], malignant
