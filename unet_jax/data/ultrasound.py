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

Speed. The echogenicity map is smooth at the output resolution, so it is built
there; only the speckle, which has detail below an output pixel, is simulated
on a grid ``oversample`` times finer and its B-mode averaged back. The
convolutions are separable: short shifted sums for the PSF and small dense
matrices for the wide blurs (XLA:CPU runs neither FFTs of odd sizes nor
batched convolutions fast); the scatterers and parameters come from the
cheap draws of :mod:`unet_jax.data.fields`. Image ``i`` of
:func:`breast_images` depends only on ``fold_in(key, i)``, and the batch
generator is compiled once per ``(BreastScan, batch)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.data import fields
from unet_jax.data.fields import gaussian_blur, normal_pair, uniform_noise, uniform_params

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


def psf_sigmas_px(spacing_mm, probe: Probe) -> tuple[float, float]:
  """PSF sigmas in pixels for a spacing in mm: one number or (axial, lateral)."""
  if isinstance(spacing_mm, (int, float)):
    spacing_mm = (float(spacing_mm), float(spacing_mm))
  axial, lateral = probe.psf_sigmas_mm()
  return axial / spacing_mm[0], lateral / spacing_mm[1]


def _psf_kernel(sigma_px: float) -> np.ndarray:
  """Sampled Gaussian PSF envelope (std ``sigma_px``), unit energy (sum k^2 = 1)."""
  radius = max(1, int(math.ceil(3 * sigma_px)))
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma_px, 1e-6)) ** 2)
  return (k / np.sqrt(np.sum(k ** 2))).astype(np.float32)


def _correlate_valid(field: jax.Array, kernel: np.ndarray, axis: int) -> jax.Array:
  """'valid' correlation with a short kernel along ``axis``, as shifted sums."""
  n = field.shape[axis] - len(kernel) + 1
  out = 0.0
  for j, weight in enumerate(kernel):
    out = out + float(weight) * jax.lax.slice_in_dim(field, j, j + n, axis=axis)
  return out


def speckle_planes(key: jax.Array, echogenicity: jax.Array,
                   sigma_px: tuple[float, float]) -> jax.Array:
  """(2, ..., H, W) real and imaginary parts of the complex baseband field.

  The field is sqrt(T)-weighted circular complex Gaussian scatterers convolved
  with the Gaussian PSF envelope. The PSF is separable, so it is applied as
  two 1-D filters; each has unit energy, so white scatterers keep unit power
  on the discrete grid and a region of echogenicity T has mean intensity T,
  whatever the PSF. The scatterers extend past the image by the PSF radius (T
  continued from the border), so the edges are as bright as the middle.
  """
  ky, kx = _psf_kernel(sigma_px[0]), _psf_kernel(sigma_px[1])
  ry, rx = len(ky) // 2, len(kx) // 2
  pad = [(0, 0)] * (echogenicity.ndim - 2) + [(ry, ry), (rx, rx)]
  weight = jnp.sqrt(jnp.maximum(jnp.pad(echogenicity, pad, mode='edge'), 0.0) / 2)
  scatterers = normal_pair(key, weight.shape) * weight  # E|re + i im|^2 = T
  return _correlate_valid(_correlate_valid(scatterers, ky, axis=-2), kx, axis=-1)


def speckle_field(key: jax.Array, echogenicity: jax.Array,
                  sigma_px: tuple[float, float]) -> jax.Array:
  """Complex baseband field of an echogenicity map (see :func:`speckle_planes`)."""
  planes = speckle_planes(key, echogenicity, sigma_px)
  return jax.lax.complex(planes[0], planes[1])


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


KINDS = ('benign', 'malignant', 'normal')  # breast_image's kind -> class label


@dataclasses.dataclass(frozen=True)
class BreastScan:
  """Settings of the simulated scan; one image is ``size`` x ``size`` pixels."""

  size: int = 64
  oversample: int = 2  # speckle grid = size * oversample, B-mode averaged back
  fov_mm: float = 30.0
  probe: Probe = Probe()
  malignant_fraction: float = 0.33  # BUSI: 210 malignant of 647 lesions
  # Images with no lesion and an empty mask (class 2, 'normal'); BUSI: 133 of
  # 780. 0 (the default) leaves every image as it was without the field.
  normal_fraction: float = 0.0
  dynamic_range_db: tuple[float, float] = (40.0, 60.0)


def _smooth_curve(x, base, amplitude, freqs, phases, amps):
  """base + three low-frequency sinusoids along x (mm); freqs in cycles per 30 mm."""
  return base + jnp.sum(amplitude / 3 * amps * jnp.sin(
      2 * math.pi * freqs / 30.0 * x[..., None] + phases), axis=-1)


def _db(x):
  return 10.0 ** (x / 10.0)


def _texture(noise, sigma_px, strength):
  """Log-normal multiplicative texture from white noise: low-pass, unit mean."""
  field = gaussian_blur(noise, (sigma_px, sigma_px))
  field = field / (jnp.std(field) + 1e-6)
  return jnp.exp(strength * field - strength ** 2 / 2)


_TISSUE_RANGES = dict(
    skin=(0.8, 1.6), fg_top=(4.0, 8.0), fg_thickness=(10.0, 16.0), muscle_gap=(2.0, 5.0),
    fat_db=(-12.0, -8.0), muscle_angle=(-0.25, 0.25),
    top_freqs=(0.5, 3.0, 3), top_phases=(0.0, 2 * math.pi, 3), top_amps=(0.2, 1.0, 3),
    bottom_freqs=(0.5, 2.0, 3), bottom_phases=(0.0, 2 * math.pi, 3),
    bottom_amps=(0.2, 1.0, 3),
    ligament_depths=(0.2, 0.8, 3), ligament_phases=(0.0, 2 * math.pi, 3))


def breast_tissue(key, z, x, scan: BreastScan, noise=None):
  """Echogenicity of the layered breast: skin, fat, glandular band, muscle.

  ``noise`` (white, the shape of ``z``) seeds the glandular texture; drawn
  from ``key`` if not given.
  """
  spacing = scan.fov_mm / z.shape[0]
  p = uniform_params(key, **_TISSUE_RANGES)
  if noise is None:
    noise = uniform_noise(jax.random.fold_in(key, 1), z.shape)
  xs = x[0]
  skin = p['skin']
  fg_top = _smooth_curve(xs, p['fg_top'], 3.0, p['top_freqs'], p['top_phases'], p['top_amps'])
  fg_bottom = fg_top + _smooth_curve(xs, p['fg_thickness'], 4.0, p['bottom_freqs'],
                                     p['bottom_phases'], p['bottom_amps'])
  muscle_top = fg_bottom + p['muscle_gap']
  fat_level = _db(p['fat_db'])
  def soft_below(curve):  # 1 below the curve, 0 above, 0.2 mm transition
    return jax.nn.sigmoid((z - curve[None, :]) / 0.2)
  in_skin = soft_below(jnp.full_like(xs, skin)) - soft_below(
      jnp.full_like(xs, skin + 1.2))
  in_fg = soft_below(fg_top) - soft_below(fg_bottom)
  in_muscle = soft_below(muscle_top)
  tissue = fat_level * (1 - in_fg - in_muscle) * (1 - in_skin)
  tissue += in_skin * _db(-1.0)
  tissue += in_fg * _db(-2.0) * _texture(noise, 1.5 / spacing, 0.6)
  ligaments = _ligaments(z, xs, skin + 1.5, fg_top, spacing, p['ligament_depths'],
                         p['ligament_phases'])
  tissue = tissue + ligaments * (1 - in_fg) * (1 - in_muscle) * _db(-1.0)
  angle = p['muscle_angle']
  stripes = jnp.sin(2 * math.pi * (z * jnp.cos(angle) + x * jnp.sin(angle)) / 1.6)
  tissue += in_muscle * _db(-7.0) * (1 + 2.0 * (stripes > 0.8))
  return tissue


def _ligaments(z, xs, top, bottom, spacing, depths, phases):
  """Cooper's ligaments: thin bright arcs crossing the subcutaneous fat."""
  width = max(0.15, 0.6 * spacing)  # thinner than a pixel would alias
  lines = 0.0
  for i in range(depths.shape[0]):
    centre = top + depths[i] * (bottom - top) + 1.0 * jnp.sin(xs / 5.0 + phases[i])
    lines = lines + jnp.exp(-((z - centre[None, :]) / width) ** 2)
  return jnp.clip(lines, 0.0, 1.0)


def lesion_mask(key, z, x, fg_depth, malignant, scan: BreastScan):
  """Soft lesion mask (0..1): ellipse with a Fourier-perturbed border."""
  k = np.arange(2, 18)  # harmonics of the border
  p = uniform_params(key, cx=(-0.45, 0.45), a=(2.5, 7.0), aspect_malignant=(0.7, 1.3),
                     aspect_benign=(0.45, 0.85), dz=(-2.0, 4.0), theta=(-0.4, 0.4),
                     phases=(0.0, 2 * math.pi, len(k)),
                     weights=(-math.sqrt(3), math.sqrt(3), len(k)))  # unit variance
  a = p['a']
  b = a * jnp.where(malignant, p['aspect_malignant'], p['aspect_benign'])
  cx = p['cx'] * scan.fov_mm / 2
  cz = jnp.clip(fg_depth + p['dz'], b + 3.0, scan.fov_mm - b - 4.0)
  theta0 = p['theta']
  dx, dz = x - cx, z - cz
  u = (dx * jnp.cos(theta0) + dz * jnp.sin(theta0)) / a
  v = (-dx * jnp.sin(theta0) + dz * jnp.cos(theta0)) / b
  rho = jnp.sqrt(u ** 2 + v ** 2)
  # Benign: a few low harmonics, small. Malignant: many, larger (spiculated).
  decay = jnp.where(malignant, 0.16 / np.sqrt(k), 0.05 * (k <= 4))
  coef = decay * p['weights']
  c = coef * jnp.exp(1j * p['phases'])
  # sum_k coef_k cos(k phi + phase_k) = Re sum_k c_k w^k with w = exp(i phi):
  # Horner's rule in w needs no trigonometry per pixel and harmonic.
  w = jax.lax.complex(u, v) / jnp.maximum(rho, 1e-6)
  series = c[-1]
  for i in range(len(k) - 2, -1, -1):
    series = series * w + c[i]
  border = 1.0 + jnp.real(series * w * w)  # lowest harmonic: 2
  edge_mm = 0.15
  return jax.nn.sigmoid((border - rho) * jnp.minimum(a, b) / edge_mm)


def _posterior(lesion, z, gain_db, spacing):
  """Posterior acoustic enhancement / shadow below the lesion (dB map)."""
  occupied = jnp.cumsum(lesion, axis=0) * spacing  # mm of lesion above
  below = jnp.clip(occupied, 0.0, 1.0) * (1 - lesion)
  below = gaussian_blur(below, (0.12 / spacing, 0.5 / spacing))
  lesion_bottom = jnp.argmax(jnp.cumsum(lesion, axis=0) >= lesion.sum(0) - 0.5,
                             axis=0) * spacing
  decay = jnp.exp(-jnp.maximum(z - lesion_bottom[None, :], 0.0) / 12.0)
  return gain_db * below * decay


def _upsample(a, factor):
  """Bilinear upsampling of a (H, W) map by an integer factor (edges held)."""
  if factor == 1:
    return a
  for axis in (0, 1):
    n = a.shape[axis]
    padded = jnp.pad(a, [(1, 1) if i == axis else (0, 0) for i in range(2)], mode='edge')
    prev = jax.lax.slice_in_dim(padded, 0, n, axis=axis)
    nxt = jax.lax.slice_in_dim(padded, 2, n + 2, axis=axis)
    phases = []
    for p in range(factor):
      t = (p + 0.5) / factor - 0.5  # sub-pixel offset in (-0.5, 0.5)
      phases.append((1 - abs(t)) * a + abs(t) * (prev if t < 0 else nxt))
    a = jnp.stack(phases, axis=axis + 1)
    a = a.reshape(a.shape[:axis] + (n * factor,) + a.shape[axis + 2:])
  return a


def _downsample(a, factor):
  """Mean over factor x factor blocks (strided slices: one fused loop on CPU)."""
  total = 0.0
  for i in range(factor):
    for j in range(factor):
      total = total + a[i::factor, j::factor]
  return total / factor ** 2


def _upper_quantile(values, q, iters=24):
  """The ``q`` quantile of positive values by bisection in log space (no sort)."""
  logs = jnp.log(values.ravel())
  def step(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) / 2
    above = jnp.mean(logs > mid) > 1 - q
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)
  lo, hi = jax.lax.fori_loop(0, iters, step, (jnp.min(logs), jnp.max(logs)))
  return jnp.exp(hi)


def breast_image(key: jax.Array, scan: BreastScan = BreastScan()):
  """One simulated B-mode image.

  Returns:
    (image, mask, kind): image (size, size) in [0, 1], mask (size, size)
    in {0, 1}, kind 0 benign, 1 malignant, 2 normal (no lesion, empty mask;
    ``scan.normal_fraction`` of the images).
  """
  n = scan.size
  spacing = scan.fov_mm / n
  coords = (jnp.arange(n) + 0.5) * spacing
  z, x = jnp.meshgrid(coords, coords - scan.fov_mm / 2, indexing='ij')
  k_params, k_tissue, k_lesion, k_noise, k_speckle = jax.random.split(key, 5)
  p = uniform_params(
      k_params, malignant=(0.0, 1.0), fg_depth=(8.0, 14.0), contrast_db=(-20.0, -3.0),
      shadow_db=(3.0, 10.0), enhancement_db=(2.0, 6.0),
      alpha=(0.5, 0.9),  # attenuation, dB/cm/MHz
      tgc_error=(-0.25, 0.25), dynamic_range_db=scan.dynamic_range_db, gamma=(1.5, 2.5))
  malignant = p['malignant'] < scan.malignant_fraction
  noise = uniform_noise(k_noise, (2, n, n))  # white fields of the two textures
  tissue = breast_tissue(k_tissue, z, x, scan, noise=noise[0])
  # Its own stream (folded in, not split), so that the other draws stay as they were.
  normal = jax.random.uniform(jax.random.fold_in(key, 7)) < scan.normal_fraction
  malignant = malignant & ~normal
  lesion = lesion_mask(k_lesion, z, x, p['fg_depth'], malignant, scan) * jnp.where(normal, 0.0,
                                                                                   1.0)
  inner = _db(p['contrast_db']) * jnp.where(
      malignant, _texture(noise[1], 0.8 / spacing, 0.5), 1.0)
  echo = tissue * (1 - lesion) + _db(-6.0) * inner * lesion
  gain_db = jnp.where(malignant, -p['shadow_db'], p['enhancement_db'])
  echo = echo * _db(_posterior(lesion, z, gain_db, spacing))
  # Round-trip attenuation, compensated by a TGC that is a little off.
  residual_db = -2 * p['alpha'] * p['tgc_error'] * scan.probe.fc_mhz * z / 10.0
  echo = echo * _db(residual_db)
  # Sidelobes and clutter: an incoherent wide blur of the scene, ~-12 dB. Its
  # own speckle adds in intensity, so it joins the echogenicity (the sum of two
  # independent speckle fields of T1 and T2 is one speckle field of T1 + T2).
  echo = echo + _db(-12.0) * gaussian_blur(echo, (1.0 / spacing, 1.5 / spacing))
  fine = scan.oversample
  sigma = psf_sigmas_px(spacing / fine, scan.probe)
  field = speckle_planes(k_speckle, _upsample(echo, fine), sigma)
  intensity = field[0] ** 2 + field[1] ** 2
  # A sample every other output pixel is plenty for the 99th percentile.
  ref = _upper_quantile(intensity[::2 * fine, ::2 * fine], 0.99)
  bmode = jnp.clip(1 + 10 * jnp.log10(intensity / ref + 1e-12) / p['dynamic_range_db'],
                   0.0, 1.0)
  # Scanner grey maps darken the mid-tones: fat looks dark, not mid-grey.
  bmode = bmode ** p['gamma']
  image = _downsample(bmode, fine)
  mask = (lesion > 0.5).astype(jnp.float32)
  return image, mask, jnp.where(normal, 2, malignant.astype(jnp.int32))


def breast_images(key: jax.Array, num: int, scan: BreastScan = BreastScan(),
                  batch: int = 64):
  """``num`` images as numpy arrays (N, size, size, 1), masks, kinds (0/1/2).

  Image ``i`` is ``breast_image(fold_in(key, i))``: the first images do not
  depend on ``num`` or ``batch``. Batches have a fixed size (the last one is
  padded), so one compile serves any ``num``.
  """
  images, masks, malignant = fields.generate(breast_image, scan, key, num, batch)
  return images[..., None], masks[..., None], malignant
