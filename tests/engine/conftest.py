"""Fixtures of the engine's tests (helpers in tests/bundles.py)."""

import pytest
from bundles import make_problem


@pytest.fixture(scope='module')
def problem():
  """(graphdef, params, stats, images, masks): a tiny U-Net, statistics unlike any batch's."""
  return make_problem()
