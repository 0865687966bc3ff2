"""Simulated apical echocardiography: LV cavity, myocardium and left atrium.

Speckle physics as :mod:`unet_jax.data.ultrasound` (DESIGN.md 4.1): complex
Gaussian scatterers weighted by ``sqrt(T)`` convolved with the Gaussian PSF
envelope, the modulus is the envelope, log compression to a 45-60 dB dynamic
range. What changes for the heart is the probe and the geometry.

Probe. A phased array (default 2.5 MHz, 60 % bandwidth, 19.2 mm aperture: 64
elements at lambda/2) steers its beams over a sector, so the image is
acquired in beam space ``(r, theta)``. There the PSF is the same everywhere:
axially ``sigma_z = c sigma_t / 2`` as for the linear probe, laterally a
fixed angle, FWHM ``lambda / aperture`` (F-number r / aperture at depth r).
So the speckle is simulated on a polar grid and scan-converted (bilinear,
as scanners do, on the log-compressed image) to a Cartesian window of
``depth_mm`` x ``depth_mm``, apex at the top centre: the fan of a cardiac
scan, with speckle that widens with depth and black outside the sector.

Anatomy (a simplified apical four-chamber view, CAMUS-like labels): the left
ventricle (LV) is a bullet, a half-ellipse at the apex near the probe and
truncated at the mitral plane, its long axis along depth with a small tilt;
blood is nearly anechoic (-30..-24 dB), the myocardium a ring of 7-12 mm
(apex thinner) open at the base, with a papillary muscle in the cavity
(labelled cavity, as endocardial contours include it). Below the mitral
plane, past a thin bright valve line, the left atrium (LA), a truncated
ellipse. On the image's left the right ventricle (thin free wall, its
tricuspid plane a little more apical) and the right atrium, behind the
interatrial septum: dark but unlabelled, so a model has to tell the LV from
the RV. A bright pericardium outlines the heart in moderately echogenic
tissue (-10..-5 dB, a smooth log-normal texture). ``chambers=2`` gives an
apical two-chamber view instead: LV and LA only. Dilated hearts
(``dilated_fraction`` of the images, class 'dilated'; dilated cardiomyopathy)
have a cavity 1.3x wider and 1.1x longer (more spherical), a thinner wall
(5.5-8 mm) and a slightly larger atrium.

Scanner effects: near-field clutter (reverberation haze that fills the apex),
sidelobe haze (an incoherent wide blur, spread in angle), a sensitivity loss
towards the sector edges, depth attenuation with imperfect TGC, and a
scanner grey map (gamma). Everything is drawn per image: size, position,
tilt, wall thickness, echogenicities, dynamic range.

Masks are the same level sets sampled on the output grid, inside the fan:
channel k is ``STRUCTURES[k]``, mutually exclusive, background none. Image
``i`` of :func:`cardiac_images` depends only on ``fold_in(key, i)``; the
batch generator is compiled once per ``(CardiacView, batch)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.data import fields
from unet_jax.data.fields import gaussian_blur, uniform_noise, uniform_params
from unet_jax.data.ultrasound import (
  Probe,
  _db,
  _downsample,
  _texture,
  _upper_quantile,
  psf_sigmas_px,
  speckle_planes,
)

STRUCTURES = ('cavity', 'wall', 'atrium')  # left-ventricle cavity, myocardium, left atrium
KINDS = ('normal', 'dilated')  # image class: dilated is True for class 1


@dataclasses.dataclass(frozen=True)
class CardiacView:
  """Settings of the simulated apical view; one image is ``size`` x ``size`` pixels."""

  size: int = 64
  oversample: int = 2  # beam-space grid = size * oversample per side, B-mode averaged back
  depth_mm: float = 160.0  # imaging depth; the window is depth x depth, apex at top centre
  sector_deg: float = 90.0  # opening angle of the fan
  fc_mhz: float = 2.5
  bandwidth: float = 0.6  # fractional -6 dB bandwidth
  aperture_mm: float = 19.2  # sets the lateral PSF, lambda / aperture in angle
  chambers: int = 4  # 4: apical four-chamber (with the right heart); 2: two-chamber
  dilated_fraction: float = 0.3  # share of images of class 'dilated'
  dynamic_range_db: tuple[float, float] = (45.0, 60.0)

  def __post_init__(self):
    if self.chambers not in (2, 4):
      raise ValueError(f'chambers must be 2 or 4, not {self.chambers}')


_VALVE_BOW = 2.0  # mm, how far a closed mitral valve bulges towards the atrium at most
_TWO_CHAMBER_SHIFT = -6.0  # mm to +x: without the right heart the LV sits nearer the centre

_HEART_RANGES = dict(
    dilated=(0.0, 1.0),
    # LV frame: endocardial apex below the transducer, long-axis tilt (base towards +x).
    apex_depth=(20.0, 30.0), apex_x=(-4.0, 5.0), tilt=(-0.05, 0.2),
    length=(60.0, 75.0), width=(38.0, 48.0),  # cavity, apex to mitral plane / widest
    wall=(7.0, 12.0), wall_dilated=(5.5, 8.0), apex_wall=(0.6, 0.9),  # apex: a fraction
    endo_phases=(0.0, 2 * math.pi, 3), endo_weights=(-1.0, 1.0, 3),  # harmonics 2..4
    epi_phases=(0.0, 2 * math.pi, 3), epi_weights=(-1.0, 1.0, 3),
    papillary_u=(0.5, 0.7), papillary_len=(6.0, 10.0), papillary_width=(3.0, 5.0),
    valve_gap=(2.5, 4.0), valve_bow=(-0.5, 1.0),
    la_length=(34.0, 46.0), la_width=(32.0, 42.0), la_shift=(-3.0, 5.0),
    la_tilt=(-0.15, 0.15), atrial_wall=(2.0, 3.5),
    rv_length=(0.6, 0.8), rv_width=(24.0, 34.0), rv_wall=(3.0, 5.0), tv_offset=(4.0, 10.0),
    ra_length=(30.0, 42.0), ra_width=(26.0, 36.0), septum=(3.0, 6.0),
    pericardium_gap=(1.0, 3.0))

_ECHO_RANGES = dict(
    blood_db=(-30.0, -24.0), wall_db=(-3.0, 1.0), tissue_db=(-10.0, -5.0),
    papillary_db=(-6.0, -2.0), valve_db=(0.0, 5.0), pericardium_db=(0.0, 6.0),
    side_loss_db=(0.0, 5.0), thin_wall_db=(-5.0, -2.0),  # relative to the LV wall
    clutter_db=(-24.0, -14.0), clutter_depth=(8.0, 20.0),  # mm
    edge_loss_db=(0.0, 6.0),  # sensitivity lost at the sector edges
    alpha=(0.4, 0.7),  # attenuation, dB/cm/MHz
    tgc_error=(-0.2, 0.2), gamma=(1.5, 2.5))


def _ellipse_level(du, dv, a, b):
  """About the signed distance in mm to an ellipse of semi-axes a, b (negative inside).

  First order, f / |grad f| with f = (du/a)^2 + (dv/b)^2 - 1: exact on the
  border, good to a few mm around it, the right sign everywhere.
  """
  f = (du / a) ** 2 + (dv / b) ** 2 - 1
  grad = 2 * jnp.sqrt((du / a ** 2) ** 2 + (dv / b ** 2) ** 2)
  return f / (grad + 1e-3)


def _ripple(du, dv, a, b, phases, weights, amplitude):
  """A border wobble in mm: harmonics 2, 3, 4 of the angle around an ellipse's centre."""
  rho = jnp.sqrt((du / a) ** 2 + (dv / b) ** 2)
  w = jax.lax.complex(du / a, dv / b) / jnp.maximum(rho, 1e-6)
  c = amplitude * weights * jnp.exp(1j * phases)
  return jnp.real(w * w * (c[0] + w * (c[1] + w * c[2])))


def _frame(z, x, origin, angle):
  """(u, v): mm along a long axis (down, tilted to +x by ``angle``) and across it (to +x)."""
  dz, dx = z - origin[0], x - origin[1]
  c, s = jnp.cos(angle), jnp.sin(angle)
  return dz * c + dx * s, dx * c - dz * s


def heart_levels(p, z, x, chambers: int = 4):
  """Level sets (mm, negative inside) and valve lines (0..1) of the heart at (z, x) mm.

  ``p``: the drawn parameters (``_HEART_RANGES``). Keys: cavity, lv_outer
  (cavity + myocardium), atrium (LA), heart (all chambers and walls), blood
  (all cavities), papillary; valves (0..1, the valve lines); across (the
  position across the LV, -1..1 at the outer border of the septum and lateral
  wall).
  """
  dilated = p['dilated']
  length = p['length'] * jnp.where(dilated, 1.1, 1.0)
  b = p['width'] / 2 * jnp.where(dilated, 1.3, 1.0)
  t = jnp.where(dilated, p['wall_dilated'], p['wall'])
  a = length / 1.6  # the ellipse is cut at 0.6 a past its centre: the mitral plane
  shift = _TWO_CHAMBER_SHIFT if chambers == 2 else 0.0
  u, v = _frame(z, x, (p['apex_depth'], p['apex_x'] + shift), p['tilt'])
  du = u - a
  base = u - length  # positive past the mitral plane
  endo = _ellipse_level(du, v, a, b) - _ripple(du, v, a, b, p['endo_phases'],
                                               p['endo_weights'], 1.2)
  cavity = jnp.maximum(endo, base)
  outer_a, outer_b = a + t * p['apex_wall'], b + t
  epi = _ellipse_level(du, v, outer_a, outer_b) - _ripple(
      du, v, outer_a, outer_b, p['epi_phases'], p['epi_weights'], 1.2)
  lv_outer = jnp.maximum(epi, base)
  # Papillary muscle: a blob on the lateral wall, mid-cavity, inside the cavity.
  half_width = b * jnp.sqrt(1 - ((p['papillary_u'] * length - a) / a) ** 2)
  papillary = _ellipse_level(u - p['papillary_u'] * length, v - half_width,
                             p['papillary_len'], p['papillary_width'])
  # Mitral plane: a closed valve (a bright line, bowing a little), then the LA.
  gap = p['valve_gap']
  annulus = 0.8 * b + t / 2  # the ellipse is 0.8 b wide at the plane
  bow = _VALVE_BOW * p['valve_bow'] * jnp.clip(1 - (v / annulus) ** 2, 0, 1)
  valves = jnp.exp(-((base - gap / 2 - bow) / (gap / 3)) ** 2) * jax.nn.sigmoid(
      (annulus - jnp.abs(v)) / 1.0)
  la_scale = jnp.where(dilated, 1.1, 1.0)
  la_a = p['la_length'] * la_scale / 1.7  # cut at 0.7 a above its centre
  la_b = p['la_width'] * la_scale / 2
  la_u, la_v = _frame(u, v, (length + gap + 0.7 * la_a, p['la_shift']), p['la_tilt'])
  la_ellipse = _ellipse_level(la_u, la_v, la_a, la_b)
  atrium = jnp.maximum(la_ellipse, gap - base)
  wall_la = p['atrial_wall']
  la_outer = jnp.maximum(_ellipse_level(la_u, la_v, la_a + wall_la, la_b + wall_la), -base)
  heart = jnp.minimum(lv_outer, la_outer)
  blood = jnp.minimum(cavity, atrium)
  if chambers == 4:
    # Right ventricle against the septum (outside the LV), its tricuspid plane
    # ``tv_offset`` more apical; the right atrium below it, behind the septum.
    tv = length - p['tv_offset']
    rv_a = p['rv_length'] * length / 1.6
    rv_b = p['rv_width'] / 2
    rv_u, rv_v = u - (tv - 0.6 * rv_a), v + (b + t + 0.7 * rv_b)
    rv = jnp.maximum(jnp.maximum(_ellipse_level(rv_u, rv_v, rv_a, rv_b), u - tv), -lv_outer)
    wall_rv = p['rv_wall']
    rv_outer = jnp.maximum(_ellipse_level(rv_u, rv_v, rv_a + wall_rv, rv_b + wall_rv), u - tv)
    ra_a = p['ra_length'] / 1.7
    ra_b = p['ra_width'] / 2
    ra_u = u - (tv + gap + 0.7 * ra_a)
    ra_ellipse = _ellipse_level(ra_u, rv_v, ra_a, ra_b)
    ra = jnp.maximum(jnp.maximum(ra_ellipse, tv + gap - u),
                     jnp.maximum(p['septum'] - la_ellipse, 1.0 - lv_outer))
    ra_outer = jnp.maximum(_ellipse_level(ra_u, rv_v, ra_a + wall_la, ra_b + wall_la), tv - u)
    tricuspid = jnp.exp(-((u - tv - gap / 2) / (gap / 3)) ** 2) * jax.nn.sigmoid(
        (0.8 * rv_b - jnp.abs(rv_v)) / 1.0)
    heart = jnp.minimum(heart, jnp.minimum(rv_outer, ra_outer))
    blood = jnp.minimum(blood, jnp.minimum(rv, ra))
    valves = valves + tricuspid
  return dict(cavity=cavity, lv_outer=lv_outer, atrium=atrium, heart=heart, blood=blood,
              papillary=papillary, valves=valves, across=v / (b + t))


def structure_masks(levels):
  """(..., 3) one-hot masks of ``STRUCTURES`` from :func:`heart_levels` (hard, exclusive)."""
  cavity = levels['cavity'] < 0
  wall = (levels['lv_outer'] < 0) & ~cavity
  atrium = (levels['atrium'] < 0) & ~cavity & ~wall
  return jnp.stack([cavity, wall, atrium], axis=-1)


def _beam_grid(view: CardiacView):
  """Beam-space sample positions: r (rows, mm), theta (columns, rad), and the spacings."""
  n = view.size * view.oversample
  half = math.radians(view.sector_deg) / 2
  dr, dtheta = view.depth_mm / n, 2 * half / n
  r = (np.arange(n) + 0.5) * dr
  theta = -half + (np.arange(n) + 0.5) * dtheta
  return r, theta, dr, dtheta


def _cartesian(view: CardiacView, n: int):
  """(z, x) mm of the pixel centres of an n x n window; x = 0 under the transducer."""
  spacing = view.depth_mm / n
  coords = (np.arange(n) + 0.5) * spacing
  return np.meshgrid(coords, coords - view.depth_mm / 2, indexing='ij')


def _in_fan(view: CardiacView, z, x):
  """Whether (z, x) mm lies in the insonified sector."""
  return (np.hypot(z, x) <= view.depth_mm) & (
      np.abs(np.arctan2(x, z)) <= math.radians(view.sector_deg) / 2)


@functools.lru_cache(maxsize=16)
def _scan_conversion(view: CardiacView):
  """Bilinear scan conversion to the fine Cartesian grid, as constants.

  Returns (rows, cols, weights): (4, n, n) beam-space indices and weights of
  the four neighbours of each Cartesian sample; weights are 0 outside the fan.
  """
  r, theta, dr, dtheta = _beam_grid(view)
  n = len(r)
  z, x = _cartesian(view, n)
  fr = np.clip(np.hypot(z, x) / dr - 0.5, 0, n - 1)
  ft = np.clip((np.arctan2(x, z) - theta[0]) / dtheta, 0, n - 1)
  r0, t0 = np.minimum(np.floor(fr).astype(np.int32), n - 2), np.minimum(
      np.floor(ft).astype(np.int32), n - 2)
  wr, wt = fr - r0, ft - t0
  rows = np.stack([r0, r0, r0 + 1, r0 + 1])
  cols = np.stack([t0, t0 + 1, t0, t0 + 1])
  weights = np.stack([(1 - wr) * (1 - wt), (1 - wr) * wt, wr * (1 - wt), wr * wt])
  weights = weights * _in_fan(view, z, x)
  return rows, cols, weights.astype(np.float32)


def cardiac_image(key: jax.Array, view: CardiacView = CardiacView()):
  """One simulated apical B-mode image.

  Returns:
    (image, masks, dilated): image (size, size) in [0, 1], black outside the
    fan; masks (size, size, 3) one-hot float32 of ``STRUCTURES`` (none is
    background); dilated a bool (class ``KINDS[1]``).
  """
  k_heart, k_echo, k_noise, k_speckle = jax.random.split(key, 4)
  p = uniform_params(k_heart, **_HEART_RANGES)
  p['dilated'] = p['dilated'] < view.dilated_fraction
  e = uniform_params(k_echo, dynamic_range_db=view.dynamic_range_db, **_ECHO_RANGES)
  r, theta, dr, dtheta = _beam_grid(view)
  rr, tt = np.meshgrid(r, theta, indexing='ij')
  levels = heart_levels(p, rr * np.cos(tt), rr * np.sin(tt), view.chambers)
  edge = 0.4 * dr  # soft borders, a little under a sample
  def inside(level):
    return jax.nn.sigmoid(-level / edge)
  noise = uniform_noise(k_noise, (3,) + rr.shape)
  echo = _db(e['tissue_db']) * _texture(noise[0], 4.0 / dr, 0.5)
  in_heart = inside(levels['heart'])
  # The pericardium: a bright sac around the heart, uneven (patchy texture).
  pericardium = jnp.exp(-((levels['heart'] - p['pericardium_gap']) / 1.5) ** 2)
  pericardium = pericardium * _texture(noise[2], 10.0 / dr, 0.8)
  echo = echo + _db(e['pericardium_db']) * pericardium * (1 - in_heart)
  # Myocardial backscatter is anisotropic: the septum and lateral wall, along
  # the beams, return less than the apex; thin atrial and RV walls less still.
  in_lv = inside(levels['lv_outer'])
  side_loss_db = e['side_loss_db'] * jnp.clip(levels['across'], -1, 1) ** 2
  myocardium = _db(e['wall_db']) * _texture(noise[1], 2.0 / dr, 0.35) * (
      in_lv * _db(-side_loss_db) + (1 - in_lv) * _db(e['thin_wall_db']))
  echo = echo * (1 - in_heart) + myocardium * in_heart
  in_blood = inside(levels['blood'])
  echo = echo * (1 - in_blood) + _db(e['blood_db']) * in_blood
  in_papillary = inside(levels['papillary']) * inside(levels['cavity'])
  echo = echo * (1 - in_papillary) + _db(e['wall_db'] + e['papillary_db']) * in_papillary
  echo = echo + _db(e['valve_db']) * levels['valves']
  # Beam space: the PSF is sigma_z axially and a fixed angle laterally (the
  # lateral sigma at F-number 1 over the aperture, in radians).
  sigma = psf_sigmas_px((dr, view.aperture_mm * dtheta),
                        Probe(view.fc_mhz, view.bandwidth, f_number=1.0))
  # Scanner: reverberation clutter in the near field, sidelobe haze spread in
  # angle (its own speckle adds in intensity, so it joins the echogenicity),
  # element directivity at the sector edges, attenuation left by the TGC.
  echo = echo + _db(e['clutter_db']) * jnp.exp(-rr / e['clutter_depth'])
  echo = echo + _db(-12.0) * gaussian_blur(echo, (1.5 / dr, 3 * sigma[1]))
  half = math.radians(view.sector_deg) / 2
  echo = echo * _db(-e['edge_loss_db'] * (tt / half) ** 2)
  echo = echo * _db(-2 * e['alpha'] * e['tgc_error'] * view.fc_mhz * rr / 10.0)
  field = speckle_planes(k_speckle, echo, sigma)
  intensity = field[0] ** 2 + field[1] ** 2
  ref = _upper_quantile(intensity[::2, ::2], 0.99)
  bmode = jnp.clip(1 + 10 * jnp.log10(intensity / ref + 1e-12) / e['dynamic_range_db'],
                   0.0, 1.0)
  bmode = bmode ** e['gamma']
  rows, cols, weights = _scan_conversion(view)
  fine = jnp.sum(bmode[rows, cols] * weights, axis=0)
  image = _downsample(fine, view.oversample)
  z, x = _cartesian(view, view.size)
  masks = structure_masks(heart_levels(p, z, x, view.chambers)) & _in_fan(view, z, x)[..., None]
  return jnp.clip(image, 0.0, 1.0), masks.astype(jnp.float32), p['dilated']


def cardiac_images(key: jax.Array, num: int, view: CardiacView = CardiacView()):
  """``num`` simulated apical echocardiograms as numpy arrays.

  Args:
    key: PRNG key; image ``i`` is ``cardiac_image(fold_in(key, i), view)``,
      whatever ``num``.
    num: number of images.
    view: the simulated scan and anatomy.

  Returns:
    (images, masks, dilated): images (num, S, S, 1) float32 in [0, 1], masks
    (num, S, S, 3) float32 one-hot in {0, 1} (channel k is ``STRUCTURES[k]``,
    at most one per pixel), dilated (num,) bool.

  Example::

    images, masks, dilated = cardiac_images(jax.random.key(0), 8, CardiacView(size=32))
    masks.mean(axis=(0, 1, 2))   # area fractions of cavity, wall, atrium
  """
  images, masks, dilated = fields.generate(cardiac_image, view, key, num, batch=64)
  return images[..., None], masks, dilated.astype(bool)
