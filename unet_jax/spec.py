"""What a network is: ``UNetSpec``, the fields of ``config.model`` (no JAX).

``encoder`` picks the family that builds it (``unet_jax.encoders``); the other
fields are read by the families that use them.
"""

from __future__ import annotations

import dataclasses
import re

from unet_jax.encoders import UNET, layout

NORMS = ('batch', 'group', 'none')

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
  # Low-rank adapters (LoRA for convolutions): > 0 gives the dense kernels
  # (the paper U-Net's 3x3; a ResNet's or EfficientNet's every convolution
  # but depthwise and squeeze-excitation ones) of the blocks adapter_blocks
  # matches (a regular expression over block names; the default names the
  # paper U-Net's blocks, the sweep's settings give other families theirs) a
  # rank-r update W + A B, B zero-initialised (layers.LoRAConv, decoder.Conv).
  adapter_rank: int = 0
  adapter_blocks: str = 'enc.*|bottleneck|dec.*'

  def __post_init__(self):
    # Read back from JSON the widths are a list; the spec must stay hashable.
    object.__setattr__(self, 'decoder_channels', tuple(self.decoder_channels))

  def block_names(self) -> tuple[str, ...]:
    """Blocks in data-flow order: enc1..encD, bottleneck, decD..dec1, head; for a ResNet
    encoder stem, layer1..layer4, dec5..dec1, head (``encoders.layout``)."""
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
    """Whether ``block``'s convolutions carry low-rank adapters."""
    return self.adapter_rank > 0 and re.fullmatch(self.adapter_blocks, block) is not None

  def width(self, level: int) -> int:
    """Channels at a resolution level (1 = full resolution)."""
    return self.base_width * 2 ** (level - 1)
