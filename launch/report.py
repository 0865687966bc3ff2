"""Writes a sweep's report from its saved results: tables, findings F1-F6, figures.

  python launch/report.py --workdir=runs/default        # runs/default/report.md
  python launch/report.py --workdir=runs/us --also=runs/xray   # F4: two domains

Exit codes: 0 done, 2 a problem with the flags or the work directory (one
message, no traceback).
"""

import sys

from absl import flags

from unet_jax.analysis.report import write_report
from unet_jax.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'Work directory of a sweep.')
_ALSO = flags.DEFINE_list('also', [], 'Work directories of other domains (for F4).')
_ALPHA = flags.DEFINE_float('alpha', 0.05, 'Significance level of the findings.')


def _predictions_from_weights(workdir, images, experiments):
  """Runs saved networks, for work directories scored before predictions were saved (the
  only case that loads JAX here)."""
  from unet_jax.sweep.evaluate import predictions_from_weights  # noqa: PLC0415
  return predictions_from_weights(workdir, images, experiments)


def main(argv) -> int:
  try:
    try:
      flags.FLAGS(argv)
    except flags.Error as e:
      raise UserError(f'bad flags: {e}') from None
    if not _WORKDIR.value:
      raise UserError('give --workdir, the work directory of a sweep')
    path = write_report(_WORKDIR.value, also=_ALSO.value, alpha=_ALPHA.value,
                        predict=_predictions_from_weights)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
