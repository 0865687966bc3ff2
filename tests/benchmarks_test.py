"""The throughput benchmark runs end to end and reports every figure it promises."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import sweep_throughput  # noqa: E402


def test_out_of_memory_is_told_apart_from_other_failures():
  assert sweep_throughput.is_out_of_memory(
      RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB'))
  assert not sweep_throughput.is_out_of_memory(ValueError('incompatible shapes'))


def test_largest_bundle_doubles_until_memory_runs_out(monkeypatch):
  sizes = []

  def fake_run(executor, exps, *args):
    sizes.append(len(exps))
    if len(exps) >= 8:
      raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4GiB')

  monkeypatch.setattr(sweep_throughput, 'run_executor', fake_run)
  monkeypatch.setattr(sweep_throughput, 'experiments', lambda n, *args: [None] * n)
  largest, failed, trials = sweep_throughput.largest_bundle(
      'static', None, None, None, None, start=2, cap=64, batch=8, seconds=60)
  assert (largest, failed, sizes) == (4, 8, [2, 4, 8])
  assert [(n, outcome) for n, outcome, _ in trials] == [(2, 'ran'), (4, 'ran'),
                                                        (8, 'out of memory')]
  sizes.clear()
  assert sweep_throughput.largest_bundle('static', None, None, None, None, start=2, cap=4,
                                         batch=8, seconds=60)[:2] == (4, None)


def test_tiny_benchmark_prints_a_table_and_one_json_line(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'sweep_throughput.py'),
       '--experiments=2', '--steps=2', '--chunk=1', '--image_size=32', '--base_width=4',
       '--executors=static', '--baseline_runs=1', '--largest_bundle=2'],
      capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert any(line.startswith('baseline (one jit per experiment)') for line in lines)
  figures = json.loads(lines[-1])
  for key in ('baseline_exp_steps_per_s', 'static_exp_steps_per_s', 'auto_exp_steps_per_s',
              'auto_over_baseline'):
    assert figures[key] > 0, key
  assert figures['auto_choice'] == 'static'
  # One trial (a bundle of 2, the first size tried): each size is a compile of its own.
  assert figures['largest_bundle'] == 2 and figures['first_out_of_memory'] is None
  assert [n for n, outcome, _ in figures['largest_bundle_trials']] == [2]
  assert figures['backend'] == 'cpu' and figures['devices'] >= 1


def test_mixed_strategy_benchmark_trains_each_strategy_alone_and_bundled():
  """--mix=strategies: its experiments and its baseline (each alone), in process."""
  from unet_jax import data
  from unet_jax.engine.run import Weights
  from unet_jax.model import UNetSpec, init_model
  spec = UNetSpec(base_width=4, depth=2)
  exps = sweep_throughput.experiments(8, 2, spec, 4, mix='strategies')
  assert [e.base for e in exps] == [name for name, _, _ in sweep_throughput.STRATEGY_MIX]
  assert exps[1].l2sp == 1.0 and exps[2].lr_scaling == 'rgn' and exps[3].layer_decay == 0.8
  assert exps[7].schedule.starts == (0, 1)  # LP-FT: the head for half the steps
  weights = Weights(*init_model(spec, 0)[1:])
  ds = data.make_dataset('ultrasound', 8, 16, 0)
  # L2-SP and Auto-RGN, the two with data of their own in the step.
  assert sweep_throughput.run_alone(exps[1:3], spec, weights, ds.images, ds.masks, 1) > 0
