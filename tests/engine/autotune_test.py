import jax
import numpy as np

from unet_jax.engine.autotune import candidate_executors, time_executors
from unet_jax.engine.step import BundleContext, init_experiment_state, make_setup, stack
from unet_jax.freeze import preset_rules
from unet_jax.model import UNetSpec, init_model
from unet_jax.schedules import Schedule


def test_candidates_follow_the_hardware():
  assert candidate_executors('cpu', 1, 1) == ['static']
  assert candidate_executors('cpu', 1, 8) == ['static', 'per_experiment']
  assert candidate_executors('cpu', 1, 8, num_stages=1) == ['static']  # nothing to time
  assert candidate_executors('cpu', 2, 8) == ['static', 'per_experiment', 'sharded_vmap']
  assert candidate_executors('cpu', 2, 8, num_stages=1) == ['static', 'sharded_vmap']
  gpu = candidate_executors('gpu', 4, 16)
  assert {'sequential', 'sharded_vmap', 'sharded_sequential'} <= set(gpu)
  assert candidate_executors('tpu', 8, 16, num_processes=2) == ['sharded_vmap',
                                                                 'sharded_sequential']


def test_picks_the_fastest_projection_and_records_failures():
  spec = UNetSpec(base_width=4, depth=2, norm='batch')
  _, params, stats = init_model(spec, 0)
  schedules = [Schedule.constant(preset_rules(p, 2)) for p in ('head', 'full')]
  setup = stack([make_setup(params, stats, s, num_stages=1, learning_rate=1e-3,
                            weight_decay=0.0, seed_key=jax.random.key(i),
                            frozen_norm='inference', train_index=np.arange(8),
                            index_length=8)
                 for i, s in enumerate(schedules)])
  state = stack([init_experiment_state(params, stats)] * 2)
  images = np.random.default_rng(0).random((8, 16, 16, 1), np.float32)
  inputs = jax.device_put((state, setup, images, (images > 0.5).astype(np.float32)))
  best, chunk, trials = time_executors(
      BundleContext(spec, 4), lambda _: inputs, candidates=['per_experiment', 'vmap',
                                                           'no_such_executor'],
      total_steps=100, loop='host')
  by_name = {t.executor: t for t in trials}
  assert 'unknown executor' in by_name['no_such_executor'].error
  ok = [by_name['per_experiment'], by_name['vmap']]
  assert best == min(ok, key=lambda t: t.projected_s).executor
  for t in ok:
    assert t.step_s > 0 and t.compile_s >= 0
    assert abs(t.projected_s - (t.compile_s + 100 * t.step_s)) < 1e-9
    assert abs(t.exp_steps_per_s - 2 / t.step_s) < 1e-6
  state2, losses = chunk(*inputs, num_steps=1)
  assert losses.shape == (1, 2)
