import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from repo import ROOT

from unet_jax import data
from unet_jax.data import chest_xray, dead_leaves, fields, ultrasound
from unet_jax.errors import UserError

SOURCES = ['ultrasound', 'dead_leaves', 'chest_xray']
CONTACT_SHEET = os.path.join(ROOT,
                             'launch', 'contact_sheet.py')


@pytest.mark.parametrize('source', SOURCES)
def test_sources_are_deterministic_and_well_formed(source):
  a = data.make_dataset(source, 6, 32, seed=3)
  b = data.make_dataset(source, 6, 32, seed=3)
  c = data.make_dataset(source, 6, 32, seed=4)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.masks, b.masks)
  assert a.labels == b.labels
  assert not np.array_equal(a.images, c.images)
  assert a.images.shape == a.masks.shape == (6, 32, 32, 1)
  assert a.images.dtype == np.float32
  assert 0.0 <= a.images.min() and a.images.max() <= 1.0
  assert set(np.unique(a.masks)) <= {0.0, 1.0}
  # Every image has a visible target, never the whole frame.
  fractions = a.masks.mean(axis=(1, 2, 3))
  assert np.all(fractions > 0) and np.all(fractions < 0.9)
  assert len(set(a.ids)) == 6


GENERATORS = {  # source -> (module, batch generator, the spec make_dataset uses at 32 px)
    'ultrasound': (ultrasound, ultrasound.breast_images, ultrasound.BreastScan(size=32)),
    'dead_leaves': (dead_leaves, dead_leaves.dead_leaves_images, dead_leaves.DeadLeaves(size=32)),
    'chest_xray': (chest_xray, chest_xray.chest_images, chest_xray.ChestXray(size=32)),
}


@pytest.mark.parametrize('source', SOURCES)
def test_fixed_size_batches_compile_once_and_do_not_change_images(source):
  _, make, spec = GENERATORS[source]
  key = jax.random.key(3)
  whole = make(key, 6, spec)  # one batch of 6, as make_dataset(source, 6, 32, seed=3)
  image_fn = {'ultrasound': ultrasound.breast_image, 'dead_leaves': dead_leaves.dead_leaves_image,
              'chest_xray': chest_xray.chest_image}[source]
  program = fields.batch_program(image_fn, spec)
  compiled = program._cache_size()
  five = make(key, 5, spec, batch=4)  # batches of 4, the last one padded
  six = make(key, 6, spec, batch=4)
  assert program._cache_size() == compiled + 1  # one program for both counts
  # Image i comes from fold_in(key, i): counts and batches leave it alone.
  for part, num in ((five, 5), (six, 6)):
    assert part[0].shape == (num, 32, 32, 1)
    np.testing.assert_allclose(part[0], whole[0][:num], atol=1e-4)
    assert np.mean(part[1] == whole[1][:num]) > 0.999
    for extra, full in zip(part[2:], whole[2:]):  # classes, where the source has them
      np.testing.assert_array_equal(extra, full[:num])


def test_unknown_source_lists_sources():
  with pytest.raises(UserError, match='valid sources: .*chest_xray, dead_leaves.*ultrasound'):
    data.make_dataset('busi', 4, 32, 0)


def _paint_dead_leaves(leaves, size):
  """Reference painter's algorithm: one leaf after another, numpy."""
  coords = (np.arange(size) + 0.5) / size
  y, x = np.meshgrid(coords, coords, indexing='ij')
  top = np.full((size, size), -1)
  for i in range(len(leaves['r'])):
    dy, dx = y - leaves['cy'][i], x - leaves['cx'][i]
    c, s = np.cos(leaves['angle'][i]), np.sin(leaves['angle'][i])
    u = (dx * c + dy * s) / leaves['r'][i]
    v = (-dx * s + dy * c) / (leaves['r'][i] * leaves['aspect'][i])
    p = leaves['power'][i]
    top[np.abs(u) ** p + np.abs(v) ** p < 1.0] = i
  return top


def test_dead_leaves_top_leaf_matches_painting_in_order():
  key = jax.random.key(1)
  leaves = dead_leaves._leaf_params(key, 40, dead_leaves.power_law_radii(
      key, (40,), 0.05, 0.4), 0.6)
  size = 48
  coords = (jnp.arange(size) + 0.5) / size
  y, x = jnp.meshgrid(coords, coords, indexing='ij')
  top = np.asarray(dead_leaves._top_leaf(leaves, y, x))
  expected = _paint_dead_leaves(jax.tree.map(np.asarray, leaves), size)
  # Pixels on a leaf's border may round either way in float32.
  assert np.mean(top == expected) > 0.998
  assert len(np.unique(expected)) > 10


def test_dead_leaves_radii_follow_r_cubed():
  # Density ~ r^-3 on [a, b]: P(r > t) = (t^-2 - b^-2) / (a^-2 - b^-2).
  r = np.asarray(dead_leaves.power_law_radii(jax.random.key(0), (20000,), 0.03, 0.5))
  assert r.min() >= 0.03 and r.max() <= 0.5
  for t in (0.05, 0.1, 0.2):
    expected = (t ** -2 - 0.5 ** -2) / (0.03 ** -2 - 0.5 ** -2)
    assert np.mean(r > t) == pytest.approx(expected, abs=0.01)


def test_holdout_split_is_stratified_and_deterministic():
  labels = ['benign'] * 10 + ['malignant'] * 5
  train, test = data.holdout_split(labels, 0.4, seed=0)
  train2, test2 = data.holdout_split(labels, 0.4, seed=0)
  np.testing.assert_array_equal(test, test2)
  assert sorted(np.concatenate([train, test])) == list(range(15))
  assert sum(labels[i] == 'malignant' for i in test) == 2
  assert sum(labels[i] == 'benign' for i in test) == 4


def _contact_sheet(*args):
  return subprocess.run([sys.executable, CONTACT_SHEET, *args], capture_output=True,
                        text=True, timeout=120)


def test_contact_sheet_writes_a_grid(tmp_path):
  out = tmp_path / 'sheet.png'
  proc = _contact_sheet('--source', 'dead_leaves', '--out', str(out), '--num', '5',
                        '--size', '16')
  assert proc.returncode == 0, proc.stderr
  # 5 tiles -> 3 x 2 grid of 16 px tiles with 2 px gaps.
  assert Image.open(out).size == (3 * 16 + 2 * 2, 2 * 16 + 2)


def test_contact_sheet_unknown_source_is_one_line(tmp_path):
  proc = _contact_sheet('--source=busi', f'--out={tmp_path / "x.png"}')
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      "error: unknown source 'busi'; valid choices: ultrasound, chest_xray, dead_leaves, "
      'cardiac')


def test_every_named_source_has_a_modality():
  """F4 compares modalities: a new source must say what it is (unet_jax/modalities.py)."""
  from unet_jax.modalities import MODALITIES
  named = [s for s in data.source_names(pets=True) if s != 'folder']  # a folder holds anything
  assert [s for s in named if s not in MODALITIES] == []


def test_generators_give_ids_classes_and_structures():
  ds = data.make_dataset('cardiac', 3, 32, 0)
  assert ds.ids == ['echo_00000', 'echo_00001', 'echo_00002']
  assert set(ds.labels) <= {'normal', 'dilated'} and ds.structures == ('cavity', 'wall', 'atrium')
  assert data.make_dataset('dead_leaves', 2, 16, 0).labels == ['object', 'object']
