"""Exports one experiment of a sweep as a standalone model.

  python launch/export.py --workdir runs/default --experiment contracting --out models/c

Then ``unet_jax.predict('models/c', images)`` segments new images.
Exit codes: 0 done, 2 a problem with the arguments (one message, no traceback).
"""

import sys

from absl import flags

from unet_jax.errors import UserError
from unet_jax.sweep.export import export_experiment

_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep work directory.')
_EXPERIMENT = flags.DEFINE_string('experiment', None, 'The experiment to export.')
_OUT = flags.DEFINE_string('out', None, 'Folder to write the model to.')


def main(argv) -> int:
  try:
    flags.FLAGS(argv)
    missing = [f.name for f in (_WORKDIR, _EXPERIMENT, _OUT) if not f.value]
    if missing:
      raise UserError(f'missing flag(s): {", ".join("--" + m for m in missing)}')
    out = export_experiment(_WORKDIR.value, _EXPERIMENT.value, _OUT.value)
  except (flags.Error, UserError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'exported {_EXPERIMENT.value} to {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
