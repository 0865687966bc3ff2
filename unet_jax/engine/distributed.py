"""Several hosts: JAX's multi-controller runtime, and moving results to the host.

Every process runs the same program; ``jax.distributed.initialize`` joins
them into one set of devices, the experiment axis is spread over all of
them (``unet_jax.engine.strategies.experiment_mesh``), results are gathered to every
process with ``multihost_utils.process_allgather`` and only process 0 writes
files.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

PyTree = Any


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the multi-process runtime.

  With no arguments JAX reads the cluster from the environment (Cloud TPU
  VMs, SLURM, ...). On CPU the collectives go through gloo.
  """
  if jax.config.jax_platforms in (None, '', 'cpu') or coordinator:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if coordinator:
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)


def is_writer() -> bool:
  """Only process 0 writes results, checkpoints and the progress bar."""
  return jax.process_index() == 0


def to_host(tree: PyTree) -> PyTree:
  """Numpy copies of (possibly multi-process sharded) arrays, on every process."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(one, tree)
