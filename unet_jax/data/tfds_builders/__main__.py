"""Builds a real set for TFDS, without TensorFlow.

  python -m unet_jax.data.tfds_builders busi --manual_dir=~/data/Dataset_BUSI_with_GT \\
      --data_dir=~/tensorflow_datasets

Exit codes: 0 built, 2 a problem with the arguments or the files (one message, no traceback).
"""

import argparse
import sys

from unet_jax.data.tfds_builders import BUILDERS, build
from unet_jax.errors import UserError


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m unet_jax.data.tfds_builders',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('name', choices=sorted(BUILDERS))
  parser.add_argument('--manual_dir', required=True,
                      help='the downloaded set: its folder or the folder holding it')
  parser.add_argument('--data_dir', default='~/tensorflow_datasets',
                      help='TFDS data directory (default: %(default)s)')
  args = parser.parse_args(argv)
  try:
    builder = build(args.name, args.manual_dir, args.data_dir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  splits = builder.info.splits
  print(f'{args.name}: {splits["train"].num_examples} examples in {builder.data_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
