"""PyTorch-shaped state dicts for the encoder families' tests, and the reference networks'
BatchNorm layers set unlike a fresh network's (so parity checks see real statistics)."""

import jax
import numpy as np

from unet_jax.freeze import leaf_paths


def random_state(params, stats, blocks, torch_name, rng, *, scale=0.1, rgb_stem=''):
  """Random tensors for every leaf under ``blocks``, named by ``torch_name(path)`` and shaped
  as PyTorch holds them (OIHW kernels); ``rgb_stem``: the path of a kernel given three input
  channels, as an ImageNet file has. Running variances are drawn positive."""
  state = {}
  for tree in (params, stats):
    for name, leaf in zip(leaf_paths(tree), jax.tree.leaves(tree)):
      parts = tuple(name.split('/'))
      if parts[0] not in blocks:
        continue
      shape = tuple(leaf.shape[i] for i in (3, 2, 0, 1)) if parts[-1] == 'kernel' else leaf.shape
      if name == rgb_stem:
        shape = (shape[0], 3) + shape[2:]
      value = rng.uniform(0.5, 1.5, shape) if parts[-1] == 'var' else rng.normal(0, scale, shape)
      state[torch_name(parts)] = value.astype(np.float32)
  return state


def randomise_batchnorm(torch, net):
  """Scales, shifts and running statistics of every BatchNorm2d of ``net`` drawn away from
  their initial values (torch's global seed)."""
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.2)
        module.running_mean.normal_(0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
