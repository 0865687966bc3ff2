"""A U-Net whose blocks carry the names the fine-tuning study talks about.

Blocks: ``enc1 .. encD`` on the contracting path (``enc1`` at full resolution),
``bottleneck``, ``decD .. dec1`` on the expanding path (``dec1`` at full
resolution, last in data-flow order) and a 1x1 ``head``. Each block is two 3x3
convolutions, each followed by normalisation and ReLU; a decoder block owns the
up-convolution that feeds it, so freezing ``dec2`` freezes its ``up`` too.

The training core is functional: ``split_model`` turns the module into a graph
definition plus two pure-dict pytrees (parameters and BatchNorm statistics) and
``apply_model`` runs the graph on them, so the same code can be jitted, vmapped
and sharded.

BatchNorm modes. In evaluation (``train=False``) every BatchNorm layer
normalises with its running statistics. In training each layer normalises
with the batch's statistics, unless ``running`` says otherwise for it: a tree
with one flag per BatchNorm layer (:func:`norm_layer_tree` of the statistics)
that is True where the layer normalises with its running statistics in
training too, as a frozen layer does under the ``inference`` policy of
``unet_jax.freeze.norm_masks``. A flag may be a Python bool (the other branch
is never built) or a traced 0/1 scalar (both are computed and one selected,
so experiments with different flags share one program).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unet_jax import structures
from unet_jax.block_order import UNET, layout

NORMS = ('batch', 'group', 'none')

PyTree = Any


@dataclasses.dataclass(frozen=True)
class UNetSpec:
  """Architecture of a U-Net; the fields mirror ``config.model``."""

  base_width: int = 16
  depth: int = 4
  in_channels: int = 1
  out_channels: int = 1
  norm: str = 'batch'
  group_size: int = 8  # channels per group for GroupNorm
  bn_momentum: float = 0.9
  # 'matmul' writes convolutions as im2col + matmul: the same parameters and
  # outputs, but under vmap over experiments XLA makes batched matmuls
  # instead of grouped convolutions (DESIGN.md section 3).
  conv: str = 'xla'
  # 'unet': the paper's U-Net above; 'resnet18' | 'resnet34' | 'resnet50': a
  # torchvision ResNet encoder with a U-Net decoder (unet_jax/resnet.py);
  # decoder_channels are then the widths of its five decoder blocks.
  encoder: str = 'unet'
  decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
  # Low-rank adapters (LoRA for convolutions): > 0 gives the 3x3 kernels of
  # the blocks adapter_blocks matches (a regular expression over block
  # names) a rank-r update W + A B, B zero-initialised (:class:`LoRAConv`).
  adapter_rank: int = 0
  adapter_blocks: str = 'enc.*|bottleneck|dec.*'

  def __post_init__(self):
    # Read back from JSON the widths are a list; the spec must stay hashable.
    object.__setattr__(self, 'decoder_channels', tuple(self.decoder_channels))

  def block_names(self) -> tuple[str, ...]:
    """Blocks in data-flow order: enc1..encD, bottleneck, decD..dec1, head; for a ResNet
    encoder stem, layer1..layer4, dec5..dec1, head (``block_order.layout``)."""
    return layout(self).flow

  def identity(self) -> dict:
    """The fields results depend on, as fingerprints record them: the fields added
    after the first release only where they differ from their defaults, so work
    directories of the paper's U-Net without adapters keep their fingerprints."""
    out = dataclasses.asdict(self)
    if self.encoder == UNET:
      del out['encoder'], out['decoder_channels']
    if not self.adapter_rank:
      del out['adapter_rank'], out['adapter_blocks']
    return out

  def adapted(self, block: str) -> bool:
    """Whether ``block``'s 3x3 convolutions carry low-rank adapters."""
    return self.adapter_rank > 0 and re.fullmatch(self.adapter_blocks, block) is not None

  def width(self, level: int) -> int:
    """Channels at a resolution level (1 = full resolution)."""
    return self.base_width * 2 ** (level - 1)


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm whose ``use_running_average`` may also be a traced flag.

  With a traced flag both normalisations are computed and one is selected
  (``where`` passes no gradient to the other), and the running statistics
  are left as they were where the flag is set, as with a Python ``True``.
  """

  def __call__(self, x, use_running_average=None, *, mask=None):
    if use_running_average is None or isinstance(use_running_average, (bool, np.bool_)):
      return super().__call__(x, use_running_average, mask=mask)
    running = jnp.asarray(use_running_average) > 0
    old_mean, old_var = self.mean[...], self.var[...]
    frozen = super().__call__(x, True, mask=mask)
    adapted = super().__call__(x, False, mask=mask)
    self.mean[...] = jnp.where(running, old_mean, self.mean[...])
    self.var[...] = jnp.where(running, old_var, self.var[...])
    return jnp.where(running, frozen, adapted)


def _make_norm(spec: UNetSpec, features: int, rngs: nnx.Rngs) -> nnx.Module:
  if spec.norm == 'batch':
    return BatchNorm(features, momentum=spec.bn_momentum, rngs=rngs)
  if spec.norm == 'group':
    groups = max(1, features // spec.group_size)
    return nnx.GroupNorm(features, num_groups=groups, rngs=rngs)
  return _Identity()


def im2col_conv(x, kernel):
  """A stride-1 'SAME' convolution of NHWC ``x`` with an HWIO kernel as im2col + matmul."""
  kh, kw, cin, cout = kernel.shape
  if (kh, kw) == (1, 1):
    return x @ kernel[0, 0]
  h, w = x.shape[-3:-1]
  ph, pw = (kh - 1) // 2, (kw - 1) // 2
  xp = jnp.pad(x, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + h, j:j + w, :]
                             for i in range(kh) for j in range(kw)], axis=-1)
  return patches @ kernel.reshape(kh * kw * cin, cout)


class MatmulConv(nnx.Conv):
  """A stride-1 'SAME' convolution as im2col + matmul (same params as nnx.Conv)."""

  def __call__(self, x):
    y = im2col_conv(x, self.kernel[...])
    return y + self.bias[...] if self.bias is not None else y


class MatmulUpConv(nnx.ConvTranspose):
  """The 2x2, stride-2 transposed convolution as one matmul and a reshape."""

  def __call__(self, x):
    # lax.conv_transpose without transpose_kernel places tap (a, b) of the
    # kernel at output offset (1 - a, 1 - b): flip to match it exactly.
    kernel = self.kernel[...][::-1, ::-1]  # (2, 2, cin, cout)
    n, h, w, _ = x.shape
    cout = kernel.shape[-1]
    y = jnp.einsum('nhwc,abcd->nhawbd', x, kernel)
    y = y.reshape(n, 2 * h, 2 * w, cout)
    return y + self.bias[...] if self.bias is not None else y


def _conv(spec: UNetSpec, cin: int, cout: int, size: int, rngs: nnx.Rngs,
          adapters: nnx.Rngs | None = None):
  if adapters is not None:
    return LoRAConv(cin, cout, (size, size), rank=spec.adapter_rank,
                    matmul=spec.conv == 'matmul', adapter_rngs=adapters, rngs=rngs)
  cls = MatmulConv if spec.conv == 'matmul' else nnx.Conv
  return cls(cin, cout, (size, size), rngs=rngs)


class LoRAConv(nnx.Conv):
  """A stride-1 'SAME' convolution with a low-rank update: kernel ``W + A B``.

  As PEFT's LoRA for Conv2d: ``A`` (kh kw cin, r) acts like an r-filter
  convolution, ``B`` (r, cout) like a 1x1 one; ``A`` starts Kaiming-uniform
  (bound 1/sqrt(fan_in), PyTorch's default for a convolution) from its own
  random stream, so the other layers' initial weights are those of the
  network without adapters; ``B`` starts at zero, so the initial output is
  the pretrained network's exactly. Scaling alpha / r is 1 (alpha = r).
  :func:`merge_adapters` folds the update into ``W`` for export.
  """

  def __init__(self, cin, cout, kernel_size, *, rank: int, matmul: bool,
               adapter_rngs: nnx.Rngs, rngs: nnx.Rngs):
    super().__init__(cin, cout, kernel_size, rngs=rngs)
    fan_in = int(np.prod(kernel_size)) * cin
    bound = 1.0 / np.sqrt(fan_in)
    self.lora_a = nnx.Param(jax.random.uniform(adapter_rngs.params(), (fan_in, rank),
                                               jnp.float32, -bound, bound))
    self.lora_b = nnx.Param(jnp.zeros((rank, cout), jnp.float32))
    self._matmul = matmul

  def __call__(self, x):
    kernel = self.kernel[...]
    kernel = kernel + (self.lora_a[...] @ self.lora_b[...]).reshape(kernel.shape)
    if self._matmul:
      y = im2col_conv(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + self.bias[...] if self.bias is not None else y


def merge_adapters(params: PyTree) -> PyTree:
  """Parameters with every adapter folded into its kernel (``W + A B``) and the
  adapter leaves removed: the weights of the same network without adapters."""
  if not isinstance(params, dict):
    return params
  if 'lora_a' in params and 'lora_b' in params:
    kernel = np.asarray(params['kernel'])
    delta = np.asarray(params['lora_a']) @ np.asarray(params['lora_b'])
    merged = {k: v for k, v in params.items() if k not in ('lora_a', 'lora_b')}
    merged['kernel'] = (kernel + delta.reshape(kernel.shape)).astype(kernel.dtype)
    return merged
  return {k: merge_adapters(v) for k, v in params.items()}


def adapter_limit(spec: UNetSpec) -> tuple[int, str]:
  """(largest rank every adapted kernel allows, the block that sets it): a rank-r
  update of a (kh kw cin) x cout kernel needs r <= min(kh kw cin, cout)."""
  limits = []
  cin = spec.in_channels
  for level in range(1, spec.depth + 1):
    limits.append((min(9 * cin, spec.width(level)), f'enc{level}'))
    cin = spec.width(level)
  limits.append((min(9 * cin, spec.width(spec.depth + 1)), 'bottleneck'))
  for level in range(spec.depth, 0, -1):
    limits.append((min(9 * spec.width(level), spec.width(level)), f'dec{level}'))
  adapted = [(n, b) for n, b in limits if re.fullmatch(spec.adapter_blocks, b)]
  return min(adapted) if adapted else (0, '')


class _Identity(nnx.Module):

  def __call__(self, x, use_running_average=None):
    del use_running_average
    return x


class ConvBlock(nnx.Module):
  """Two 3x3 convolutions, each followed by normalisation and ReLU."""

  def __init__(self, spec: UNetSpec, cin: int, cout: int, rngs: nnx.Rngs,
               adapters: nnx.Rngs | None = None):
    self.conv1 = _conv(spec, cin, cout, 3, rngs, adapters)
    self.norm1 = _make_norm(spec, cout, rngs)
    self.conv2 = _conv(spec, cout, cout, 3, rngs, adapters)
    self.norm2 = _make_norm(spec, cout, rngs)
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
    self.head = _conv(spec, spec.width(1), spec.out_channels, 1, rngs)

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


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, PyTree, PyTree]:
  """Returns (graphdef, params, batch_stats), the states as pure nested dicts."""
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def init_model(spec: UNetSpec, seed: int) -> tuple[nnx.GraphDef, PyTree, PyTree]:
  """Builds the network ``spec`` describes with random weights; returns its functional parts.

  ``spec.encoder`` 'unet' is the paper's U-Net (:class:`UNet`), a ResNet encoder the
  ResNet U-Net (``unet_jax.resnet.ResNetUNet``).
  """
  if spec.encoder == UNET:
    return split_model(UNet(spec, nnx.Rngs(seed)))
  from unet_jax import resnet  # noqa: PLC0415 - resnet builds on this module
  return resnet.init_resnet_unet(spec, seed)


@functools.lru_cache(maxsize=32)
def model_graphdef(spec: UNetSpec) -> nnx.GraphDef:
  """The graph definition ``init_model`` returns, built without drawing any weights
  (tracing a ResNet U-Net takes about 0.5 s: built once per spec)."""
  if spec.encoder == UNET:
    return split_model(nnx.eval_shape(lambda: UNet(spec, nnx.Rngs(0))))[0]
  from unet_jax import resnet  # noqa: PLC0415 - resnet builds on this module
  return split_model(nnx.eval_shape(lambda: resnet.ResNetUNet(spec, nnx.Rngs(0))))[0]


def apply_model(graphdef: nnx.GraphDef, params: PyTree, stats: PyTree,
                images: jax.Array, *, train: bool, running: PyTree = None
                ) -> tuple[jax.Array, PyTree]:
  """Runs the U-Net functionally; returns (logits, new batch statistics).

  ``running`` (training only): per BatchNorm layer, whether it normalises
  with its running statistics (module docstring); None: none does.
  ``copy=True`` lets this run under ``vmap`` of ``value_and_grad``: without it
  the BatchNorm update raises ``TraceContextError``.
  """
  model = nnx.merge(graphdef, params, stats, copy=True)
  logits = model(images, train=train, running=running)
  _, _, new_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return logits, nnx.to_pure_dict(new_stats)


def norm_layer_tree(stats_like: PyTree) -> PyTree:
  """The statistics tree with each BatchNorm layer's {'mean', 'var'} as one leaf.

  Applied to a tree of per-statistic values shaped like the statistics, it
  keeps the layer's 'mean' value: the per-layer flags ``apply_model`` reads.
  """
  if isinstance(stats_like, dict) and 'mean' in stats_like and 'var' in stats_like:
    return stats_like['mean']
  if isinstance(stats_like, dict):
    return {k: norm_layer_tree(v) for k, v in stats_like.items()}
  return stats_like


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(graphdef, params, stats, images):
  logits, _ = apply_model(graphdef, params, stats, images, train=False)
  return structures.probabilities(logits)


def predict(graphdef, params, stats, images: np.ndarray, batch_size: int = 32
            ) -> np.ndarray:
  """Structure probabilities (N, H, W, K) in evaluation mode (K = 1: foreground;
  ``unet_jax.structures``).

  The last batch is padded to ``batch_size`` so one shape compiles once.
  """
  out = []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                             chunk.dtype)]) if pad else chunk
    out.append(np.asarray(_predict_batch(graphdef, params, stats, padded))
               [:len(chunk)])
  return np.concatenate(out)
