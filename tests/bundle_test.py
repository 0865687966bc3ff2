"""The bundle engine: equivalence with the static optax path, one trace per bundle."""

import jax
import numpy as np
import pytest

from unet_jax import bundle, execution
from unet_jax.bundle import (
  BundleContext,
  init_experiment_state,
  make_bundle_chunk,
  make_setup,
  stack,
  unstack,
)
from unet_jax.errors import UserError
from unet_jax.freeze import FROZEN_NORM, freeze_labels, norm_masks, preset_rules
from unet_jax.model import UNetSpec, init_model
from unet_jax.optim import make_optimizer
from unet_jax.schedules import Schedule, gradual, unfreeze_at
from unet_jax.train import init_state, make_train_chunk

SPEC = UNetSpec(base_width=4, depth=2, norm='batch')
STEPS = 4
LR = 1e-3
SUBSETS = ['contracting', 'head', 'full']
BUNDLED = ['static', 'per_experiment', 'sequential', 'vmap', 'vmap_matmul']


@pytest.fixture(scope='module')
def problem():
  graphdef, params, stats = init_model(SPEC, seed=0)
  rng = np.random.default_rng(0)
  images = rng.random((12, 16, 16, 1), np.float32)
  masks = (images > 0.5).astype(np.float32)
  # Pretrained-like statistics, so that a layer on running statistics and one
  # on batch statistics really differ.
  leaves, treedef = jax.tree.flatten(stats)
  stats = jax.tree.unflatten(treedef, [
      x + 0.05 * rng.standard_normal(x.shape, np.float32) if i % 2 == 0
      else x * rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
      for i, x in enumerate(leaves)])
  return graphdef, params, stats, images, masks


def _bundle(params, stats, schedules, lrs=None, frozen_norm='inference', num_images=12):
  num_stages = max(len(s.stages) for s in schedules)
  lrs = lrs or [LR] * len(schedules)
  setup = stack([make_setup(params, stats, sch, num_stages=num_stages, learning_rate=lr,
                            weight_decay=0.0, seed_key=jax.random.key(i),
                            frozen_norm=frozen_norm, train_index=np.arange(num_images),
                            index_length=num_images)
                 for i, (sch, lr) in enumerate(zip(schedules, lrs))])
  state = stack([init_experiment_state(params, stats)] * len(schedules))
  return state, setup


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


@pytest.mark.parametrize('strategy, policy', [(s, 'inference') for s in BUNDLED]
                         + [('static', 'adapt'), ('vmap', 'adapt')])
def test_bundle_matches_optax_partition_in_float64(problem, references64, strategy, policy,
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
    state, setup = _bundle(p64, s64, schedules, frozen_norm=policy)
    chunk = make_bundle_chunk(BundleContext(SPEC, 4), strategy, loop='host')
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


@pytest.mark.parametrize('strategy', ['static', 'vmap'])
def test_each_experiment_draws_only_its_own_training_images(problem, strategy):
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
  chunk = make_bundle_chunk(BundleContext(SPEC, 4), strategy, loop='host')
  state, losses = chunk(state, setup, poisoned, masks, num_steps=6)
  assert np.all(np.isfinite(np.asarray(losses)))
  assert np.asarray(state.diverged_at).tolist() == [-1, -1]
  # The same seed, other training images: other weights.
  assert not np.array_equal(*np.asarray(state.params['head']['kernel']))


@pytest.mark.parametrize('strategy', ['per_experiment', 'sequential', 'vmap'])
def test_one_trace_per_bundle_with_mixed_subsets_and_schedules(problem, strategy):
  _, params, stats, images, masks = problem
  schedules = [Schedule.constant(preset_rules('head', SPEC.depth)),
               gradual('flow', 'shallow_to_deep', 1, SPEC.depth),
               gradual('depth', 'deep_to_shallow', 2, SPEC.depth),
               unfreeze_at(preset_rules('last', SPEC.depth), 2)]
  state, setup = _bundle(params, stats, schedules, lrs=[1e-3, 3e-4, 1e-3, 1e-2])
  bundle.TRACES.clear()
  chunk = make_bundle_chunk(BundleContext(SPEC, 4), strategy, loop='host')
  for _ in range(3):
    state, _ = chunk(state, setup, images, masks, num_steps=2)
  assert bundle.TRACES['experiment_step'] == 1
  assert np.asarray(state.step).tolist() == [6] * 4


def test_scan_loop_traces_once_and_matches_host(problem):
  _, params, stats, images, masks = problem
  schedules = [gradual('flow', 'shallow_to_deep', 1, SPEC.depth),
               Schedule.constant(preset_rules('expanding', SPEC.depth))]
  state, setup = _bundle(params, stats, schedules)
  bundle.TRACES.clear()
  scan = make_bundle_chunk(BundleContext(SPEC, 4), 'vmap', loop='scan')
  s1, l1 = scan(state, setup, images, masks, num_steps=3)
  s1, l1b = scan(s1, setup, images, masks, num_steps=3)
  assert bundle.TRACES['experiment_step'] == 1
  host = make_bundle_chunk(BundleContext(SPEC, 4), 'vmap', loop='host')
  s2, _ = host(state, setup, images, masks, num_steps=6)
  # Conv biases before BatchNorm get float-noise gradients that Adam turns
  # into lr-sized steps, so the bound is lr * steps, as above.
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, atol=LR * 6)


def test_gradual_schedule_trains_the_right_blocks_at_each_stage(problem):
  _, params, stats, images, masks = problem
  schedule = gradual('flow', 'shallow_to_deep', 2, SPEC.depth)  # enc1, enc2, ...
  state, setup = _bundle(params, stats, [schedule])
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
  state, setup = _bundle(params, stats, [rules, rules], lrs=[1e-3, 0.0])
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
  assert bool(bundle._finite_step(loss, nan_in_b, mask_of(1, 0)))
  assert not bool(bundle._finite_step(loss, nan_in_b, mask_of(1, 1)))
  inf_in_a = {'a': jax.numpy.array([np.inf, 1.0, 1.0]), 'b': jax.numpy.zeros(2)}
  assert not bool(bundle._finite_step(loss, inf_in_a, mask_of(1, 0)))
  finite = {'a': jax.numpy.ones(3), 'b': jax.numpy.zeros(2)}
  assert not bool(bundle._finite_step(jax.numpy.float32(np.nan), finite, mask_of(1, 1)))
  assert bool(bundle._finite_step(loss, finite, mask_of(1, 1)))


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_split_and_merge_experiments_round_trip(backend, monkeypatch):
  # 'gpu' takes the accelerator branch (eager unstack/stack) on the CPU.
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  tree = {'w': np.arange(24, dtype=np.float32).reshape(3, 2, 4), 'n': np.arange(3)}
  parts = execution.split_experiments(jax.device_put(tree), 3)
  assert len(parts) == 3
  np.testing.assert_array_equal(parts[1]['w'], tree['w'][1])
  merged = execution.merge_experiments(parts)
  for name in tree:
    np.testing.assert_array_equal(merged[name], tree[name])
  first_two = execution.split_experiments(jax.device_put(tree), 2)  # padding left out
  np.testing.assert_array_equal(execution.merge_experiments(first_two)['n'], [0, 1])


def test_cpu_workers_setting(monkeypatch):
  monkeypatch.setenv('UNET_JAX_CPU_WORKERS', '3')
  assert execution.cpu_workers() == 3
  for bad in ('0', 'two', '-1'):
    monkeypatch.setenv('UNET_JAX_CPU_WORKERS', bad)
    with pytest.raises(UserError, match='UNET_JAX_CPU_WORKERS'):
      execution.cpu_workers()
  monkeypatch.delenv('UNET_JAX_CPU_WORKERS')
  assert 1 <= execution.cpu_workers() <= 4


def test_workers_give_the_same_bundle_as_one_at_a_time(problem, monkeypatch):
  _, params, stats, images, masks = problem
  schedules = [Schedule.constant(preset_rules(s, SPEC.depth)) for s in SUBSETS]
  schedules.append(unfreeze_at(preset_rules('head', SPEC.depth), 2))
  state, setup = _bundle(params, stats, schedules)
  out = {}
  for workers in ('1', '2'):
    monkeypatch.setenv('UNET_JAX_CPU_WORKERS', workers)
    chunk = make_bundle_chunk(BundleContext(SPEC, 4), 'static', loop='host')
    out[workers] = chunk(state, setup, images, masks, num_steps=STEPS)
  for a, b in zip(jax.tree.leaves(out['1']), jax.tree.leaves(out['2'])):
    np.testing.assert_array_equal(a, b)
