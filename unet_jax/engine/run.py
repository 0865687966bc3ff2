"""Runs one bundle: stacks its experiments, picks a executor, trains in chunks.

``run_bundle`` is four steps: restore the newest checkpoint (if any),
choose a executor (``choose_executor`` returns a :class:`ExecutorChoice`
and changes nothing), the chunk loop (:class:`_ChunkLoop`: after every
chunk each training experiment's loss and validation Dice go to its
history and TensorBoard, early stopping decides who goes on
(``engine.stopping``) and the best-validation weights are kept, the state
is checkpointed every ``checkpoint_every`` steps or when a stop is asked
for), and collecting the per-experiment results.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import tqdm
from jax.sharding import PartitionSpec as P

from unet_jax import encoders, metrics, structures
from unet_jax.engine import autotune
from unet_jax.engine.choices import SHARDED
from unet_jax.engine.distributed import is_writer, to_host
from unet_jax.engine.execution import place, split_experiments
from unet_jax.engine.executors import experiment_mesh, make_bundle_chunk
from unet_jax.engine.experiment import AUGMENT_DEFAULTS, Experiment
from unet_jax.engine.loops import resolve_loop
from unet_jax.engine.resume import BundleCheckpoints, Interrupted, StopRequest
from unet_jax.engine.step import (
  BundleContext,
  ExperimentSetup,
  ExperimentState,
  init_experiment_state,
  make_setup,
  stack,
  unstack,
)
from unet_jax.engine.stopping import RunProgress, StopRule, StopTracker
from unet_jax.model import apply_model
from unet_jax.schedules import stage_index

PyTree = Any


@dataclasses.dataclass
class Weights:
  params: PyTree
  stats: PyTree


@dataclasses.dataclass(frozen=True)
class BundleData:
  """What a bundle trains on: one image array and each experiment's indices into it."""

  images: np.ndarray
  masks: np.ndarray
  train_index: Sequence[np.ndarray]  # per experiment (cross-validation folds differ)
  val: Sequence[tuple[np.ndarray, np.ndarray]] | None = None  # per experiment


@dataclasses.dataclass(frozen=True)
class RunOptions:
  executor: str = 'auto'  # one of engine.choices.EXECUTORS, or 'auto' (timed)
  loop: str = 'auto'  # engine.choices.LOOPS
  chunk_steps: int = 50  # steps between host updates
  checkpoint_every: int = 0  # steps between checkpoints; 0 = only on a stop request
  # Early stopping on validation Dice (engine.stopping); with validation sets
  # every experiment's result is its best-validation network.
  early_stop: StopRule = StopRule()
  # Keep every evaluation's per-image validation Dice in the result
  # (BundleResult.val_per_image; memory only, for studies of the stopping rule).
  keep_val_per_image: bool = False


@dataclasses.dataclass(frozen=True)
class ExecutorChoice:
  """How a bundle runs, and why: forced, cached, restored or timed."""

  executor: str
  trials: list[dict]  # the timed candidates (autotune.Trial as dicts); [] if untimed
  how: str  # 'forced', 'only candidate', 'cached', 'restored' or 'timed'
  chunk: Callable | None = None  # the timed winner's chunk, already compiled


@dataclasses.dataclass
class BundleReport:
  """What the engine decided for a bundle and what it measured."""

  experiments: list[str]
  executor: str
  loop: str
  padded: int  # extra copies added to fill the devices
  trials: list[dict]
  seconds: float
  exp_steps_per_s: float
  # The autotuning cache's key for bundles like this one, and the choice.
  signature: str = ''
  how: str = ''
  # Per experiment, its own seconds per training step where the executor ran
  # one experiment at a time (static, per_experiment; first chunk left out:
  # compilation), else None.
  seconds_per_step: list = dataclasses.field(default_factory=list)


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
  """The bundle's arrays, placed for local or sharded executors on demand."""

  def __init__(self, state, setup, images, masks, mesh):
    self.host = (state, setup, images, masks)
    self.mesh = mesh
    self._placed = {}

  def get(self, executor: str):
    kind = 'sharded' if executor in SHARDED else 'local'
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

  # Per experiment, its best-validation weights (the last ones without
  # validation sets), BatchNorm statistics of the same step.
  weights: list[Weights]
  # Per experiment, one row per chunk it trained in: step, loss (chunk
  # mean), val_dice, learning_rate, trainable_fraction.
  history: list[list[dict]]
  diverged_at: list[int | None]  # the step whose update was not finite
  report: BundleReport
  resumed_from: int = 0  # the step training resumed at (0: from the start)
  # Per experiment: best step and validation Dice, where and why it stopped.
  progress: list[RunProgress] = dataclasses.field(default_factory=list)
  # With RunOptions.keep_val_per_image: per experiment, (step, per-image
  # validation Dice) of each evaluation since the start or resume.
  val_per_image: list[list] = dataclasses.field(default_factory=list)

  @property
  def losses(self) -> list[list[float]]:
    return [[row['loss'] for row in rows] for rows in self.history]


@functools.partial(jax.jit, static_argnums=0)
def _val_dice(graphdef, params, stats, images, masks):
  """Per-image Dice (mean over structures) of the network in evaluation mode
  (running statistics)."""
  logits, _ = apply_model(graphdef, params, stats, images, train=False)
  return metrics.mean_dice(structures.masks_from_logits(logits), masks)


def validation_dice(ctx: BundleContext, state: ExperimentState,
                    val: Sequence[tuple[np.ndarray, np.ndarray]],
                    which: Sequence[bool] | None = None) -> list[np.ndarray | None]:
  """Per-image validation Dice of the first ``len(val)`` experiments of a stacked state.

  ``val[e]`` is experiment e's (images, masks); cross-validation folds have
  their own. Only experiments with ``which[e]`` are scored (None for the
  others). One compiled single-experiment evaluation per set shape,
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
  which = [True] * len(val) if which is None else which
  return [np.asarray(_val_dice(graphdef, params, stats, images, masks)) if on else None
          for (params, stats), (images, masks), on in zip(parts, val, which)]


def _trainable_fractions(params: PyTree, setup: ExperimentSetup) -> np.ndarray:
  """[E, S]: the fraction of parameters trained in each stage of each experiment."""
  sizes = np.asarray([x.size for x in jax.tree.leaves(params)], np.float64)
  masks = np.stack([np.asarray(m) > 0 for m in jax.tree.leaves(setup.masks)])  # [L, E, S]
  return np.einsum('l,les->es', sizes, masks) / sizes.sum()


def _event_writers(events_dir: str | None, names: Sequence[str], start: int) -> list:
  """One TensorBoard run folder per experiment (no TensorFlow needed)."""
  if not events_dir or not is_writer():
    return []
  try:
    from tensorboardX import SummaryWriter
  except ImportError:  # an accelerator image may lack it: the histories still hold every value
    print('warning: tensorboardX is not installed: no TensorBoard event files (history.jsonl '
          'has the same values)', file=sys.stderr)
    return []
  # purge_step hides what an interrupted run logged after its checkpoint.
  return [SummaryWriter(os.path.join(events_dir, name), purge_step=start or None,
                        flush_secs=30) for name in names]


def strategy_setup(ctx: BundleContext, exp: Experiment, bundle: Sequence[Experiment]) -> dict:
  """``make_setup``'s fine-tuning strategy arguments for ``exp``: L2-SP, Auto-RGN and
  augmentation data only when some experiment of its bundle uses them, so
  plain bundles do none of their work."""
  default = AUGMENT_DEFAULTS['augment_values']
  return {'block_scale': exp.block_scale(encoders.layout(ctx.spec)),
          'l2sp': exp.l2sp if any(e.l2sp > 0 for e in bundle) else None,
          'rgn': exp.lr_scaling == 'rgn' if any(e.lr_scaling == 'rgn' for e in bundle)
          else None,
          'augment': exp.augment_values if any(e.augment_values != default for e in bundle)
          else None}


class Saved(NamedTuple):
  """What a bundle checkpoint holds as arrays: the training state, and each
  experiment's best-validation weights so far (host copies)."""

  state: ExperimentState
  best_params: PyTree  # stacked [E, ...]
  best_stats: PyTree


class Restored(NamedTuple):
  step: int
  state: ExperimentState
  best: Saved
  history: list[list[dict]]
  executor: str
  trials: list[dict]
  progress: list[dict]


def restore(checkpoints: BundleCheckpoints | None, template: Saved, fingerprint: str,
            warn) -> Restored | None:
  """The newest sound checkpoint saved for these settings, or None."""
  found = checkpoints.restore_latest(template, fingerprint, warn) if checkpoints else None
  if found is None:
    return None
  step, saved, meta = found
  # Checkpoints written before the rename call the executor 'strategy'.
  executor = meta.get('executor', meta.get('strategy'))
  return Restored(step, saved.state, saved, meta['history'], executor, meta['trials'],
                  meta['progress'])


def bundle_signature(ctx: BundleContext, num_members: int, image_shape, loop: str) -> str:
  """What a executor choice depends on: the autotuning cache's key."""
  return (f'{jax.default_backend()}|{len(jax.devices())}|{jax.process_count()}|'
          f'{ctx.spec}|{ctx.batch_size}|E={num_members}|{image_shape}|{loop}')


def choose_executor(ctx: BundleContext, requested: str, candidates: Sequence[str], *,
                    cached: dict | None, restored: Restored | None, inputs_for, steps: int,
                    loop: str, mesh, timing_steps: int) -> ExecutorChoice:
  """The executor a bundle runs with; times the candidates only when it must.

  A restored bundle keeps the executor it was saved with (results stay
  bitwise those of an uninterrupted run); a forced one is used as is; with
  ``'auto'`` a cached choice for this bundle's signature is taken, a single
  candidate needs no timing, and otherwise the candidates are timed
  (``autotune.time_executors``).
  """
  if restored is not None:
    return ExecutorChoice(restored.executor, restored.trials, 'restored')
  if requested != 'auto':
    return ExecutorChoice(requested, [], 'forced')
  if cached is not None:
    return ExecutorChoice(cached.get('executor', cached.get('strategy')), cached['trials'],
                          'cached')
  if len(candidates) == 1:
    return ExecutorChoice(candidates[0], [], 'only candidate')
  executor, chunk, trials = autotune.time_executors(
      ctx, inputs_for, candidates=candidates, total_steps=steps, loop=loop, mesh=mesh,
      timing_steps=timing_steps)
  return ExecutorChoice(executor, [dataclasses.asdict(t) for t in trials], 'timed', chunk)


class _ChunkLoop:
  """Trains a bundle chunk by chunk from ``start`` until every experiment has
  stopped or reached the cap, logging each chunk and keeping the best weights."""

  def __init__(self, ctx: BundleContext, experiments: Sequence[Experiment], chunk,
               setup: ExperimentSetup, fractions: np.ndarray, *, val, tracker: StopTracker,
               best: Saved, checkpoints, checkpoint_every: int, meta: dict, stop, writers,
               bar, warn, keep_per_image: bool = False):
    self.ctx, self.experiments, self.chunk, self.setup = ctx, experiments, chunk, setup
    self.fractions, self.val, self.checkpoints = fractions, val, checkpoints
    self.tracker, self.best = tracker, best
    self.checkpoint_every, self.meta, self.stop = checkpoint_every, meta, stop
    self.writers, self.bar, self.warn = writers, bar, warn
    self.starts = np.asarray(setup.starts)
    self.last_step = 0  # the last step any experiment trained to
    self.keep_per_image = keep_per_image
    self.per_image: list[list] = [[] for _ in experiments]

  def run(self, state, inputs, start: int, n: int):
    """(state, history) after training from step ``start``; ``n`` is the chunk length.

    Chunks end on a grid of ``n`` steps (a resumed run may first finish a
    shorter chunk if ``chunk_steps`` changed). The loop ends early once
    every experiment has stopped.
    """
    steps = self.experiments[0].steps
    ends = sorted({min(steps, (start // n + k) * n) for k in range(1, steps // n + 2)})
    step = self.last_step = start
    for end in (e for e in ends if e > start):
      if not self.tracker.active.any():
        break
      training = int(self.tracker.active.sum())
      state, losses = self.chunk(state, *inputs, num_steps=end - step)
      previous, step = step, end
      state = self._log(state, losses, step)
      self.last_step = step
      self.bar.update((step - previous) * training)
      if step == steps:
        break
      self._maybe_stop_or_save(state, step, previous)
    self.tracker.finish(steps, self.val is not None)
    self.meta['progress'] = self.tracker.to_json()
    return state

  def _log(self, state, chunk_losses, step: int):
    """Logs the chunk that ended at ``step``, decides who stops, keeps the best
    weights; returns the state with the stopped experiments marked."""
    num = len(self.experiments)
    active = self.tracker.active
    means = to_host(chunk_losses).mean(axis=0)[:num]
    per_image = (validation_dice(self.ctx, state, self.val, active)
                 if self.val is not None else [None] * num)
    dice = np.asarray([np.nan if d is None else float(np.mean(d, dtype=np.float64))
                       for d in per_image])
    for i, scores in enumerate(per_image):
      if scores is not None and self.keep_per_image:
        self.per_image[i].append((step, scores))
    stage = stage_index(self.starts, np.full(len(self.starts), step - 1))  # the last step
    for i, exp in enumerate(self.experiments):
      if not active[i]:
        continue
      row = {'step': step, 'loss': float(means[i]), 'val_dice': float(dice[i]),
             'learning_rate': float(exp.learning_rate),
             'trainable_fraction': float(self.fractions[i, stage[i]])}
      self.meta['history'][i].append(row)
      for key, value in row.items():
        if self.writers and key != 'step':
          self.writers[i].add_scalar(key, value, step)
    self.bar.set_postfix(loss=f'{np.nanmean(means):.3f}', refresh=False)
    diverged = to_host(state.diverged_at)[:num] >= 0
    improved, stopped = self.tracker.update(step, dice, diverged)
    if improved.any():
      self.best = _keep(self.best, to_host((state.params, state.stats)), improved)
    if stopped.any():
      state = state._replace(stopped_at=_mark_stopped(state.stopped_at, stopped, step))
      for i in np.flatnonzero(stopped):
        run = self.tracker.runs[i]
        self.bar.update(self.experiments[i].steps - step)  # steps it will not train
        self.warn(f'{self.experiments[i].name}: {run.reason} at step {step} '
                  f'(best validation Dice {run.best_val_dice:.3f} at step {run.best_step})')
    return state

  def _maybe_stop_or_save(self, state, step: int, previous: int) -> None:
    names = [e.name for e in self.experiments]
    if self.stop is not None and self.stop.requested:
      saved = self.checkpoints is not None and self.save(step, state, wait=True)
      raise Interrupted(
          f'stopped at step {step} of {self.experiments[0].steps} ({", ".join(names)}): '
          + ('checkpoint saved; run the same command again to resume' if saved else
             'no checkpoint was saved; rerunning starts this bundle again'),
          self.stop.signal)
    every = self.checkpoint_every
    if self.checkpoints is not None and every and step // every > previous // every:
      self.save(step, state)

  def save(self, step: int, state, *, wait: bool = False) -> bool:
    host = jax.tree.map(lambda x: x[:len(self.experiments)], to_host(state))
    self.meta['progress'] = self.tracker.to_json()
    return self.checkpoints.save(step, Saved(host, self.best.best_params, self.best.best_stats),
                                 self.meta, wait=wait, warn=self.warn)


def _keep(best: Saved, current: tuple, improved: np.ndarray) -> Saved:
  """``best`` with the experiments that ``improved`` replaced by their current
  (host) parameters and statistics: bitwise copies."""
  params, stats = current

  def take(old, new):
    out = np.array(old)
    out[improved] = np.asarray(new)[:len(improved)][improved]
    return out

  return best._replace(best_params=jax.tree.map(take, best.best_params, params),
                       best_stats=jax.tree.map(take, best.best_stats, stats))


def _mark_stopped(stopped_at: jax.Array, stopped: np.ndarray, step: int) -> jax.Array:
  """``state.stopped_at`` with ``step`` written for the experiments that stopped,
  placed as it was (padding copies of the last experiment follow it)."""
  host = np.array(to_host(stopped_at))
  flags = np.concatenate([stopped, np.repeat(stopped[-1:], len(host) - len(stopped))])
  host[flags] = step
  if isinstance(stopped_at, jax.Array):
    return jax.make_array_from_callback(host.shape, stopped_at.sharding, lambda i: host[i])
  return host


def run_bundle(ctx: BundleContext, experiments: Sequence[Experiment],
               inits: Sequence[Weights], data: BundleData, options: RunOptions = RunOptions(),
               *, bar: tqdm.tqdm | None = None, tuning: dict | None = None,
               checkpoints: BundleCheckpoints | None = None, fingerprint: str = '',
               stop: StopRequest | None = None, events_dir: str | None = None
               ) -> BundleResult:
  """Trains a bundle of experiments that share steps and batch size.

  Longer than the engine's other functions because it is the one place the
  four steps (restore, choose a executor, the chunk loop, collect) and their
  inputs meet; each step is a function or class of its own above.

  Args:
    ctx: the static part of the bundle (model, batch size, options).
    experiments, inits: the experiments and their initial weights.
    data: the image array every experiment draws from, its indices into it,
      and optional per-experiment validation sets (scored after every chunk).
    options: executor (``'auto'`` times the candidates, ``autotune``),
      loop, chunk length and checkpoint interval.
    bar: a progress bar (none shown when None).
    tuning: the autotuning cache, read only: signature -> {'executor',
      'trials'}; the choice made is in ``result.report`` (``signature``).
    checkpoints: where to save and resume from; ``fingerprint`` must
      identify the settings the checkpoints belong to.
    stop: a :class:`unet_jax.engine.resume.StopRequest`; when set, the bundle
      saves at the next chunk boundary and raises :class:`Interrupted`.
    events_dir: TensorBoard event files go to ``events_dir/<experiment>``.

  Returns:
    A :class:`BundleResult`.
  """
  bar = tqdm.tqdm(disable=True) if bar is None else bar
  warn = lambda msg: bar.write(msg, file=sys.stderr)
  steps, names = experiments[0].steps, [e.name for e in experiments]
  num_stages = max(len(e.schedule.stages) for e in experiments)
  index_length = max(len(i) for i in data.train_index)
  setup = stack([make_setup(w.params, w.stats, e.schedule, num_stages=num_stages,
                            learning_rate=e.learning_rate, weight_decay=e.weight_decay,
                            seed_key=training_key(e), frozen_norm=e.frozen_norm,
                            train_index=index, index_length=index_length,
                            **strategy_setup(ctx, e, experiments))
                 for e, w, index in zip(experiments, inits, data.train_index)])
  state = stack([init_experiment_state(w.params, w.stats) for w in inits])
  best = Saved(state, *stack([(w.params, w.stats) for w in inits]))
  restored = restore(checkpoints, best, fingerprint, warn)
  last_stages = [e.schedule.starts[-1] for e in experiments]
  tracker = StopTracker(options.early_stop, last_stages)
  if restored is not None:
    state, best = restored.state, restored.best
    tracker = StopTracker.from_json(options.early_stop, last_stages, restored.progress)
    warn(f'resuming {names[0] if len(names) == 1 else f"a bundle of {len(names)}"} '
         f'at step {restored.step} of {steps} from {checkpoints.directory}')
  start = restored.step if restored is not None else 0
  candidates = autotune.candidate_executors(
      jax.default_backend(), len(jax.devices()), len(experiments), jax.process_count(),
      num_stages=num_stages)
  # A restored bundle keeps its executor, and so the padding it was saved with.
  mesh, padded = _mesh_and_padding(
      experiments, restored.executor if restored is not None else options.executor, candidates)
  pad = lambda tree: jax.tree.map(
      lambda x: np.concatenate([x] + [x[-1:]] * padded) if padded else x, tree)
  inputs = _Inputs(pad(state), pad(setup), data.images, data.masks, mesh)
  n = chunk_length(steps, options.chunk_steps)
  signature = bundle_signature(ctx, len(experiments) + padded, data.images.shape, options.loop)
  cached = (tuning or {}).get(signature)
  if restored is None and options.executor == 'auto' and cached is None and len(candidates) > 1:
    bar.set_description('timing executors')
  choice = choose_executor(
      ctx, options.executor, candidates, cached=cached,
      restored=restored, inputs_for=inputs.get, steps=steps, loop=options.loop, mesh=mesh,
      timing_steps=n if resolve_loop(options.loop) == 'scan' else 1)
  chunk = choice.chunk or make_bundle_chunk(
      ctx, choice.executor, loop=options.loop,
      mesh=mesh if choice.executor in SHARDED else None)
  state, *arrays = inputs.get(choice.executor)
  meta = {'fingerprint': fingerprint, 'executor': choice.executor, 'trials': choice.trials,
          'history': restored.history if restored is not None else [[] for _ in names],
          'progress': tracker.to_json()}
  writers = _event_writers(events_dir, names, start)
  bar.set_description(names[0] if len(names) == 1 else f'bundle of {len(names)}')
  # Runs that had stopped before a resume count as done.
  bar.update(sum(start if r.stopped_at is None else steps for r in tracker.runs))
  loop = _ChunkLoop(ctx, experiments, chunk, setup, _trainable_fractions(inits[0].params, setup),
                    val=data.val, tracker=tracker, best=best, checkpoints=checkpoints,
                    checkpoint_every=options.checkpoint_every, meta=meta, stop=stop,
                    writers=writers, bar=bar, warn=warn,
                    keep_per_image=options.keep_val_per_image)
  began = time.perf_counter()
  try:
    state = loop.run(state, arrays, start, n)
  finally:
    for writer in writers:
      writer.close()
  if checkpoints is not None:
    checkpoints.wait(warn)
  host = to_host((state.params, state.stats, state.diverged_at))  # waits for the last step
  seconds = time.perf_counter() - began
  own = (chunk.seconds_per_step(len(experiments)) if hasattr(chunk, 'seconds_per_step')
         else [None] * len(experiments))
  trained = sum(max(0, r.stopped_at - start) for r in tracker.runs) + padded * (
      loop.last_step - start)
  report = BundleReport(names, choice.executor, chunk.loop, padded, choice.trials, seconds,
                        trained / seconds if seconds > 0 else 0.0,
                        signature, choice.how, own)
  weights = loop.best if data.val is not None else None
  result = _collect(host, weights, len(experiments), meta['history'], report, start,
                    tracker.runs)
  return dataclasses.replace(result, val_per_image=loop.per_image)


def _mesh_and_padding(experiments: Sequence[Experiment], executor: str,
                      candidates: Sequence[str]):
  """(mesh or None, padding): sharded executors need the experiment axis to fill
  the 'exp' devices evenly, so copies of the last experiment pad it (and are
  dropped after)."""
  mesh = (experiment_mesh(len(experiments), experiments[0].batch_size)
          if len(jax.devices()) > 1 else None)
  may_shard = executor in SHARDED or (executor == 'auto' and
                                      any(c in SHARDED for c in candidates))
  shards = mesh.shape['exp'] if mesh is not None else 1
  return mesh, (-len(experiments)) % shards if may_shard else 0


def _collect(host, best: Saved | None, num: int, history, report: BundleReport, start: int,
             progress: list[RunProgress]) -> BundleResult:
  """The per-experiment results: the best-validation weights where there were
  validation sets (``best``), else the last ones (``host``: params, stats,
  diverged_at)."""
  params, stats, diverged_at = host
  if best is not None:
    params, stats = best.best_params, best.best_stats
  weights = [Weights(*unstack((params, stats), i)) for i in range(num)]
  diverged = [int(d) if d >= 0 else None for d in diverged_at[:num]]
  return BundleResult(weights, history, diverged, report, start, progress)
