"""Per-class tables and images with empty masks scored as detection (no training)."""

import numpy as np
import pandas as pd
import pytest

from unet_jax import analysis
from unet_jax.errors import UserError


def _frame():
  """Two strategies x 3 seeds x 12 images: 4 benign, 4 malignant, 4 normal (empty).

  'full' segments benign images better, 'contracting' malignant ones, and
  'contracting' predicts foreground on one of the four empty images in every seed.
  """
  rng = np.random.default_rng(0)
  rows = []
  for name in ('full', 'contracting'):
    for seed in range(3):
      for i in range(12):
        label = ('benign', 'malignant', 'normal')[i // 4]
        if label == 'normal':
          fp = name == 'contracting' and i == 8
          dice, pred, true = (0.0 if fp else 1.0), (30 if fp else 0), 0
        else:
          better = (name == 'full') == (label == 'benign')
          dice = (0.85 if better else 0.70) + 0.02 * rng.standard_normal()
          pred, true = 100, 100
        rows.append(dict(experiment=name, seed=seed, image_id=f'{label}{i}', label=label,
                         dice=dice, pred_pixels=pred, true_pixels=true))
  return pd.DataFrame(rows)


def test_classes_and_subsets():
  res = analysis.from_frame(_frame())
  assert res.classes() == ['benign', 'malignant', 'normal']
  benign = res.images(label='benign')
  assert set(benign.df['image_id']) == {f'benign{i}' for i in range(4)}
  assert benign.summary().iloc[0]['base'] == 'full'
  assert res.images(label='malignant').summary().iloc[0]['base'] == 'contracting'
  structure = res.images(empty=False)
  assert (structure.df['true_pixels'] > 0).all() and len(structure.df) == 2 * 3 * 8
  # Every method works on a subset.
  assert len(structure.recommend()) == 2


def test_by_class_has_one_row_per_group_and_class_in_the_overall_order():
  res = analysis.from_frame(_frame())
  table = res.by_class()
  assert list(table.columns[:2]) == ['base', 'class']
  assert len(table) == 2 * 3
  order = list(res.summary()['base'])
  assert list(dict.fromkeys(table['base'])) == order
  normal = table[table['class'] == 'normal'].set_index('base')['mean']
  assert normal['full'] == pytest.approx(1.0)
  assert normal['contracting'] == pytest.approx(0.75)
  assert (table['n_images'] == 4).all()


def test_empty_truth_counts_false_positives_run_by_run():
  table = analysis.from_frame(_frame()).empty_truth().set_index('base')
  assert table.loc['full', 'n_images'] == 4
  assert table.loc['full', 'false_positive_rate'] == 0.0
  assert table.loc['contracting', 'false_positive_rate'] == pytest.approx(0.25)
  assert table.loc['contracting', 'predicted_pixels'] == pytest.approx(30 / 4)
  lo, hi = table.loc['contracting', ['fp_ci_lo', 'fp_ci_hi']]
  assert lo <= 0.25 <= hi
  frame = _frame()
  with_structure = frame[(frame['experiment'] == 'full') & (frame['true_pixels'] > 0)]
  assert table.loc['full', 'dice_with_structure'] == pytest.approx(with_structure['dice'].mean())


def test_no_empty_masks_and_no_classes_give_empty_tables():
  frame = _frame()
  frame = frame[frame['true_pixels'] > 0].drop(columns='label')
  res = analysis.from_frame(frame)
  assert res.empty_truth().empty
  assert res.classes() == [] and res.by_class().empty


def test_bad_subsets_name_what_is_there():
  res = analysis.from_frame(_frame())
  with pytest.raises(UserError, match='classes in the results: benign, malignant, normal'):
    res.images(label='cyst')
  bare = analysis.from_frame(_frame().drop(columns=['true_pixels', 'pred_pixels']))
  with pytest.raises(UserError, match='true_pixels'):
    bare.images(empty=True)
