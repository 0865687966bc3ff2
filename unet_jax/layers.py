"""Layers every network family shares: BatchNorm with traced modes, the convolution
variants (im2col + matmul, low-rank adapters), norms by name, and ``split_model``.

BatchNorm modes: in evaluation every BatchNorm layer normalises with its running
statistics; in training with the batch's, unless a ``running`` flag says
otherwise (``unet_jax.model``'s docstring). ``conv`` and ``make_norm`` read
``UNetSpec.conv``, ``.norm``, ``.group_size``, ``.bn_momentum`` and the
adapter fields.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unet_jax.spec import UNetSpec

PyTree = Any


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


def make_norm(spec: UNetSpec, features: int, rngs: nnx.Rngs) -> nnx.Module:
  if spec.norm == 'batch':
    return BatchNorm(features, momentum=spec.bn_momentum, rngs=rngs)
  if spec.norm == 'group':
    groups = max(1, features // spec.group_size)
    return nnx.GroupNorm(features, num_groups=groups, rngs=rngs)
  return Identity()


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


def conv(spec: UNetSpec, cin: int, cout: int, size: int, rngs: nnx.Rngs,
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
    self.lora_a, self.lora_b = lora_factors(adapter_rngs, int(np.prod(kernel_size)) * cin,
                                            rank, cout)
    self._matmul = matmul

  def __call__(self, x):
    kernel = self.kernel[...]
    kernel = adapted_kernel(kernel, self.lora_a, self.lora_b)
    if self._matmul:
      y = im2col_conv(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + self.bias[...] if self.bias is not None else y


def lora_factors(adapter_rngs: nnx.Rngs, fan_in: int, rank: int, cout: int
                 ) -> tuple[nnx.Param, nnx.Param]:
  """A low-rank update's factors: ``A`` (fan_in, rank) Kaiming-uniform (bound
  1/sqrt(fan_in)) from ``adapter_rngs``, ``B`` (rank, cout) zero (:class:`LoRAConv`)."""
  bound = 1.0 / np.sqrt(fan_in)
  a = jax.random.uniform(adapter_rngs.params(), (fan_in, rank), jnp.float32, -bound, bound)
  return nnx.Param(a), nnx.Param(jnp.zeros((rank, cout), jnp.float32))


def adapted_kernel(kernel, lora_a, lora_b):
  """The kernel with its low-rank update: ``W + A B`` reshaped like ``W``."""
  return kernel + (lora_a[...] @ lora_b[...]).reshape(kernel.shape)


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


class Identity(nnx.Module):

  def __call__(self, x, use_running_average=None):
    del use_running_average
    return x


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, PyTree, PyTree]:
  """Returns (graphdef, params, batch_stats), the states as pure nested dicts."""
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


@functools.lru_cache(maxsize=8)
def init_program(network: type, spec: UNetSpec):
  """One compiled program drawing ``network(spec, rngs)``'s weights from a key, for every
  seed: op by op each initialiser compiles on its own (resnet18 on a 2-core CPU: 17 s
  against 4 s). Returns key -> (params, stats)."""
  def states(key):
    return split_model(network(spec, nnx.Rngs(key)))[1:]
  # Drawing weights needs no optimised code: on CPU level 0 compiles 3x faster than the default.
  options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  return jax.jit(states).lower(jax.random.key(0)).compile(compiler_options=options)
