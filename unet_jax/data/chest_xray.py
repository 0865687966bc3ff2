"""Simulated chest radiographs (PA view): smooth anatomy, no speckle; mask = lungs.

DESIGN.md 4.2. A radiograph shows the attenuation summed along each ray, so
the image is built as a smooth density map (bright = more attenuation):
the soft tissue of the thorax (thicker at the midline), minus the air of two
lung fields, plus the heart, the spine and trachea, posterior and anterior
ribs as curved bands, the clavicles, the hila and faint vascular markings,
and below the diaphragm domes the abdomen (with a gastric air bubble under
the left dome). Patient's right is on the image's left; the right dome sits
higher and the heart bulges into the left lung field. Then a detector:
window, gamma, blur, film/quantum noise and a heel-effect gradient, all
varied per image, as are the pose, size, inspiration and heart size.

The mask is the union of the two lungs (Montgomery: left OR right). About a third
of the images (``abnormal_fraction``, 0.3) get an opacity in one lung (label
``'abnormal'``, else ``'normal'``); the mask still covers the whole lung, as
in the Montgomery and JSRT masks. Deterministic under a PRNG key and
batched like the other generators: image ``i`` is ``fold_in(key, i)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from unet_jax.data import fields
from unet_jax.data.fields import gaussian_blur, smooth_noise, uniform_noise, uniform_params


@dataclasses.dataclass(frozen=True)
class ChestXray:
  """Settings of the simulated radiographs; one image is ``size`` x ``size``."""

  size: int = 64
  abnormal_fraction: float = 0.3


# Per lung: medial and lateral edges (X from the midline), apex height, where
# the apex sits between them (0 medial, 1 lateral) and the dome's rise as a
# fraction of the lung height.
_LUNG_RANGES = dict(medial=(0.045, 0.07), lateral=(0.36, 0.42), apex=(0.10, 0.15),
                    apex_t=(0.3, 0.45), dome=(0.08, 0.16))


class _Lung:
  """Outline of one lung, from its drawn parameters, in body coordinates."""

  def __init__(self, p, base, side, heart):
    self.side = side  # -1: image left (patient's right), +1: image right
    self.medial, self.lateral, self.apex = p['medial'], p['lateral'], p['apex']
    self.apex_t, self.dome = p['apex_t'], p['dome']
    self.base = base
    self.heart = heart

  def coords(self, X, Y):
    """(t, s): 0..1 medial to lateral and apex to base."""
    t = (self.side * X - self.medial) / (self.lateral - self.medial)
    s = (Y - self.apex) / (self.base - self.apex)
    return t, s

  def below_dome(self, X, Y):
    """Positive below the diaphragm dome: highest mid-lung, lowest at the angles."""
    t, s = self.coords(X, Y)
    return s - (1 - self.dome * jnp.sin(math.pi * jnp.clip(t, 0, 1)))

  def level(self, X, Y):
    """A level set: negative inside the lung, in units of about the lung size."""
    t, s = self.coords(X, Y)
    # Apex and lateral wall: half-ellipses meeting at the apex, a flatter
    # one medially (the mediastinal border is near vertical).
    half = jnp.where(t > self.apex_t, 1 - self.apex_t, self.apex_t)
    dt = jnp.abs(t - self.apex_t) / half
    outer = jnp.where(t > self.apex_t, dt ** 2, dt ** 4) + (s - 1) ** 2 - 1
    level = jnp.maximum(jnp.maximum(outer, self.below_dome(X, Y)), -t)
    return jnp.maximum(level, -self.heart(X, Y))


def _heart(p, base):
  """Level set of the heart shadow (negative inside); it sits on the left dome.

  A half-ellipse above its widest point and straight down from there, so the
  lung is not left as a sliver between the heart's lower curve and the dome.
  """
  cx, cy = p['heart_x'], base - p['heart_rise']
  ax, ay = p['heart_width'], p['heart_height']
  return lambda X, Y: ((X - cx) / ax) ** 2 + (jnp.minimum(Y - cy, 0) / ay) ** 2 - 1


def _soft(level, width):
  """Soft inside-indicator of a level set (negative inside)."""
  return jax.nn.sigmoid(-level / width)


def _ribs(X, Y, phase, spacing):
  """Posterior ribs arching down laterally, fainter anterior ribs sloping down medially."""
  def bands(u, period, sharpness):
    return ((1 + jnp.cos(2 * math.pi * u / period)) / 2) ** sharpness
  posterior = bands(Y - 0.9 * X ** 2 - 0.1 * jnp.abs(X) + phase, spacing, 4)
  anterior = bands(Y + 0.45 * jnp.abs(X) + phase * 1.3, spacing * 1.25, 6)
  return posterior + 0.5 * anterior


def _clavicles(X, Y, height):
  """Two bands from the sternal notch, rising laterally."""
  ax = jnp.abs(X)
  centre = height - 0.18 * (ax - 0.04) + 0.25 * (ax - 0.04) ** 2
  along = jax.nn.sigmoid((ax - 0.045) / 0.01) * jax.nn.sigmoid((0.34 - ax) / 0.015)
  return jnp.exp(-((Y - centre) / 0.02) ** 2) * along


def chest_image(key: jax.Array, spec: ChestXray = ChestXray()):
  """One simulated PA chest radiograph.

  Returns:
    (image, mask, abnormal): image (size, size) in [0, 1], mask (size, size)
    in {0, 1} (both lungs), abnormal a 0/1 int.
  """
  n = spec.size
  pixel = 1.0 / n
  coords = (jnp.arange(n) + 0.5) * pixel
  y, x = jnp.meshgrid(coords, coords, indexing='ij')
  k_params, k_right, k_left, k_vessels, k_mottle, k_grain = jax.random.split(key, 6)
  p = uniform_params(
      k_params, shift=(-0.03, 0.03, 2), scale=(0.9, 1.05), theta=(-0.05, 0.05),
      base_left=(0.68, 0.78), right_higher=(0.01, 0.04), width=(0.95, 1.05),
      heart_x=(0.05, 0.09), heart_rise=(0.04, 0.08), heart_width=(0.15, 0.2),
      heart_height=(0.13, 0.17), bubble=(0.0, 0.05, 2), air=(0.22, 0.3),
      rib_phase=(0.0, 0.07), rib_spacing=(0.06, 0.075), clavicle_height=(0.15, 0.2),
      abnormal=(0.0, 1.0), opacity_side=(0.0, 1.0), opacity_x=(0.12, 0.3),
      opacity_y=(0.3, 0.6), opacity_radius=(0.04, 0.1),
      blur=(0.003, 0.007), low=(0.0, 0.12), high=(0.75, 0.95), gamma=(0.7, 1.4),
      heel=(-0.05, 0.05), grain=(0.005, 0.025))
  # Pose: shift, scale, a small rotation; X from the midline, Y from the top.
  dx, dy = x - 0.5 - p['shift'][0], y - 0.45 - p['shift'][1]
  cos, sin = jnp.cos(p['theta']), jnp.sin(p['theta'])
  X = (dx * cos + dy * sin) / p['scale']
  Y = (-dx * sin + dy * cos) / p['scale'] + 0.45
  edge = pixel / p['scale']  # soft edges about a pixel wide

  base_left = p['base_left']  # image right; the right dome sits higher
  base_right = base_left - p['right_higher']
  heart = _heart(p, base_left)
  lungs = (_Lung(uniform_params(k_right, **_LUNG_RANGES), base_right, -1, heart),
           _Lung(uniform_params(k_left, **_LUNG_RANGES), base_left, 1, heart))
  levels = [lung.level(X, Y) for lung in lungs]
  in_lung = _soft(levels[0], edge) + _soft(levels[1], edge)
  mask = ((levels[0] < 0) | (levels[1] < 0)).astype(jnp.float32)

  # Soft tissue: thick across the chest, thinning at the flanks; the neck
  # widens into the shoulders.
  half_width = (0.1 + 0.37 * jax.nn.sigmoid((Y - 0.07) / 0.03)) * p['width']
  body = jnp.clip(1 - (X / half_width) ** 2, 0, 1) ** 0.25
  density = 0.55 * body
  # The abdomen below the domes (each dome continued across its half), with
  # the gastric air bubble under the left one.
  below = jnp.where(X < 0, lungs[0].below_dome(X, Y), lungs[1].below_dome(X, Y))
  density += 0.12 * _soft(-below, 0.02) * body
  bubble_x, bubble_y = 0.2 + p['bubble'][0], base_left + 0.04 + p['bubble'][1]
  density -= 0.12 * _soft(((X - bubble_x) / 0.06) ** 2 + (
      (Y - bubble_y) / 0.03) ** 2 - 1, 0.2) * body
  density += 0.04 * _soft(heart(X, Y), 0.08)
  # Spine (segmented) and the dark air column of the trachea above it.
  spine = jnp.exp(-(X / 0.035) ** 4) * (0.8 + 0.2 * jnp.cos(2 * math.pi * Y / 0.05))
  density += 0.12 * spine * body
  trachea = jnp.exp(-(X / 0.014) ** 4) * _soft(Y - 0.32, 0.02)
  density -= 0.08 * trachea * body
  # Air in the lungs, a little less over the upper zones (shoulder tissue).
  density -= p['air'] * in_lung * (0.8 + 0.2 * jnp.clip(Y / 0.5, 0, 1))
  # Vascular markings: smooth noise, strongest near the hila.
  t_hilum = jnp.minimum(jnp.abs(lungs[0].coords(X, Y)[0]), jnp.abs(lungs[1].coords(X, Y)[0]))
  vessels = smooth_noise(k_vessels, (n, n), 0.012 * n)
  density += in_lung * jnp.exp(-2.5 * t_hilum) * (0.04 * vessels + 0.07)
  hila = sum(jnp.exp(-(((X - lung.side * (lung.medial + 0.04)) / 0.04) ** 2 +
                       ((Y - 0.42) / 0.07) ** 2)) for lung in lungs)
  density += 0.07 * hila
  # Bones: ribs over the chest, clavicles on top.
  thorax = _soft(jnp.abs(X) - half_width + 0.03, 0.01) * _soft(Y - base_left - 0.03, 0.02)
  ribs = _ribs(X, Y, p['rib_phase'], p['rib_spacing'])
  density += 0.07 * ribs * thorax * (0.5 + 0.5 * in_lung)
  density += 0.16 * _clavicles(X, Y, p['clavicle_height'])

  # An opacity in one lung (consolidation, mass) for the 'abnormal' class.
  abnormal = p['abnormal'] < spec.abnormal_fraction
  ox = jnp.where(p['opacity_side'] < 0.5, -1.0, 1.0) * p['opacity_x']
  opacity = jnp.exp(-(((X - ox) ** 2 + (Y - p['opacity_y']) ** 2) /
                      p['opacity_radius'] ** 2) ** 2)
  density += jnp.where(abnormal, 0.25, 0.0) * opacity * in_lung

  # Detector: blur, window, gamma, heel effect, film mottle and quantum noise.
  blur = p['blur'] * n
  density = gaussian_blur(density, (blur, blur))
  image = jnp.clip((density - p['low']) / (p['high'] - p['low']), 0, 1) ** p['gamma']
  image = image * (1 + p['heel'] * (y - 0.5))
  mottle = smooth_noise(k_mottle, (n, n), 0.01 * n)
  grain = p['grain'] * uniform_noise(k_grain, (n, n))
  image = image + 0.015 * mottle + grain * jnp.sqrt(0.2 + image)
  return jnp.clip(image, 0, 1), mask, abnormal.astype(jnp.int32)


def chest_images(key: jax.Array, num: int, spec: ChestXray = ChestXray(),
                 batch: int = 64):
  """``num`` images and lung masks (N, size, size, 1) and abnormal flags, numpy.

  Image ``i`` is ``chest_image(fold_in(key, i))``, whatever ``num`` and
  ``batch``; batches have a fixed size (the last one padded).
  """
  images, masks, abnormal = fields.generate(chest_image, spec, key, num, batch)
  return images[..., None], masks[..., None], abnormal
