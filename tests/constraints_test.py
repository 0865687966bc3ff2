"""constraints.txt pins every dependency, at versions pyproject.toml allows."""

import os
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins() -> dict[str, str]:
  pins = {}
  with open(os.path.join(ROOT, 'constraints.txt')) as f:
    for line in f:
      line = line.split('#')[0].strip()
      if line:
        name, version = line.split('==')
        pins[canonicalize_name(name)] = version
  return pins


def test_every_dependency_is_pinned_within_its_bounds():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)['project']
  wanted = project['dependencies'] + project['optional-dependencies']['test']
  pins = _pins()
  for line in wanted:
    req = Requirement(line)
    name = canonicalize_name(req.name)
    assert name in pins, f'{name} is not in constraints.txt (.ci/constraints.py writes it)'
    assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
