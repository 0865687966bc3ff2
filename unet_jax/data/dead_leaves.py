"""Dead-leaves images with a salient object: natural-image-like pretraining data.

The dead-leaves model (Lee, Mumford & Huang 2001) stacks occluding random
shapes whose radii follow the scale-invariant density ``r^-3``; it
reproduces the power spectrum and occlusion statistics of natural images and
pretrains networks well (Baradad et al. 2021). For saliency-style targets
(XPIE, DUTS) a few large leaves that share one grey level and texture form
the object; it is dropped after the background and then partly occluded by a
few small leaves. The mask is the object's visible part.

Everything is vectorised over leaves and images: no Python loop per leaf.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DeadLeaves:
  size: int = 64
  num_leaves: int = 96  # background leaves
  r_min: float = 0.03  # radii as fractions of the image side
  r_max: float = 0.5
  object_leaves: int = 3
  occluders: int = 4
  noise: float = 0.03


def power_law_radii(key, shape, r_min, r_max):
  """Radii with density ~ r^-3 on [r_min, r_max] (inverse-CDF sampling)."""
  u = jax.random.uniform(key, shape)
  return (r_min ** -2 - u * (r_min ** -2 - r_max ** -2)) ** -0.5


def _leaf_params(key, num, radii, centre_spread):
  k = jax.random.split(key, 8)
  return dict(
      cy=0.5 + centre_spread * jax.random.uniform(k[0], (num,), minval=-1, maxval=1),
      cx=0.5 + centre_spread * jax.random.uniform(k[1], (num,), minval=-1, maxval=1),
      r=radii,
      aspect=jax.random.uniform(k[2], (num,), minval=0.4, maxval=1.0),
      angle=jax.random.uniform(k[3], (num,), maxval=math.pi),
      # Superellipse exponent: 2 = ellipse, large = rounded rectangle.
      power=jnp.where(jax.random.uniform(k[4], (num,)) < 0.6, 2.0, 6.0),
      grey=jax.random.uniform(k[5], (num,)),
      tex_freq=jax.random.uniform(k[6], (num,), minval=0.0, maxval=40.0),
      tex_angle=jax.random.uniform(k[7], (num,), maxval=math.pi),
  )


def _coverage(p, y, x):
  """(num, H, W) bool: which leaves cover each pixel."""
  dy = y[None] - p['cy'][:, None, None]
  dx = x[None] - p['cx'][:, None, None]
  c, s = jnp.cos(p['angle'])[:, None, None], jnp.sin(p['angle'])[:, None, None]
  u = (dx * c + dy * s) / p['r'][:, None, None]
  v = (-dx * s + dy * c) / (p['r'] * p['aspect'])[:, None, None]
  pw = p['power'][:, None, None]
  return jnp.abs(u) ** pw + jnp.abs(v) ** pw < 1.0


def _shade(p, y, x, amplitude):
  """(num, H, W) grey value of each leaf: a level plus a faint grating."""
  a = p['tex_angle'][:, None, None]
  phase = 2 * math.pi * p['tex_freq'][:, None, None] * (
      x[None] * jnp.cos(a) + y[None] * jnp.sin(a))
  return p['grey'][:, None, None] + amplitude * jnp.sin(phase)


def dead_leaves_image(key: jax.Array, spec: DeadLeaves = DeadLeaves()):
  """One image (size, size) in [0, 1] and its salient-object mask."""
  n = spec.size
  coords = (jnp.arange(n) + 0.5) / n
  y, x = jnp.meshgrid(coords, coords, indexing='ij')
  kb, ko, kc, kg, kn, kf = jax.random.split(key, 6)
  bg = _leaf_params(kb, spec.num_leaves, power_law_radii(
      kb, (spec.num_leaves,), spec.r_min, spec.r_max), 0.6)
  obj_r = jax.random.uniform(ko, (spec.object_leaves,), minval=0.12, maxval=0.25)
  obj = _leaf_params(ko, spec.object_leaves, obj_r, 0.15)
  # The object's leaves share one grey level and texture, away from the
  # background's mean, so it is salient but not trivially separable.
  obj_grey = jnp.where(jax.random.uniform(kg) < 0.5,
                       jax.random.uniform(kg, minval=0.0, maxval=0.3),
                       jax.random.uniform(kg, minval=0.7, maxval=1.0))
  obj = dict(obj, grey=jnp.full_like(obj['grey'], obj_grey),
             tex_freq=jnp.full_like(obj['tex_freq'], obj['tex_freq'][0]),
             tex_angle=jnp.full_like(obj['tex_angle'], obj['tex_angle'][0]))
  occ = _leaf_params(kc, spec.occluders, power_law_radii(
      kc, (spec.occluders,), spec.r_min, 0.08), 0.35)
  leaves = jax.tree.map(lambda *a: jnp.concatenate(a), bg, obj, occ)
  cover = _coverage(leaves, y, x)
  total = cover.shape[0]
  # Painter's algorithm: the last leaf covering a pixel is on top.
  top = total - 1 - jnp.argmax(cover[::-1], axis=0)
  covered = cover.any(axis=0)
  shade = _shade(leaves, y, x, 0.08)
  image = jnp.take_along_axis(shade, top[None], axis=0)[0]
  # Where no leaf fell, a smooth random gradient (the leaf 'behind' them all).
  gy, gx, g0 = jax.random.uniform(kn, (3,), minval=-0.3, maxval=0.3)
  image = jnp.where(covered, image, 0.5 + g0 + gy * (y - 0.5) + gx * (x - 0.5))
  first_obj = spec.num_leaves
  is_obj = covered & (top >= first_obj) & (top < first_obj + spec.object_leaves)
  image = image + spec.noise * jax.random.normal(kf, image.shape)
  return jnp.clip(image, 0.0, 1.0), is_obj.astype(jnp.float32)


def dead_leaves_images(key: jax.Array, num: int, spec: DeadLeaves = DeadLeaves(),
                       batch: int = 128):
  """``num`` images (N, size, size, 1) and masks (N, size, size, 1)."""
  gen = jax.jit(jax.vmap(lambda k: dead_leaves_image(k, spec)))
  keys = jax.random.split(key, num)
  parts = [gen(keys[i:i + batch]) for i in range(0, num, batch)]
  images, masks = (jnp.concatenate(p) for p in zip(*parts))
  return images[..., None], masks[..., None]
