"""Sharded executors on faked CPU devices, and a two-process sweep.

Each case runs in a subprocess: the device count must be set through
XLA_FLAGS before JAX starts.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from repo import ROOT  # noqa: E402

SWEEP = os.path.join(ROOT, 'launch', 'sweep.py')
TINY = os.path.join(ROOT, 'configs', 'default.py') + ':tiny'


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


# Shared by the scripts below: a tiny U-Net, a bundle of `schedules`, data.
PRELUDE = r'''
import jax, numpy as np
from jax.sharding import PartitionSpec as P
from unet_jax.engine.step import *
from unet_jax.engine.executors import *
from unet_jax.engine.execution import place
from unet_jax.freeze import preset_rules
from unet_jax.model import UNetSpec, init_model
from unet_jax.schedules import Schedule, gradual

def make_bundle(params, stats, schedules):
  stages = max(len(s.stages) for s in schedules)
  setup = stack([make_setup(params, stats, s, num_stages=stages, learning_rate=1e-3,
                            weight_decay=0.0, seed_key=jax.random.key(i),
                            frozen_norm='inference', train_index=np.arange(8),
                            index_length=8)
                 for i, s in enumerate(schedules)])
  return stack([init_experiment_state(params, stats)] * len(schedules)), setup

spec = UNetSpec(base_width=4, depth=2, norm='batch')
_, params, stats = init_model(spec, 0)
images = np.random.default_rng(0).random((8, 16, 16, 1), np.float32)
masks = (images > 0.5).astype(np.float32)
'''


SHARDED_SCRIPT = PRELUDE + r'''
# Float64, as the single-device executors are checked against optax.partition
# (tests/engine/executors_test.py): per_experiment is that check's reference here.
jax.config.update('jax_enable_x64', True)
params, stats, images, masks = jax.tree.map(lambda x: np.asarray(x, np.float64),
                                            (params, stats, images, masks))
assert jax.device_count() == 2
schedules = [Schedule.constant(preset_rules('head', 2)),
             gradual('depth', 'shallow_to_deep', 1, 2),
             Schedule.constant(preset_rules('full', 2)),
             Schedule.constant(preset_rules('contracting', 2))]
state, setup = make_bundle(params, stats, schedules)
ctx = BundleContext(spec, 4)
reference = make_bundle_chunk(ctx, 'per_experiment', loop='host')
ref, _ = reference(state, setup, images, masks, num_steps=3)
mesh = experiment_mesh(4)
assert dict(mesh.shape) == {'exp': 2, 'data': 1}
for executor in ('sharded_vmap', 'sharded_sequential'):
  TRACES.clear()
  chunk = make_bundle_chunk(ctx, executor, loop='host', mesh=mesh)
  out, losses = chunk(place(state, mesh, P('exp')), place(setup, mesh, P('exp')),
                      place(images, mesh, P()), place(masks, mesh, P()), num_steps=3)
  assert TRACES['experiment_step'] == 1, TRACES
  assert len(out.params['head']['kernel'].sharding.device_set) == 2
  assert out.params['head']['kernel'].dtype == np.float64
  for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(out.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
  np.testing.assert_array_equal(np.asarray(out.params['enc1']['conv1']['kernel'])[0],
                                params['enc1']['conv1']['kernel'])
print('OK')
'''


def test_sharded_executors_on_two_devices():
  proc = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT], env=_env(2),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stderr[-3000:]


DATA_PARALLEL_SCRIPT = PRELUDE + r'''
schedules = [Schedule.constant(preset_rules('head', 2)),
             Schedule.constant(preset_rules('contracting', 2))]
state, setup = make_bundle(params, stats, schedules)
mesh = experiment_mesh(num_experiments=2, batch_size=4)
assert dict(mesh.shape) == {'exp': 2, 'data': 2}, mesh.shape
chunk = make_bundle_chunk(BundleContext(spec, 4), 'sharded_vmap', loop='host', mesh=mesh)
out, losses = chunk(place(state, mesh, P('exp')), place(setup, mesh, P('exp')),
                    place(images, mesh, P()), place(masks, mesh, P()), num_steps=3)
assert np.all(np.isfinite(np.asarray(losses)))
kernel = out.params['enc1']['conv1']['kernel']
# The data-parallel replicas of each experiment hold the same weights.
shards = {}
for shard in kernel.addressable_shards:
  shards.setdefault(shard.index[0].start, []).append(np.asarray(shard.data))
assert len(shards) == 2 and all(len(v) == 2 for v in shards.values())
for copies in shards.values():
  np.testing.assert_array_equal(copies[0], copies[1])
host = np.asarray(kernel)
np.testing.assert_array_equal(host[0], params['enc1']['conv1']['kernel'])  # head: frozen
assert not np.array_equal(host[1], params['enc1']['conv1']['kernel'])  # contracting
print('OK')
'''


def test_data_parallel_inside_an_experiment():
  proc = subprocess.run([sys.executable, '-c', DATA_PARALLEL_SCRIPT], env=_env(4),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stderr[-3000:]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _sweep_args(workdir):
  return [sys.executable, SWEEP, f'--config={TINY}', '--config.only=full,head,contracting,last',
          '--config.grid.seed=(0,)', '--config.executor=sharded_vmap', f'--workdir={workdir}',
          '--noprogress']


def _read(workdir):
  summaries = {}
  for name in ('full', 'head', 'contracting', 'last'):
    with open(os.path.join(workdir, 'experiments', name, 'summary.json')) as f:
      summaries[name] = json.load(f)
  weights = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'experiments', 'contracting', 'weights'))
  return summaries, weights


def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  multi = tmp_path / 'multi'
  procs = [subprocess.Popen(_sweep_args(multi) + [f'--coordinator=127.0.0.1:{port}',
                                                  '--num_processes=2', f'--process_id={i}'],
                            env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # Only process 0 prints the table (gloo itself prints connection lines).
  assert 'results in' in outs[0][0] and 'results in' not in outs[1][0]
  single = tmp_path / 'single'
  proc = subprocess.run(_sweep_args(single), env=_env(4), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got, got_w = _read(multi)
  want, want_w = _read(single)
  # XLA:CPU's float results depend on how many host devices share a process
  # (its thread split): one process with 4 devices and two with 2 agree to
  # float tolerance, not bit for bit. Weights: Adam's lr * steps bound.
  for name in want:
    assert got[name]['executor'] == 'sharded_vmap'
    np.testing.assert_allclose(got[name]['chunk_losses'], want[name]['chunk_losses'],
                               rtol=1e-4)
    assert got[name]['mean_dice'] == pytest.approx(want[name]['mean_dice'], abs=0.02)
    assert got[name]['test_images'] == want[name]['test_images']
  for a, b in zip(jax.tree.leaves(got_w), jax.tree.leaves(want_w)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=8e-3)
