"""Runs a layer-subset fine-tuning sweep.

  python launch/sweep.py                                  # configs/default.py
  python launch/sweep.py --config=configs/default.py:tiny --workdir=/tmp/w
  python launch/sweep.py --config.finetune.steps=500 --config.only=full,head

Exit codes: 0 done, 2 a problem with the flags, config, data or work
directory (one message, no traceback), 130 interrupted by Ctrl-C, 143 stopped
by SIGTERM. A stop saves a checkpoint first; the same command resumes.
"""

import json
import os
import shlex
import signal
import sys

from absl import flags
from ml_collections import config_flags

from unet_jax.engine import distributed
from unet_jax.engine.resume import Interrupted
from unet_jax.errors import UserError
from unet_jax.sweep.run import run_sweep
from unet_jax.workdir import WorkdirPaths

_DEFAULT_CONFIG = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), '..', 'configs', 'default.py'))
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Work directory; default ./runs/<config name>[-<variant>].')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-process run (TPU pod slices, GPU clusters): '
    'jax.distributed.initialize() with the cluster read from the environment.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator', None, 'host:port of process 0, for clusters JAX cannot detect '
    '(implies --distributed; give --num_processes and --process_id too).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --coordinator.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --coordinator.')


def _last_line(error: Exception) -> str:
  """The useful line of an error; config_flags embeds whole tracebacks."""
  if isinstance(error, (KeyError, AttributeError)) and error.args:
    return f'unknown config field {str(error.args[0]).strip(chr(34))}'
  text = str(error)
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if 'Traceback' in str(text) else ' '.join(lines)


# Overrides of fields that were renamed: --config.<old> names the new field.
_RENAMED = {'strategy': "executor (how a bundle runs); 'strategy' now means only a "
                        'fine-tuning method (config.experiments.<name>)'}


def load_flags(argv):
  """Parses the flags and loads the config; any problem is a UserError."""
  for arg in argv[1:]:
    field = arg.removeprefix('--config.').split('=')[0]
    if arg.startswith('--config.') and field in _RENAMED:
      raise UserError(f'--config.{field} was renamed: use --config.{_RENAMED[field]}')
  try:
    # Defined here, not at import, so that errors in the config file or in a
    # --config.x override surface inside this try and not as a traceback.
    holder = config_flags.DEFINE_config_file(
        'config', _DEFAULT_CONFIG, 'Sweep config file[:variant].', sys_argv=argv)
    flags.FLAGS(argv)
    config = holder.value
    config.to_dict()  # config_flags defers load errors to the first access
  except Exception as e:  # noqa: BLE001 - every error here is the user's input
    raise UserError(f'bad flags or config: {_last_line(e)}') from None
  return config, flags.FLAGS['config'].config_filename


def _default_workdir(config_file: str, variant: str) -> str:
  name = os.path.splitext(os.path.basename(config_file))[0]
  return os.path.join('runs', f'{name}-{variant}' if variant else name)


def main(argv) -> int:
  try:
    config, config_file = load_flags(argv)
    variant = flags.FLAGS['config'].serialize().partition(':')[2]
    workdir = _WORKDIR.value or _default_workdir(config_file, variant)
    if _COORDINATOR.value and (_NUM_PROCESSES.value is None or _PROCESS_ID.value is None):
      raise UserError('--coordinator needs --num_processes and --process_id')
    if _DISTRIBUTED.value or _COORDINATOR.value:
      distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    run_sweep(config, workdir, progress=_PROGRESS.value)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except Interrupted as e:
    command = ' '.join(shlex.quote(a) for a in ['python'] + argv)
    print(f'{e}\nresume with: {command}', file=sys.stderr)
    return 128 + (e.args[1] if len(e.args) > 1 else signal.SIGINT)
  except KeyboardInterrupt:
    print('interrupted without saving; the same command resumes from the last '
          'checkpoint', file=sys.stderr)
    return 130
  if distributed.is_writer():
    from unet_jax import analysis  # pandas and scipy, once results exist
    from unet_jax.analysis import report
    try:
      race = WorkdirPaths(os.path.abspath(workdir)).race
      if os.path.exists(race):  # a race opens with its decision
        with open(race) as f:
          print(f'race: {json.load(f)["answer"]}\n')
      print(report.console_summary(analysis.load(workdir)))
    except Exception as e:  # noqa: BLE001 - the results are written; say how to look
      print(f'warning: the summary table could not be made ({type(e).__name__}: {e}); '
            f'the results are safe; retry with: python launch/report.py --workdir={workdir}',
            file=sys.stderr)
    print(f'\nresults in {os.path.abspath(workdir)}')
    written = WorkdirPaths(os.path.abspath(workdir)).report
    if os.path.exists(written):
      print(f'report (findings F1-F6, paired tests, figures): {written}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
