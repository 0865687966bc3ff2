"""The U-Net decoder of segmentation_models_pytorch's ``Unet``, shared by every encoder that
gives a feature pyramid (``unet_jax.resnet``, ``unet_jax.efficientnet``).

An encoder family subclasses :class:`PyramidUNet`: it builds its own blocks and defines
``encode(x, train=, running=)``, the five feature maps at 1/2, 1/4, 1/8, 1/16 and 1/32 of the
input's resolution; :meth:`PyramidUNet.add_decoder` then adds ``dec5 .. dec1`` and ``head``,
and calling the network decodes. ``dec5`` takes the deepest map, upsamples it by 2 (nearest)
and concatenates the 1/16 map, ..., ``dec2`` the 1/2 map, ``dec1`` no skip; each block has two
3x3 convolution + norm + ReLU (a bias only without normalisation, as smp's ``Conv2dReLU``);
``head`` is a 3x3 convolution with bias. The decoder's widths are ``spec.decoder_channels``,
its norm ``spec.norm`` (``'batch'``, ``'group'`` or ``'none'``).

Also here, for the families' encoders: :class:`Conv`, padded symmetrically like PyTorch
(strided and depthwise included; with ``spec.conv == 'matmul'`` written as im2col + matmul
with the same parameters; optionally with a low-rank adapter), :func:`adapter_streams`,
:func:`torch_bn` (epsilon 1e-5; flax's ``momentum=spec.bn_momentum``,
0.9 being torch's 0.1) and :func:`normalise`, the BatchNorm mode of ``unet_jax.model``'s
docstring for one layer.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from unet_jax.errors import UserError
from unet_jax.layers import BatchNorm, adapted_kernel, lora_factors, make_norm
from unet_jax.spec import NORMS, UNetSpec

DECODER_BLOCKS = ('dec5', 'dec4', 'dec3', 'dec2', 'dec1')  # the head after them
DIVISOR = 32  # the encoders halve the resolution five times

# smp's initialisation for the decoder and the head; torchvision's for the encoders.
DECODER_INIT = nnx.initializers.variance_scaling(2.0, 'fan_in', 'uniform')
HEAD_INIT = nnx.initializers.xavier_uniform()
ENCODER_INIT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def check_decoder(spec: UNetSpec) -> None:
  """Raises UserError unless the decoder fields of ``spec`` are valid."""
  channels = spec.decoder_channels
  if len(channels) != 5 or not all(isinstance(c, int) and c > 0 for c in channels):
    raise UserError(f'model.decoder_channels={list(channels)} must be five positive '
                    f'integers, one per decoder block dec5..dec1')
  if spec.norm not in NORMS:
    raise UserError(f'model.norm={spec.norm!r} is not one of {", ".join(NORMS)}')


def check_image_size(spec: UNetSpec, size: int | tuple[int, int]) -> None:
  """Raises UserError unless the image height and width are multiples of 32."""
  sizes = (size, size) if isinstance(size, int) else tuple(size)
  if any(s <= 0 or s % DIVISOR for s in sizes):
    raise UserError(f'image size {size} must be divisible by {DIVISOR} for a '
                    f'{spec.encoder} encoder (it halves the resolution five times)')


class Conv(nnx.Conv):
  """A square convolution padded by ``size // 2`` on every side, as PyTorch pads it.

  ``groups=cin`` makes it depthwise (kernel (size, size, 1, cin), as flax stores a grouped
  convolution). ``adapter``: a random stream for a rank-``spec.adapter_rank`` update
  ``W + A B`` of the kernel, as ``layers.LoRAConv`` (``A`` (kh kw cin, r) Kaiming-uniform,
  ``B`` (r, cout) zero, so the network starts as the one without adapters); None: none.
  """

  def __init__(self, spec: UNetSpec, cin: int, cout: int, size: int, *, stride: int = 1,
               groups: int = 1, bias: bool = False, init=ENCODER_INIT, rngs: nnx.Rngs,
               adapter: nnx.Rngs | None = None):
    pad = size // 2
    super().__init__(cin, cout, (size, size), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                     use_bias=bias, kernel_init=init, rngs=rngs)
    self.matmul = spec.conv == 'matmul'
    self.adapted = adapter is not None
    if self.adapted:
      self.lora_a, self.lora_b = lora_factors(adapter, size * size * cin // groups,
                                              spec.adapter_rank, cout)

  def __call__(self, x):
    if not self.matmul and not self.adapted:
      return super().__call__(x)
    kernel = self.kernel[...]
    if self.adapted:
      kernel = adapted_kernel(kernel, self.lora_a, self.lora_b)
    if not self.matmul:
      y = jax.lax.conv_general_dilated(x, kernel, self.strides, self.padding,
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                       feature_group_count=self.feature_group_count)
      return y + self.bias[...] if self.bias is not None else y
    kh, kw, cin, cout = kernel.shape
    (s, _), ((p, _), _) = self.strides, self.padding
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = (x.shape[1] - kh) // s + 1, (x.shape[2] - kw) // s + 1
    taps = [x[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :]
            for i in range(kh) for j in range(kw)]
    if self.feature_group_count > 1:  # depthwise: each channel its own filter
      y = sum(t * kernel[i // kw, i % kw, 0] for i, t in enumerate(taps))
    else:
      y = jnp.concatenate(taps, axis=-1) @ kernel.reshape(kh * kw * cin, cout)
    return y + self.bias[...] if self.bias is not None else y


def adapter_streams(spec: UNetSpec, rngs: nnx.Rngs) -> Callable[[str], nnx.Rngs | None]:
  """block -> the random stream of its adapters, or None where ``spec`` adapts no block of
  that name. The stream is its own, so the other weights are those of the same seed's
  network without adapters (as ``unet_jax.unet``)."""
  stream = nnx.Rngs(jax.random.fold_in(rngs.params.key[...], 0x10A))
  return lambda block: stream if spec.adapted(block) else None


def torch_bn(spec: UNetSpec, features: int, rngs: nnx.Rngs) -> BatchNorm:
  """BatchNorm as torch's default (epsilon 1e-5); the momentum is ``spec.bn_momentum``."""
  return BatchNorm(features, momentum=spec.bn_momentum, epsilon=1e-5, rngs=rngs)


def normalise(norm, x, train: bool, running):
  """``norm(x)`` in the BatchNorm mode of unet_jax.model's docstring."""
  if not isinstance(norm, BatchNorm):
    return norm(x)
  if not train:
    return norm(x, use_running_average=True)
  return norm(x, use_running_average=False if running is None else running)


class Numbered(nnx.Module):
  """Modules under the string keys '0', '1', ... (torch's nn.Sequential names)."""

  def __init__(self, *modules: nnx.Module):
    for i, module in enumerate(modules):
      setattr(self, str(i), module)
    self.count = len(modules)

  def __getitem__(self, i: int) -> nnx.Module:
    return getattr(self, str(i))


class Stage(Numbered):
  """Blocks under '0', '1', ... applied in turn, each with its own ``running`` flags."""

  def __call__(self, x, train: bool, running: dict | None = None):
    running = running or {}
    for i in range(self.count):
      x = self[i](x, train, running.get(str(i)))
    return x


class DecoderBlock(nnx.Module):
  """smp's UnetDecoderBlock: nearest upsampling by 2, the skip, two conv + norm + ReLU."""

  def __init__(self, spec: UNetSpec, cin: int, cout: int, rngs: nnx.Rngs,
               adapter: nnx.Rngs | None = None):
    bias = spec.norm == 'none'
    self.conv1 = Conv(spec, cin, cout, 3, bias=bias, init=DECODER_INIT, rngs=rngs,
                      adapter=adapter)
    self.norm1 = make_norm(spec, cout, rngs)  # BatchNorm's epsilon is torch's, 1e-5
    self.conv2 = Conv(spec, cout, cout, 3, bias=bias, init=DECODER_INIT, rngs=rngs,
                      adapter=adapter)
    self.norm2 = make_norm(spec, cout, rngs)

  def __call__(self, x, skip, train: bool, running: dict | None = None):
    running = running or {}
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if skip is not None:
      x = jnp.concatenate([x, skip], axis=-1)
    x = jax.nn.relu(normalise(self.norm1, self.conv1(x), train, running.get('norm1')))
    return jax.nn.relu(normalise(self.norm2, self.conv2(x), train, running.get('norm2')))


class PyramidUNet(nnx.Module):
  """An encoder's five feature maps decoded by smp's U-Net decoder (module docstring).

  Subclasses build their encoder blocks, then call :meth:`add_decoder`, and define
  ``encode``. ``running``: per block, the BatchNorm flags of unet_jax.model's docstring.
  """

  def add_decoder(self, spec: UNetSpec, widths: tuple[int, ...], rngs: nnx.Rngs,
                  adapters: Callable[[str], nnx.Rngs | None] = lambda block: None) -> None:
    """Adds dec5..dec1 and head for features of ``widths`` channels (1/2 .. 1/32);
    ``adapters`` as :func:`adapter_streams` returns it (the head has none)."""
    check_decoder(spec)
    skips = (widths[3], widths[2], widths[1], widths[0], 0)  # 1/16 .. 1/2, none
    cin = widths[4]
    for name, skip, cout in zip(DECODER_BLOCKS, skips, spec.decoder_channels):
      setattr(self, name, DecoderBlock(spec, cin + skip, cout, rngs, adapters(name)))
      cin = cout
    self.head = Conv(spec, cin, spec.out_channels, 3, bias=True, init=HEAD_INIT, rngs=rngs)

  def encode(self, x, *, train: bool, running: dict | None = None) -> list[jax.Array]:
    raise NotImplementedError

  def __call__(self, x, *, train: bool, running: dict | None = None):
    """Logits; ``running`` as in unet_jax.model's docstring (None: batch statistics)."""
    running = running or {}
    features = self.encode(x, train=train, running=running)
    x = features[-1]
    skips = features[-2::-1] + [None]  # 1/16, 1/8, 1/4, 1/2, none
    for name, skip in zip(DECODER_BLOCKS, skips):
      x = getattr(self, name)(x, skip, train, running.get(name))
    return self.head(x)
