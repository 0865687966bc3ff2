"""A sweep's work directory: where each file lives, the lock, and the writability check.

:class:`WorkdirPaths` is the one place a path inside a work directory is
spelled; the sweep, the analysis, the report, export and the launchers all
use it. No JAX.

Layout::

  config.json                      the resolved settings (records.SweepRecord)
  pretrain/weights/                orbax checkpoint of the pretrained U-Net
  pretrain/meta.json               what it was trained with (reused if equal)
  experiments/<name>/weights/      orbax checkpoint after fine-tuning
  experiments/<name>/results.jsonl one row per test image
  experiments/<name>/history.jsonl one row per chunk: step, loss, val_dice, ...
  experiments/<name>/rules.txt     the rule that decided each parameter, per stage
  experiments/<name>/summary.json  records.ExperimentSummary; written last: "finished"
  checkpoints/<bundle>/<step>/     orbax checkpoints of unfinished bundles
  tensorboard/<name>/              TensorBoard event files, one run per experiment
  test_set.npz                     the test images, masks and ids
  data.json                        the target set: classes, skipped files, copies, split sizes
  report.md, report/               tables, findings F1-F6 and figures
  results.jsonl                    one row per (experiment, test image)
  bundles.json                     each bundle's executor and autotuning timings
  autotune.json                    cached executor choices
  cache/                           preprocessed arrays of a real data set
  .lock                            held while a sweep runs
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import socket

from unet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ExperimentPaths:
  folder: str

  @property
  def weights(self) -> str:
    return os.path.join(self.folder, 'weights')

  @property
  def results(self) -> str:
    return os.path.join(self.folder, 'results.jsonl')

  @property
  def history(self) -> str:
    return os.path.join(self.folder, 'history.jsonl')

  @property
  def rules(self) -> str:
    return os.path.join(self.folder, 'rules.txt')

  @property
  def summary(self) -> str:
    return os.path.join(self.folder, 'summary.json')

  @property
  def predictions(self) -> str:
    """Its binary test predictions (``files.write_masks``), for figures."""
    return os.path.join(self.folder, 'predictions.npz')


@dataclasses.dataclass(frozen=True)
class WorkdirPaths:
  root: str

  def _at(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  config = property(lambda self: self._at('config.json'))
  results = property(lambda self: self._at('results.jsonl'))
  report = property(lambda self: self._at('report.md'))
  report_dir = property(lambda self: self._at('report'))
  test_set = property(lambda self: self._at('test_set.npz'))
  bundles = property(lambda self: self._at('bundles.json'))
  autotune = property(lambda self: self._at('autotune.json'))
  race = property(lambda self: self._at('race.json'))  # config.race: the decisions
  data = property(lambda self: self._at('data.json'))  # the target set: sizes, copies
  lock = property(lambda self: self._at('.lock'))
  experiments_dir = property(lambda self: self._at('experiments'))
  tensorboard = property(lambda self: self._at('tensorboard'))
  cache = property(lambda self: self._at('cache'))
  pretrain_dir = property(lambda self: self._at('pretrain'))
  pretrain_weights = property(lambda self: self._at('pretrain', 'weights'))
  pretrain_meta = property(lambda self: self._at('pretrain', 'meta.json'))

  def experiment(self, name: str) -> ExperimentPaths:
    return ExperimentPaths(self._at('experiments', name))

  def checkpoints(self, key: str) -> str:
    """The checkpoint folder of one unfinished bundle."""
    return self._at('checkpoints', key)

  def listed_experiments(self) -> list[str]:
    """Names of the experiment folders present, sorted."""
    folder = self.experiments_dir
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@dataclasses.dataclass(frozen=True)
class ExportPaths:
  """An exported model's folder (``sweep.export``): its weights and model.json."""

  folder: str

  @property
  def weights(self) -> str:
    return os.path.join(self.folder, 'weights')

  @property
  def model(self) -> str:
    return os.path.join(self.folder, 'model.json')


class WorkdirLock:
  """An exclusive lock on a work directory, so two sweeps never write one.

  ``fcntl.flock`` on ``<workdir>/.lock``: the kernel releases it when the
  process dies, so a crashed or killed sweep never leaves a stale lock.
  """

  def __init__(self, workdir: str):
    self.path = WorkdirPaths(workdir).lock
    self._file = None

  def __enter__(self):
    self._file = open(self.path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._file.seek(0)
      owner = self._file.read().strip() or 'another process'
      self._file.close()
      raise UserError(f'work directory {os.path.dirname(self.path)} is in use by '
                      f'another sweep ({owner}); wait for it to finish or choose '
                      'another --workdir') from None
    self._file.truncate(0)
    self._file.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    self._file.flush()
    return self

  def __exit__(self, *exc):
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


def prepare_workdir(workdir: str) -> WorkdirPaths:
  """Creates the work directory and proves it is writable."""
  paths = WorkdirPaths(os.path.abspath(workdir))
  try:
    os.makedirs(paths.experiments_dir, exist_ok=True)
    probe = os.path.join(paths.root, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.unlink(probe)
  except OSError as e:
    raise UserError(f'work directory {paths.root} is not writable: '
                    f'{e.strerror or e}') from None
  return paths
