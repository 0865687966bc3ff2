import numpy as np
import pytest

from unet_jax import metrics


def test_dice_and_iou_by_hand():
  pred = np.zeros((4, 4))
  pred[:2, :2] = 1  # 4 pixels
  target = np.zeros((4, 4))
  target[:2, :3] = 1  # 6 pixels, overlap 4
  assert float(metrics.dice(pred, target)) == pytest.approx(2 * 4 / 10)
  assert float(metrics.iou(pred, target)) == pytest.approx(4 / 6)


def test_batch_and_empty_mask_convention():
  pred = np.zeros((3, 4, 4, 1))
  target = np.zeros((3, 4, 4, 1))
  pred[1, 0, 0] = 1          # image 1: prediction only -> 0
  target[2, 0, 0] = 1        # image 2: target only -> 0
  np.testing.assert_allclose(metrics.dice(pred, target), [1.0, 0.0, 0.0])
  np.testing.assert_allclose(metrics.iou(pred, target), [1.0, 0.0, 0.0])


def test_bad_shape_is_rejected():
  with pytest.raises(ValueError, match='masks must be'):
    metrics.dice(np.zeros(4), np.zeros(4))
