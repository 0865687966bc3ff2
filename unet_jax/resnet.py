"""A U-Net on a torchvision ResNet encoder, laid out as segmentation_models_pytorch's ``Unet``.

Blocks in data-flow order (``block_order.RESNET.flow``): ``stem`` (7x7/2 convolution, BatchNorm,
ReLU), the 3x3/2 max pool (no parameters), ``layer1 .. layer4`` (torchvision's residual
stages: BasicBlock for resnet18/34, Bottleneck v1.5 for resnet50), then ``dec5 .. dec1``
(nearest upsampling by 2, concatenation with the skip, two 3x3 convolution + norm + ReLU;
``dec5`` takes layer4 and the layer3 skip, ..., ``dec2`` the stem skip, ``dec1`` none) and
``head``, a 3x3 convolution with bias. The contracting path is ``stem, layer1..layer4``, the
expanding path ``dec5..dec1, head``.

Parameter paths are torchvision's names with ``/``, the stem's under ``stem``::

  stem/conv1/kernel  stem/bn1/scale  layer1/0/conv1/kernel  layer2/0/downsample/0/kernel
  layer2/0/downsample/1/scale  dec5/conv1/kernel  dec5/norm1/scale  head/kernel  head/bias

Block indices are string keys (``'0'``, ``'1'``, ...), so a tree keeps its keys through
orbax and JSON. The statistics follow the same paths (``layer2/0/downsample/1/mean``).

The encoder always uses BatchNorm (pretrained weights carry running statistics); ``spec.norm``
applies to the decoder (``'batch'``, ``'group'`` or ``'none'``; a decoder convolution has a bias
only without normalisation, as smp's ``Conv2dReLU``). ``spec.depth`` and ``spec.base_width``
are not read: the ResNet fixes its widths, the decoder's are ``spec.decoder_channels``.
BatchNorm modes and the ``running`` flags are those of :class:`unet_jax.model.UNet`; epsilon
1e-5 and flax's ``momentum=spec.bn_momentum`` (0.9 is torch's 0.1). Unlike torch, flax moves
the running variance towards the biased batch variance (a factor n/(n-1), n = N*H*W).
Convolutions pad symmetrically like PyTorch; with ``spec.conv == 'matmul'`` every
convolution, strided ones included, is im2col + matmul with the same parameters.

Example::

  spec = UNetSpec(encoder='resnet34', in_channels=1)
  graphdef, params, stats = unet_jax.model.init_model(spec, seed=0)
  params, stats = encoder_from_torchvision(torch_state, params, stats, spec,
                                           source='resnet34.pth')
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unet_jax import block_order
from unet_jax.errors import UserError
from unet_jax.layers import BatchNorm, make_norm, split_model
from unet_jax.spec import NORMS, UNetSpec

PyTree = Any

# encoder -> (residual block, blocks per stage); torchvision's resnet18/34/50.
ENCODERS = {
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
}
EXPANSION = {'basic': 1, 'bottleneck': 4}
STAGE_WIDTHS = (64, 128, 256, 512)
assert tuple(ENCODERS) == block_order.RESNET_ENCODERS  # the names settings offer
ENCODER_BLOCKS = block_order.RESNET_CONTRACTING  # stem, layer1..layer4
DECODER_BLOCKS = block_order.RESNET_EXPANDING[:-1]  # dec5..dec1, the head after them
GREY = ('sum', 'repeat')
DIVISOR = 32  # the encoder halves the resolution five times

# torchvision's initialisation for the encoder, smp's for the decoder and the head.
_ENCODER_INIT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
_DECODER_INIT = nnx.initializers.variance_scaling(2.0, 'fan_in', 'uniform')
_HEAD_INIT = nnx.initializers.xavier_uniform()


def check_spec(spec: UNetSpec) -> None:
  """Raises UserError unless ``spec`` describes a ResNet U-Net this module builds."""
  if spec.encoder not in ENCODERS:
    raise UserError(f'model.encoder={spec.encoder!r} is not a ResNet encoder; valid: '
                    f'{", ".join(ENCODERS)}')
  channels = spec.decoder_channels
  if len(channels) != 5 or not all(isinstance(c, int) and c > 0 for c in channels):
    raise UserError(f'model.decoder_channels={list(channels)} must be five positive '
                    f'integers, one per decoder block dec5..dec1')
  if spec.norm not in NORMS:
    raise UserError(f'model.norm={spec.norm!r} is not one of {", ".join(NORMS)}')


def check_image_size(spec: UNetSpec, size: int | tuple[int, int]) -> None:
  """Raises UserError unless the image height and width are multiples of 32."""
  check_spec(spec)
  sizes = (size, size) if isinstance(size, int) else tuple(size)
  if any(s <= 0 or s % DIVISOR for s in sizes):
    raise UserError(f'image size {size} must be divisible by {DIVISOR} for a '
                    f'{spec.encoder} encoder (it halves the resolution five times)')


class Conv(nnx.Conv):
  """A square convolution padded by ``size // 2`` on every side, as PyTorch pads it."""

  def __init__(self, spec: UNetSpec, cin: int, cout: int, size: int, *, stride: int = 1,
               bias: bool = False, init=_ENCODER_INIT, rngs: nnx.Rngs):
    pad = size // 2
    super().__init__(cin, cout, (size, size), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)), use_bias=bias, kernel_init=init,
                     rngs=rngs)
    self.matmul = spec.conv == 'matmul'

  def __call__(self, x):
    if not self.matmul:
      return super().__call__(x)
    kernel = self.kernel[...]
    kh, kw, cin, cout = kernel.shape
    (s, _), ((p, _), _) = self.strides, self.padding
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = (x.shape[1] - kh) // s + 1, (x.shape[2] - kw) // s + 1
    patches = jnp.concatenate([x[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :]
                               for i in range(kh) for j in range(kw)], axis=-1)
    y = patches @ kernel.reshape(kh * kw * cin, cout)
    return y + self.bias[...] if self.bias is not None else y


def _bn(spec: UNetSpec, features: int, rngs: nnx.Rngs) -> BatchNorm:
  return BatchNorm(features, momentum=spec.bn_momentum, epsilon=1e-5, rngs=rngs)


def _normalise(norm, x, train: bool, running):
  """``norm(x)`` in the BatchNorm mode ``UNet`` uses (unet_jax.model docstring)."""
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


class Stem(nnx.Module):
  """torchvision's conv1 (7x7, stride 2, no bias), bn1 and ReLU."""

  def __init__(self, spec: UNetSpec, rngs: nnx.Rngs):
    self.conv1 = Conv(spec, spec.in_channels, 64, 7, stride=2, rngs=rngs)
    self.bn1 = _bn(spec, 64, rngs)

  def __call__(self, x, train: bool, running: dict | None = None):
    return jax.nn.relu(_normalise(self.bn1, self.conv1(x), train, (running or {}).get('bn1')))


class Residual(nnx.Module):
  """torchvision's BasicBlock or Bottleneck (stride on the 3x3 convolution, v1.5)."""

  def __init__(self, spec: UNetSpec, kind: str, cin: int, planes: int, stride: int,
               rngs: nnx.Rngs):
    cout = planes * EXPANSION[kind]
    if kind == 'basic':
      shapes = [(cin, planes, 3, stride), (planes, planes, 3, 1)]
    else:
      shapes = [(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, cout, 1, 1)]
    self.convs = len(shapes)
    for i, (a, b, size, s) in enumerate(shapes, start=1):
      setattr(self, f'conv{i}', Conv(spec, a, b, size, stride=s, rngs=rngs))
      setattr(self, f'bn{i}', _bn(spec, b, rngs))
    self.downsample = (Numbered(Conv(spec, cin, cout, 1, stride=stride, rngs=rngs),
                                _bn(spec, cout, rngs))
                       if stride != 1 or cin != cout else None)

  def __call__(self, x, train: bool, running: dict | None = None):
    running = running or {}
    y = x
    for i in range(1, self.convs + 1):
      y = _normalise(getattr(self, f'bn{i}'), getattr(self, f'conv{i}')(y), train,
                     running.get(f'bn{i}'))
      y = jax.nn.relu(y) if i < self.convs else y
    if self.downsample is not None:
      x = _normalise(self.downsample[1], self.downsample[0](x), train,
                     (running.get('downsample') or {}).get('1'))
    return jax.nn.relu(y + x)


class Stage(Numbered):
  """One of layer1..layer4: residual blocks under '0', '1', ..."""

  def __call__(self, x, train: bool, running: dict | None = None):
    running = running or {}
    for i in range(self.count):
      x = self[i](x, train, running.get(str(i)))
    return x


class DecoderBlock(nnx.Module):
  """smp's UnetDecoderBlock: nearest upsampling by 2, the skip, two conv + norm + ReLU."""

  def __init__(self, spec: UNetSpec, cin: int, cout: int, rngs: nnx.Rngs):
    bias = spec.norm == 'none'
    self.conv1 = Conv(spec, cin, cout, 3, bias=bias, init=_DECODER_INIT, rngs=rngs)
    self.norm1 = _decoder_norm(spec, cout, rngs)
    self.conv2 = Conv(spec, cout, cout, 3, bias=bias, init=_DECODER_INIT, rngs=rngs)
    self.norm2 = _decoder_norm(spec, cout, rngs)

  def __call__(self, x, skip, train: bool, running: dict | None = None):
    running = running or {}
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if skip is not None:
      x = jnp.concatenate([x, skip], axis=-1)
    x = jax.nn.relu(_normalise(self.norm1, self.conv1(x), train, running.get('norm1')))
    return jax.nn.relu(_normalise(self.norm2, self.conv2(x), train, running.get('norm2')))


def _decoder_norm(spec: UNetSpec, features: int, rngs: nnx.Rngs) -> nnx.Module:
  return _bn(spec, features, rngs) if spec.norm == 'batch' else make_norm(spec, features, rngs)


def encoder_widths(spec: UNetSpec) -> tuple[int, ...]:
  """Channels of the stem and layer1..layer4 outputs."""
  check_spec(spec)
  expansion = EXPANSION[ENCODERS[spec.encoder][0]]
  return (64,) + tuple(w * expansion for w in STAGE_WIDTHS)


class ResNetUNet(nnx.Module):
  """ResNet encoder + U-Net decoder; input NHWC (sides multiples of 32), output logits."""

  def __init__(self, spec: UNetSpec, rngs: nnx.Rngs):
    check_spec(spec)
    self.spec = spec
    kind, counts = ENCODERS[spec.encoder]
    self.stem = Stem(spec, rngs)
    cin = 64
    for level, (planes, count) in enumerate(zip(STAGE_WIDTHS, counts), start=1):
      stride = 1 if level == 1 else 2
      blocks = []
      for i in range(count):
        blocks.append(Residual(spec, kind, cin, planes, stride if i == 0 else 1, rngs))
        cin = planes * EXPANSION[kind]
      setattr(self, f'layer{level}', Stage(*blocks))
    widths = encoder_widths(spec)
    skips = (widths[3], widths[2], widths[1], widths[0], 0)  # layer3 .. stem, none
    cin = widths[4]
    for name, skip, cout in zip(DECODER_BLOCKS, skips, spec.decoder_channels):
      setattr(self, name, DecoderBlock(spec, cin + skip, cout, rngs))
      cin = cout
    self.head = Conv(spec, cin, spec.out_channels, 3, bias=True, init=_HEAD_INIT, rngs=rngs)

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

  def __call__(self, x, *, train: bool, running: dict | None = None):
    """Logits; ``running`` as in unet_jax.model's docstring (None: batch statistics)."""
    running = running or {}
    features = self.encode(x, train=train, running=running)
    x = features[-1]
    skips = features[-2::-1] + [None]  # layer3, layer2, layer1, stem, none
    for name, skip in zip(DECODER_BLOCKS, skips):
      x = getattr(self, name)(x, skip, train, running.get(name))
    return self.head(x)


Network = ResNetUNet


def init(spec: UNetSpec, seed: int) -> tuple[PyTree, PyTree]:
  """Random weights of a ResNetUNet: (params, stats) as pure dicts.

  The weights are drawn by one compiled program per spec, for every seed: op by op each of
  the initialisers compiles on its own (resnet18 on a 2-core CPU: 17 s against 4 s).
  """
  return _init_program(spec)(jax.random.key(seed))


@functools.lru_cache(maxsize=8)
def _init_program(spec: UNetSpec):
  def states(key):
    return split_model(ResNetUNet(spec, nnx.Rngs(key)))[1:]
  # Drawing weights needs no optimised code: on CPU level 0 compiles 3x faster than the default.
  options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  return jax.jit(states).lower(jax.random.key(0)).compile(compiler_options=options)


# Torchvision state-dict names of each leaf name here.
_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
               'var': 'running_var'}
_PREFIXES = ('encoder.', 'model.', 'module.')


def torch_name(path: tuple[str, ...]) -> str:
  """The torchvision name of an encoder leaf: ('stem', 'bn1', 'scale') -> 'bn1.weight'."""
  parts = list(path[1:] if path[0] == 'stem' else path)
  return '.'.join(parts[:-1] + [_TORCH_LEAF[parts[-1]]])


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  for prefix in _PREFIXES:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
      return {k[len(prefix):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _ignored(name: str) -> bool:
  return name.startswith('fc.') or name.endswith('num_batches_tracked')


def _encoder_leaves(tree: PyTree) -> dict[tuple[str, ...], Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  leaves = {tuple(str(k.key) for k in path): leaf for path, leaf in flat}
  return {p: leaf for p, leaf in leaves.items() if p[0] in ENCODER_BLOCKS}


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
  if grey not in GREY:
    raise UserError(f'grey={grey!r} is not one of {", ".join(GREY)}')
  where = f'{source} ({spec.encoder} encoder)'
  weights = _strip_prefix(state_dict)
  targets = {**_encoder_leaves(params), **_encoder_leaves(stats)}
  # torchvision's order: the stem, then layer1..layer4.
  order = sorted(targets, key=lambda p: (ENCODER_BLOCKS.index(p[0]), p))
  names = {torch_name(p): p for p in order}
  for name in names:
    if name not in weights:
      seen = ', '.join(repr(k) for k in list(weights)[:3])
      raise UserError(f'{where}: missing {name!r}; its keys begin {seen}')
  for name in weights:
    if name not in names and not _ignored(name):
      raise UserError(f'{where}: unexpected {name!r}; is it a checkpoint of another '
                      f'ResNet, or of a whole model (keep only its encoder entries)?')
  converted = {}
  for name, path in names.items():
    target = targets[path]
    value = np.asarray(weights[name], dtype=np.float32)
    if path[-1] == 'kernel' and value.ndim == 4:
      value = _grey_stem(value.transpose(2, 3, 1, 0), target.shape, grey, where, name,
                         imagenet)
    if value.shape != target.shape:
      raise UserError(f'{where}: {name!r} has shape {tuple(np.shape(weights[name]))}, expected '
                      f'{_torch_shape(target.shape, path[-1])}')
    converted[path] = jnp.asarray(value, dtype=target.dtype)
  def replace(path, leaf):
    return converted.get(tuple(str(k.key) for k in path), leaf)
  return (jax.tree_util.tree_map_with_path(replace, params),
          jax.tree_util.tree_map_with_path(replace, stats))


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  return tuple(shape[i] for i in (3, 2, 0, 1)) if leaf == 'kernel' else tuple(shape)


def _grey_stem(kernel: np.ndarray, shape: tuple[int, ...], grey: str, where: str,
               name: str, imagenet: bool = False) -> np.ndarray:
  """The stem kernel (HWIO) for a one-channel model from a three-channel one."""
  if name != 'conv1.weight' or kernel.shape[2] != 3 or shape[2] != 1:
    return kernel
  if grey == 'repeat':
    raise UserError(f'{where}: grey=repeat needs model.in_channels=3 (the data repeats '
                    f"the grey image); this model takes 1 channel: set in_channels=3 or "
                    f"grey='sum'")
  if imagenet:
    from unet_jax.data import IMAGENET_GREY, IMAGENET_SD  # noqa: PLC0415 - data imports jax
    kernel = kernel * (IMAGENET_GREY[1] / np.asarray(IMAGENET_SD, np.float32))[:, None]
  return kernel.sum(axis=2, keepdims=True)
