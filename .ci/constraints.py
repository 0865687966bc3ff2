"""Writes constraints.txt: the versions of unet_jax's dependencies installed here.

Run it in the environment the test suite just passed in (``.ci/run``):

  python .ci/constraints.py > constraints.txt

Every package that ``pip install -e ".[test]"`` pulls in is pinned, found by
walking the installed packages' requirements from unet_jax (with its test
extra); nothing else in the environment is listed.
"""

import datetime
import importlib.metadata as metadata
import platform
import re

from packaging.requirements import Requirement


def _key(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def closure(name: str, extras: tuple[str, ...] = ()) -> dict[str, str]:
  """Installed package -> version, for ``name`` and everything it requires."""
  found: dict[str, str] = {}

  def walk(name: str, extras: tuple[str, ...]) -> None:
    if _key(name) in found:
      return
    try:
      dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:  # an optional, platform-specific one
      return
    found[_key(name)] = dist.version
    for line in dist.requires or []:
      req = Requirement(line)
      if req.marker is None or any(req.marker.evaluate({'extra': e}) for e in ('',) + extras):
        walk(req.name, tuple(req.extras))

  walk(name, extras)
  found.pop(_key(name))
  return found


def main() -> None:
  pins = closure('unet_jax', ('test',))
  print(f'# The versions the test suite passed with: Python {platform.python_version()}, '
        f'{platform.system()} {platform.machine()}, {datetime.date.today()}.')
  print('# pip install -e ".[test]" -c constraints.txt   (regenerate: .ci/constraints.py)')
  for name in sorted(pins):
    print(f'{name}=={pins[name]}')


if __name__ == '__main__':
  main()
