"""Training-time augmentation as data: a policy is a vector of numbers per experiment.

A policy is a set of named numbers (:data:`FIELDS`): the probability of each
transform and its range. Inside the compiled training step the policy is an
array, so experiments with different policies (a grid axis, ``grid.augment``)
train in one program, like experiments with different learning rates. The
draws come from the experiment's training stream (its seed and step), so
experiments of one seed see the same images and the same random numbers
whatever their policy: common random numbers hold across policies.

The transforms follow nnU-Net's 2D defaults (Isensee et al. 2021, its
``get_training_transforms``), in its order, each applied to an image with
its own probability: rotation and scaling (one affine warp; the mask warped
with the image, bilinear and thresholded at 0.5), Gaussian noise, Gaussian
blur, multiplicative brightness, contrast, simulated low resolution and
gamma; then the lateral flip of :func:`unet_jax.engine.step.draw_batch`
comes first, as it always has. Differences from nnU-Net, and why:

- rotation is at most ``rotate_deg`` (15 by default in ``'nnunet'``), not
  180: the depth axis of an ultrasound or X-ray image has a direction;
- no elastic deformation (nnU-Net v2 leaves it off by default too);
- intensities are in [0, 1] (not z-scored), so the noise SD is in those units.

A transform whose probability is 0 leaves the image bit for bit as it was
(each is a select between the transformed and the original image), so a
policy of strength zero trains exactly as no augmentation does, and
``'flip'`` (a lateral flip half the time, :data:`POLICIES`) is what every
sweep did before policies existed.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Field -> (its identity value, lowest, highest, meaning).
FIELDS = {
    'flip': (0.0, 0.0, 1.0, 'probability of a lateral (left-right) flip'),
    'rotate_p': (0.0, 0.0, 1.0, 'probability of a rotation'),
    'rotate_deg': (0.0, 0.0, 180.0, 'rotation angle uniform in [-rotate_deg, rotate_deg]'),
    'scale_p': (0.0, 0.0, 1.0, 'probability of a zoom'),
    'scale_lo': (1.0, 0.25, 4.0, 'zoom factor uniform in [scale_lo, scale_hi] (> 1: in)'),
    'scale_hi': (1.0, 0.25, 4.0, 'see scale_lo'),
    'noise_p': (0.0, 0.0, 1.0, 'probability of additive Gaussian noise'),
    'noise_std': (0.0, 0.0, 1.0, 'its SD uniform in [0, noise_std] (intensities in [0, 1])'),
    'blur_p': (0.0, 0.0, 1.0, 'probability of a Gaussian blur'),
    'blur_lo': (0.0, 0.0, 3.0, 'its sigma uniform in [blur_lo, blur_hi] pixels'),
    'blur_hi': (0.0, 0.0, 3.0, 'see blur_lo'),
    'brightness_p': (0.0, 0.0, 1.0, 'probability of a multiplicative brightness change'),
    'brightness': (0.0, 0.0, 1.0, 'factor uniform in [1 - brightness, 1 + brightness]'),
    'contrast_p': (0.0, 0.0, 1.0, 'probability of a contrast change about the mean'),
    'contrast': (0.0, 0.0, 1.0, 'factor uniform in [1 - contrast, 1 + contrast], '
                                'clipped to the image range'),
    'lowres_p': (0.0, 0.0, 1.0, 'probability of simulated low resolution'),
    'lowres_lo': (1.0, 0.1, 1.0, 'down to a zoom uniform in [lowres_lo, 1], and back'),
    'gamma_p': (0.0, 0.0, 1.0, 'probability of a gamma change'),
    'gamma_lo': (1.0, 0.1, 10.0, 'gamma uniform in [gamma_lo, gamma_hi]'),
    'gamma_hi': (1.0, 0.1, 10.0, 'see gamma_lo'),
}
NAMES = tuple(FIELDS)
_INDEX = {name: i for i, name in enumerate(NAMES)}

# Built-in policies: the fields they set (the others keep their identity value).
POLICIES = {
    'none': {},
    'flip': {'flip': 0.5},
    'nnunet': {'flip': 0.5, 'rotate_p': 0.2, 'rotate_deg': 15.0,
               'scale_p': 0.2, 'scale_lo': 0.7, 'scale_hi': 1.4,
               'noise_p': 0.1, 'noise_std': 0.05,
               'blur_p': 0.2, 'blur_lo': 0.5, 'blur_hi': 1.0,
               'brightness_p': 0.15, 'brightness': 0.25,
               'contrast_p': 0.15, 'contrast': 0.25,
               'lowres_p': 0.25, 'lowres_lo': 0.5,
               'gamma_p': 0.3, 'gamma_lo': 0.7, 'gamma_hi': 1.5},
}
DEFAULT = 'flip'  # what every sweep did before policies existed
_BLUR_RADIUS = 4  # pixels each side: 3 sigma of the largest default blur


def values(fields: dict) -> tuple[float, ...]:
  """A policy's numbers in :data:`NAMES` order; fields left out keep their identity."""
  return tuple(float(fields.get(name, FIELDS[name][0])) for name in NAMES)


def problems(fields: dict) -> list[str]:
  """What is wrong with a policy's fields (unknown names, values out of range)."""
  out = [f'unknown field {k!r} (valid: {", ".join(NAMES)})' for k in fields if k not in FIELDS]
  for name, value in fields.items():
    if name not in FIELDS:
      continue
    _, lo, hi, _ = FIELDS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
      out.append(f'{name}={value!r} is outside [{lo:g}, {hi:g}]')
  full = dict(zip(NAMES, values({k: v for k, v in fields.items() if k in FIELDS})))
  for lo, hi in (('scale_lo', 'scale_hi'), ('blur_lo', 'blur_hi'), ('gamma_lo', 'gamma_hi')):
    if full[lo] > full[hi]:
      out.append(f'{lo}={full[lo]:g} is above {hi}={full[hi]:g}')
  return out


def built_in() -> dict[str, tuple[float, ...]]:
  """Every built-in policy's numbers, by name."""
  return {name: values(fields) for name, fields in POLICIES.items()}


DEFAULT_VALUES = values(POLICIES[DEFAULT])


def flip_probability(policy: jax.Array) -> jax.Array:
  return policy[_INDEX['flip']]


def apply(images: jax.Array, masks: jax.Array, key: jax.Array, policy: jax.Array
          ) -> tuple[jax.Array, jax.Array]:
  """Augments a batch: images (B, H, W, C), masks (B, H, W, K), ``policy`` a
  [len(NAMES)] float array. Every image draws its own transforms from ``key``.
  The flip is not applied here (``draw_batch`` does it)."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(_one, in_axes=(0, 0, 0, None))(images, masks, keys, policy)


def _one(image: jax.Array, mask: jax.Array, key: jax.Array, policy: jax.Array
         ) -> tuple[jax.Array, jax.Array]:
  p = {name: policy[i] for i, name in enumerate(NAMES)}
  k = iter(jax.random.split(key, 17))  # one key per draw below
  happens = lambda prob: jax.random.uniform(next(k)) < prob
  between = lambda lo, hi: lo + (hi - lo) * jax.random.uniform(next(k))

  rotate, zoom = happens(p['rotate_p']), happens(p['scale_p'])
  angle = jnp.where(rotate, between(-1.0, 1.0) * p['rotate_deg'] * (math.pi / 180), 0.0)
  factor = jnp.where(zoom, between(p['scale_lo'], p['scale_hi']), 1.0)
  warped, warped_mask = _affine(image, mask, angle, factor)
  image = jnp.where(rotate | zoom, warped, image)
  mask = jnp.where(rotate | zoom, warped_mask, mask)

  noisy = happens(p['noise_p'])
  sd = between(0.0, p['noise_std'])
  image = jnp.where(noisy, image + sd * jax.random.normal(next(k), image.shape), image)

  blurred = happens(p['blur_p'])
  image = jnp.where(blurred, _blur(image, between(p['blur_lo'], p['blur_hi'])), image)

  bright = happens(p['brightness_p'])
  image = jnp.where(bright, image * between(1 - p['brightness'], 1 + p['brightness']), image)

  contrasted = happens(p['contrast_p'])
  c = between(1 - p['contrast'], 1 + p['contrast'])
  mean = jnp.mean(image)
  stretched = jnp.clip((image - mean) * c + mean, jnp.min(image), jnp.max(image))
  image = jnp.where(contrasted, stretched, image)

  coarse = happens(p['lowres_p'])
  image = jnp.where(coarse, _low_resolution(image, between(p['lowres_lo'], 1.0)), image)

  gamma_on = happens(p['gamma_p'])
  image = jnp.where(gamma_on, _gamma(image, between(p['gamma_lo'], p['gamma_hi'])), image)
  return image, mask


def _affine(image: jax.Array, mask: jax.Array, angle: jax.Array, factor: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """Rotation by ``angle`` (radians) and zoom by ``factor`` about the centre;
  outside the image is 0. The mask is warped bilinearly and thresholded at 0.5; masks of
  several structures take, per pixel, the class of largest warped share."""
  h, w = image.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2,
                            jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2, indexing='ij')
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # Each output pixel reads the input at the inverse transform of its position.
  src_r = (cos * rows + sin * cols) / factor + (h - 1) / 2
  src_c = (-sin * rows + cos * cols) / factor + (w - 1) / 2
  sample = lambda plane: jax.scipy.ndimage.map_coordinates(plane, [src_r, src_c], order=1,
                                                           mode='constant', cval=0.0)
  warped = jnp.stack([sample(image[..., c]) for c in range(image.shape[-1])], axis=-1)
  if mask.shape[-1] == 1:
    warped_mask = (sample(mask[..., 0]) >= 0.5).astype(mask.dtype)[..., None]
    return warped, warped_mask
  # Several structures: each warped as a plane, each pixel the class (background
  # included) with the largest share, as label maps are resized.
  planes = jnp.stack([sample(mask[..., c]) for c in range(mask.shape[-1])], axis=-1)
  full = jnp.concatenate([1.0 - planes.sum(axis=-1, keepdims=True), planes], axis=-1)
  warped_mask = jax.nn.one_hot(jnp.argmax(full, axis=-1), full.shape[-1], dtype=mask.dtype)
  return warped, warped_mask[..., 1:]


def _blur(image: jax.Array, sigma: jax.Array) -> jax.Array:
  """Separable Gaussian blur of radius _BLUR_RADIUS, edges repeated."""
  offsets = jnp.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=jnp.float32)
  weights = jnp.exp(-offsets ** 2 / (2 * jnp.maximum(sigma, 1e-3) ** 2))
  weights = weights / weights.sum()
  r = _BLUR_RADIUS
  for axis in (0, 1):
    pad = [(0, 0)] * image.ndim
    pad[axis] = (r, r)
    padded = jnp.pad(image, pad, mode='edge')
    n = image.shape[axis]
    image = sum(weights[i] * jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
                for i in range(2 * r + 1))
  return image


def _low_resolution(image: jax.Array, zoom: jax.Array) -> jax.Array:
  """Down to ``zoom`` of the size (area-averaged) and back up (linear)."""
  shape = image.shape
  scale = jnp.stack([zoom, zoom])
  small = jax.image.scale_and_translate(image, shape, (0, 1), scale, jnp.zeros(2), 'linear',
                                        antialias=True)
  return jax.image.scale_and_translate(small, shape, (0, 1), 1 / scale, jnp.zeros(2),
                                       'linear', antialias=False)


def _gamma(image: jax.Array, gamma: jax.Array) -> jax.Array:
  """``x ** gamma`` on the image rescaled to [0, 1], then back to its range."""
  lo, hi = jnp.min(image), jnp.max(image)
  span = jnp.maximum(hi - lo, 1e-7)
  return ((image - lo) / span) ** gamma * span + lo

