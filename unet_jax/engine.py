"""Runs one bundle: stacks its experiments, picks a strategy, trains in chunks."""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Any, Sequence

import jax
import numpy as np
import tqdm
from jax.sharding import PartitionSpec as P

from unet_jax import autotune
from unet_jax.bundle import (
  SHARDED,
  BundleContext,
  experiment_mesh,
  init_experiment_state,
  make_bundle_chunk,
  make_setup,
  place,
  stack,
  unstack,
)
from unet_jax.distributed import to_host
from unet_jax.grid import Experiment
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


def training_key(exp: Experiment) -> jax.Array:
  """Depends on the seed and base name only: adding experiments changes nothing."""
  return jax.random.fold_in(jax.random.key(exp.seed), zlib.crc32(exp.base.encode()))


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


def run_bundle(ctx: BundleContext, experiments: Sequence[Experiment],
               inits: Sequence[Weights], images: np.ndarray, masks: np.ndarray, *,
               strategy: str, loop: str, chunk_steps: int, bar: tqdm.tqdm,
               tuning_cache: dict | None = None
               ) -> tuple[list[Weights], list[list[float]], BundleReport]:
  """Trains a bundle; returns per-experiment weights, chunk losses and a report.

  ``strategy='auto'`` times the candidates (``unet_jax.autotune``) unless
  ``tuning_cache`` already holds a choice for this bundle's signature.
  """
  steps = experiments[0].steps
  num_stages = max(len(e.schedule.stages) for e in experiments)
  devices = jax.devices()
  candidates = autotune.candidate_strategies(
      jax.default_backend(), len(devices), len(experiments), jax.process_count())
  may_shard = strategy in SHARDED or (strategy == 'auto' and
                                      any(c in SHARDED for c in candidates))
  mesh = (experiment_mesh(len(experiments), experiments[0].batch_size)
          if len(devices) > 1 else None)
  exp_shards = mesh.shape['exp'] if mesh is not None else 1
  # Sharded strategies need the experiment axis to fill the 'exp' devices evenly.
  padded = (-len(experiments)) % exp_shards if may_shard else 0
  members = list(experiments) + [experiments[-1]] * padded
  weights = list(inits) + [inits[-1]] * padded
  setup = stack([make_setup(w.params, w.stats, e.schedule, num_stages=num_stages,
                            learning_rate=e.learning_rate, weight_decay=e.weight_decay,
                            seed_key=training_key(e)) for e, w in zip(members, weights)])
  state = stack([init_experiment_state(w.params, w.stats) for w in weights])
  inputs = _Inputs(state, setup, images, masks, mesh)
  n = chunk_length(steps, chunk_steps)
  signature = (f'{jax.default_backend()}|{len(devices)}|{jax.process_count()}|'
               f'{ctx.spec}|{ctx.batch_size}|E={len(members)}|{images.shape}|{loop}')
  trials, chunk = [], None
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
  if chunk is None:  # forced or cached choice; a timed winner is already compiled
    chunk = make_bundle_chunk(ctx, strategy, loop=loop,
                              mesh=mesh if strategy in SHARDED else None)
  state, setup, images, masks = inputs.get(strategy)
  names = [e.name for e in experiments]
  bar.set_description(names[0] if len(names) == 1 else f'bundle of {len(names)}')
  losses: list[list[float]] = [[] for _ in experiments]
  start = time.perf_counter()
  for _ in range(steps // n):
    state, chunk_losses = chunk(state, setup, images, masks, num_steps=n)
    means = to_host(chunk_losses).mean(axis=0)
    for i in range(len(experiments)):
      losses[i].append(float(means[i]))
    bar.set_postfix(loss=f'{np.mean(means[:len(experiments)]):.3f}', refresh=False)
    bar.update(n * len(experiments))
  final = to_host((state.params, state.stats))
  seconds = time.perf_counter() - start
  out = [Weights(*unstack(final, i)) for i in range(len(experiments))]
  report = BundleReport(names, strategy, chunk.loop, padded, trials, seconds,
                        len(members) * steps / seconds)
  return out, losses, report
