"""Model weights as plain orbax checkpoints: ``{'params': ..., 'batch_stats': ...}``.

A checkpoint written here is read back with nothing but orbax::

  ocp.StandardCheckpointer().restore('runs/default/experiments/full/weights')
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


def _checkpointer() -> ocp.StandardCheckpointer:
  # Weights are host arrays written by one process (process 0 of a
  # multi-process sweep): a checkpointer whose only participant is this
  # process, so orbax does not wait at a barrier for the others.
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def save_weights(path: str | os.PathLike, params: PyTree, stats: PyTree) -> None:
  """Writes (or replaces) a weights checkpoint and waits until it is committed."""
  checkpointer = _checkpointer()
  checkpointer.save(os.path.abspath(path), {'params': params, 'batch_stats': stats},
                    force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()


def load_weights(path: str | os.PathLike) -> tuple[PyTree, PyTree]:
  """Reads (params, batch_stats) from a checkpoint written by save_weights."""
  checkpointer = _checkpointer()
  tree = checkpointer.restore(os.path.abspath(path))
  checkpointer.close()
  return tree['params'], tree.get('batch_stats', {})
