"""Fine-tuning strategies against small independent references, and bundled = alone.

Layer-wise learning rates against ``optax.multi_transform`` of scaled Adams;
L2-SP and Auto-RGN against numpy; a bundle that mixes every strategy gives
each experiment what it gets trained alone. Float64 throughout, so the
comparisons can be tight.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from bundles import LR, SPEC
from reference_trainer import init_state, make_train_chunk

from unet_jax import freeze
from unet_jax.engine.executors import make_bundle_chunk
from unet_jax.engine.experiment import Experiment
from unet_jax.engine.masked_adam import masked_adam
from unet_jax.engine.run import strategy_setup
from unet_jax.engine.step import (
  BundleContext,
  init_experiment_state,
  make_setup,
  rgn_factors,
  stack,
  unstack,
)
from unet_jax.schedules import Schedule, parse_schedule


def _float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _numpy_adam(p, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8):
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  return m, v, (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)


def test_layerwise_rates_match_multi_transform_of_scaled_adams():
  rng = np.random.default_rng(0)
  params = {'a': rng.standard_normal(5), 'b': rng.standard_normal((2, 3)),
            'c': rng.standard_normal(4)}
  scale = {'a': 1.0, 'b': 0.25, 'c': 0.0}
  labels = {k: f'x{v}' for k, v in scale.items()}
  with jax.enable_x64(True):
    ref_tx = optax.multi_transform(
        {f'x{v}': (optax.adam(LR * v) if v else optax.set_to_zero()) for v in scale.values()},
        labels)
    ref_state, ref = ref_tx.init(params), params
    tx = masked_adam()
    state, got = tx.init(params), params
    mask = {k: jnp.asarray(float(v > 0)) for k, v in scale.items()}
    for _ in range(4):
      grads = {k: rng.standard_normal(np.shape(v)) for k, v in params.items()}
      upd, ref_state = ref_tx.update(grads, ref_state, ref)
      ref = optax.apply_updates(ref, upd)
      upd, state = tx.update(grads, state, got, mask=mask, learning_rate=LR,
                             weight_decay=0.0, lr_scale=scale)
      got = jax.tree.map(jnp.add, got, upd)
  for k in params:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-15)
  np.testing.assert_array_equal(got['c'], params['c'])


def test_l2sp_matches_numpy_decoupled_pull():
  rng = np.random.default_rng(1)
  p0 = rng.standard_normal(6)
  anchor = p0 + 0.3 * rng.standard_normal(6)  # not the start: the pull is visible
  strength, wd = 2.0, 0.01
  with jax.enable_x64(True):
    tx = masked_adam()
    state, p = tx.init({'w': p0}), {'w': p0}
    ref, m, v = p0.copy(), np.zeros(6), np.zeros(6)
    for t in range(1, 5):
      g = rng.standard_normal(6)
      upd, state = tx.update({'w': g}, state, p, mask={'w': True}, learning_rate=LR,
                             weight_decay=wd, l2sp=strength, anchor={'w': anchor})
      p = jax.tree.map(jnp.add, p, upd)
      m, v, adam = _numpy_adam(ref, g, m, v, t, LR)
      ref = ref - LR * (adam + wd * ref + strength * (ref - anchor))
  np.testing.assert_allclose(p['w'], ref, rtol=1e-12)


def test_rgn_factors_match_numpy():
  rng = np.random.default_rng(2)
  params = {'a': rng.standard_normal(5), 'b': 3 * rng.standard_normal((2, 3)),
            'c': rng.standard_normal(4), 'd': rng.standard_normal(2)}
  grads = {k: rng.standard_normal(np.shape(v)) * s
           for (k, v), s in zip(params.items(), (1.0, 0.1, 5.0, 100.0))}
  mask = {'a': True, 'b': jnp.asarray(1.0), 'c': jnp.asarray(1.0), 'd': False}
  with jax.enable_x64(True):
    got = rgn_factors(grads, params, mask)
  ratio = {k: np.linalg.norm(grads[k]) / np.linalg.norm(params[k]) for k in 'abc'}
  top = max(ratio.values())  # 'd' is frozen: its huge gradient does not count
  for k in 'abc':
    np.testing.assert_allclose(got[k], ratio[k] / top, rtol=1e-12)
  assert float(got['d']) == 1.0 and max(float(got[k]) for k in 'abc') == pytest.approx(1.0)


def _experiment(name, schedule, **strategy):
  return Experiment(name, name, schedule, 'pretrained', 0, LR, 0.0, 3, 4, 'adapt', **strategy)


def _strategies():
  rules = lambda spec: parse_schedule(spec, SPEC.depth, steps=3)
  return [
      _experiment('full', rules('full')),
      _experiment('decay', rules('full'), layer_decay=0.5, decay_order='depth'),
      _experiment('explicit', rules({'lr': {'enc1': 1.0, 'bottleneck': 0.1, 'head': 2.0}})),
      _experiment('l2sp', rules('full'), l2sp=5.0),
      _experiment('rgn', rules('full'), lr_scaling='rgn'),
      _experiment('bitfit', rules('bitfit_head')),
      _experiment('lp_ft', rules({'lp_ft': 0.5})),
  ]


def _bundle(params, stats, experiments, n):
  num_stages = max(len(e.schedule.stages) for e in experiments)
  setups = [make_setup(params, stats, e.schedule, num_stages=num_stages,
                       learning_rate=e.learning_rate, weight_decay=e.weight_decay,
                       seed_key=jax.random.key(7), frozen_norm=e.frozen_norm,
                       train_index=np.arange(n), index_length=n,
                       **strategy_setup(BundleContext(SPEC, 4), e, experiments))
            for e in experiments]
  return (stack([init_experiment_state(params, stats)] * len(experiments)), stack(setups))


def test_mixed_bundle_gives_each_experiment_what_it_gets_alone(problem, monkeypatch):
  """One vmapped program for every strategy equals experiment-by-experiment
  training (per_experiment), and a plain experiment trained alone (no L2-SP or
  Auto-RGN data in its program) equals its copy in the mixed bundle."""
  monkeypatch.setenv('UNET_JAX_CPU_WORKERS', '1')  # enable_x64 is thread-local
  _, params, stats, images, masks = problem
  experiments = _strategies()
  with jax.enable_x64(True):
    p64, s64, i64, m64 = _float64((params, stats, images, masks))
    ctx = BundleContext(SPEC, 4)
    state, setup = _bundle(p64, s64, experiments, len(images))
    bundled, _ = make_bundle_chunk(ctx, 'vmap', loop='host')(state, setup, i64, m64,
                                                             num_steps=3)
    one_by_one, _ = make_bundle_chunk(ctx, 'per_experiment', loop='host')(
        state, setup, i64, m64, num_steps=3)
    state1, setup1 = _bundle(p64, s64, experiments[:1], len(images))
    assert setup1.anchor is None and setup1.rgn is None
    alone, _ = make_bundle_chunk(ctx, 'per_experiment', loop='host')(
        state1, setup1, i64, m64, num_steps=3)
  close = lambda a, b, name: [
      np.testing.assert_allclose(x, y, rtol=1e-7, atol=1e-6 * LR, err_msg=name)
      for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params))]
  for i, exp in enumerate(experiments):
    close(unstack(bundled, i), unstack(one_by_one, i), exp.name)
  close(unstack(bundled, 0), unstack(alone, 0), 'full alone')
  # The strategies really differ from plain fine-tuning.
  full = jax.tree.leaves(unstack(bundled, 0).params)
  for i, exp in enumerate(experiments[1:], 1):
    assert any(not np.allclose(a, b, rtol=0, atol=1e-9)
               for a, b in zip(full, jax.tree.leaves(unstack(bundled, i).params))), exp.name


def test_layer_decay_bundle_matches_multi_transform_reference(problem, monkeypatch):
  """A layer-decay experiment equals the user's optax.multi_transform of scaled Adams."""
  monkeypatch.setenv('UNET_JAX_CPU_WORKERS', '1')
  graphdef, params, stats, images, masks = problem
  exp = _experiment('decay', Schedule.constant(freeze.preset_rules('full', SPEC.depth)),
                    layer_decay=0.5)
  scale = freeze.layer_decay_scale(0.5, 'flow', SPEC.depth)
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: freeze.path_str(path).split('/')[0], params)
  with jax.enable_x64(True):
    p64, s64, i64, m64 = _float64((params, stats, images, masks))
    optimizer = optax.multi_transform({b: optax.adam(LR * f) for b, f in scale.items()},
                                      labels)
    norm = freeze.norm_masks(s64, p64, exp.schedule.stages[0], 'adapt')
    chunk = make_train_chunk(graphdef, optimizer, norm.update, batch_size=4,
                             running=norm.running, loop='host')
    ref, _ = chunk(init_state(p64, s64, optimizer), i64, m64, jax.random.key(7), num_steps=3)
    state, setup = _bundle(p64, s64, [exp], len(images))
    got, _ = make_bundle_chunk(BundleContext(SPEC, 4), 'vmap', loop='host')(
        state, setup, i64, m64, num_steps=3)
  got = unstack(got, 0)
  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * LR)


def test_layer_decay_scale_counts_from_the_head():
  flow = freeze.layer_decay_scale(0.5, 'flow', 2)
  assert flow['head'] == 1.0 and flow['dec1'] == 0.5 and flow['enc1'] == 0.5 ** 5
  depth = freeze.layer_decay_scale(0.5, 'depth', 2)
  assert depth['enc1'] == depth['dec1'] == depth['head'] == 1.0
  assert depth['enc2'] == 0.5 and depth['bottleneck'] == 0.25


def test_parameter_kinds_select_biases_and_norms(problem):
  _, params, _, _, _ = problem
  paths = freeze.leaf_paths(params)
  def trained(preset):
    mask = jax.tree.leaves(freeze.trainable_mask(params, freeze.preset_rules(preset, 2)))
    return {p for p, m in zip(paths, mask) if m}
  bitfit = trained('bitfit')
  assert bitfit == {p for p in paths if p.endswith('/bias')}
  assert 'enc1/conv1/bias' in bitfit and 'enc1/norm1/bias' in bitfit
  norm = trained('norm_only')
  assert norm == {p for p in paths if '/norm' in p}
  assert trained('norm_head') == norm | {p for p in paths if p.startswith('head/')}
  text = freeze.describe_labels(params, freeze.preset_rules('bitfit', 2))
  assert "rule 0: '.*' (kind bias)" in text
