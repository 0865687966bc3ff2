"""Runs one bundle: stacks its experiments, picks a strategy, trains in chunks.

After every chunk the engine logs each experiment's loss and validation Dice
(history rows and TensorBoard events), and saves the bundle's state every
``checkpoint_every`` steps or when asked to stop (``unet_jax.resume``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import PartitionSpec as P

from unet_jax import autotune, metrics
from unet_jax.bundle import (
  SHARDED,
  BundleContext,
  ExperimentSetup,
  ExperimentState,
  experiment_mesh,
  init_experiment_state,
  make_bundle_chunk,
  make_setup,
  stack,
  unstack,
)
from unet_jax.distributed import is_writer, to_host
from unet_jax.execution import place, split_experiments
from unet_jax.grid import Experiment
from unet_jax.model import apply_model
from unet_jax.resume import BundleCheckpoints, Interrupted, StopRequest
from unet_jax.schedules import stage_index
from unet_jax.train import resolve_loop

PyTree = Any


@dataclasses.dataclass
class Weights:
  params: PyTree
  stats: PyTree


@dataclasses.dataclass
class BundleReport:
  """What the engine decided for a bundle and what it measured."""

  experiments: list[str]
  strategy: str
  loop: str
  padded: int  # extra copies added to fill the devices
  trials: list[dict]
  seconds: float
  exp_steps_per_s: float


# Folded into a seed's key for the training stream (batches, flips), so the
# stream is not the one nnx.Rngs(seed) uses to initialise weights.
_TRAIN_STREAM = 0x7472

def training_key(exp: Experiment) -> jax.Array:
  """The key of the batches and augmentations: a function of the seed alone.

  Common random numbers: experiments that share a seed see the same batches
  whatever their names, subsets or folds, so paired comparisons see the
  procedures' differences and not the draws', and adding, removing or
  renaming experiments changes no result.
  """
  return jax.random.fold_in(jax.random.key(exp.seed), _TRAIN_STREAM)


def chunk_length(steps: int, chunk_steps: int) -> int:
  """The largest divisor of ``steps`` up to ``chunk_steps``: one chunk shape."""
  return max(d for d in range(1, min(steps, chunk_steps) + 1) if steps % d == 0)


class _Inputs:
  """The bundle's arrays, placed for local or sharded strategies on demand."""

  def __init__(self, state, setup, images, masks, mesh):
    self.host = (state, setup, images, masks)
    self.mesh = mesh
    self._placed = {}

  def get(self, strategy: str):
    kind = 'sharded' if strategy in SHARDED else 'local'
    if kind not in self._placed:
      state, setup, images, masks = self.host
      if kind == 'sharded':
        self._placed[kind] = (place(state, self.mesh, P('exp')),
                              place(setup, self.mesh, P('exp')),
                              place(images, self.mesh, P()), place(masks, self.mesh, P()))
      else:
        self._placed[kind] = jax.device_put(self.host)
    return self._placed[kind]


@dataclasses.dataclass
class BundleResult:
  """A trained bundle: per experiment weights, logged history and divergence."""

  weights: list[Weights]
  # Per experiment, one row per chunk: step, loss (chunk mean), val_dice,
  # learning_rate, trainable_fraction.
  history: list[list[dict]]
  diverged_at: list[int | None]  # the step whose update was not finite
  report: BundleReport
  resumed_from: int = 0  # the step training resumed at (0: from the start)

  @property
  def losses(self) -> list[list[float]]:
    return [[row['loss'] for row in rows] for rows in self.history]


@functools.partial(jax.jit, static_argnums=0)
def _val_dice(graphdef, params, stats, images, masks):
  logits, _ = apply_model(graphdef, params, stats, images, train=False)
  return jnp.mean(metrics.dice((logits > 0).astype(jnp.float32), masks))


def validation_dice(ctx: BundleContext, state: ExperimentState,
                    val: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
  """Mean validation Dice of the first ``len(val)`` experiments of a stacked state.

  ``val[e]`` is experiment e's (images, masks); cross-validation folds have
  their own. One compiled single-experiment evaluation per set shape,
  called per experiment: on XLA:CPU a lax.map over convolutions runs many
  times slower. States spread over several processes are gathered first.
  """
  graphdef = ctx.graphdefs['xla']
  trees = (state.params, state.stats)
  if all(getattr(x, 'is_fully_addressable', True) for x in jax.tree.leaves(trees)):
    parts = split_experiments(trees, len(val))
  else:
    host = to_host(trees)
    parts = [unstack(host, e) for e in range(len(val))]
  return np.asarray([_val_dice(graphdef, params, stats, images, masks)
                     for (params, stats), (images, masks) in zip(parts, val)])


def _trainable_fractions(params: PyTree, setup: ExperimentSetup) -> np.ndarray:
  """[E, S]: the fraction of parameters trained in each stage of each experiment."""
  sizes = np.asarray([x.size for x in jax.tree.leaves(params)], np.float64)
  masks = np.stack([np.asarray(m) for m in jax.tree.leaves(setup.masks)])  # [L, E, S]
  return np.einsum('l,les->es', sizes, masks) / sizes.sum()


def _event_writers(events_dir: str | None, names: Sequence[str], start: int) -> list:
  """One TensorBoard run folder per experiment (no TensorFlow needed)."""
  if not events_dir or not is_writer():
    return []
  from tensorboardX import SummaryWriter
  # purge_step hides what an interrupted run logged after its checkpoint.
  return [SummaryWriter(os.path.join(events_dir, name), purge_step=start or None,
                        flush_secs=30) for name in names]


def run_bundle(ctx: BundleContext, experiments: Sequence[Experiment],
               inits: Sequence[Weights], images: np.ndarray, masks: np.ndarray, *,
               train_index: Sequence[np.ndarray], strategy: str, loop: str, chunk_steps: int,
               bar: tqdm.tqdm, tuning_cache: dict | None = None,
               val: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
               checkpoints: BundleCheckpoints | None = None, checkpoint_every: int = 0,
               fingerprint: str = '', stop: StopRequest | None = None,
               events_dir: str | None = None) -> BundleResult:
  """Trains a bundle of experiments that share steps and batch size.

  Args:
    ctx: the static part of the bundle (model, batch size, options).
    experiments, inits: the experiments and their initial weights.
    images, masks: the images every experiment draws its training batches from.
    train_index: per experiment, the indices of its training images in
      ``images`` (folds of a cross-validation differ).
    strategy: a strategy of ``unet_jax.bundle`` or ``'auto'``, which times
      the candidates (``unet_jax.autotune``) unless ``tuning_cache`` already
      holds a choice for this bundle's signature.
    val: optional, per experiment, (images, masks) scored after every chunk
      (validation Dice).
    checkpoints: where to save the bundle every ``checkpoint_every`` steps
      (0: only on a stop request) and resume from; ``fingerprint`` must
      identify the settings the checkpoints belong to.
    stop: a :class:`unet_jax.resume.StopRequest`; when set, the bundle saves
      at the next chunk boundary and raises :class:`Interrupted`.
    events_dir: TensorBoard event files go to ``events_dir/<experiment>``.

  Returns:
    A :class:`BundleResult`.
  """
  steps = experiments[0].steps
  num_stages = max(len(e.schedule.stages) for e in experiments)
  devices = jax.devices()
  names = [e.name for e in experiments]
  warn = lambda msg: bar.write(msg, file=sys.stderr)
  index_length = max(len(i) for i in train_index)
  setups = [make_setup(w.params, w.stats, e.schedule, num_stages=num_stages,
                       learning_rate=e.learning_rate, weight_decay=e.weight_decay,
                       seed_key=training_key(e), frozen_norm=e.frozen_norm,
                       train_index=index, index_length=index_length)
            for e, w, index in zip(experiments, inits, train_index)]
  state = stack([init_experiment_state(w.params, w.stats) for w in inits])
  history: list[list[dict]] = [[] for _ in experiments]
  trials, start_step = [], 0
  restored = checkpoints.restore_latest(state, fingerprint, warn) if checkpoints else None
  if restored is not None:
    start_step, state, meta = restored
    history, strategy, trials = meta['history'], meta['strategy'], meta['trials']
    warn(f'resuming {names[0] if len(names) == 1 else f"a bundle of {len(names)}"} '
         f'at step {start_step} of {steps} from {checkpoints.directory}')
  candidates = autotune.candidate_strategies(
      jax.default_backend(), len(devices), len(experiments), jax.process_count(),
      num_stages=num_stages)
  may_shard = strategy in SHARDED or (strategy == 'auto' and
                                      any(c in SHARDED for c in candidates))
  mesh = (experiment_mesh(len(experiments), experiments[0].batch_size)
          if len(devices) > 1 else None)
  exp_shards = mesh.shape['exp'] if mesh is not None else 1
  # Sharded strategies need the experiment axis to fill the 'exp' devices
  # evenly: copies of the last experiment fill it (and are dropped after).
  padded = (-len(experiments)) % exp_shards if may_shard else 0
  pad = lambda tree: jax.tree.map(
      lambda x: np.concatenate([x] + [x[-1:]] * padded) if padded else x, tree)
  setup = stack(setups)
  inputs = _Inputs(pad(state), pad(setup), images, masks, mesh)
  n = chunk_length(steps, chunk_steps)
  num_members = len(experiments) + padded
  signature = (f'{jax.default_backend()}|{len(devices)}|{jax.process_count()}|'
               f'{ctx.spec}|{ctx.batch_size}|E={num_members}|{images.shape}|{loop}')
  chunk = None
  if strategy == 'auto' and tuning_cache is not None and signature in tuning_cache:
    strategy = tuning_cache[signature]['strategy']
    trials = tuning_cache[signature]['trials']
  if strategy == 'auto':
    bar.set_description('timing strategies')
    if len(candidates) == 1:
      strategy = candidates[0]
    else:
      strategy, chunk, found = autotune.time_strategies(
          ctx, inputs.get, candidates=candidates, total_steps=steps, loop=loop,
          mesh=mesh, timing_steps=n if resolve_loop(loop) == 'scan' else 1)
      trials = [dataclasses.asdict(t) for t in found]
    if tuning_cache is not None:
      tuning_cache[signature] = {'strategy': strategy, 'trials': trials}
  if chunk is None:  # forced, cached or resumed choice; a timed winner is compiled
    chunk = make_bundle_chunk(ctx, strategy, loop=loop,
                              mesh=mesh if strategy in SHARDED else None)
  state, setup_in, images_in, masks_in = inputs.get(strategy)
  fractions = _trainable_fractions(inits[0].params, setup)
  starts = np.asarray(setup.starts)
  learning_rates = [e.learning_rate for e in experiments]
  writers = _event_writers(events_dir, names, start_step)
  bar.set_description(names[0] if len(names) == 1 else f'bundle of {len(names)}')
  bar.update(start_step * len(experiments))

  def save(step, state, *, wait=False):
    host = jax.tree.map(lambda x: x[:len(experiments)], to_host(state))
    return checkpoints.save(step, host, {'fingerprint': fingerprint, 'strategy': strategy,
                                         'trials': trials, 'history': history},
                            wait=wait, warn=warn)

  # Chunk ends on a grid of n steps (a resumed run may first finish a
  # shorter chunk if chunk_steps changed).
  ends = sorted({min(steps, (start_step // n + k) * n) for k in range(1, steps // n + 2)})
  ends = [e for e in ends if e > start_step]
  step, start = start_step, time.perf_counter()
  try:
    for end in ends:
      state, chunk_losses = chunk(state, setup_in, images_in, masks_in,
                                  num_steps=end - step)
      previous, step = step, end
      means = to_host(chunk_losses).mean(axis=0)[:len(experiments)]
      dice = (validation_dice(ctx, state, val) if val is not None
              else np.full(len(experiments), np.nan))
      stage = stage_index(starts, np.full(len(starts), step - 1))  # the chunk's last step
      for i in range(len(experiments)):
        row = {'step': step, 'loss': float(means[i]), 'val_dice': float(dice[i]),
               'learning_rate': float(learning_rates[i]),
               'trainable_fraction': float(fractions[i, stage[i]])}
        history[i].append(row)
        for key, value in row.items():
          if writers and key != 'step':
            writers[i].add_scalar(key, value, step)
      bar.set_postfix(loss=f'{np.nanmean(means):.3f}', refresh=False)
      bar.update((step - previous) * len(experiments))
      if step == steps:
        break
      if stop is not None and stop.requested:
        saved = checkpoints is not None and save(step, state, wait=True)
        raise Interrupted(
            f'stopped at step {step} of {steps} ({", ".join(names)}): '
            + ('checkpoint saved; run the same command again to resume' if saved else
               'no checkpoint was saved; rerunning starts this bundle again'),
            stop.signal)
      if (checkpoints is not None and checkpoint_every
          and step // checkpoint_every > previous // checkpoint_every):
        save(step, state)
  finally:
    for writer in writers:
      writer.close()
  if checkpoints is not None:
    checkpoints.wait(warn)
  host = to_host((state.params, state.stats, state.diverged_at))
  seconds = time.perf_counter() - start
  out = [Weights(*unstack(host[:2], i)) for i in range(len(experiments))]
  diverged = [int(d) if d >= 0 else None for d in host[2][:len(experiments)]]
  report = BundleReport(names, strategy, chunk.loop, padded, trials, seconds,
                        num_members * (steps - start_step) / seconds)
  return BundleResult(out, history, diverged, report, start_step)
