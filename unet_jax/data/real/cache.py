"""Preprocessed real sets as ``.npz`` files, keyed by everything that changes their content.

The key hashes the loader version, the set's name, the absolute root, the output size, the
``on_bad`` policy and every input file's path, size and modification time; so editing, adding
or removing a file, or a new loader version, gives a new file. Files are written to a temporary
name and renamed, so a crash never leaves a half-written cache that a later call would read.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from unet_jax import files
from unet_jax.errors import UserError


def cache_path(cache_dir: str | os.PathLike, name: str, roots: list[Path], size: int,
               on_bad: str, files: list[Path], version: int, options: dict | None = None
               ) -> Path:
  """Where the preprocessed set with these inputs lives in ``cache_dir`` (``options``: how
  it is read where that is not the default: declared label maps, a resize other than
  'stretch')."""
  stats = []
  for f in sorted(set(files)):
    st = f.stat()
    stats.append([str(f.absolute()), st.st_size, st.st_mtime_ns])
  payload = json.dumps({'version': version, 'name': name, 'size': size, 'on_bad': on_bad,
                        'roots': [str(r.absolute()) for r in roots], 'files': stats,
                        **(options or {})})
  digest = hashlib.sha256(payload.encode()).hexdigest()[:24]
  return Path(cache_dir) / f'{name}-{size}px-{digest}.npz'


def read(path: Path) -> dict | None:
  """The cached arrays and lists, or None when absent or unreadable (with a warning)."""
  if not path.exists():
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      return {'images': z['images'], 'masks': z['masks'].astype(np.float32),
              'ids': z['ids'].tolist(), 'labels': z['labels'].tolist(),
              'meta': json.loads(str(z['meta'])), 'skipped': json.loads(str(z['skipped']))}
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    warnings.warn(f'ignoring unreadable cache {path} ({e}); rebuilding it', stacklevel=3)
    return None


def write(path: Path, images: np.ndarray, masks: np.ndarray, ids: list[str],
          labels: list[str], meta: list[dict], skipped: list[str]) -> None:
  """Writes the set to ``path`` atomically (``unet_jax.files.write_npz``)."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_npz(path, images=images, masks=masks.astype(np.uint8),
                    ids=np.array(ids, dtype=str), labels=np.array(labels, dtype=str),
                    meta=np.array(json.dumps(meta)), skipped=np.array(json.dumps(skipped)))
  except OSError as e:
    raise UserError(f'cannot write the data cache {path}: {e}') from e
