"""Choosing how to run a bundle by timing the candidates on the hardware at hand.

Each candidate executor is compiled and run for a few steps on the bundle's
real state and data (the results are thrown away). The projected time of
the whole bundle, compile included, is ``compile + steps * step_time``; the
fastest projection wins. A candidate that fails (out of memory, an XLA
limitation) is recorded with its error and skipped. The decision and all
timings go into the results, and are cached in the work directory so a
rerun of the same bundle on the same hardware does not time again.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import numpy as np

from unet_jax.engine.choices import SHARDED
from unet_jax.engine.executors import make_bundle_chunk


@dataclasses.dataclass
class Trial:
  executor: str
  compile_s: float = float('nan')  # first call minus one timed step
  step_s: float = float('nan')  # one bundle step (all experiments)
  exp_steps_per_s: float = float('nan')
  projected_s: float = float('inf')  # compile + total_steps * step_s
  error: str = ''


def candidate_executors(backend: str, num_devices: int, num_experiments: int,
                         num_processes: int = 1, num_stages: int = 2) -> list[str]:
  """Executors worth timing here.

  Timing is not free (each candidate compiles), so on CPU the candidates
  that measured slowest there are left out (docs/DESIGN.md section 3,
  BENCHMARKS.md): ``vmap`` (grouped convolutions, ~3x slower than
  ``static``), ``vmap_matmul`` (~1.5x slower) and ``sequential`` (a
  ``lax.map`` loop body, 14x slower on XLA:CPU). ``config.executor`` can
  still force any of them. With more than one process only sharded
  executors make sense: the others would run the whole bundle on every host.
  """
  if num_experiments == 1 and num_processes == 1:
    return ['static']
  sharded = ['sharded_vmap'] + ([] if backend == 'cpu' else ['sharded_sequential'])
  if num_processes > 1:
    return sharded
  if backend == 'cpu':
    # One stage per experiment: per_experiment runs the same steps with the
    # frozen gradients computed too, so it can only win by compiling one
    # program instead of one per distinct mask. Measured (BENCHMARKS.md) that
    # never paid on this CPU, while timing it cost 20-40 s: static, untimed.
    names = ['static'] + (['per_experiment'] if num_stages > 1 else [])
  else:
    names = ['static', 'per_experiment', 'vmap', 'vmap_matmul', 'sequential']
  if num_devices > 1:
    names += sharded
  return names


def time_executors(ctx, inputs_for: Callable[[str], tuple], *,
                    candidates: Sequence[str], total_steps: int, loop: str, mesh=None,
                    timing_steps: int = 2, repeats: int = 2
                    ) -> tuple[str, Callable, list[Trial]]:
  """Times each candidate; returns (best executor, its chunk function, trials).

  ``inputs_for(executor)`` gives (state, setup, images, masks) placed as that
  executor expects; they are not modified.
  """
  trials, chunks = [], {}
  for name in candidates:
    trial = Trial(name)
    trials.append(trial)
    try:
      state, setup, images, masks = inputs_for(name)
      num_experiments = np.shape(setup.starts)[0]
      chunk = make_bundle_chunk(ctx, name, loop=loop,
                                mesh=mesh if name in SHARDED else None)
      steps = timing_steps
      start = time.perf_counter()
      st, losses = chunk(state, setup, images, masks, num_steps=steps)
      jax.block_until_ready(losses)
      first = time.perf_counter() - start
      # The first calls after a compile run slow (allocation, thread-pool
      # warm-up): the best of a few repeats is the steady-state speed.
      timed = []
      for _ in range(repeats):
        start = time.perf_counter()
        st, losses = chunk(st, setup, images, masks, num_steps=steps)
        jax.block_until_ready(losses)
        timed.append((time.perf_counter() - start) / steps)
      trial.step_s = min(timed)
    except Exception as e:  # noqa: BLE001 - a failing candidate is skipped, not fatal
      trial.error = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
      continue
    trial.compile_s = max(first - steps * trial.step_s, 0.0)
    trial.exp_steps_per_s = num_experiments / trial.step_s
    trial.projected_s = trial.compile_s + total_steps * trial.step_s
    chunks[name] = chunk
  ok = [t for t in trials if not t.error]
  if not ok:
    raise RuntimeError('no executor could run this bundle: ' +
                       '; '.join(f'{t.executor}: {t.error}' for t in trials))
  best = min(ok, key=lambda t: t.projected_s)
  return best.executor, chunks[best.executor], trials
