"""Files written whole or not at all: a temporary file in the same folder, then a rename.

Every result file of a sweep goes through :func:`atomic_path`, so a reader
(or a resumed sweep) never sees half a file, whatever kills the writer.
No JAX: the analysis writes its report and figures with it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterable, Iterator

import numpy as np


def _default_mode() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


_DEFAULT_MODE = _default_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = '.part') -> Iterator[str]:
  """A temporary path to write ``path``'s content to; renamed over it on success.

  On an error the temporary file is removed and ``path`` is left as it was.
  Example::

    with atomic_path('report/dice.png', suffix='.png') as tmp:
      fig.savefig(tmp)
  """
  path = os.fspath(path)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', prefix='.tmp-', suffix=suffix)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, _DEFAULT_MODE)  # mkstemp makes 0600; a result is as readable as any file
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes text (synced to disk before the rename)."""
  with atomic_path(path) as tmp, open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def write_npz(path, **arrays) -> None:
  """numpy.savez of ``arrays``, atomically."""
  with atomic_path(path, suffix='.npz') as tmp, open(tmp, 'wb') as f:
    np.savez(f, **arrays)


def write_masks(path, ids, masks: np.ndarray) -> None:
  """Binary ``masks`` (N, H, W, 1), bit-packed, with their image ids, atomically."""
  write_npz(path, ids=np.asarray(ids), shape=np.asarray(np.shape(masks)),
            bits=np.packbits(np.asarray(masks) > 0.5))


def read_masks(path) -> tuple[list[str], np.ndarray]:
  """(ids, masks float32 (N, H, W, 1)) as :func:`write_masks` wrote them."""
  with np.load(path) as f:
    shape = tuple(int(n) for n in f['shape'])
    bits = np.unpackbits(f['bits'], count=int(np.prod(shape)))
    return [str(i) for i in f['ids']], bits.reshape(shape).astype(np.float32)


def write_json(path, obj: Any) -> None:
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + '\n')


def write_jsonl(path, rows: Iterable[dict]) -> None:
  write_atomic(path, ''.join(json.dumps(r) + '\n' for r in rows))


def read_json(path) -> Any:
  with open(path) as f:
    return json.load(f)


def read_jsonl(path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
