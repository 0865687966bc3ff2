"""The paper's U-Net: the encoder family ``'unet'`` (``unet_jax.encoders``).

Blocks: ``enc1 .. encD`` on the contracting path (``enc1`` at full resolution),
``bottleneck``, ``decD .. dec1`` on the expanding path (``dec1`` at full
resolution, last in data-flow order) and a 1x1 ``head``. Each block is two 3x3
convolutions, each followed by normalisation and ReLU; a decoder block owns the
up-convolution that feeds it, so freezing ``dec2`` freezes its ``up`` too.
BatchNorm modes and ``running`` flags: ``unet_jax.model``'s docstring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unet_jax.layers import MatmulUpConv, PyTree, conv, make_norm, split_model
from unet_jax.spec import UNetSpec


class ConvBlock(nnx.Module):
  """Two 3x3 convolutions, each followed by normalisation and ReLU."""

  def __init__(self, spec: UNetSpec, cin: int, cout: int, rngs: nnx.Rngs,
               adapters: nnx.Rngs | None = None):
    self.conv1 = conv(spec, cin, cout, 3, rngs, adapters)
    self.norm1 = make_norm(spec, cout, rngs)
    self.conv2 = conv(spec, cout, cout, 3, rngs, adapters)
    self.norm2 = make_norm(spec, cout, rngs)
    self._norm = spec.norm

  def _normalise(self, norm, x, train, running):
    if self._norm != 'batch':
      return norm(x)
    if not train:
      return norm(x, use_running_average=True)
    return norm(x, use_running_average=False if running is None else running)

  def __call__(self, x, train: bool, running: dict | None = None):
    """``running``: {'norm1': flag, 'norm2': flag} for training (module docstring)."""
    running = running or {}
    x = jax.nn.relu(self._normalise(self.norm1, self.conv1(x), train, running.get('norm1')))
    return jax.nn.relu(self._normalise(self.norm2, self.conv2(x), train,
                                       running.get('norm2')))


class DecoderBlock(nnx.Module):
  """Up-convolution by 2, concatenation with the skip, then a ConvBlock."""

  def __init__(self, spec: UNetSpec, cin: int, cout: int, rngs: nnx.Rngs,
               adapters: nnx.Rngs | None = None):
    up = MatmulUpConv if spec.conv == 'matmul' else nnx.ConvTranspose
    self.up = up(cin, cout, (2, 2), strides=(2, 2), rngs=rngs)
    self.block = ConvBlock(spec, 2 * cout, cout, rngs, adapters)

  def __call__(self, x, skip, train: bool, running: dict | None = None):
    x = self.up(x)
    return self.block(jnp.concatenate([x, skip], axis=-1), train,
                      (running or {}).get('block'))


class UNet(nnx.Module):
  """U-Net with human-named blocks; input NHWC, output logits NHW x out_channels."""

  def __init__(self, spec: UNetSpec, rngs: nnx.Rngs):
    self.spec = spec
    # Adapters draw from their own stream, so that the other weights are those
    # of the same seed's network without adapters.
    stream = nnx.Rngs(jax.random.fold_in(rngs.params.key[...], 0x10A))
    adapters = lambda block: stream if spec.adapted(block) else None
    cin = spec.in_channels
    for level in range(1, spec.depth + 1):
      setattr(self, f'enc{level}', ConvBlock(spec, cin, spec.width(level), rngs,
                                             adapters(f'enc{level}')))
      cin = spec.width(level)
    self.bottleneck = ConvBlock(spec, cin, spec.width(spec.depth + 1), rngs,
                                adapters('bottleneck'))
    for level in range(spec.depth, 0, -1):
      setattr(self, f'dec{level}',
              DecoderBlock(spec, spec.width(level + 1), spec.width(level), rngs,
                           adapters(f'dec{level}')))
    self.head = conv(spec, spec.width(1), spec.out_channels, 1, rngs)

  def __call__(self, x, *, train: bool, running: dict | None = None):
    """Logits; ``running`` as in the module docstring (None: batch statistics)."""
    running = running or {}
    skips = []
    for level in range(1, self.spec.depth + 1):
      x = getattr(self, f'enc{level}')(x, train, running.get(f'enc{level}'))
      skips.append(x)
      x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = self.bottleneck(x, train, running.get('bottleneck'))
    for level in range(self.spec.depth, 0, -1):
      x = getattr(self, f'dec{level}')(x, skips[level - 1], train,
                                       running.get(f'dec{level}'))
    return self.head(x)


Network = UNet


def init(spec: UNetSpec, seed: int) -> tuple[PyTree, PyTree]:
  """Random weights of the network ``spec`` describes: (params, stats) as pure dicts."""
  return split_model(UNet(spec, nnx.Rngs(seed)))[1:]
