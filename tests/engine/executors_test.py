"""Every executor against the optax.partition baseline in float64; one trace per bundle."""

import jax
import numpy as np
import pytest
from bundles import LR, SPEC, make_bundle
from reference_trainer import init_state, make_optimizer, make_train_chunk

from unet_jax.engine import step
from unet_jax.engine.executors import make_bundle_chunk
from unet_jax.engine.step import BundleContext, unstack
from unet_jax.freeze import FROZEN_NORM, freeze_labels, norm_masks, preset_rules
from unet_jax.schedules import Schedule, gradual, unfreeze_at

STEPS = 4
SUBSETS = ['contracting', 'head', 'full']
BUNDLED = ['static', 'per_experiment', 'sequential', 'vmap', 'vmap_matmul']


def _static_reference(graphdef, params, stats, images, masks, preset, key, frozen_norm,
                      steps=STEPS):
  """One experiment through optax.partition + set_to_zero, the user's baseline."""
  rules = preset_rules(preset, SPEC.depth)
  optimizer = make_optimizer(freeze_labels(params, rules), LR)
  norm = norm_masks(stats, params, rules, frozen_norm)
  chunk = make_train_chunk(graphdef, optimizer, norm.update, batch_size=4,
                           running=norm.running, loop='host')
  state, _ = chunk(init_state(params, stats, optimizer), images, masks, key, num_steps=steps)
  return state, rules


def _float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


@pytest.fixture(scope='module')
def references64(problem):
  """The optax.partition runs of every subset and policy, in float64, 3 steps."""
  graphdef, params, stats, images, masks = problem
  out = {}
  with jax.enable_x64(True):
    p64, s64, i64, m64 = _float64((params, stats, images, masks))
    for policy in FROZEN_NORM:
      for i, preset in enumerate(SUBSETS):
        ref, rules = _static_reference(graphdef, p64, s64, i64, m64, preset,
                                       jax.random.key(i), policy, steps=3)
        out[policy, preset] = jax.tree.map(np.asarray, (ref.params, ref.stats)), rules
  return out


@pytest.mark.parametrize('executor, policy', [(s, 'inference') for s in BUNDLED]
                         + [('static', 'adapt'), ('vmap', 'adapt')])
def test_bundle_matches_optax_partition_in_float64(problem, references64, executor, policy,
                                                  monkeypatch):
  # In float32, Adam turns float-noise gradients (conv biases before
  # BatchNorm) into lr-sized steps, so only a loose bound would hold; in
  # float64 those gradients sit far below Adam's eps and the two paths
  # must agree closely. enable_x64 is thread-local: one worker thread (two
  # workers give the same bits, test_workers_give_the_same_bundle...).
  monkeypatch.setenv('UNET_JAX_CPU_WORKERS', '1')
  _, params, stats, images, masks = problem
  with jax.enable_x64(True):
    p64, s64, i64, m64 = _float64((params, stats, images, masks))
    schedules = [Schedule.constant(preset_rules(p, SPEC.depth)) for p in SUBSETS]
    state, setup = make_bundle(p64, s64, schedules, frozen_norm=policy)
    chunk = make_bundle_chunk(BundleContext(SPEC, 4), executor, loop='host')
    state, losses = chunk(state, setup, i64, m64, num_steps=3)
    assert losses.shape == (3, len(SUBSETS)) and losses.dtype == np.float64
    for i, preset in enumerate(SUBSETS):
      (ref_params, ref_stats), rules = references64[policy, preset]
      got = unstack(state, i)
      labels = jax.tree.leaves(freeze_labels(params, rules))
      for lab, r, g, p0 in zip(labels, jax.tree.leaves(ref_params),
                               jax.tree.leaves(got.params), jax.tree.leaves(p64)):
        if lab == 'freeze':  # bit for bit, and untouched
          np.testing.assert_array_equal(g, r)
          np.testing.assert_array_equal(g, p0)
        else:
          np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6 * LR)
          assert not np.array_equal(g, p0)
      update = norm_masks(stats, params, rules, policy).update
      for keep, r, g, s0 in zip(jax.tree.leaves(update), jax.tree.leaves(ref_stats),
                                jax.tree.leaves(got.stats), jax.tree.leaves(s64)):
        if keep:
          np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-9)
        else:  # frozen layers' statistics stay as pretrained, bit for bit
          np.testing.assert_array_equal(g, s0)
      # A frozen leaf's Adam state never moved either.
      for lab, mu, count in zip(labels, jax.tree.leaves(got.opt_state.mu),
                                jax.tree.leaves(got.opt_state.count)):
        if lab == 'freeze':
          assert int(count) == 0 and not np.any(mu)
        else:
          assert int(count) == 3


@pytest.mark.parametrize('executor', ['per_experiment', 'sequential', 'vmap'])
def test_one_trace_per_bundle_with_mixed_subsets_and_schedules(problem, executor):
  _, params, stats, images, masks = problem
  schedules = [Schedule.constant(preset_rules('head', SPEC.depth)),
               gradual('flow', 'shallow_to_deep', 1, SPEC.depth),
               gradual('depth', 'deep_to_shallow', 2, SPEC.depth),
               unfreeze_at(preset_rules('last', SPEC.depth), 2)]
  state, setup = make_bundle(params, stats, schedules, lrs=[1e-3, 3e-4, 1e-3, 1e-2])
  step.TRACES.clear()
  chunk = make_bundle_chunk(BundleContext(SPEC, 4), executor, loop='host')
  for _ in range(3):
    state, _ = chunk(state, setup, images, masks, num_steps=2)
  assert step.TRACES['experiment_step'] == 1
  assert np.asarray(state.step).tolist() == [6] * 4


def test_scan_loop_traces_once_and_matches_host(problem):
  _, params, stats, images, masks = problem
  schedules = [gradual('flow', 'shallow_to_deep', 1, SPEC.depth),
               Schedule.constant(preset_rules('expanding', SPEC.depth))]
  state, setup = make_bundle(params, stats, schedules)
  step.TRACES.clear()
  scan = make_bundle_chunk(BundleContext(SPEC, 4), 'vmap', loop='scan')
  s1, l1 = scan(state, setup, images, masks, num_steps=3)
  s1, l1b = scan(s1, setup, images, masks, num_steps=3)
  assert step.TRACES['experiment_step'] == 1
  host = make_bundle_chunk(BundleContext(SPEC, 4), 'vmap', loop='host')
  s2, _ = host(state, setup, images, masks, num_steps=6)
  # Conv biases before BatchNorm get float-noise gradients that Adam turns
  # into lr-sized steps, so the bound is lr * steps, as above.
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, atol=LR * 6)


