"""Random draws and smooth random fields shared by the image generators.

Two costs on CPU shape these helpers. Compile time: XLA compiles every
random call into its own hash computation, and forty scalar draws cost
seconds, so a generator draws its scalar parameters in one call
(:func:`uniform_params`). Run time: random bits and libm trigonometry
dominate a speckle image, so the noise helpers spend one 32-bit word per
pair of normals and no sine calls. Blurs are two small matrix products: on
CPU they beat FFTs of odd sizes and batched convolutions.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def uniform_params(key: jax.Array, **ranges) -> dict[str, jax.Array]:
  """Named uniform draws from one random call.

  Args:
    key: PRNG key.
    **ranges: ``name=(low, high)`` for a scalar, ``name=(low, high, n)``
      for ``n`` values.

  Returns:
    dict name -> scalar or (n,) array, uniform on [low, high).

  Example::

    p = uniform_params(key, depth=(4.0, 8.0), phases=(0.0, 2 * math.pi, 3))
    p['depth'], p['phases'].shape   # scalar, (3,)
  """
  sizes = [spec[2] if len(spec) == 3 else 1 for spec in ranges.values()]
  u = jax.random.uniform(key, (sum(sizes),))
  out, start = {}, 0
  for (name, spec), size in zip(ranges.items(), sizes):
    low, high = spec[0], spec[1]
    part = low + (high - low) * u[start:start + size]
    out[name] = part if len(spec) == 3 else part[0]
    start += size
  return out


def normal_pair(key: jax.Array, shape) -> jax.Array:
  """(2, *shape): two independent standard normal fields, one random word per pair.

  Box-Muller: radius ``sqrt(-2 ln u)`` from the high 16 bits, a uniform
  phase from the low 16 (2 bits pick the quadrant, 14 the angle within it,
  whose cosine and sine are short Taylor series, exact to 3e-8 on
  [-pi/4, pi/4]). A quarter of the random bits of two ``jax.random.normal``
  draws and no libm sine. The radius is cut at sqrt(2 ln 2^16) = 4.7, where
  the Rayleigh tail holds 2e-5 of the pairs.
  """
  bits = jax.random.bits(key, shape, jnp.uint32)
  u = ((bits >> 16).astype(jnp.float32) + 0.5) / 65536.0
  r = jnp.sqrt(-2 * jnp.log(u))
  quadrant = (bits >> 14) & 3
  x = ((bits & 0x3FFF).astype(jnp.float32) + 0.5) * (math.pi / 2 / 16384) - math.pi / 4
  x2 = x * x
  c = 1 + x2 * (-1 / 2 + x2 * (1 / 24 + x2 * (-1 / 720 + x2 / 40320)))
  s = x * (1 + x2 * (-1 / 6 + x2 * (1 / 120 + x2 * (-1 / 5040 + x2 / 362880))))
  # Phase x + quadrant * pi/2 (+ pi/4, which a uniform phase does not notice).
  re = jnp.where(quadrant == 0, c, jnp.where(quadrant == 1, -s, jnp.where(quadrant == 2, -c, s)))
  im = jnp.where(quadrant == 0, s, jnp.where(quadrant == 1, c, jnp.where(quadrant == 2, -s, -c)))
  # Real planes, not a complex array: XLA:CPU then keeps this out of a
  # following filter's shifted sums instead of recomputing it for every tap.
  return jnp.stack([r * re, r * im])


def uniform_noise(key: jax.Array, shape) -> jax.Array:
  """White noise of zero mean and unit variance, uniform: no transcendentals.

  For fields blurred over many pixels afterwards, which makes them Gaussian.
  """
  bits = jax.random.bits(key, shape, jnp.uint32)
  return ((bits >> 8).astype(jnp.float32) / 2 ** 24 - 0.5) * math.sqrt(12)


@functools.lru_cache(maxsize=64)
def _blur_matrix_const(n: int, sigma_px: float) -> np.ndarray:
  d = np.arange(n)[:, None] - np.arange(n)[None, :]
  m = np.exp(-0.5 * (d / max(sigma_px, 1e-3)) ** 2)
  return (m / m.sum(axis=1, keepdims=True)).astype(np.float32)


def _blur_matrix(n: int, sigma_px):
  """(n, n) Gaussian blur, rows summing to 1 (a constant stays constant)."""
  if isinstance(sigma_px, (int, float)):
    return _blur_matrix_const(n, float(sigma_px))
  d = np.arange(n)[:, None] - np.arange(n)[None, :]
  m = jnp.exp(-0.5 * (d / jnp.maximum(sigma_px, 1e-3)) ** 2)
  return m / m.sum(axis=1, keepdims=True)


def gaussian_blur(field: jax.Array, sigma_px) -> jax.Array:
  """Gaussian blur of the last two axes, renormalised at the borders.

  ``sigma_px``: (rows, columns) in pixels, Python numbers or traced values.
  """
  h, w = field.shape[-2:]
  out = jnp.matmul(_blur_matrix(h, sigma_px[0]), field)
  return jnp.matmul(out, _blur_matrix(w, sigma_px[1]).T)


def smooth_noise(key: jax.Array, shape, sigma_px: float) -> jax.Array:
  """Gaussian-blurred white noise, rescaled to unit standard deviation."""
  field = gaussian_blur(uniform_noise(key, shape), (sigma_px, sigma_px))
  return field / (jnp.std(field) + 1e-6)


@functools.lru_cache(maxsize=32)
def batch_program(image_fn, spec):
  """Jitted (key, indices) -> batch; one compile per (generator, spec, batch size).

  What :func:`generate` calls for each batch (benchmarks/data_speed.py times it).
  """
  def one(key, index):
    return image_fn(jax.random.fold_in(key, index), spec)
  return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def generate(image_fn, spec, key: jax.Array, num: int, batch: int) -> tuple[np.ndarray, ...]:
  """``image_fn(fold_in(key, i), spec)`` for i < num, as numpy arrays.

  Image ``i`` does not depend on ``num`` or ``batch``; batches have a fixed
  size (the last one padded), so one compile serves any ``num``.
  """
  gen = batch_program(image_fn, spec)
  batch = max(1, min(batch, num))
  parts = [jax.device_get(gen(key, jnp.arange(start, start + batch)))
           for start in range(0, num, batch)]
  return tuple(np.concatenate(p)[:num] for p in zip(*parts))
