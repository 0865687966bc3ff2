import numpy as np
import pytest

from unet_jax import data
from unet_jax.errors import UserError

LABELS = ['benign'] * 11 + ['malignant'] * 7 + ['normal'] * 4


def test_holdout_split_keeps_its_results():
  # Computed by the implementation this module replaced (unet_jax/data/__init__.py).
  train, test = data.holdout_split(['a'] * 10 + ['b'] * 5, 0.4, seed=0)
  assert test.tolist() == [2, 4, 6, 7, 10, 12]
  assert train.tolist() == [0, 1, 3, 5, 8, 9, 11, 13, 14]


@pytest.mark.parametrize('fraction', [-0.1, 1.5])
def test_holdout_split_rejects_a_bad_fraction(fraction):
  with pytest.raises(UserError, match='test_fraction must be in'):
    data.holdout_split(LABELS, fraction, seed=0)


@pytest.mark.parametrize('k', [2, 3, 5, 22])
def test_kfold_partitions_and_stratifies(k):
  folds = data.kfold_split(LABELS, k, seed=1)
  assert len(folds) == k
  tests = np.concatenate([test for _, test in folds])
  assert sorted(tests.tolist()) == list(range(len(LABELS)))  # each index in one test fold
  for train, test in folds:
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(LABELS)))
    assert train.dtype.kind == test.dtype.kind == 'i'
  sizes = [len(test) for _, test in folds]
  assert max(sizes) - min(sizes) <= 1
  labels = np.asarray(LABELS)
  for label in set(LABELS):
    per_fold = [int(np.sum(labels[test] == label)) for _, test in folds]
    assert max(per_fold) - min(per_fold) <= 1, (label, per_fold)


def test_kfold_is_deterministic_in_the_seed():
  a = data.kfold_split(LABELS, 4, seed=7)
  b = data.kfold_split(LABELS, 4, seed=7)
  c = data.kfold_split(LABELS, 4, seed=8)
  assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
  assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_kfold_with_one_class_is_a_plain_split():
  folds = data.kfold_split(['unknown'] * 9, 3, seed=0)
  assert [len(test) for _, test in folds] == [3, 3, 3]


@pytest.mark.parametrize('k, message', [
    (1, 'k must be at least 2'),
    (0, 'k must be at least 2'),
    (23, 'k=23 folds need at least 23 images, got 22'),
    (2.5, 'k must be an integer'),
    (True, 'k must be an integer'),
])
def test_kfold_rejects_bad_k(k, message):
  with pytest.raises(UserError, match=message):
    data.kfold_split(LABELS, k, seed=0)


def test_plan_splits_gives_the_sizes_the_sweep_uses():
  splits = data.plan_splits(LABELS, test_fraction=0.4, val_fraction=0.25, folds=0, seed=0)
  assert len(splits) == 1
  split = splits[0]
  # Per class: round(11 * 0.4) = 4, round(7 * 0.4) = 3, round(4 * 0.4) = 2 test images.
  assert split.sizes() == {'fit': 10, 'val': 3, 'test': 9}
  everything = np.concatenate([split.fit, split.val, split.test])
  assert sorted(everything.tolist()) == list(range(len(LABELS)))


def test_plan_splits_with_folds_tests_every_image_once():
  splits = data.plan_splits(LABELS, test_fraction=0.4, val_fraction=0.2, folds=4, seed=3)
  assert len(splits) == 4
  tested = np.concatenate([s.test for s in splits])
  assert sorted(tested.tolist()) == list(range(len(LABELS)))
  for s in splits:
    parts = [set(s.fit.tolist()), set(s.val.tolist()), set(s.test.tolist())]
    assert sum(map(len, parts)) == len(LABELS) and not parts[0] & parts[1]
    assert not (parts[0] | parts[1]) & parts[2]


@pytest.mark.parametrize('kwargs, message', [
    # The validator once rounded over the total (0.9 images -> 1 test image)
    # while the splitter rounds per class (0.3 each -> 0): refused, with sizes.
    (dict(test_fraction=0.1, val_fraction=0.2, folds=0), 'gives 6 fit, 3 val, 0 test'),
    (dict(test_fraction=0.4, val_fraction=0.1, folds=0), '0 val'),
    (dict(test_fraction=0.4, val_fraction=0.9, folds=3), 'with fold 0 of 3'),
])
def test_plan_splits_refuses_an_empty_part_with_its_sizes(kwargs, message):
  labels = ['a', 'b', 'c'] * 3
  with pytest.raises(UserError, match='every part needs at least one') as e:
    data.plan_splits(labels, seed=0, **kwargs)
  assert message in str(e.value) and '9 images (3 a, 3 b, 3 c)' in str(e.value)


@pytest.mark.parametrize('folds', [0, 3])
def test_validation_images_are_never_test_images(folds):
  """Early stopping selects on validation Dice: a validation image that is also a
  test image would leak the selection into the score."""
  splits = data.plan_splits(LABELS * 3, test_fraction=0.3, val_fraction=0.35, folds=folds,
                            seed=4)
  for split in splits:
    fit, val, test = (set(x.tolist()) for x in (split.fit, split.val, split.test))
    assert val and fit and test
    assert not (val & test) and not (fit & test) and not (fit & val)
    assert fit | val | test == set(range(len(LABELS) * 3))


@pytest.mark.parametrize('rule, out_of', [('keep', ()), ('out_of_training', ('fit', 'val')),
                                          ('out_of_test', ('test',)),
                                          ('out', ('fit', 'val', 'test'))])
def test_empty_masks_leave_only_the_parts_the_rule_names(rule, out_of):
  labels = ['benign'] * 12 + ['normal'] * 6
  empty = np.array([label == 'normal' for label in labels])
  split = data.plan_splits(labels, test_fraction=0.3, val_fraction=0.3, folds=0, seed=0)[0]
  got = data.leave_out_empty(split, empty, rule)
  for part in ('fit', 'val', 'test'):
    before, after = getattr(split, part), getattr(got, part)
    if part in out_of:
      np.testing.assert_array_equal(after, before[~empty[before]])
      assert empty[before].any()  # the rule had something to leave out
    else:
      np.testing.assert_array_equal(after, before)


def test_empty_masks_refuse_to_leave_a_part_with_nothing():
  split = data.Split(fit=np.array([0, 1]), val=np.array([], int), test=np.array([2, 3]))
  with pytest.raises(UserError, match="leaves the test part with no images"):
    data.leave_out_empty(split, np.array([False, False, True, True]), 'out_of_test')
  with pytest.raises(UserError, match='valid choices: keep, out_of_training'):
    data.leave_out_empty(split, np.zeros(4, bool), 'drop')
