"""Copies of one image are found after decoding, kept in one split part and named."""

import warnings

import numpy as np
import pytest
from PIL import Image

from unet_jax import data
from unet_jax.data import duplicates


def _images(n, size=32, seed=0):
  return np.random.default_rng(seed).random((n, size, size, 1)).astype(np.float32)


def test_exact_and_near_copies_are_grouped_and_others_are_not():
  x = _images(40)
  x[17] = x[3]                                   # identical
  x[25] = np.clip(x[3] + 0.5 / 255, 0, 1)        # half a grey level: the same scan
  x[30] = x[8]
  x[31] = np.clip(x[9] + 3 / 255, 0, 1)          # three grey levels: another image
  x[32] = x[10][::-1]                            # flipped: another image
  assert duplicates.find(x) == [(3, 17, 25), (8, 30)]
  groups = duplicates.group_ids(40, duplicates.find(x))
  assert groups[25] == groups[17] == groups[3] == 3 and groups[31] == 31


def test_copies_stay_in_one_part_and_a_set_without_copies_splits_as_before():
  labels = ['benign'] * 30 + ['malignant'] * 20
  plain = data.plan_splits(labels, test_fraction=0.3, val_fraction=0.2, folds=0, seed=4)
  same = data.plan_splits(labels, test_fraction=0.3, val_fraction=0.2, folds=0, seed=4,
                          groups=np.arange(50))
  for a, b in zip(plain, same):
    for part in ('fit', 'val', 'test'):
      np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
  groups = np.arange(50)
  groups[[1, 31, 45]] = 1      # one scan under two classes, as in BUSI
  groups[[7, 8]] = 7
  for folds, seed in ((0, s) for s in range(20)):
    split = data.plan_splits(labels, test_fraction=0.3, val_fraction=0.2, folds=folds,
                             seed=seed, groups=groups)[0]
    for copies in ([1, 31, 45], [7, 8]):
      parts = {name for name in ('fit', 'val', 'test')
               for i in copies if i in getattr(split, name)}
      assert len(parts) == 1
    assert sorted(np.concatenate([split.fit, split.val, split.test])) == list(range(50))
  for split in data.plan_splits(labels, test_fraction=0, val_fraction=0.2, folds=5, seed=0,
                                groups=groups):
    assert (1 in split.test) == (31 in split.test) == (45 in split.test)


def test_a_real_set_names_its_copies_and_keeps_them(tmp_path):
  d = tmp_path / 'Dataset_BUSI_with_GT'
  rng = np.random.default_rng(0)
  scans = [rng.integers(0, 256, (20, 24), dtype=np.uint8) for _ in range(4)]
  for cls, i, scan in (('benign', 1, 0), ('benign', 2, 1), ('benign', 3, 2),
                       ('malignant', 1, 0), ('malignant', 2, 3)):
    (d / cls).mkdir(parents=True, exist_ok=True)
    Image.fromarray(scans[scan]).save(d / cls / f'{cls} ({i}).png')
    mask = np.zeros((20, 24), np.uint8)
    mask[2:8 + i, 3:9] = 255
    Image.fromarray(mask).save(d / cls / f'{cls} ({i})_mask.png')
  with pytest.warns(UserWarning, match=r'2 images are copies of another \(1 group, .*'
                    r'benign/benign \(1\).png = malignant/malignant \(1\).png'):
    ds = data.load('busi', d, 16)
  assert ds.duplicates == ((0, 3),)
  assert ds.take([3, 1, 0]).duplicates == ((0, 2),)
  assert ds.take([1, 2]).duplicates == ()
  (d / 'malignant' / 'malignant (1).png').unlink()
  (d / 'malignant' / 'malignant (1)_mask.png').unlink()
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no copies left: no warning
    assert data.load('busi', d, 16).duplicates == ()
