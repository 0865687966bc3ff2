"""One experiment's step: its own training images, stages, learning rate, divergence."""

import jax
import numpy as np
import pytest
from bundles import LR, SPEC, make_bundle

from unet_jax.engine import step
from unet_jax.engine.executors import make_bundle_chunk
from unet_jax.engine.step import BundleContext, init_experiment_state, make_setup, stack, unstack
from unet_jax.freeze import preset_rules
from unet_jax.schedules import Schedule, gradual


@pytest.mark.parametrize('executor', ['static', 'vmap'])
def test_each_experiment_draws_only_its_own_training_images(problem, executor):
  # Folds of one bundle share the image array: every image outside an
  # experiment's training indices is poisoned, so one draw of it would make
  # the loss NaN and mark the experiment diverged. The two index lists differ
  # in length, so the shorter one is padded (with index 0, a poisoned image).
  _, params, stats, images, masks = problem
  fits = [np.arange(3, 8), np.arange(1, 12, 2)]  # 5 and 6 images, neither holds 0
  poisoned = images.copy()
  outside = np.setdiff1d(np.arange(len(images)), np.concatenate(fits))
  poisoned[outside] = np.nan
  assert 0 in outside
  schedule = Schedule.constant(preset_rules('full', SPEC.depth))
  setup = stack([make_setup(params, stats, schedule, num_stages=1, learning_rate=LR,
                            weight_decay=0.0, seed_key=jax.random.key(0),
                            frozen_norm='adapt', train_index=fit, index_length=6)
                 for fit in fits])
  assert np.asarray(setup.train_count).tolist() == [5, 6]
  state = stack([init_experiment_state(params, stats)] * 2)
  chunk = make_bundle_chunk(BundleContext(SPEC, 4), executor, loop='host')
  state, losses = chunk(state, setup, poisoned, masks, num_steps=6)
  assert np.all(np.isfinite(np.asarray(losses)))
  assert np.asarray(state.diverged_at).tolist() == [-1, -1]
  # The same seed, other training images: other weights.
  assert not np.array_equal(*np.asarray(state.params['head']['kernel']))


def test_gradual_schedule_trains_the_right_blocks_at_each_stage(problem):
  _, params, stats, images, masks = problem
  schedule = gradual('flow', 'shallow_to_deep', 2, SPEC.depth)  # enc1, enc2, ...
  state, setup = make_bundle(params, stats, [schedule])
  chunk = make_bundle_chunk(BundleContext(SPEC, 4), 'per_experiment', loop='host')
  s2, _ = chunk(state, setup, images, masks, num_steps=2)  # stage 0: enc1 only
  p0, p2 = params, unstack(s2.params, 0)
  assert not np.array_equal(p0['enc1']['conv1']['kernel'], p2['enc1']['conv1']['kernel'])
  np.testing.assert_array_equal(p0['enc2']['conv1']['kernel'], p2['enc2']['conv1']['kernel'])
  s4, _ = chunk(s2, setup, images, masks, num_steps=2)  # stage 1: enc1 + enc2
  p4 = unstack(s4.params, 0)
  assert not np.array_equal(p2['enc2']['conv1']['kernel'], p4['enc2']['conv1']['kernel'])
  np.testing.assert_array_equal(p0['head']['kernel'], p4['head']['kernel'])
  # enc2 was unfrozen at step 2: it has been trained for 2 steps, enc1 for 4.
  count = unstack(s4.opt_state.count, 0)
  assert int(count['enc1']['conv1']['kernel']) == 4
  assert int(count['enc2']['conv1']['kernel']) == 2
  assert int(count['head']['kernel']) == 0


def test_learning_rate_is_data(problem):
  _, params, stats, images, masks = problem
  rules = Schedule.constant(preset_rules('head', SPEC.depth))
  state, setup = make_bundle(params, stats, [rules, rules], lrs=[1e-3, 0.0])
  chunk = make_bundle_chunk(BundleContext(SPEC, 4), 'vmap', loop='host')
  state, _ = chunk(state, setup, images, masks, num_steps=2)
  head = np.asarray(state.params['head']['kernel'])
  assert not np.array_equal(head[0], params['head']['kernel'])
  np.testing.assert_array_equal(head[1], params['head']['kernel'])


@pytest.mark.parametrize('as_data', [False, True])
def test_divergence_check_reads_only_trained_gradients(as_data):
  mask_of = (lambda a, b: {'a': jax.numpy.float32(a), 'b': jax.numpy.float32(b)}) if as_data \
      else (lambda a, b: {'a': bool(a), 'b': bool(b)})
  loss = jax.numpy.float32(0.5)
  nan_in_b = {'a': jax.numpy.ones(3), 'b': jax.numpy.array([np.nan, 0.0])}
  assert bool(step._finite_step(loss, nan_in_b, mask_of(1, 0)))
  assert not bool(step._finite_step(loss, nan_in_b, mask_of(1, 1)))
  inf_in_a = {'a': jax.numpy.array([np.inf, 1.0, 1.0]), 'b': jax.numpy.zeros(2)}
  assert not bool(step._finite_step(loss, inf_in_a, mask_of(1, 0)))
  finite = {'a': jax.numpy.ones(3), 'b': jax.numpy.zeros(2)}
  assert not bool(step._finite_step(jax.numpy.float32(np.nan), finite, mask_of(1, 1)))
  assert bool(step._finite_step(loss, finite, mask_of(1, 1)))


