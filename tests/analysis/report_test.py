"""report.md and its figures, from a made-up work directory and (opt-in) a real sweep."""

import os
import re
import subprocess
import sys

import fake_workdir
import numpy as np
import pytest
from repo import ROOT  # noqa: E402

from unet_jax.analysis import report

PNG = b'\x89PNG\r\n\x1a\n'


def _is_png(path) -> bool:
  with open(path, 'rb') as f:
    return f.read(8) == PNG


@pytest.fixture(scope='module')
def fake_report(tmp_path_factory):
  workdir = fake_workdir.write(
      tmp_path_factory.mktemp('w'),
      {'full': 0.85, 'contracting': 0.8, 'expanding': 0.5, 'head': 0.3,
       'gradual_depth_shallow_to_deep': 0.8, 'gradual_depth_deep_to_shallow': 0.7},
      seeds=(1, 2, 3), images=12, distances=True,
      histories={'full': fake_workdir.curve(20, 0.85), 'head': fake_workdir.curve(5, 0.3)})
  rng = np.random.default_rng(0)
  masks = np.zeros((12, 16, 16, 1), np.float32)
  masks[:, 4:10, 4:10] = 1
  overlays = report.Overlays(
      images=rng.random((12, 16, 16, 1)), masks=masks,
      ids=[f'us_{i:05d}' for i in range(12)],
      predictions={'full-seed1': np.roll(masks, 1, axis=2), 'head-seed1': np.zeros_like(masks)})
  path = report.write_report(workdir, overlays=overlays)
  with open(path) as f:
    return workdir, f.read()


def test_report_has_tables_and_findings(fake_report):
  _, text = fake_report
  assert text.startswith('# Sweep report')
  for heading in ('## Findings', '## Scores', '### dice', '### hd95',
                  '## Against full fine-tuning', '## Rank stability', '## Convergence'):
    assert heading in text
  assert '| F1 | **holds** |' in text
  assert '| F2 | **holds** |' in text
  assert '| F4 | **inconclusive** |' in text
  assert "Kendall's W" in text
  # contracting's row against full: its Dice, full's, a negative difference.
  assert re.search(r'\| contracting \| 0\.7\d\d \| 0\.8\d\d \| -0\.0\d\d \|', text)


def test_report_links_existing_pngs(fake_report):
  workdir, text = fake_report
  for name in ('dice', 'curves', 'schedules', 'overlays'):
    link = f'report/{name}.png'
    assert f']({link})' in text
    assert _is_png(os.path.join(workdir, link))
  leftovers = [f for f in os.listdir(os.path.join(workdir, 'report')) if 'part' in f]
  assert not leftovers


def test_markdown_table_escapes_and_formats():
  table = report.markdown_table(('a', 'b'), [('x|y', 0.12345), ('z', float('nan'))])
  assert table.splitlines() == ['| a | b |', '|---|---|', '| x\\|y | 0.123 |', '| z | nan |']


def test_launcher_reports_a_bad_workdir_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'report.py'),
                         f'--workdir={tmp_path}'], capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f'error: no results in {tmp_path}: not a sweep work directory (no config.json), or '
      'its sweep has not started']
