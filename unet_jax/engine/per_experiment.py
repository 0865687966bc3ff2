"""The ``static`` and ``per_experiment`` executors: a bundle as calls of one experiment's step.

Experiments run one after another, dispatched asynchronously, or with
``workers > 1`` that many at a time from Python threads (on CPU, where
XLA runs a program in its caller's thread); the stacked state is split at
the start of a chunk and stacked again at its end. With ``static`` the
stage masks are compile-time constants, so a chunk is split at stage
boundaries and each distinct stage has its own program.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.engine.execution import compiler_options, merge_experiments, split_experiments
from unet_jax.engine.loops import host_loop, resolve_loop
from unet_jax.engine.step import (
  BundleContext,
  ExperimentSetup,
  StageMasks,
  experiment_step,
  stage_masks_at,
)

PyTree = Any


def _scan_chunk(single: Callable, state, setup, images, masks, num_steps: int,
                static_stage: StageMasks | None):
  body = lambda st, _: single(st, setup, images, masks, static_stage)
  return jax.lax.scan(body, state, length=num_steps)


def _segments(setup: ExperimentSetup, start: int, num_steps: int) -> list[tuple[int, int]]:
  """Splits [start, start + num_steps) at the schedule's stage starts: (first, length)."""
  cuts = sorted({int(b) for b in np.asarray(setup.starts) if start < b < start + num_steps})
  edges = [start] + cuts + [start + num_steps]
  return [(a, b - a) for a, b in zip(edges, edges[1:])]


class PerExperimentChunk:
  """``chunk(state, setup, images, masks, num_steps) -> (state, losses[T, E])``.

  ``step`` is the jitted single-experiment step; ``loop`` is ``'host'`` or
  ``'scan'`` (``loops.resolve_loop``).
  """

  def __init__(self, ctx: BundleContext, loop: str, *, static: bool, workers: int = 1):
    self.static, self.workers = static, workers
    self.loop = 'scan' if resolve_loop(loop) == 'scan' else 'host'
    single = functools.partial(experiment_step, ctx, 'xla')
    options = compiler_options()
    self.step = jax.jit(single, static_argnames='static_stage', compiler_options=options)
    self._scan = jax.jit(functools.partial(_scan_chunk, single),
                         static_argnames=('num_steps', 'static_stage'),
                         compiler_options=options)
    self._compiling = threading.Lock()
    self._compiled: set = set()
    self._seconds: dict[int, float] = {}  # experiment -> its time in the last chunk
    # Per experiment, (seconds, steps) of its chunks after its first (which
    # may compile): its own training time, what a user running it alone
    # would wait (with workers > 1, while sharing the cores with another).
    self._busy: dict[int, list[float]] = {}
    self._chunks: dict[int, int] = {}

  def seconds_per_step(self, num: int) -> list[float | None]:
    """Each experiment's measured seconds per step, None before its second chunk."""
    return [self._busy[e][0] / self._busy[e][1] if e in self._busy else None
            for e in range(num)]

  def __call__(self, state, setup, images, masks, num_steps: int):
    num = np.shape(setup.starts)[0]
    starts = np.asarray(state.step)
    # Experiments that early stopping ended are not run at all: their state
    # stays bitwise as it was, and their losses are NaN.
    training = [e for e in range(num) if np.asarray(state.stopped_at)[e] < 0]
    parts = split_experiments((state, setup), num)
    outs = [(part[0], jnp.full((num_steps,), jnp.nan, jnp.float32)) for part in parts]
    if self.workers > 1 and len(training) > 1:
      order = [e for e in self._longest_first(setup, num) if e in training]
      with concurrent.futures.ThreadPoolExecutor(min(self.workers, len(order))) as pool:
        done = dict(zip(order, pool.map(
            lambda e: self._timed(int(starts[e]), num_steps, images, masks, e, parts[e]),
            order)))
    else:
      done = {e: self._timed(int(starts[e]), num_steps, images, masks, e, parts[e])
              for e in training}
    outs = [done.get(e, out) for e, out in enumerate(outs)]
    states, losses = merge_experiments(outs)
    return states, losses.T

  def _longest_first(self, setup: ExperimentSetup, num: int) -> list[int]:
    """Experiments by their last chunk's time (at first by the share of parameters
    trained), longest first, so that no worker is left with a long experiment
    while the others have finished."""
    trained = np.mean([(np.asarray(m) > 0).reshape(num, -1).mean(axis=1)
                       for m in jax.tree.leaves(setup.masks)], axis=0)
    return sorted(range(num), key=lambda e: -self._seconds.get(e, trained[e]))

  def _timed(self, start, num_steps, images, masks, index, part):
    began = time.perf_counter()
    out = jax.block_until_ready(self._run_experiment(start, num_steps, images, masks, part))
    self._seconds[index] = seconds = time.perf_counter() - began
    self._chunks[index] = self._chunks.get(index, 0) + 1
    if self._chunks[index] > 1:
      busy = self._busy.setdefault(index, [0.0, 0])
      busy[0] += seconds
      busy[1] += num_steps
    return out

  def _run_experiment(self, start, num_steps, images, masks, state_and_setup):
    state, setup = state_and_setup
    if not self.static:
      return self._run(state, setup, images, masks, num_steps, None)
    host_setup = jax.tree.map(np.asarray, setup)
    losses = []
    for first, length in _segments(host_setup, start, num_steps):
      state, seg = self._run(state, setup, images, masks, length,
                             stage_masks_at(host_setup, first))
      losses.append(seg)
    return state, jnp.concatenate(losses)

  def _run(self, state, setup, images, masks, num_steps, static_stage):
    if self.loop == 'scan':
      return self._first_call((static_stage, num_steps), lambda: self._scan(
          state, setup, images, masks, num_steps=num_steps, static_stage=static_stage))
    one_step = functools.partial(self.step, static_stage=static_stage)
    state, loss = self._first_call(static_stage, lambda: one_step(state, setup, images, masks))
    if num_steps == 1:
      return state, loss[None]
    state, losses = host_loop(one_step, state, setup, images, masks, num_steps=num_steps - 1)
    return state, jnp.concatenate([loss[None], losses])

  def _first_call(self, key, call):
    """``call()``; a call that compiles holds a lock, so workers compile one
    program at a time (XLA:CPU already spreads a compile over the cores; two
    at once made an 8-subset bundle's first chunk slower, 28-30 s against
    25 s) while the others train, and no program is compiled twice."""
    if key in self._compiled:
      return call()
    with self._compiling:
      out = call()
      self._compiled.add(key)
    return out
