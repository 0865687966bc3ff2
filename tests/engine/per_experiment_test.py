"""The static and per_experiment executors: worker threads, stage segments."""

import jax
import numpy as np
from bundles import SPEC, make_bundle

from unet_jax.engine.executors import make_bundle_chunk
from unet_jax.engine.per_experiment import _segments
from unet_jax.engine.step import BundleContext
from unet_jax.freeze import preset_rules
from unet_jax.schedules import Schedule, unfreeze_at

SUBSETS = ['contracting', 'head', 'full']
STEPS = 4


def test_workers_give_the_same_bundle_as_one_at_a_time(problem, monkeypatch):
  _, params, stats, images, masks = problem
  schedules = [Schedule.constant(preset_rules(s, SPEC.depth)) for s in SUBSETS]
  schedules.append(unfreeze_at(preset_rules('head', SPEC.depth), 2))
  state, setup = make_bundle(params, stats, schedules)
  out = {}
  for workers in ('1', '2'):
    monkeypatch.setenv('UNET_JAX_CPU_WORKERS', workers)
    chunk = make_bundle_chunk(BundleContext(SPEC, 4), 'static', loop='host')
    out[workers] = chunk(state, setup, images, masks, num_steps=STEPS)
  for a, b in zip(jax.tree.leaves(out['1']), jax.tree.leaves(out['2'])):
    np.testing.assert_array_equal(a, b)


def test_a_chunk_is_cut_at_stage_starts():
  # static compiles one program per stage: a chunk over a stage start runs
  # in two segments, each with its stage's masks.
  setup = type('Setup', (), {'starts': np.asarray([0, 5, 9, np.iinfo(np.int32).max])})()
  assert _segments(setup, 0, 4) == [(0, 4)]
  assert _segments(setup, 4, 4) == [(4, 1), (5, 3)]
  assert _segments(setup, 3, 10) == [(3, 2), (5, 4), (9, 4)]
