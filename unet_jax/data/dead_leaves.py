"""Dead-leaves images with a salient object: natural-image-like pretraining data.

The dead-leaves model (Lee, Mumford & Huang 2001) stacks occluding random
shapes whose radii follow the scale-invariant density ``r^-3``; it
reproduces the power spectrum and occlusion statistics of natural images and
pretrains networks well (Baradad et al. 2021). For saliency-style targets
(XPIE, DUTS) a few large leaves that share one grey level and texture form
the object; it is dropped after the background and then partly occluded by a
few small leaves. The mask is the object's visible part.

Everything is vectorised over leaves and images: no Python loop per leaf. The
top leaf of each pixel is found first (a fused max over the leaves), and
only that leaf is shaded.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from unet_jax.data import fields
from unet_jax.data.fields import uniform_params


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
  """Position, shape, grey level and grating of ``num`` leaves (one random call)."""
  p = uniform_params(key, cy=(-1.0, 1.0, num), cx=(-1.0, 1.0, num),
                     aspect=(0.4, 1.0, num), angle=(0.0, math.pi, num),
                     square=(0.0, 1.0, num), grey=(0.0, 1.0, num),
                     tex_freq=(0.0, 40.0, num), tex_angle=(0.0, math.pi, num))
  square = p.pop('square')
  return dict(
      p, cy=0.5 + centre_spread * p['cy'], cx=0.5 + centre_spread * p['cx'], r=radii,
      # Superellipse exponent: 2 = ellipse, 6 = rounded rectangle.
      power=jnp.where(square < 0.6, 2.0, 6.0))


def _top_leaf(p, y, x):
  """(H, W) index of the last leaf covering each pixel, -1 where none falls.

  Broadcast over (leaves, H, W) and reduced at once: XLA fuses the shape
  tests into the max, so the (leaves, H, W) stack is never stored.
  """
  col = lambda a: a[:, None, None]  # noqa: E731 - per-leaf parameter over the grid
  dy, dx = y[None] - col(p['cy']), x[None] - col(p['cx'])
  c, s = col(jnp.cos(p['angle'])), col(jnp.sin(p['angle']))
  u2 = ((dx * c + dy * s) / col(p['r'])) ** 2
  v2 = ((-dx * s + dy * c) / col(p['r'] * p['aspect'])) ** 2
  # |u|^power + |v|^power for power 2 or 6, without a pow per pixel and leaf.
  inside = jnp.where(col(p['power']) > 4, u2 * u2 * u2 + v2 * v2 * v2, u2 + v2) < 1.0
  index = jnp.arange(p['r'].shape[0], dtype=jnp.int32)
  return jnp.max(jnp.where(inside, col(index), -1), axis=0)


def _shade(p, top, y, x, amplitude):
  """(H, W) grey value of the top leaf at each pixel: a level plus a faint grating."""
  grey, freq, angle = (jnp.take(p[k], top) for k in ('grey', 'tex_freq', 'tex_angle'))
  phase = 2 * math.pi * freq * (x * jnp.cos(angle) + y * jnp.sin(angle))
  return grey + amplitude * jnp.sin(phase)


def dead_leaves_image(key: jax.Array, spec: DeadLeaves = DeadLeaves()):
  """One image (size, size) in [0, 1] and its salient-object mask."""
  n = spec.size
  coords = (jnp.arange(n) + 0.5) / n
  y, x = jnp.meshgrid(coords, coords, indexing='ij')
  kb, ko, kc, kr, kp, kf = jax.random.split(key, 6)
  # Background leaves up to r_max, the occluders small (up to 0.08).
  r_max = jnp.array([spec.r_max] * spec.num_leaves + [0.08] * spec.occluders)
  radii = power_law_radii(kr, r_max.shape, spec.r_min, r_max)
  g = uniform_params(kp, obj_r=(0.12, 0.25, spec.object_leaves), dark=(0.0, 1.0),
                     level=(0.0, 0.3), gradient=(-0.3, 0.3, 3))
  bg = _leaf_params(kb, spec.num_leaves, radii[:spec.num_leaves], 0.6)
  obj = _leaf_params(ko, spec.object_leaves, g['obj_r'], 0.15)
  # The object's leaves share one grey level and texture, away from the
  # background's mean, so it is salient but not trivially separable.
  obj_grey = jnp.where(g['dark'] < 0.5, g['level'], 1.0 - g['level'])
  obj = dict(obj, grey=jnp.full_like(obj['grey'], obj_grey),
             tex_freq=jnp.full_like(obj['tex_freq'], obj['tex_freq'][0]),
             tex_angle=jnp.full_like(obj['tex_angle'], obj['tex_angle'][0]))
  occ = _leaf_params(kc, spec.occluders, radii[spec.num_leaves:], 0.35)
  leaves = jax.tree.map(lambda *a: jnp.concatenate(a), bg, obj, occ)
  # Painter's algorithm: the last leaf covering a pixel is on top.
  top = _top_leaf(leaves, y, x)
  covered = top >= 0
  image = _shade(leaves, jnp.maximum(top, 0), y, x, 0.08)
  # Where no leaf fell, a smooth random gradient (the leaf 'behind' them all).
  gy, gx, g0 = g['gradient']
  image = jnp.where(covered, image, 0.5 + g0 + gy * (y - 0.5) + gx * (x - 0.5))
  first_obj = spec.num_leaves
  is_obj = (top >= first_obj) & (top < first_obj + spec.object_leaves)
  image = image + spec.noise * jax.random.normal(kf, image.shape)
  return jnp.clip(image, 0.0, 1.0), is_obj.astype(jnp.float32)


def dead_leaves_images(key: jax.Array, num: int, spec: DeadLeaves = DeadLeaves(),
                       batch: int = 64):
  """``num`` images (N, size, size, 1) and masks (N, size, size, 1), numpy.

  Image ``i`` is ``dead_leaves_image(fold_in(key, i))``, whatever ``num`` and
  ``batch``; batches have a fixed size (the last one padded), so one compile
  serves any ``num``.
  """
  images, masks = fields.generate(dead_leaves_image, spec, key, num, batch)
  return images[..., None], masks[..., None]
