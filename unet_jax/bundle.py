"""Many experiments in one compiled program: masks, schedules and hyper-parameters as data.

A bundle stacks E experiments on a leading axis: parameters, BatchNorm
statistics, Adam state, step counters, and each experiment's
:class:`ExperimentSetup` (schedule table, learning rate, weight decay, PRNG
key). ``experiment_step`` trains one experiment; a *strategy* maps it over
the experiment axis:

- ``static``: each experiment's current stage mask compiled in as a constant,
  so XLA skips the gradients of frozen leaves (like ``optax.partition``); one
  program per distinct mask, shared by the experiments that have it;
- ``per_experiment``: one compiled single-experiment step (or scan chunk),
  called for each experiment in turn; the mask being data, all experiments
  share that one program;
- ``sequential``: ``lax.map``, one experiment after another inside one program;
- ``vmap``: ``jax.vmap`` with XLA convolutions (they become grouped ones);
- ``vmap_matmul``: ``jax.vmap`` with convolutions written as im2col matmuls;
- ``sharded_sequential`` / ``sharded_vmap``: the experiment axis split over
  devices (and processes) with ``jax.shard_map`` on a mesh axis ``'exp'``,
  each device running its share sequentially or vmapped.

Whatever the strategy, a bundle traces ``experiment_step`` once
(``TRACES`` counts it) and compiles one program.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import threading
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from unet_jax import freeze
from unet_jax.execution import (
  compiler_options,
  cpu_workers,
  merge_experiments,
  split_experiments,
)
from unet_jax.masked_adam import MaskedAdamState, apply_masked, masked_adam
from unet_jax.model import UNetSpec, apply_model, init_model, norm_layer_tree
from unet_jax.schedules import Schedule, stage_index, stage_table
from unet_jax.train import draw_batch, host_loop, resolve_loop, segmentation_loss

PyTree = Any

STRATEGIES = ('static', 'per_experiment', 'sequential', 'vmap', 'vmap_matmul',
              'sharded_sequential', 'sharded_vmap')
SHARDED = ('sharded_sequential', 'sharded_vmap')

# How many times experiment_step was traced; a test reads it to prove one
# compilation per bundle.
TRACES: collections.Counter = collections.Counter()


class ExperimentSetup(NamedTuple):
  """What makes one experiment of a bundle different from the others."""

  starts: jax.Array  # [S] int32: first step of each schedule stage
  masks: PyTree  # per parameter leaf, [S] float32, 1 = trained in that stage
  stats_masks: PyTree  # per BatchNorm statistic, [S] float32, 1 = updated
  # Per BatchNorm layer (model.norm_layer_tree), [S] float32: 1 = the layer
  # normalises with its running statistics in training (finetune.frozen_norm).
  norm_running: PyTree
  learning_rate: jax.Array  # float32 scalar
  weight_decay: jax.Array  # float32 scalar
  key: jax.Array  # uint32 raw PRNG key data
  # The experiment's training images: indices into the bundle's image array,
  # padded to the bundle's longest index list; train_count of them are valid.
  train_index: jax.Array  # [N] int32
  train_count: jax.Array  # int32 scalar


class StageMasks(NamedTuple):
  """One stage's masks as Python bools in flattening order: compile-time constants."""

  params: tuple[bool, ...]  # trained parameter leaves
  stats: tuple[bool, ...]  # updated running statistics
  running: tuple[bool, ...]  # BatchNorm layers on running statistics in training


class ExperimentState(NamedTuple):
  params: PyTree
  stats: PyTree
  opt_state: MaskedAdamState
  step: jax.Array  # int32 scalar
  # The step whose loss or update was not finite, -1 while training is sound.
  # From that step on the experiment's weights and optimiser state stay as
  # they were (the other experiments of the bundle are unaffected).
  diverged_at: jax.Array  # int32 scalar


@dataclasses.dataclass(frozen=True)
class BundleContext:
  """The static part of a bundle: one per compiled program."""

  spec: UNetSpec
  batch_size: int
  rewarmup_steps: int = 0

  @functools.cached_property
  def graphdefs(self) -> dict[str, nnx.GraphDef]:
    """Graph definitions by convolution implementation (same parameters)."""
    return {conv: init_model(dataclasses.replace(self.spec, conv=conv), 0)[0]
            for conv in ('xla', 'matmul')}


def make_setup(params: PyTree, stats: PyTree, schedule: Schedule, *, num_stages: int,
               learning_rate: float, weight_decay: float, seed_key: jax.Array,
               frozen_norm: str, train_index: np.ndarray, index_length: int
               ) -> ExperimentSetup:
  """One experiment's setup as numpy arrays, ready to stack.

  ``frozen_norm`` is a policy of ``freeze.FROZEN_NORM``; ``train_index``
  the experiment's training images, padded to ``index_length``.
  """
  table = stage_table(params, schedule, num_stages)
  norms = [freeze.norm_masks(stats, params, rules, frozen_norm) for rules in schedule.stages]
  norms += [norms[-1]] * (num_stages - len(norms))

  def per_leaf(trees):  # S trees of bools -> one tree of [S] float32
    columns = [jax.tree.leaves(t) for t in trees]
    return jax.tree.unflatten(jax.tree.structure(trees[0]),
                              [np.asarray(stage, np.float32) for stage in zip(*columns)])

  index = np.zeros(index_length, np.int32)
  index[:len(train_index)] = train_index
  return ExperimentSetup(
      starts=table['starts'], masks=table['masks'],
      stats_masks=per_leaf([n.update for n in norms]),
      norm_running=per_leaf([n.running for n in norms]),
      learning_rate=np.float32(learning_rate), weight_decay=np.float32(weight_decay),
      key=np.asarray(jax.random.key_data(seed_key)),
      train_index=index, train_count=np.int32(len(train_index)))


def init_experiment_state(params: PyTree, stats: PyTree) -> ExperimentState:
  init_fn, _ = masked_adam()
  return ExperimentState(params, stats, init_fn(params), jnp.zeros((), jnp.int32),
                         jnp.full((), -1, jnp.int32))


def stack(trees: Sequence[PyTree]) -> PyTree:
  """Stacks equally shaped trees on a new leading (experiment) axis."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree: PyTree, index: int) -> PyTree:
  return jax.tree.map(lambda x: x[index], tree)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _loss_and_grads(graphdef: nnx.GraphDef, static_running: tuple | None, params: PyTree,
                    stats: PyTree, running: PyTree, images: jax.Array, masks: jax.Array):
  """((loss, new statistics), gradients) of one batch.

  ``static_running`` (a tuple of bools, one per BatchNorm layer) replaces
  the traced per-layer flags ``running`` by constants, as ``static_stage``
  does in :func:`experiment_step`.

  Jitted on its own so that it is traced once per model and batch shape:
  the programs of a ``static`` bundle (one per freeze mask) reuse the trace
  and XLA still drops the frozen leaves' gradient work once it is inlined.
  Tracing the U-Net through nnx took about 0.6 s of each program.
  """
  if static_running is not None:
    running = jax.tree.unflatten(jax.tree.structure(norm_layer_tree(stats)), static_running)

  def loss_fn(params):
    logits, new_stats = apply_model(graphdef, params, stats, images, train=True,
                                    running=running)
    return segmentation_loss(logits, masks), new_stats

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def experiment_step(ctx: BundleContext, conv: str, state: ExperimentState,
                    setup: ExperimentSetup, images: jax.Array, masks: jax.Array,
                    static_stage: StageMasks | None = None, *, data_shards: int = 1
                    ) -> tuple[ExperimentState, jax.Array]:
  """One training step of one experiment, with its masks looked up by step.

  ``static_stage`` replaces the looked-up masks by compile-time constants:
  XLA then drops the gradient work of frozen leaves, as it does for
  ``optax.partition``, and BatchNorm layers on running statistics skip the
  batch statistics, at the price of one program per distinct stage.

  BatchNorm modes in training follow ``setup.norm_running`` (and
  ``setup.stats_masks`` for which running statistics move): the
  ``finetune.frozen_norm`` policy, applied identically whatever the strategy.

  ``data_shards > 1`` (inside ``shard_map`` over a mesh axis ``'data'``)
  splits the batch: each shard draws ``batch_size / data_shards`` images
  with its own key, and gradients, loss and BatchNorm running statistics
  are averaged over the shards (BatchNorm normalises with per-shard batch
  statistics, as data-parallel BatchNorm usually does).
  """
  TRACES['experiment_step'] += 1
  if static_stage is None:
    stage = stage_index(setup.starts, state.step)
    mask = jax.tree.map(lambda m: m[stage], setup.masks)
    stats_mask = jax.tree.map(lambda m: m[stage] > 0, setup.stats_masks)
    running, static_running = jax.tree.map(lambda m: m[stage] > 0, setup.norm_running), None
  else:
    mask = jax.tree.unflatten(jax.tree.structure(state.params), static_stage.params)
    stats_mask = jax.tree.unflatten(jax.tree.structure(state.stats), static_stage.stats)
    running, static_running = None, static_stage.running
  key = jax.random.wrap_key_data(setup.key)
  batch_size = ctx.batch_size
  if data_shards > 1:
    key = jax.random.fold_in(key, jax.lax.axis_index('data'))
    batch_size //= data_shards
  batch = draw_batch(images, masks, key, state.step, batch_size, setup.train_index,
                     setup.train_count)
  graphdef = ctx.graphdefs[conv]

  (loss, new_stats), grads = _loss_and_grads(graphdef, static_running, state.params,
                                             state.stats, running, batch.images, batch.masks)
  if data_shards > 1:
    loss, grads, new_stats = jax.lax.pmean((loss, grads, new_stats), 'data')
  finite = _finite_step(loss, grads, mask)
  accept = finite & (state.diverged_at < 0)
  diverged_at = jnp.where((state.diverged_at < 0) & ~finite, state.step, state.diverged_at)
  # A rejected step is a frozen step: masks and accept are and-ed, so the
  # selects sit inside the update's own elementwise work.
  mask = jax.tree.map(lambda m: _both(m, accept), mask)
  stats_mask = jax.tree.map(lambda m: _both(m, accept), stats_mask)
  _, update_fn = masked_adam(rewarmup_steps=ctx.rewarmup_steps)
  updates, opt_state = update_fn(grads, state.opt_state, state.params, mask=mask,
                                 learning_rate=setup.learning_rate,
                                 weight_decay=setup.weight_decay)
  params = apply_masked(state.params, updates, mask)
  new_stats = jax.tree.map(lambda m, new, old: old if m is False else jnp.where(m, new, old),
                           stats_mask, new_stats, state.stats)
  return ExperimentState(params, new_stats, opt_state, state.step + 1, diverged_at), loss


def _both(mask_leaf, accept: jax.Array):
  """A mask leaf and-ed with the step's acceptance; a compile-time False stays False."""
  if mask_leaf is False:
    return False
  if mask_leaf is True:
    return accept
  return (jnp.asarray(mask_leaf) > 0) & accept


def _finite_step(loss: jax.Array, grads: PyTree, mask: PyTree) -> jax.Array:
  """Whether a step may be taken: its loss and its trained gradients are finite.

  A step that fails marks the experiment diverged (``diverged_at``); from
  then on its weights, statistics and Adam state stay as they were before
  that step, while the step counter advances, so schedules and data draws
  of a bundle stay in step. Each experiment is checked on its own values.

  The check comes before the update, so the selects it implies fuse into
  the Adam arithmetic instead of taking a second pass over the new state.
  Gradients are checked through per-leaf sums (NaN and Inf propagate; a sum
  that overflows is a diverged gradient too), stacked into one vector:
  measured on the default U-Net (full fine-tuning, 2-core CPU), the same
  sums chained as ~80 scalar adds made the step compile in 8.4 s instead of
  3.8 s, and an ``all(isfinite)`` over every leaf of parameters, statistics
  and moments in 14.1 s. With finite gradients an Adam step is bounded by
  the learning rate, so the parameters stay finite unless it is near 1e38;
  a learning rate that blows the weights up shows in the next step's loss,
  and the experiment keeps the (finite) weights it had then.
  """
  sums = [jnp.sum(g) if m is True else jnp.where(jnp.asarray(m) > 0, jnp.sum(g), 0)
          for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mask)) if m is not False]
  finite = jnp.isfinite(loss)
  if sums:
    finite &= jnp.all(jnp.isfinite(jnp.stack(sums)))
  return finite


def _over_experiments(ctx: BundleContext, strategy: str, data_shards: int = 1):
  """experiment_step mapped over the (local) experiment axis."""
  conv = 'matmul' if strategy == 'vmap_matmul' else 'xla'
  step = functools.partial(experiment_step, ctx, conv, data_shards=data_shards)
  if strategy in ('vmap', 'vmap_matmul', 'sharded_vmap'):
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


def make_bundle_step(ctx: BundleContext, strategy: str, mesh=None):
  """``bundle_step(state, setup, images, masks) -> (state, losses[E])``."""
  if strategy not in STRATEGIES:
    raise ValueError(f'unknown strategy {strategy!r}; valid: {", ".join(STRATEGIES)}')
  if strategy not in SHARDED:
    return _over_experiments(ctx, strategy)
  mesh = mesh or experiment_mesh()
  inner = _over_experiments(ctx, strategy, data_shards=mesh.shape.get('data', 1))
  return jax.shard_map(inner, mesh=mesh, in_specs=(P('exp'), P('exp'), P(), P()),
                       out_specs=(P('exp'), P('exp')))


def _scan_steps(bundle_step, images, masks, setup, state, _):
  return bundle_step(state, setup, images, masks)


def make_bundle_chunk(ctx: BundleContext, strategy: str, *, loop: str = 'auto',
                      mesh=None):
  """``chunk(state, setup, images, masks, num_steps) -> (state, losses[T, E])``.

  ``loop='scan'`` compiles the chunk as one ``lax.scan``; ``'host'`` compiles
  one bundle step and calls it ``num_steps`` times (the CPU default, see
  ``unet_jax.train.resolve_loop``). ``chunk.step`` is the jitted bundle step.
  """
  if strategy in ('per_experiment', 'static'):
    return _per_experiment_chunk(ctx, loop, static=strategy == 'static',
                                 workers=cpu_workers())
  bundle_step = make_bundle_step(ctx, strategy, mesh)
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


def stage_masks_at(setup: ExperimentSetup, step: int) -> StageMasks:
  """One experiment's masks at ``step`` as compile-time constants."""
  stage = stage_index(setup.starts, step)
  return StageMasks(*(tuple(bool(m[stage]) for m in jax.tree.leaves(tree))
                      for tree in (setup.masks, setup.stats_masks, setup.norm_running)))


def _segments(setup: ExperimentSetup, start: int, num_steps: int):
  """Splits [start, start + num_steps) at the schedule's stage starts."""
  cuts = sorted({int(b) for b in np.asarray(setup.starts) if start < b < start + num_steps})
  edges = [start] + cuts + [start + num_steps]
  return [(a, b - a) for a, b in zip(edges, edges[1:])]


def _per_experiment_chunk(ctx: BundleContext, loop: str, *, static: bool,
                          workers: int = 1):
  """The bundle as calls of one compiled experiment step (or scan chunk).

  Experiments run one after another, dispatched asynchronously, or with
  ``workers > 1`` that many at a time from Python threads; the stacked
  state is split at the start of a chunk and stacked again at its end. With
  ``static`` the stage mask is a compile-time constant, so a chunk is split
  at stage boundaries and each distinct mask has its own program.
  """
  single = functools.partial(experiment_step, ctx, 'xla')
  options = compiler_options()
  step = jax.jit(single, static_argnames='static_stage', compiler_options=options)
  scan = resolve_loop(loop) == 'scan'

  @functools.partial(jax.jit, static_argnames=('num_steps', 'static_stage'),
                     compiler_options=options)
  def scan_chunk(state, setup, images, masks, num_steps, static_stage):
    body = lambda st, _: single(st, setup, images, masks, static_stage)
    return jax.lax.scan(body, state, length=num_steps)

  compiling = threading.Lock()
  compiled = set()

  def run(state, setup, images, masks, num_steps, static_stage):
    if scan:
      return first_call((static_stage, num_steps), lambda: scan_chunk(
          state, setup, images, masks, num_steps=num_steps, static_stage=static_stage))
    one_step = functools.partial(step, static_stage=static_stage)
    state, loss = first_call(static_stage, lambda: one_step(state, setup, images, masks))
    if num_steps == 1:
      return state, loss[None]
    state, losses = host_loop(one_step, state, setup, images, masks, num_steps=num_steps - 1)
    return state, jnp.concatenate([loss[None], losses])

  def first_call(key, call):
    """``call()``; a call that compiles holds a lock, so workers compile one
    program at a time (XLA:CPU already spreads a compile over the cores; two
    at once made an 8-subset bundle's first chunk slower, 28-30 s against
    25 s) while the others train, and no program is compiled twice."""
    if key in compiled:
      return call()
    with compiling:
      out = call()
      compiled.add(key)
    return out

  def run_experiment(start, num_steps, images, masks, state_and_setup):
    state, setup = state_and_setup
    if not static:
      return run(state, setup, images, masks, num_steps, None)
    host_setup = jax.tree.map(np.asarray, setup)
    losses = []
    for first, length in _segments(host_setup, start, num_steps):
      state, seg = run(state, setup, images, masks, length,
                       stage_masks_at(host_setup, first))
      losses.append(seg)
    return state, jnp.concatenate(losses)

  seconds = {}  # experiment index -> its time in the last chunk (workers > 1)

  def timed(start, num_steps, images, masks, index, part):
    began = time.perf_counter()
    out = jax.block_until_ready(run_experiment(start, num_steps, images, masks, part))
    seconds[index] = time.perf_counter() - began
    return out

  def chunk(state, setup, images, masks, num_steps):
    num = np.shape(setup.starts)[0]
    start = int(np.asarray(state.step)[0])
    parts = split_experiments((state, setup), num)
    if workers > 1 and num > 1:
      # Longest first (by the last chunk's times; at first by the share of
      # parameters trained), so that no worker is left with a long
      # experiment while the other has finished.
      trained = np.mean([np.asarray(m).reshape(num, -1).mean(axis=1)
                         for m in jax.tree.leaves(setup.masks)], axis=0)
      order = sorted(range(num), key=lambda e: -seconds.get(e, trained[e]))
      one = functools.partial(timed, start, num_steps, images, masks)
      with concurrent.futures.ThreadPoolExecutor(min(workers, num)) as pool:
        done = dict(zip(order, pool.map(one, order, [parts[e] for e in order])))
      outs = [done[e] for e in range(num)]
    else:
      outs = [run_experiment(start, num_steps, images, masks, part) for part in parts]
    states, losses = merge_experiments(outs)
    return states, losses.T

  chunk.step = step
  chunk.loop = 'scan' if scan else 'host'
  return chunk
