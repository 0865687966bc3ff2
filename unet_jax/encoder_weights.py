"""An encoder's weights from a PyTorch state dict (torchvision's or timm's names).

A family says which of its leaves come from the file and what each is called there
(``torch_name``); :func:`copy_encoder` checks the file against that (first missing, first
unexpected, first mis-shaped entry, each named with the file), transposes kernels from
PyTorch's OIHW to flax's HWIO (a depthwise (C, 1, k, k) becomes (k, k, 1, C), as flax stores
a grouped convolution) and, for a one-channel model, folds a three-channel stem (``grey``).
Leaf names: ``kernel`` <- ``weight`` of a convolution, ``scale`` <- ``weight`` of a BatchNorm,
``bias``, ``mean`` <- ``running_mean``, ``var`` <- ``running_var``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.data.dataset import IMAGENET_GREY, IMAGENET_SD
from unet_jax.errors import UserError

PyTree = Any
Path = tuple[str, ...]

GREY = ('sum', 'repeat')  # pretrain.grey: how a one-channel model takes an RGB stem
TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
              'var': 'running_var'}
_PREFIXES = ('encoder.', 'model.', 'module.')


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The state dict without one prefix every key shares (``encoder.``, ``model.``,
  ``module.``)."""
  for prefix in _PREFIXES:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
      return {k[len(prefix):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def leaves(tree: PyTree, blocks: tuple[str, ...]) -> dict[Path, Any]:
  """The leaves of ``tree`` under the top-level ``blocks``, by path."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {tuple(str(k.key) for k in path): leaf for path, leaf in flat}
  return {p: leaf for p, leaf in out.items() if p[0] in blocks}


def copy_encoder(weights: Mapping[str, Any], params: PyTree, stats: PyTree, *,
                 blocks: tuple[str, ...], torch_name: Callable[[Path], str],
                 ignored: Callable[[str], bool], stem: str, where: str, grey: str = 'sum',
                 imagenet: bool = False) -> tuple[PyTree, PyTree]:
  """Copies of ``params`` and ``stats`` with the leaves under ``blocks`` from ``weights``.

  Args:
    weights: name -> array, a prefix already stripped (:func:`strip_prefix`).
    params, stats: pure-dict trees of the network.
    blocks: the encoder's blocks, in the order the file lists them.
    torch_name: a leaf's path -> its name in ``weights``.
    ignored: names in ``weights`` that are not the encoder's (a classifier, counters).
    stem: the name of the first convolution's weight (the one ``grey`` folds).
    where: the file and the encoder, for error messages.
    grey, imagenet: as ``resnet.encoder_from_torchvision`` documents them.
  """
  if grey not in GREY:
    raise UserError(f'grey={grey!r} is not one of {", ".join(GREY)}')
  targets = {**leaves(params, blocks), **leaves(stats, blocks)}
  order = sorted(targets, key=lambda p: (blocks.index(p[0]), p))
  names = {torch_name(p): p for p in order}
  for name in names:
    if name not in weights:
      seen = ', '.join(repr(k) for k in list(weights)[:3])
      raise UserError(f'{where}: missing {name!r}; its keys begin {seen}')
  for name in weights:
    if name not in names and not ignored(name):
      raise UserError(f'{where}: unexpected {name!r}; is it a checkpoint of another '
                      f'network, or of a whole model (keep only its encoder entries)?')
  converted = {}
  for name, path in names.items():
    target = targets[path]
    value = np.asarray(weights[name], dtype=np.float32)
    if path[-1] == 'kernel' and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
      if name == stem:
        value = grey_stem(value, target.shape, grey, where, imagenet)
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


def grey_stem(kernel: np.ndarray, shape: tuple[int, ...], grey: str, where: str,
              imagenet: bool = False) -> np.ndarray:
  """The stem kernel (HWIO) for a one-channel model from a three-channel one.

  ``'sum'`` sums the filters over the colour axis, weighting each colour by ``s / s_c``
  when the inputs are ImageNet-normalised; ``'repeat'`` refuses (the model must take three
  channels). Any other kernel is returned as it is.
  """
  if kernel.shape[2] != 3 or shape[2] != 1:
    return kernel
  if grey == 'repeat':
    raise UserError(f'{where}: grey=repeat needs model.in_channels=3 (the data repeats '
                    f"the grey image); this model takes 1 channel: set in_channels=3 or "
                    f"grey='sum'")
  if imagenet:
    kernel = kernel * (IMAGENET_GREY[1] / np.asarray(IMAGENET_SD, np.float32))[:, None]
  return kernel.sum(axis=2, keepdims=True)
