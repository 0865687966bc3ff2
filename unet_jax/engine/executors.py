"""Executors: how a bundle's experiment steps are mapped over the experiment axis.

- ``static``: each experiment's current stage masks compiled in as constants,
  so XLA skips the gradients of frozen leaves (like ``optax.partition``); one
  program per distinct stage, shared by the experiments that have it;
- ``per_experiment``: one compiled single-experiment step (or scan chunk),
  called for each experiment in turn; the masks being data, all experiments
  share that one program;
- ``sequential``: ``lax.map``, one experiment after another inside one program;
- ``vmap``: ``jax.vmap`` with XLA convolutions (they become grouped ones);
- ``vmap_matmul``: ``jax.vmap`` with convolutions written as im2col matmuls;
- ``sharded_sequential`` / ``sharded_vmap``: the experiment axis split over
  devices (and processes) with ``jax.shard_map`` on a mesh axis ``'exp'``,
  each device running its share sequentially or vmapped.

``static`` and ``per_experiment`` are :class:`unet_jax.engine.per_experiment.
PerExperimentChunk`; the others are one program for the whole bundle. Whatever
the executor, a bundle traces ``experiment_step`` once (``step.TRACES``).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from unet_jax.engine.choices import EXECUTORS, SHARDED
from unet_jax.engine.execution import cpu_workers
from unet_jax.engine.loops import host_loop, resolve_loop
from unet_jax.engine.per_experiment import PerExperimentChunk
from unet_jax.engine.step import BundleContext, experiment_step


def _over_experiments(ctx: BundleContext, executor: str, data_shards: int = 1):
  """experiment_step mapped over the (local) experiment axis."""
  conv = 'matmul' if executor == 'vmap_matmul' else 'xla'
  step = functools.partial(experiment_step, ctx, conv, data_shards=data_shards)
  if executor in ('vmap', 'vmap_matmul', 'sharded_vmap'):
    return jax.vmap(step, in_axes=(0, 0, None, None))
  return lambda state, setup, images, masks: jax.lax.map(
      lambda pair: step(pair[0], pair[1], images, masks), (state, setup))


def experiment_mesh(num_experiments: int | None = None, batch_size: int | None = None,
                    devices=None) -> jax.sharding.Mesh:
  """A mesh ``('exp', 'data')`` over all devices of all processes.

  With at least twice as many devices as experiments (and a batch that
  divides), the extra devices go to a ``'data'`` axis: each experiment is
  trained data-parallel on ``devices / experiments`` devices. Otherwise
  ``'data'`` has size 1 and the experiments are spread over the devices
  (padded to a multiple of their number by the engine).
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  data = 1
  if num_experiments and len(devices) >= 2 * num_experiments:
    data = len(devices) // num_experiments
    while data > 1 and (len(devices) % data or (batch_size and batch_size % data)):
      data -= 1
  return jax.sharding.Mesh(devices.reshape(len(devices) // data, data), ('exp', 'data'))


def make_bundle_step(ctx: BundleContext, executor: str, mesh=None):
  """``bundle_step(state, setup, images, masks) -> (state, losses[E])``."""
  if executor not in EXECUTORS:
    raise ValueError(f'unknown executor {executor!r}; valid: {", ".join(EXECUTORS)}')
  if executor not in SHARDED:
    return _over_experiments(ctx, executor)
  mesh = mesh or experiment_mesh()
  inner = _over_experiments(ctx, executor, data_shards=mesh.shape.get('data', 1))
  return jax.shard_map(inner, mesh=mesh, in_specs=(P('exp'), P('exp'), P(), P()),
                       out_specs=(P('exp'), P('exp')))


def _scan_steps(bundle_step, images, masks, setup, state, _):
  return bundle_step(state, setup, images, masks)


def make_bundle_chunk(ctx: BundleContext, executor: str, *, loop: str = 'auto',
                      mesh=None):
  """``chunk(state, setup, images, masks, num_steps) -> (state, losses[T, E])``.

  ``loop='scan'`` compiles the chunk as one ``lax.scan``; ``'host'`` compiles
  one bundle step and calls it ``num_steps`` times (the CPU default, see
  ``resolve_loop``). ``chunk.step`` is the jitted bundle step.
  """
  if executor in ('per_experiment', 'static'):
    return PerExperimentChunk(ctx, loop, static=executor == 'static', workers=cpu_workers())
  bundle_step = make_bundle_step(ctx, executor, mesh)
  step = jax.jit(bundle_step)
  if resolve_loop(loop) == 'scan':
    @functools.partial(jax.jit, static_argnames='num_steps')
    def chunk(state, setup, images, masks, num_steps):
      body = functools.partial(_scan_steps, bundle_step, images, masks, setup)
      return jax.lax.scan(body, state, length=num_steps)
  else:
    def chunk(state, setup, images, masks, num_steps):
      return host_loop(step, state, setup, images, masks, num_steps=num_steps)
  chunk.step = step
  chunk.loop = resolve_loop(loop)
  return chunk
