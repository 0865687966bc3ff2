import functools

import jax
import numpy as np
import pytest
from scipy import ndimage

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
  hd = metrics.hd95(pred, target)
  assert np.isnan(hd).all()  # distances are undefined when either mask is empty
  assert np.isnan(metrics.assd(pred, target)).all()


def test_bad_shape_is_rejected():
  with pytest.raises(ValueError, match='masks must be'):
    metrics.dice(np.zeros(4), np.zeros(4))
  with pytest.raises(ValueError, match='differ in shape'):
    metrics.hd95(np.zeros((4, 4)), np.zeros((4, 5)))


def _brute_force(pred, target, spacing):
  """MONAI-style hd95 / assd by pairwise distances between surface pixel sets."""
  def surface(m):
    return m & ~ndimage.binary_erosion(m, border_value=0)  # cross structure
  sp = np.argwhere(surface(pred.astype(bool))) * np.asarray(spacing)
  st = np.argwhere(surface(target.astype(bool))) * np.asarray(spacing)
  d = np.sqrt(((sp[:, None] - st[None]) ** 2).sum(-1))
  p_to_t, t_to_p = d.min(1), d.min(0)
  hd = max(np.percentile(p_to_t, 95), np.percentile(t_to_p, 95))
  return hd, np.concatenate([p_to_t, t_to_p]).mean()


def _square(size, top, left, side):
  m = np.zeros((size, size), np.float32)
  m[top:top + side, left:left + side] = 1
  return m


@pytest.mark.parametrize('shift', [1, 3, 5])
def test_shifted_square_hd95_is_the_shift(shift):
  a = _square(32, 10, 10, 10)
  b = _square(32, 10, 10 + shift, 10)
  assert float(metrics.hd95(a, b)) == pytest.approx(shift)
  assert float(metrics.hd95(b, a)) == pytest.approx(shift)


def test_single_pixels_with_anisotropic_spacing():
  a = np.zeros((8, 8))
  a[2, 2] = 1
  right = np.zeros((8, 8))
  right[2, 5] = 1
  down = np.zeros((8, 8))
  down[5, 2] = 1
  spacing = (2.0, 0.5)  # rows 2 units apart, columns 0.5
  assert float(metrics.hd95(a, right, spacing)) == pytest.approx(3 * 0.5)
  assert float(metrics.assd(a, right, spacing)) == pytest.approx(3 * 0.5)
  assert float(metrics.hd95(a, down, spacing)) == pytest.approx(3 * 2.0)
  diagonal = np.zeros((8, 8))
  diagonal[5, 6] = 1
  assert float(metrics.hd95(a, diagonal, spacing)) == pytest.approx(np.hypot(6.0, 2.0))


def test_masks_touching_the_border_by_hand():
  # Top 4 rows vs top 5 rows of an 8x8 image: outside the image is background,
  # so both masks have a surface along the image border.
  a = np.zeros((8, 8))
  a[:4] = 1
  b = np.zeros((8, 8))
  b[:5] = 1
  # A's surface: 20 pixels, 6 of them (row 3, columns 1..6) 1 away from B's.
  # B's surface: 22 pixels, the 8 of row 4 are 1 away from A's row 3.
  assert float(metrics.hd95(a, b)) == pytest.approx(1.0)
  assert float(metrics.assd(a, b)) == pytest.approx((6 + 8) / (20 + 22))
  assert float(metrics.hd95(a, b, (2.0, 1.0))) == pytest.approx(2.0)
  # Rows 2 apart: (3, 1) and (3, 6) are now nearer B's side columns (1) than
  # B's row 4 (2): A->B sums 1 + 4 * 2 + 1, B->A 8 * 2.
  assert float(metrics.assd(a, b, (2.0, 1.0))) == pytest.approx((10 + 16) / 42)
  full = np.ones((8, 8))
  assert float(metrics.hd95(full, full)) == 0.0


def test_identical_masks_have_zero_distance():
  a = _square(16, 3, 4, 6)
  assert float(metrics.hd95(a, a)) == 0.0
  assert float(metrics.assd(a, a)) == 0.0


@pytest.mark.parametrize('spacing', [(1.0, 1.0), (0.7, 1.9)])
def test_random_masks_match_brute_force(spacing):
  rng = np.random.default_rng(0)
  pred = ndimage.binary_opening(rng.random((5, 24, 20)) > 0.45, np.ones((1, 3, 3)))
  target = ndimage.binary_opening(rng.random((5, 24, 20)) > 0.4, np.ones((1, 3, 3)))
  pred[:, 0, :] = True  # a mask touching the border
  hd = metrics.hd95(pred[..., None], target[..., None], spacing)
  sd = metrics.assd(pred[..., None], target[..., None], spacing)
  assert hd.shape == sd.shape == (5,)
  for i in range(5):
    want_hd, want_sd = _brute_force(pred[i], target[i], spacing)
    assert float(hd[i]) == pytest.approx(want_hd, rel=1e-5)
    assert float(sd[i]) == pytest.approx(want_sd, rel=1e-5)


@pytest.mark.parametrize('shape', [(12, 12), (12, 12, 1), (3, 12, 12), (3, 12, 12, 1)])
def test_shapes(shape):
  mask = _square(12, 2, 2, 4)
  shifted = _square(12, 2, 4, 4)
  batched = len(shape) == 4 or (len(shape) == 3 and shape[-1] != 1)
  n = shape[0] if batched else None
  def shaped(m):
    m = m[..., None] if shape[-1] == 1 else m
    return np.broadcast_to(m, (n,) + m.shape) if batched else m
  for fn, want in [(metrics.dice, 0.5), (metrics.iou, 1 / 3), (metrics.hd95, 2.0),
                   (metrics.assd, None)]:
    out = fn(shaped(mask), shaped(shifted))
    assert out.shape == ((n,) if batched else ())
    if want is not None:
      np.testing.assert_allclose(out, want, rtol=1e-6)


def test_jit_and_score_masks():
  pred = np.stack([_square(16, 2, 2, 6), _square(16, 8, 8, 4), np.zeros((16, 16))])
  target = np.stack([_square(16, 2, 4, 6), _square(16, 8, 8, 4), _square(16, 1, 1, 3)])
  spacing = (0.5, 0.5)
  jitted = jax.jit(metrics.hd95)(pred, target, spacing)
  np.testing.assert_allclose(jitted, metrics.hd95(pred, target, spacing))
  scores = metrics.score_masks(pred, target, spacing)
  assert set(scores) == {'dice', 'iou', 'hd95', 'assd'}
  np.testing.assert_allclose(scores['hd95'], [1.0, 0.0, np.nan])
  np.testing.assert_allclose(scores['dice'], [2 / 3, 1.0, 0.0])
  assert np.isnan(scores['assd'][2])


def _directed_distances(pred, target, spacing):
  """d(P->T), d(T->P) by scipy's exact distance transform, independent of metrics."""
  def surface(m):
    return m & ~ndimage.binary_erosion(m, border_value=0)  # cross structure
  sp, st = surface(pred.astype(bool)), surface(target.astype(bool))
  to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
  to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
  return to_t[sp], to_p[st]


def test_hd95_conventions_by_hand():
  # P one pixel at the left end of T, a row of 3: d(P->T) = [0], d(T->P) = [0, 1, 2].
  a = np.zeros((6, 6))
  a[2, 2] = 1
  b = np.zeros((6, 6))
  b[2, 2:5] = 1
  # max: P95([0, 1, 2]) = 1 + 0.9 * 1 (position 0.95 * 2 = 1.9).
  assert float(metrics.hd95(a, b)) == pytest.approx(1.9)
  assert float(metrics.hd95(a, b, convention='max')) == pytest.approx(1.9)
  # pooled: P95([0, 0, 1, 2]) = 1 + 0.85 * 1 (position 0.95 * 3 = 2.85).
  assert float(metrics.hd95(a, b, convention='pooled')) == pytest.approx(1.85)
  assert float(metrics.hd95(b, a, convention='pooled')) == pytest.approx(1.85)
  # Columns 2 apart double every distance.
  assert float(metrics.hd95(a, b, (1.0, 2.0))) == pytest.approx(3.8)
  assert float(metrics.hd95(a, b, (1.0, 2.0), convention='pooled')) == pytest.approx(3.7)
  # Pooled can exceed max: two 2-pixel rows overlapping by one, d = [1, 0] both ways.
  # max: P95([0, 1]) = 0.95; pooled: P95([0, 0, 1, 1]) at position 2.85 = 1.
  c = np.zeros((6, 6))
  c[2, 2:4] = 1
  d = np.zeros((6, 6))
  d[2, 3:5] = 1
  assert float(metrics.hd95(c, d)) == pytest.approx(0.95)
  assert float(metrics.hd95(c, d, convention='pooled')) == pytest.approx(1.0)
  scores = metrics.score_masks(np.stack([a, c]), np.stack([b, d]), hd95_convention='pooled')
  np.testing.assert_allclose(scores['hd95'], [1.85, 1.0], rtol=1e-6)
  np.testing.assert_allclose(metrics.score_masks(np.stack([a, c]), np.stack([b, d]))['hd95'],
                             [1.9, 0.95], rtol=1e-6)


@pytest.mark.parametrize('spacing', [(1.0, 1.0), (0.7, 1.9)])
def test_pooled_hd95_matches_numpy_on_random_masks(spacing):
  rng = np.random.default_rng(1)
  pred = ndimage.binary_opening(rng.random((6, 28, 24)) > 0.45, np.ones((1, 3, 3)))
  target = ndimage.binary_opening(rng.random((6, 28, 24)) > 0.4, np.ones((1, 3, 3)))
  pred[:, :, 0] = True  # a mask touching the border
  pooled = metrics.hd95(pred, target, spacing, convention='pooled')
  most = metrics.hd95(pred, target, spacing)
  assert pooled.shape == most.shape == (6,)
  for i in range(6):
    p_to_t, t_to_p = _directed_distances(pred[i], target[i], spacing)
    both = np.concatenate([p_to_t, t_to_p])
    assert float(pooled[i]) == pytest.approx(np.percentile(both, 95), rel=1e-5)
    assert float(most[i]) == pytest.approx(
        max(np.percentile(p_to_t, 95), np.percentile(t_to_p, 95)), rel=1e-5)
    # Pooled lies between the directed percentiles up to one interpolation step
    # (module docstring): between the smallest floor and the largest ceiling neighbour.
    def neighbours(x):
      x, pos = np.sort(x), 0.95 * (len(x) - 1)
      return x[int(np.floor(pos))], x[int(np.ceil(pos))]
    (lo_pt, hi_pt), (lo_tp, hi_tp) = neighbours(p_to_t), neighbours(t_to_p)
    assert min(lo_pt, lo_tp) - 1e-5 <= float(pooled[i]) <= max(hi_pt, hi_tp) + 1e-5
  # On these masks pooled <= max; not guaranteed in general (see the by-hand case).
  assert np.all(np.asarray(pooled) <= np.asarray(most) + 1e-5)
  assert np.any(np.asarray(pooled) < np.asarray(most) - 1e-3)  # the conventions differ


def test_unknown_hd95_convention_is_rejected():
  a = _square(8, 1, 1, 3)
  with pytest.raises(ValueError, match='pooled'):
    metrics.hd95(a, a, convention='mean')
  with pytest.raises(ValueError, match='pooled'):
    metrics.score_masks(a, a, hd95_convention='medpy')
  assert set(metrics.HD95_CONVENTIONS) == {'max', 'pooled'}


@pytest.mark.parametrize('convention', ['max', 'pooled'])
def test_empty_masks_give_nan_under_both_conventions(convention):
  pred = np.stack([np.zeros((8, 8)), _square(8, 1, 1, 3), np.zeros((8, 8))])
  target = np.stack([np.zeros((8, 8)), np.zeros((8, 8)), _square(8, 2, 2, 3)])
  assert np.isnan(metrics.hd95(pred, target, convention=convention)).all()
  scores = metrics.score_masks(pred, target, hd95_convention=convention)
  assert np.isnan(scores['hd95']).all()
  jitted = jax.jit(functools.partial(metrics.hd95, convention=convention))
  assert np.isnan(jitted(pred, target)).all()


@pytest.mark.parametrize('convention', ['max', 'pooled'])
@pytest.mark.parametrize('spacing', [(1.0, 1.0), (0.3, 0.7)])
def test_score_masks_on_the_host_equals_the_device_functions(convention, spacing):
  # Blobs, speckle (many small components), masks on the border, empty ones:
  # the host path (SciPy, cropped to the surfaces' box) gives the device's values.
  rng = np.random.default_rng(3)
  pred, target = [], []
  for i in range(24):
    a = ndimage.gaussian_filter(rng.random((40, 33)), 2.5) > 0.5
    b = ndimage.gaussian_filter(rng.random((40, 33)), 1.0 + i % 3) > 0.52
    if i % 8 == 0:
      b[:] = False
    if i % 8 == 1:
      a = rng.random((40, 33)) > 0.9
    pred.append(a)
    target.append(b)
  pred, target = np.stack(pred).astype(np.float32), np.stack(target).astype(np.float32)
  host = metrics.score_masks(pred, target, spacing, hd95_convention=convention)
  device = {'dice': metrics.dice(pred, target), 'iou': metrics.iou(pred, target),
            'hd95': metrics.hd95(pred, target, spacing, convention=convention),
            'assd': metrics.assd(pred, target, spacing)}
  assert np.isnan(host['hd95']).sum() == 3  # the empty targets
  for name, values in device.items():
    assert host[name].dtype == np.float32
    np.testing.assert_allclose(host[name], np.asarray(values), rtol=2e-6, atol=1e-6,
                               err_msg=name)
