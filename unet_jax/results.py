"""Result files: atomic JSON / JSON-lines writes and the printed table."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable, Sequence

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


def format_table(summaries: Sequence[dict]) -> str:
  """The sweep's table, best mean Dice first."""
  header = ('experiment', 'trainable', 'dice', '95% CI', 'steps', 'seconds')
  rows = []
  for s in sorted(summaries, key=lambda s: -s['mean_dice']):
    frac = s['trainable_params'] / s['total_params']
    lo, hi = s['dice_ci95']
    rows.append((s['name'], f"{s['trainable_params']:,} ({frac:.0%})",
                 f"{s['mean_dice']:.3f}", f'[{lo:.3f}, {hi:.3f}]',
                 str(s['steps']), f"{s['seconds']:.1f}"))
    if s.get('diverged_at_step') is not None:
      rows[-1] = (rows[-1][0] + f" (diverged at step {s['diverged_at_step']})",) + rows[-1][1:]
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
  def line(cells):
    return '  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths)))
  return '\n'.join([line(header), line(['-' * w for w in widths])] +
                   [line(r) for r in rows])
