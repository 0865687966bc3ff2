"""A U-Net on an EfficientNet-B0..B4 encoder, laid out as segmentation_models_pytorch's ``Unet``.

Why this family: after ResNet it is the encoder most used to segment ultrasound with a
pretrained U-Net (smp's ``efficientnet-b*`` / ``timm-efficientnet-b*`` encoders), and it is
built of other layers than a ResNet: depthwise convolutions, squeeze-and-excitation and SiLU,
still with BatchNorm, so the BatchNorm policy and the freeze presets apply unchanged.

The encoder is torchvision's ``efficientnet_b0 .. b4`` (the same network as timm's
``efficientnet_b0 .. b4``): a stem (3x3/2 convolution, BatchNorm, SiLU) and seven stages of
MBConv blocks (1x1 expansion, depthwise kxk, squeeze-excitation to ``in // 4`` channels, 1x1
projection; a residual where the stride is 1 and the width stays). B0's stages, as
(expansion, kernel, stride, width, blocks): (1, 3, 1, 16, 1), (6, 3, 2, 24, 2),
(6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1);
B1..B4 scale widths by 1.0, 1.1, 1.2, 1.4 (to a multiple of 8) and blocks by 1.1, 1.2, 1.4,
1.8 (rounded up). The final 1x1 convolution to 1280 channels and the classifier are not used.
The decoder (``unet_jax.decoder``) reads stage1, stage2, stage3, stage5 and stage7 (1/2 ..
1/32 of the input), the taps of timm's ``features_only`` and of smp.

Blocks in data-flow order: ``stem, stage1 .. stage7, dec5 .. dec1, head``
(``encoders.EFFICIENTNET``). Parameter paths take timm's names inside a block::

  stem/conv/kernel  stem/bn/scale  stage1/0/conv_dw/kernel  stage1/0/se/conv_reduce/bias
  stage2/0/conv_pw/kernel  stage2/0/bn2/mean  stage2/0/conv_pwl/kernel  dec5/conv1/kernel

(a block with expansion 1 has ``conv_dw, bn1, se, conv_pw, bn2``; the others ``conv_pw, bn1,
conv_dw, bn2, se, conv_pwl, bn3``). Weights are read from a state dict with torchvision's names
(``features.1.0.block.0.0.weight``) or timm's (``blocks.0.0.conv_dw.weight``); timm's
``tf_efficientnet_*`` are another network (TensorFlow's asymmetric padding, epsilon 1e-3)
and do not match it.

Differences from the references in training: no stochastic depth (torchvision drops a
block's residual branch with probability up to 0.2 in training; in evaluation both are the
same function) and flax's update of the running variance (``unet_jax.resnet``'s docstring).
Epsilon 1e-5 as torchvision's B0..B4; ``spec.norm`` applies to the decoder only.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from unet_jax import decoder, encoder_weights, encoders
from unet_jax.decoder import Conv, PyramidUNet, Stage, adapter_streams, normalise, torch_bn
from unet_jax.errors import UserError
from unet_jax.layers import init_program
from unet_jax.spec import UNetSpec

PyTree = Any

# encoder -> (width multiplier, depth multiplier), torchvision's and timm's B0..B4.
ENCODERS = {
    'efficientnet_b0': (1.0, 1.0),
    'efficientnet_b1': (1.0, 1.1),
    'efficientnet_b2': (1.1, 1.2),
    'efficientnet_b3': (1.2, 1.4),
    'efficientnet_b4': (1.4, 1.8),
}
assert tuple(ENCODERS) == encoders.FAMILIES['efficientnet'].encoders  # names settings offer
# B0's stages: (expansion, kernel, stride, width, blocks).
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_WIDTH = 32
TAPS = (1, 2, 3, 5, 7)  # the stages the decoder reads, at 1/2, 1/4, 1/8, 1/16, 1/32
ENCODER_BLOCKS = encoders.EFFICIENTNET.contracting  # stem, stage1..stage7


def width(channels: int, multiplier: float) -> int:
  """``channels * multiplier`` to a multiple of 8, never 10% below (torchvision, timm)."""
  value = channels * multiplier
  rounded = max(8, int(value + 4) // 8 * 8)
  return rounded + 8 if rounded < 0.9 * value else rounded


def stages(spec: UNetSpec) -> list[tuple[int, int, int, int, int]]:
  """The encoder's stages, scaled: (expansion, kernel, stride, width, blocks)."""
  check_spec(spec)
  w, d = ENCODERS[spec.encoder]
  return [(e, k, s, width(c, w), math.ceil(n * d)) for e, k, s, c, n in STAGES]


def check_spec(spec: UNetSpec) -> None:
  """Raises UserError unless ``spec`` describes an EfficientNet U-Net this module builds."""
  if spec.encoder not in ENCODERS:
    raise UserError(f'model.encoder={spec.encoder!r} is not an EfficientNet encoder; valid: '
                    f'{", ".join(ENCODERS)}')
  decoder.check_decoder(spec)


def encoder_widths(spec: UNetSpec) -> tuple[int, ...]:
  """Channels of the five features the decoder reads (stage1, 2, 3, 5, 7)."""
  scaled = stages(spec)
  return tuple(scaled[t - 1][3] for t in TAPS)


class Stem(nnx.Module):
  """The 3x3/2 convolution, BatchNorm and SiLU."""

  def __init__(self, spec: UNetSpec, cout: int, rngs: nnx.Rngs,
               adapter: nnx.Rngs | None = None):
    self.conv = Conv(spec, spec.in_channels, cout, 3, stride=2, rngs=rngs, adapter=adapter)
    self.bn = torch_bn(spec, cout, rngs)

  def __call__(self, x, train: bool, running: dict | None = None):
    return jax.nn.silu(normalise(self.bn, self.conv(x), train, (running or {}).get('bn')))


class SqueezeExcite(nnx.Module):
  """The channels' spatial means, reduced, SiLU, expanded, a sigmoid gate on ``x``."""

  def __init__(self, spec: UNetSpec, channels: int, reduced: int, rngs: nnx.Rngs):
    self.conv_reduce = Conv(spec, channels, reduced, 1, bias=True, rngs=rngs)
    self.conv_expand = Conv(spec, reduced, channels, 1, bias=True, rngs=rngs)

  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    return x * jax.nn.sigmoid(self.conv_expand(jax.nn.silu(self.conv_reduce(s))))


class MBConv(nnx.Module):
  """An inverted-residual block (timm's DepthwiseSeparableConv when ``expansion == 1``)."""

  def __init__(self, spec: UNetSpec, cin: int, cout: int, expansion: int, kernel: int,
               stride: int, rngs: nnx.Rngs, adapter: nnx.Rngs | None = None):
    mid = cin * expansion
    self.expanded = expansion != 1
    self.residual = stride == 1 and cin == cout
    if self.expanded:
      self.conv_pw = Conv(spec, cin, mid, 1, rngs=rngs, adapter=adapter)
      self.bn1 = torch_bn(spec, mid, rngs)
    # timm's names: conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3 in an expanding block;
    # conv_dw, bn1, se, conv_pw, bn2 without expansion (built in data-flow order).
    self.conv_dw = Conv(spec, mid, mid, kernel, stride=stride, groups=mid, rngs=rngs)
    setattr(self, 'bn2' if self.expanded else 'bn1', torch_bn(spec, mid, rngs))
    self.se = SqueezeExcite(spec, mid, max(1, cin // 4), rngs)
    project = Conv(spec, mid, cout, 1, rngs=rngs, adapter=adapter)
    bn_project = torch_bn(spec, cout, rngs)
    if self.expanded:
      self.conv_pwl, self.bn3 = project, bn_project
    else:
      self.conv_pw, self.bn2 = project, bn_project

  def __call__(self, x, train: bool, running: dict | None = None):
    running = running or {}
    def bn(name, y):
      return normalise(getattr(self, name), y, train, running.get(name))
    y = x
    if self.expanded:
      y = jax.nn.silu(bn('bn1', self.conv_pw(y)))
      y = jax.nn.silu(bn('bn2', self.conv_dw(y)))
      y = bn('bn3', self.conv_pwl(self.se(y)))
    else:
      y = jax.nn.silu(bn('bn1', self.conv_dw(y)))
      y = bn('bn2', self.conv_pw(self.se(y)))
    return x + y if self.residual else y


class EfficientNetUNet(PyramidUNet):
  """EfficientNet encoder + U-Net decoder; input NHWC (sides multiples of 32), output logits."""

  def __init__(self, spec: UNetSpec, rngs: nnx.Rngs):
    check_spec(spec)
    self.spec = spec
    w, _ = ENCODERS[spec.encoder]
    cin = width(STEM_WIDTH, w)
    adapters = adapter_streams(spec, rngs)
    self.stem = Stem(spec, cin, rngs, adapters('stem'))
    for name, (e, k, s, cout, n) in zip(ENCODER_BLOCKS[1:], stages(spec)):
      blocks = []
      for i in range(n):
        blocks.append(MBConv(spec, cin, cout, e, k, s if i == 0 else 1, rngs, adapters(name)))
        cin = cout
      setattr(self, name, Stage(*blocks))
    self.add_decoder(spec, encoder_widths(spec), rngs, adapters)

  def encode(self, x, *, train: bool, running: dict | None = None) -> list[jax.Array]:
    """Features of stage1, stage2, stage3, stage5 and stage7 (1/2 .. 1/32)."""
    running = running or {}
    x = self.stem(x, train, running.get('stem'))
    features = []
    for level, name in enumerate(ENCODER_BLOCKS[1:], start=1):
      x = getattr(self, name)(x, train, running.get(name))
      if level in TAPS:
        features.append(x)
    return features


Network = EfficientNetUNet


def init(spec: UNetSpec, seed: int) -> tuple[PyTree, PyTree]:
  """Random weights of an EfficientNetUNet: (params, stats) as pure dicts (one compiled
  program per spec, as ``resnet.init``)."""
  return init_program(EfficientNetUNet, spec)(jax.random.key(seed))


# Names inside a block, ours (timm's) -> torchvision's, by whether the block expands.
_TORCHVISION_BLOCK = {
    False: {'conv_dw': 'block.0.0', 'bn1': 'block.0.1', 'se': 'block.1', 'conv_pw': 'block.2.0',
            'bn2': 'block.2.1'},
    True: {'conv_pw': 'block.0.0', 'bn1': 'block.0.1', 'conv_dw': 'block.1.0',
           'bn2': 'block.1.1', 'se': 'block.2', 'conv_pwl': 'block.3.0', 'bn3': 'block.3.1'},
}
_TORCHVISION_SE = {'conv_reduce': 'fc1', 'conv_expand': 'fc2'}
SCHEMES = ('torchvision', 'timm')


def torch_name(path: tuple[str, ...], scheme: str) -> str:
  """The name of an encoder leaf in a torchvision or timm state dict.

  ('stem', 'conv', 'kernel') -> 'features.0.0.weight' | 'conv_stem.weight';
  ('stage2', '0', 'conv_dw', 'kernel') -> 'features.2.0.block.1.0.weight' |
  'blocks.1.0.conv_dw.weight'.
  """
  leaf = encoder_weights.TORCH_LEAF[path[-1]]
  if path[0] == 'stem':
    module = {'torchvision': {'conv': 'features.0.0', 'bn': 'features.0.1'},
              'timm': {'conv': 'conv_stem', 'bn': 'bn1'}}[scheme][path[1]]
    return f'{module}.{leaf}'
  stage = ENCODER_BLOCKS.index(path[0])
  block, inner = path[1], list(path[2:-1])
  if scheme == 'timm':
    return '.'.join([f'blocks.{stage - 1}', block] + inner + [leaf])
  expanded = STAGES[stage - 1][0] != 1
  module = [_TORCHVISION_BLOCK[expanded][inner[0]]] + [_TORCHVISION_SE[n] for n in inner[1:]]
  return '.'.join([f'features.{stage}', block] + module + [leaf])


def scheme_of(weights: Mapping[str, Any], where: str) -> str:
  """'torchvision' or 'timm', by the stem's name in ``weights``."""
  if 'features.0.0.weight' in weights:
    return 'torchvision'
  if 'conv_stem.weight' in weights:
    return 'timm'
  seen = ', '.join(repr(k) for k in list(weights)[:3])
  raise UserError(f"{where}: neither torchvision's names ('features.0.0.weight') nor timm's "
                  f"('conv_stem.weight'); its keys begin {seen}")


def _ignored(scheme: str):
  head = (('features.8.', 'classifier.') if scheme == 'torchvision'
          else ('conv_head.', 'bn2.', 'classifier.'))
  return lambda name: name.startswith(head) or name.endswith('num_batches_tracked')


def encoder_from_torchvision(state_dict: Mapping[str, Any], params: PyTree, stats: PyTree,
                             spec: UNetSpec, *, source: str, grey: str = 'sum',
                             imagenet: bool = False) -> tuple[PyTree, PyTree]:
  """Copies of ``params`` and ``stats`` with stem and stage1..7 from a torchvision or timm
  EfficientNet state dict; the arguments and errors are ``resnet.encoder_from_torchvision``'s.

  The final 1x1 convolution (``features.8`` / ``conv_head``, ``bn2``), the classifier and
  ``num_batches_tracked`` are ignored.
  """
  check_spec(spec)
  where = f'{source} ({spec.encoder} encoder)'
  weights = encoder_weights.strip_prefix(state_dict)
  scheme = scheme_of(weights, where)
  return encoder_weights.copy_encoder(
      weights, params, stats, blocks=ENCODER_BLOCKS,
      torch_name=lambda path: torch_name(path, scheme), ignored=_ignored(scheme),
      stem=torch_name(('stem', 'conv', 'kernel'), scheme), where=where, grey=grey,
      imagenet=imagenet)
