"""How the engine meets the backend: splitting a bundle, CPU worker threads."""

import jax
import numpy as np
import pytest

from unet_jax.engine import execution
from unet_jax.errors import UserError


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


