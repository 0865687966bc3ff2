"""The baseline a user would write: one experiment, its own jit, a static optax freeze.

``optax.partition`` routes 'train' leaves to Adam and 'freeze' leaves to
``set_to_zero``, so a frozen leaf has no Adam moments at all and its update
is exactly zero; the BatchNorm policy's masks are Python bools. The tests
compare every bundled strategy against it (tests/engine/executors_test.py) and
the sweep benchmark times it as the baseline (benchmarks/sweep_throughput.py).
It draws the batches the engine draws (``unet_jax.engine.step.draw_batch``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from unet_jax.engine.loops import host_loop, resolve_loop
from unet_jax.engine.step import Batch, draw_batch
from unet_jax.freeze import FREEZE, TRAIN
from unet_jax.losses import segmentation_loss
from unet_jax.model import apply_model

PyTree = Any


class TrainState(NamedTuple):
  params: PyTree
  stats: PyTree  # BatchNorm running statistics ({} without BatchNorm)
  opt_state: PyTree
  step: jax.Array  # int32 scalar


class StepContext(NamedTuple):
  """What a step needs besides the state; static parts and the data."""

  graphdef: nnx.GraphDef
  optimizer: optax.GradientTransformation
  stats_mask: PyTree  # Python bools: True = this statistic is updated
  running: PyTree  # Python bools per BatchNorm layer: running statistics in training
  batch_size: int
  images: jax.Array
  masks: jax.Array
  key: jax.Array


def train_step(ctx: StepContext, state: TrainState, batch: Batch
               ) -> tuple[TrainState, jax.Array]:
  """One optimizer step; returns the new state and the batch loss."""
  def loss_fn(params):
    logits, new_stats = apply_model(ctx.graphdef, params, state.stats,
                                    batch.images, train=True, running=ctx.running)
    return segmentation_loss(logits, batch.masks), new_stats

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = ctx.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  stats = jax.tree.map(lambda keep_new, new, old: new if keep_new else old,
                       ctx.stats_mask, new_stats, state.stats)
  return TrainState(params, stats, opt_state, state.step + 1), loss


def _scan_body(ctx: StepContext, state: TrainState, _):
  batch = draw_batch(ctx.images, ctx.masks, ctx.key, state.step, ctx.batch_size)
  return train_step(ctx, state, batch)


def make_train_chunk(graphdef, optimizer, stats_mask, batch_size: int, *, running,
                     loop: str = 'auto'):
  """A ``train_chunk(state, images, masks, key, num_steps)`` function.

  ``stats_mask`` and ``running`` are the Python-bool trees of
  ``freeze.norm_masks`` (which statistics are updated; which layers
  normalise with running statistics in training). ``running`` has no
  default: batch statistics everywhere with some statistics kept would be
  the mix of training and evaluation modes the policies replaced.

  Returns (state, losses) after ``num_steps`` steps. With ``loop='scan'`` the
  chunk is one compiled ``lax.scan`` (each distinct length compiles once);
  with ``loop='host'`` one compiled step is called ``num_steps`` times. Both
  draw the same batches: the batch of step t depends only on (key, t).
  """
  def context(images, masks, key):
    return StepContext(graphdef, optimizer, stats_mask, running, batch_size, images, masks,
                       key)

  if resolve_loop(loop) == 'scan':
    @functools.partial(jax.jit, static_argnames='num_steps')
    def scan_chunk(state, images, masks, key, num_steps):
      return jax.lax.scan(functools.partial(_scan_body, context(images, masks, key)),
                          state, length=num_steps)
    return scan_chunk

  step = jax.jit(lambda state, images, masks, key: _scan_body(
      context(images, masks, key), state, None))

  def host_chunk(state, images, masks, key, num_steps):
    return host_loop(step, state, images, masks, key, num_steps=num_steps)
  return host_chunk


def init_state(params, stats, optimizer) -> TrainState:
  return TrainState(params, stats, optimizer.init(params),
                    jnp.zeros((), jnp.int32))


def make_adam(learning_rate: float, weight_decay: float = 0.0
              ) -> optax.GradientTransformation:
  if weight_decay:
    return optax.adamw(learning_rate, weight_decay=weight_decay)
  return optax.adam(learning_rate)


def make_optimizer(labels: PyTree, learning_rate: float,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam on leaves labelled 'train', zero updates on leaves labelled 'freeze'.

  Args:
    labels: tree like the parameters with 'train' / 'freeze' leaves, from
      ``unet_jax.freeze.freeze_labels``.
    learning_rate: Adam step size.
    weight_decay: decoupled weight decay (AdamW) on trained leaves; 0 = Adam.

  Example::

    labels = freeze_labels(params, preset_rules('contracting', network=4))
    tx = make_optimizer(labels, 1e-3)
  """
  return optax.partition(
      {TRAIN: make_adam(learning_rate, weight_decay), FREEZE: optax.set_to_zero()},
      labels)
