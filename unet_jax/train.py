"""The functional training core: loss, one step, chunks of steps, prediction.

Training data live on the device; a chunk of steps is one ``lax.scan`` in
which each step draws its batch by index with a key folded from the step
number, so the host only sees chunk boundaries.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from unet_jax.metrics import soft_dice_loss
from unet_jax.model import apply_model

PyTree = Any


class TrainState(NamedTuple):
  params: PyTree
  stats: PyTree  # BatchNorm running statistics ({} without BatchNorm)
  opt_state: PyTree
  step: jax.Array  # int32 scalar


class Batch(NamedTuple):
  images: jax.Array
  masks: jax.Array


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


def segmentation_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
  """Binary cross-entropy plus soft Dice loss, averaged over the batch."""
  bce = optax.sigmoid_binary_cross_entropy(logits, masks).mean()
  return bce + soft_dice_loss(jax.nn.sigmoid(logits), masks)


def draw_batch(images, masks, key, step, batch_size: int, index=None, count=None) -> Batch:
  """The batch of ``step``: drawn by index from (key, step), with random
  horizontal flips.

  With ``index`` (and ``count``, its number of valid entries) the batch is
  drawn from ``images[index[:count]]``, a training set inside a larger array
  (cross-validation folds of one bundle share the array). The positions
  drawn depend only on (key, step, count), so experiments that share a seed
  see the same batches (common random numbers).

  Lateral flips are physically plausible for ultrasound and X-ray alike;
  flips in depth are not.
  """
  k_idx, k_flip = jax.random.split(jax.random.fold_in(key, step))
  idx = jax.random.randint(k_idx, (batch_size,), 0,
                           images.shape[0] if count is None else count)
  if index is not None:
    idx = index[idx]
  images, masks = images[idx], masks[idx]
  flip = jax.random.bernoulli(k_flip, 0.5, (batch_size, 1, 1, 1))
  images = jnp.where(flip, images[:, :, ::-1], images)
  masks = jnp.where(flip, masks[:, :, ::-1], masks)
  return Batch(images, masks)


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


LOOPS = ('auto', 'scan', 'host')


def _scan_body(ctx: StepContext, state: TrainState, _):
  batch = draw_batch(ctx.images, ctx.masks, ctx.key, state.step, ctx.batch_size)
  return train_step(ctx, state, batch)


def resolve_loop(loop: str) -> str:
  """'auto' -> 'host' on CPU, 'scan' on accelerators.

  Measured (2-core CPU, JAX 0.10.2): a U-Net step inside ``lax.scan`` ran 14x
  slower than the same jitted step called from Python, because XLA:CPU
  compiles convolutions in a while-loop body whose weights are loop-carried
  to a slow path (fully unrolled it is as fast). On GPU/TPU the scan removes
  per-step dispatch, so it stays the default there.
  """
  if loop == 'auto':
    return 'host' if jax.default_backend() == 'cpu' else 'scan'
  return loop


def host_loop(step, state, *args, num_steps: int):
  """Calls ``step(state, *args) -> (state, loss)`` num_steps times from Python.

  Returns (state, losses[num_steps]); dispatch is asynchronous, nothing waits.
  """
  losses = []
  for _ in range(num_steps):
    state, loss = step(state, *args)
    losses.append(loss)
  return state, jnp.stack(losses)


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


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(graphdef, params, stats, images):
  logits, _ = apply_model(graphdef, params, stats, images, train=False)
  return jax.nn.sigmoid(logits)


def predict(graphdef, params, stats, images: np.ndarray, batch_size: int = 32
            ) -> np.ndarray:
  """Foreground probabilities (N, H, W, 1) in evaluation mode.

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
