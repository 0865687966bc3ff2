"""A real set with empty masks (BUSI's layout and its 'normal' class), end to end."""

import os
import subprocess
import sys

import numpy as np
import pytest
from repo import CONFIGS, ROOT, set_fields

from unet_jax import analysis, data, files
from unet_jax.errors import UserError
from unet_jax.sweep.run import load_target, run_sweep
from unet_jax.sweep.settings import SweepSettings, load_config
from unet_jax.workdir import WorkdirPaths

TINY = os.path.join(CONFIGS, 'default.py') + ':tiny'


@pytest.fixture(scope='module')
def busi(tmp_path_factory):
  """32 simulated scans in BUSI's layout, a third of them lesion-free with empty masks."""
  root = tmp_path_factory.mktemp('busi')
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'simulated_busi.py'),
                        f'--root={root}', '--num=32', '--size=32', '--normal=0.3'],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'normal' in out.stdout
  return str(root)


def _config(root, **fields):
  return set_fields(load_config(TINY), {'data.source': 'busi', 'data.root': root,
                                        'only': 'full,head', **fields})


def test_the_generator_leaves_images_as_they_were_without_normals():
  import jax

  from unet_jax.data import ultrasound
  plain = ultrasound.breast_images(jax.random.key(4), 6, ultrasound.BreastScan(size=32))
  made = ultrasound.breast_images(jax.random.key(4), 6,
                                  ultrasound.BreastScan(size=32, normal_fraction=0.5))
  kinds = np.asarray(made[2])
  assert set(kinds) <= {0, 1, 2} and (kinds == 2).any() and (kinds != 2).any()
  for i in np.flatnonzero(kinds == 2):
    assert made[1][i].max() == 0  # no lesion, an empty mask
  for i in np.flatnonzero(kinds != 2):  # the others: bit for bit the images without normals
    np.testing.assert_array_equal(made[0][i], plain[0][i])
    np.testing.assert_array_equal(made[1][i], plain[1][i])


@pytest.mark.parametrize('rule, empty_in', [('out_of_test', ('fit', 'val')),
                                             ('out_of_training', ('test',)), ('out', ())])
def test_the_rule_leaves_empty_masks_out_of_the_parts_it_names(tmp_path, busi, rule, empty_in):
  s = SweepSettings.from_config(_config(busi, **{'data.empty_masks': rule}))
  target = load_target(s, WorkdirPaths(str(tmp_path)))
  empty = target.dataset.masks.reshape(len(target.dataset), -1).max(axis=1) == 0
  split = target.splits[0]
  for part in ('fit', 'val', 'test'):
    assert empty[getattr(split, part)].any() == (part in empty_in), part


def test_a_bad_rule_is_named(busi):
  with pytest.raises(UserError, match="'data.empty_masks' is 'drop'; valid choices: keep"):
    SweepSettings.from_config(_config(busi, **{'data.empty_masks': 'drop'}))


def test_a_sweep_reports_classes_empty_masks_and_scoring_time(tmp_path, busi):
  workdir = str(tmp_path / 'run')
  summaries = run_sweep(_config(busi), workdir, progress=False)
  for s in summaries:
    assert s.empty_masks == 'keep'
    assert s.scoring_seconds['test'] > 0 and s.scoring_seconds['norm_check'] > 0
  # Each run's test predictions are saved (the report draws them without a network).
  rows = [r for r in files.read_jsonl(os.path.join(workdir, 'results.jsonl'))
          if r['experiment'] == 'full-seed0']
  ids, pred = files.read_masks(os.path.join(workdir, 'experiments', 'full-seed0',
                                            'predictions.npz'))
  assert ids == [r['image_id'] for r in rows]
  assert [int(p.sum()) for p in pred] == [r['pred_pixels'] for r in rows]
  record = files.read_json(os.path.join(workdir, 'data.json'))
  assert record['empty_masks']['rule'] == 'keep' and record['empty_masks']['images'] > 0
  res = analysis.load(workdir)
  assert res.classes() == sorted(record['classes'])
  detection = res.empty_truth()
  assert set(detection['base']) == {'full', 'head'} and (detection['n_images'] > 0).all()
  report = open(os.path.join(workdir, 'report.md')).read()
  assert '## By image class' in report
  assert 'have an empty mask. Scored as detection' in report
  assert 'of which have an empty mask' in report  # the answer says what it ranked on
  assert data.EMPTY_MASKS[0] == 'keep'
