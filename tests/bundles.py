"""What the engine's tests share: a tiny U-Net with pretrained-like statistics, bundles of it."""

import jax
import numpy as np

from unet_jax.engine.step import init_experiment_state, make_setup, stack
from unet_jax.model import UNetSpec, init_model

SPEC = UNetSpec(base_width=4, depth=2, norm='batch')
LR = 1e-3


def make_problem():
  """(graphdef, params, stats, images, masks): 12 random 16 x 16 images."""
  graphdef, params, stats = init_model(SPEC, seed=0)
  rng = np.random.default_rng(0)
  images = rng.random((12, 16, 16, 1), np.float32)
  masks = (images > 0.5).astype(np.float32)
  # Pretrained-like statistics, so that a layer on running statistics and one
  # on batch statistics really differ.
  leaves, treedef = jax.tree.flatten(stats)
  stats = jax.tree.unflatten(treedef, [
      x + 0.05 * rng.standard_normal(x.shape, np.float32) if i % 2 == 0
      else x * rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
      for i, x in enumerate(leaves)])
  return graphdef, params, stats, images, masks


def make_bundle(params, stats, schedules, lrs=None, frozen_norm='inference', num_images=12):
  """(stacked state, setup) of one experiment per schedule, every image trained on."""
  num_stages = max(len(s.stages) for s in schedules)
  lrs = lrs or [LR] * len(schedules)
  setup = stack([make_setup(params, stats, sch, num_stages=num_stages, learning_rate=lr,
                            weight_decay=0.0, seed_key=jax.random.key(i),
                            frozen_norm=frozen_norm, train_index=np.arange(num_images),
                            index_length=num_images)
                 for i, (sch, lr) in enumerate(zip(schedules, lrs))])
  state = stack([init_experiment_state(params, stats)] * len(schedules))
  return state, setup

