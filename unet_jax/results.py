"""Result files: atomic JSON / JSON-lines / npz writes and JSON-lines reads."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable

import numpy as np


def write_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes a file through a temporary file and a rename: never half-written."""
  path = os.fspath(path)
  directory = os.path.dirname(path) or '.'
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.part')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_npz(path, **arrays) -> None:
  """numpy.savez through a temporary file and a rename."""
  path = os.fspath(path)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', prefix='.tmp-',
                             suffix='.npz')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path, obj: Any) -> None:
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + '\n')


def write_jsonl(path, rows: Iterable[dict]) -> None:
  write_atomic(path, ''.join(json.dumps(r) + '\n' for r in rows))


def read_jsonl(path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
