"""Shared fixtures: a tiny U-Net that compiles in a second or two."""

import pytest

from unet_jax.model import UNetSpec, init_model


@pytest.fixture(scope='session')
def tiny_spec():
  return UNetSpec(base_width=4, depth=2, norm='batch')


@pytest.fixture(scope='session')
def tiny_model(tiny_spec):
  return init_model(tiny_spec, seed=0)
