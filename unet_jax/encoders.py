"""The encoder registry: which module builds each ``model.encoder``, and its facts (no JAX).

A family is one module that builds networks (``Network(spec, rngs)``, an nnx module
returning logits, and ``init(spec, seed) -> (params, stats)``) and, when it reads
pretrained weights, ``encoder_from_torchvision``. Its facts here are what the rest of the
package needs without building it, the analysis of results included: the encoder names it
answers to, its block layout (which blocks are contracting, shallow, ...:
``unet_jax.block_order``), the multiple image sides must be, whether it reads a weights file,
whether it carries low-rank adapters.

Adding a family: its module (``unet_jax/<family>.py``) and one entry in :data:`FAMILIES`
(docs/DESIGN.md "Adding an encoder").
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, Callable, Sequence

from unet_jax.block_order import Layout, pyramid_layout, unet_layout
from unet_jax.errors import UserError

UNET = 'unet'


@dataclasses.dataclass(frozen=True)
class Family:
  module: str  # the module that builds its networks
  encoders: tuple[str, ...]  # the model.encoder names it answers to
  divisor: Callable[[Any], int]  # spec -> the multiple image sides must be
  weights: bool  # reads a torchvision weights file (module.encoder_from_torchvision)
  adapters: bool  # carries low-rank adapters (model.adapter_rank)
  layout: Callable[[Any], Layout]  # model.depth -> the block layout


# The encoder blocks of the pyramid families, each with the factor by which it has reduced
# the resolution (block_order.pyramid_layout gives their orders and presets).
RESNET = pyramid_layout((('stem', 2), ('layer1', 4), ('layer2', 8), ('layer3', 16),
                         ('layer4', 32)))
EFFICIENTNET = pyramid_layout((('stem', 2), ('stage1', 2), ('stage2', 4), ('stage3', 8),
                               ('stage4', 16), ('stage5', 16), ('stage6', 32), ('stage7', 32)))


FAMILIES = {
    'unet': Family('unet_jax.unet', (UNET,), lambda spec: 2 ** spec.depth, weights=False,
                   adapters=True, layout=unet_layout),
    'resnet': Family('unet_jax.resnet', ('resnet18', 'resnet34', 'resnet50'), lambda spec: 32,
                     weights=True, adapters=True, layout=lambda depth: RESNET),
    'efficientnet': Family('unet_jax.efficientnet',
                           tuple(f'efficientnet_b{i}' for i in range(5)), lambda spec: 32,
                           weights=True, adapters=True, layout=lambda depth: EFFICIENTNET),
}
ENCODERS = tuple(name for family in FAMILIES.values() for name in family.encoders)


def family(encoder: str) -> Family:
  """The family that builds ``encoder``; a UserError lists the valid names."""
  for fam in FAMILIES.values():
    if encoder in fam.encoders:
      return fam
  raise UserError(f'model.encoder={encoder!r} is not one of {", ".join(ENCODERS)}')


def network_module(encoder: str):
  """The module that builds ``encoder``'s networks (imported on first use)."""
  return importlib.import_module(family(encoder).module)


def layout(model: Any) -> Layout:
  """The block layout of ``model``: build it once and pass it to the block orders.

  Args:
    model: a ``UNetSpec``; a model dict (``config.model``, config.json's ``'model'``:
      ``'encoder'``, absent for the paper U-Net, and ``'depth'``); a paper U-Net's depth
      (int); or a Layout, returned as is.

  Example::

    layout(UNetSpec(depth=4)).groups('depth')[0]     # ['enc1', 'dec1', 'head']
    layout({'encoder': 'resnet34'}).pattern('deep')  # 'layer3|layer4|dec5'
  """
  if isinstance(model, Layout):
    return model
  if isinstance(model, int) and not isinstance(model, bool):
    return unet_layout(model)
  if hasattr(model, 'keys'):
    encoder, depth = model.get('encoder', UNET), model.get('depth')
  elif hasattr(model, 'encoder') or hasattr(model, 'depth'):
    encoder, depth = getattr(model, 'encoder', UNET), getattr(model, 'depth', None)
  else:
    raise TypeError(f'not a model description: {model!r}')
  return family(encoder).layout(depth)


def layout_of_blocks(names: Sequence[str]) -> Layout | None:
  """The layout whose blocks are ``names`` (as a summary records them), or None."""
  names = set(names)
  for fam in FAMILIES.values():
    if fam.layout is unet_layout:
      depth = sum(1 for n in names if re.fullmatch(r'enc\d+', n))
      found = unet_layout(depth) if depth else None
    else:
      found = fam.layout(None)
    if found is not None and names == set(found.flow):
      return found
  return None
