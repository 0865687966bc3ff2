"""The encoder registry: which module builds each ``model.encoder``, and its facts (no JAX).

A family is one module that builds networks (``Network(spec, rngs)``, an nnx module
returning logits, and ``init(spec, seed) -> (params, stats)``) and, when it reads
pretrained weights, ``encoder_from_torchvision``. Its facts here are what the rest of the
package needs without building it: the encoder names it answers to, the multiple image
sides must be, whether it reads a weights file, whether it carries low-rank adapters.
Block layouts (which blocks are contracting, shallow, ...) are in ``unet_jax.block_order``.

Adding a family: its module (``unet_jax/<family>.py``), one entry in :data:`FAMILIES`, and
its layout in ``block_order.layout`` (docs/DESIGN.md "Adding an encoder").
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from unet_jax.block_order import EFFICIENTNET_ENCODERS, RESNET_ENCODERS, UNET
from unet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Family:
  module: str  # the module that builds its networks
  encoders: tuple[str, ...]  # the model.encoder names it answers to
  divisor: Callable[[Any], int]  # spec -> the multiple image sides must be
  weights: bool  # reads a torchvision weights file (module.encoder_from_torchvision)
  adapters: bool  # carries low-rank adapters (model.adapter_rank)


FAMILIES = {
    'unet': Family('unet_jax.unet', (UNET,), lambda spec: 2 ** spec.depth, weights=False,
                   adapters=True),
    'resnet': Family('unet_jax.resnet', RESNET_ENCODERS, lambda spec: 32, weights=True,
                     adapters=False),
    'efficientnet': Family('unet_jax.efficientnet', EFFICIENTNET_ENCODERS, lambda spec: 32,
                           weights=True, adapters=False),
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
