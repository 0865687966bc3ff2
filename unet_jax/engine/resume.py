"""Sweeps that survive preemption: bundle checkpoints, stop signals, fallback.

A bundle's whole training state (parameters, BatchNorm statistics, Adam
state, step counters and divergence flags of every experiment, stacked) is
saved with an orbax ``CheckpointManager`` every ``checkpoint_every`` steps,
together with a JSON record of what was logged so far and the executor the
bundle runs with. Rerunning the same command restores the newest checkpoint
that reads back whole, so a resumed sweep ends with exactly the weights and
metrics of one that ran straight through.

SIGTERM (what cloud schedulers send before preempting) and SIGINT (Ctrl-C)
do not kill the process: they ask it to stop at the next chunk boundary,
where the engine saves a checkpoint and raises :class:`Interrupted`. A second
Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any


class Interrupted(Exception):
  """The sweep stopped on a signal after saving a checkpoint; rerun to resume.

  ``args``: (message, signal number).
  """

  def __str__(self):
    return str(self.args[0])


class StopRequest:
  """Turns SIGTERM and SIGINT into a request to stop at the next chunk boundary.

  Example::

    with StopRequest() as stop:
      for chunk in chunks:
        train(chunk)
        if stop.requested:
          save_and_exit()
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal: int | None = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signal is not None

  def _handle(self, signum, frame):
    if self.signal == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
    self.signal = signum
    print(f'\n{signal.Signals(signum).name} received: saving a checkpoint at the next '
          'chunk boundary, then stopping (Ctrl-C again to stop at once)',
          file=sys.stderr, flush=True)

  def __enter__(self):
    # Signal handlers can only be installed from the main thread (a notebook
    # or a test may run a sweep from another one: then signals act as usual).
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()


def _flatten(tree: PyTree) -> dict[str, np.ndarray]:
  return {f'{i:04d}': np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))}


class BundleCheckpoints:
  """The checkpoints of one bundle in ``directory``, newest ``keep`` kept.

  Saves are asynchronous (orbax writes in a background thread while
  training goes on) unless ``wait=True``. A save that fails (a full disk, a
  lost mount) is reported as a warning: the previous checkpoint and all
  finished results stay as they were, and training goes on.
  """

  def __init__(self, directory: str, *, keep: int = 2, writer: bool = True):
    self.directory = os.path.abspath(directory)
    self.writer = writer
    me = jax.process_index()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=False, cleanup_tmp_directories=writer,
        enable_async_checkpointing=True, read_only=not writer,
        # Every process holds the whole (gathered) bundle state; process 0
        # alone writes, so no process waits for the others at a barrier.
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}))
    self._manager = None
    if writer:
      os.makedirs(self.directory, exist_ok=True)
    if writer or os.path.isdir(self.directory):
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=('state', 'meta'))
    self.failed: str | None = None

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps()) if self._manager else []

  def restore_latest(self, template: PyTree, fingerprint: str, warn=print
                     ) -> tuple[int, PyTree, dict] | None:
    """The newest checkpoint that reads back whole and matches; None if none.

    ``template`` is a host pytree with the state's structure, shapes and
    dtypes. A damaged checkpoint (unreadable, wrong shapes, or saved for
    other settings) is skipped with a warning and the previous one is tried.
    """
    treedef = jax.tree.structure(template)
    wanted = _flatten(template)
    for step in reversed(self.steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(wanted), meta=ocp.args.JsonRestore()))
        meta, leaves = restored['meta'], restored['state']
        if meta.get('fingerprint') != fingerprint:
          raise ValueError('it was saved for other settings')
        for key, want in wanted.items():
          got = leaves[key]
          if np.shape(got) != want.shape or np.asarray(got).dtype != want.dtype:
            raise ValueError(f'leaf {key} has shape {np.shape(got)}, expected {want.shape}')
      except Exception as e:  # noqa: BLE001 - any damage means: try the previous one
        warn(f'warning: checkpoint {os.path.join(self.directory, str(step))} cannot be '
             f'used ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}); '
             'trying the previous one')
        continue
      state = jax.tree.unflatten(treedef, [np.asarray(leaves[k]) for k in sorted(leaves)])
      return step, state, meta
    return None

  def save(self, step: int, state: PyTree, meta: dict, *, wait: bool = False,
           warn=print) -> bool:
    """Saves host ``state`` and JSON ``meta`` at ``step``; False if it failed."""
    if not self.writer:
      return True
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_flatten(state)), meta=ocp.args.JsonSave(meta)),
          force=True)
      if wait:
        self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - a failed save must not lose the run
      previous = [s for s in self.steps() if s < step]
      self.failed = f'{type(e).__name__}: {e}'
      warn(f'warning: could not write the checkpoint at step {step} in {self.directory} '
           f'({self.failed}); '
           + (f'the checkpoint at step {previous[-1]} and ' if previous else '')
           + 'all finished results are intact; training goes on')
      return False
    return True

  def wait(self, warn=print) -> bool:
    """Waits for an asynchronous save; False (with a warning) if it failed."""
    if not (self.writer and self._manager):
      return True
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self.failed = f'{type(e).__name__}: {e}'
      warn(f'warning: a checkpoint in {self.directory} could not be written '
           f'({self.failed}); earlier checkpoints and finished results are intact')
      return False
    return True

  def close(self):
    if self._manager is not None:
      try:
        self.wait()
      finally:
        self._manager.close()
        self._manager = None

  def remove(self):
    """Deletes the checkpoints once the bundle's results are written."""
    self.close()
    if self.writer:
      shutil.rmtree(self.directory, ignore_errors=True)
      with contextlib.suppress(OSError):  # the parent folder, once empty
        os.rmdir(os.path.dirname(self.directory))
