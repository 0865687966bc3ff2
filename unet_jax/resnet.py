"""A U-Net on a torchvision ResNet encoder, laid out as segmentation_models_pytorch's ``Unet``.

Blocks in data-flow order (``encoders.RESNET.flow``): ``stem`` (7x7/2 convolution, BatchNorm,
ReLU), the 3x3/2 max pool (no parameters), ``layer1 .. layer4`` (torchvision's residual
stages: BasicBlock for resnet18/34, Bottleneck v1.5 for resnet50), then ``dec5 .. dec1``
(smp's decoder, ``unet_jax.decoder``: ``dec5`` takes layer4 and the layer3 skip, ...,
``dec2`` the stem skip, ``dec1`` none) and ``head``, a 3x3 convolution with bias. The
contracting path is ``stem, layer1..layer4``, the expanding path ``dec5..dec1, head``.

Parameter paths are torchvision's names with ``/``, the stem's under ``stem``::

  stem/conv1/kernel  stem/bn1/scale  layer1/0/conv1/kernel  layer2/0/downsample/0/kernel
  layer2/0/downsample/1/scale  dec5/conv1/kernel  dec5/norm1/scale  head/kernel  head/bias

Block indices are string keys (``'0'``, ``'1'``, ...), so a tree keeps its keys through
orbax and JSON. The statistics follow the same paths (``layer2/0/downsample/1/mean``).

The encoder always uses BatchNorm (pretrained weights carry running statistics); ``spec.norm``
applies to the decoder (``'batch'``, ``'group'`` or ``'none'``; a decoder convolution has a bias
only without normalisation, as smp's ``Conv2dReLU``). ``spec.depth`` and ``spec.base_width``
are not read: the ResNet fixes its widths, the decoder's are ``spec.decoder_channels``.
BatchNorm modes and the ``running`` flags are those of ``unet_jax.model``'s docstring; epsilon
1e-5 and flax's ``momentum=spec.bn_momentum`` (0.9 is torch's 0.1). Unlike torch, flax moves
the running variance towards the biased batch variance (a factor n/(n-1), n = N*H*W).
Convolutions pad symmetrically like PyTorch (``decoder.Conv``); with ``spec.conv == 'matmul'``
every convolution, strided ones included, is im2col + matmul with the same parameters.

Example::

  spec = UNetSpec(encoder='resnet34', in_channels=1)
  graphdef, params, stats = unet_jax.model.init_model(spec, seed=0)
  params, stats = encoder_from_torchvision(torch_state, params, stats, spec,
                                           source='resnet34.pth')
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from unet_jax import decoder, encoder_weights, encoders
from unet_jax.decoder import (
  Conv,
  Numbered,
  PyramidUNet,
  Stage,
  adapter_streams,
  normalise,
  torch_bn,
)
from unet_jax.errors import UserError
from unet_jax.layers import init_program
from unet_jax.spec import UNetSpec

PyTree = Any

# encoder -> (residual block, blocks per stage); torchvision's resnet18/34/50.
ENCODERS = {
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
}
EXPANSION = {'basic': 1, 'bottleneck': 4}
STAGE_WIDTHS = (64, 128, 256, 512)
assert tuple(ENCODERS) == encoders.FAMILIES['resnet'].encoders  # the names settings offer
ENCODER_BLOCKS = encoders.RESNET.contracting  # stem, layer1..layer4
GREY = encoder_weights.GREY


def check_spec(spec: UNetSpec) -> None:
  """Raises UserError unless ``spec`` describes a ResNet U-Net this module builds."""
  if spec.encoder not in ENCODERS:
    raise UserError(f'model.encoder={spec.encoder!r} is not a ResNet encoder; valid: '
                    f'{", ".join(ENCODERS)}')
  decoder.check_decoder(spec)


def check_image_size(spec: UNetSpec, size: int | tuple[int, int]) -> None:
  """Raises UserError unless the image height and width are multiples of 32."""
  check_spec(spec)
  decoder.check_image_size(spec, size)


class Stem(nnx.Module):
  """torchvision's conv1 (7x7, stride 2, no bias), bn1 and ReLU."""

  def __init__(self, spec: UNetSpec, rngs: nnx.Rngs, adapter: nnx.Rngs | None = None):
    self.conv1 = Conv(spec, spec.in_channels, 64, 7, stride=2, rngs=rngs, adapter=adapter)
    self.bn1 = torch_bn(spec, 64, rngs)

  def __call__(self, x, train: bool, running: dict | None = None):
    return jax.nn.relu(normalise(self.bn1, self.conv1(x), train, (running or {}).get('bn1')))


class Residual(nnx.Module):
  """torchvision's BasicBlock or Bottleneck (stride on the 3x3 convolution, v1.5)."""

  def __init__(self, spec: UNetSpec, kind: str, cin: int, planes: int, stride: int,
               rngs: nnx.Rngs, adapter: nnx.Rngs | None = None):
    cout = planes * EXPANSION[kind]
    if kind == 'basic':
      shapes = [(cin, planes, 3, stride), (planes, planes, 3, 1)]
    else:
      shapes = [(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, cout, 1, 1)]
    self.convs = len(shapes)
    for i, (a, b, size, s) in enumerate(shapes, start=1):
      setattr(self, f'conv{i}', Conv(spec, a, b, size, stride=s, rngs=rngs, adapter=adapter))
      setattr(self, f'bn{i}', torch_bn(spec, b, rngs))
    self.downsample = (Numbered(Conv(spec, cin, cout, 1, stride=stride, rngs=rngs,
                                     adapter=adapter),
                                torch_bn(spec, cout, rngs))
                       if stride != 1 or cin != cout else None)

  def __call__(self, x, train: bool, running: dict | None = None):
    running = running or {}
    y = x
    for i in range(1, self.convs + 1):
      y = normalise(getattr(self, f'bn{i}'), getattr(self, f'conv{i}')(y), train,
                    running.get(f'bn{i}'))
      y = jax.nn.relu(y) if i < self.convs else y
    if self.downsample is not None:
      x = normalise(self.downsample[1], self.downsample[0](x), train,
                    (running.get('downsample') or {}).get('1'))
    return jax.nn.relu(y + x)


def encoder_widths(spec: UNetSpec) -> tuple[int, ...]:
  """Channels of the stem and layer1..layer4 outputs."""
  check_spec(spec)
  expansion = EXPANSION[ENCODERS[spec.encoder][0]]
  return (64,) + tuple(w * expansion for w in STAGE_WIDTHS)


class ResNetUNet(PyramidUNet):
  """ResNet encoder + U-Net decoder; input NHWC (sides multiples of 32), output logits."""

  def __init__(self, spec: UNetSpec, rngs: nnx.Rngs):
    check_spec(spec)
    self.spec = spec
    kind, counts = ENCODERS[spec.encoder]
    adapters = adapter_streams(spec, rngs)
    self.stem = Stem(spec, rngs, adapters('stem'))
    cin = 64
    for level, (planes, count) in enumerate(zip(STAGE_WIDTHS, counts), start=1):
      stride = 1 if level == 1 else 2
      blocks = []
      for i in range(count):
        blocks.append(Residual(spec, kind, cin, planes, stride if i == 0 else 1, rngs,
                               adapters(f'layer{level}')))
        cin = planes * EXPANSION[kind]
      setattr(self, f'layer{level}', Stage(*blocks))
    self.add_decoder(spec, encoder_widths(spec), rngs, adapters)

  def encode(self, x, *, train: bool, running: dict | None = None) -> list[jax.Array]:
    """Features of the stem (before the max pool) and of layer1..layer4."""
    running = running or {}
    x = self.stem(x, train, running.get('stem'))
    features = [x]
    # PyTorch's MaxPool2d(3, 2, padding=1) pads with -inf.
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                              ((0, 0), (1, 1), (1, 1), (0, 0)))
    for name in ENCODER_BLOCKS[1:]:
      x = getattr(self, name)(x, train, running.get(name))
      features.append(x)
    return features


Network = ResNetUNet


def init(spec: UNetSpec, seed: int) -> tuple[PyTree, PyTree]:
  """Random weights of a ResNetUNet: (params, stats) as pure dicts.

  The weights are drawn by one compiled program per spec, for every seed: op by op each of
  the initialisers compiles on its own (resnet18 on a 2-core CPU: 17 s against 4 s).
  """
  return init_program(ResNetUNet, spec)(jax.random.key(seed))


def torch_name(path: tuple[str, ...]) -> str:
  """The torchvision name of an encoder leaf: ('stem', 'bn1', 'scale') -> 'bn1.weight'."""
  parts = list(path[1:] if path[0] == 'stem' else path)
  return '.'.join(parts[:-1] + [encoder_weights.TORCH_LEAF[parts[-1]]])


def _ignored(name: str) -> bool:
  return name.startswith('fc.') or name.endswith('num_batches_tracked')


def encoder_from_torchvision(state_dict: Mapping[str, Any], params: PyTree, stats: PyTree,
                             spec: UNetSpec, *, source: str, grey: str = 'sum',
                             imagenet: bool = False) -> tuple[PyTree, PyTree]:
  """Copies of ``params`` and ``stats`` with stem and layer1..4 from a torchvision ResNet.

  Args:
    state_dict: name -> array as torchvision's (or timm's) ``resnet*().state_dict()`` names
      them; one prefix shared by every key (``encoder.``, ``model.``, ``module.``) is
      dropped. ``fc.*`` and ``*.num_batches_tracked`` are ignored.
    params, stats: pure-dict trees of a ResNetUNet built from ``spec``.
    spec: the model's spec.
    source: where the weights come from (a file name), for error messages.
    grey: for a one-channel model and a three-channel stem, ``'sum'`` sums the stem's
      filters over the colour axis (a grey image then gives what the RGB stem gives for
      that image repeated three times); ``'repeat'`` refuses it, the model must then take
      three channels and the data repeat the grey image.
    imagenet: the inputs are ImageNet-normalised (``data.normalise(..., 'imagenet')``);
      a summed stem then weights each colour filter by ``s / s_c`` (the grey channel's SD
      over that channel's), so that a grey image normalised once gives what the RGB stem
      gives for it repeated and normalised per channel, up to a constant per filter of
      ``sum_c w_c (m - m_c) / s_c`` (zero for filters equal across colours) that the
      BatchNorm after the stem meets as a shift of its mean.

  Returns:
    (params, stats), new trees; the decoder and head leaves are the given ones.

  Raises UserError naming ``source`` and the encoder for the first missing, the first
  unexpected or the first mis-shaped entry.
  """
  check_spec(spec)
  return encoder_weights.copy_encoder(
      encoder_weights.strip_prefix(state_dict), params, stats, blocks=ENCODER_BLOCKS,
      torch_name=torch_name, ignored=_ignored, stem='conv1.weight',
      where=f'{source} ({spec.encoder} encoder)', grey=grey, imagenet=imagenet)
