"""Shared fixtures: a tiny U-Net that compiles in a second or two.

Test time is compile time: the models are tiny, the programs many. So

- the session shares one persistent compilation cache, empty at the start
  like a clean CI machine (every ``run_bundle`` makes fresh jitted closures
  that would otherwise compile again);
- XLA skips most optimisations (``jax_disable_most_optimizations``): the
  suite checks what programs compute, not how fast, and compiles about a
  third faster. Equalities tested (frozen leaves bitwise, resume bitwise)
  compare runs of one program, so they hold with or without optimisation.

Subprocesses inherit both through the environment.
"""

import os
import shutil
import sys
import tempfile

# Test helpers (fake_workdir, reference_trainer, repo) for tests in subfolders.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import jax  # noqa: E402 - after the environment it reads
import pytest  # noqa: E402

from unet_jax.model import UNetSpec, init_model  # noqa: E402

_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
_CACHE = os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                               tempfile.mkdtemp(prefix='unet_jax-test-jax-cache-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
jax.config.update('jax_compilation_cache_dir', _CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_disable_most_optimizations',
                  os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] not in ('0', 'false'))


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE:
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope='session')
def tiny_spec():
  return UNetSpec(base_width=4, depth=2, norm='batch')


@pytest.fixture(scope='session')
def tiny_model(tiny_spec):
  return init_model(tiny_spec, seed=0)
