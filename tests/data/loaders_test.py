"""Real-set loaders on tiny fake trees written in the exact layouts of the distributed sets."""

import os
import re
import warnings

import numpy as np
import openpyxl
import pytest
from PIL import Image

from unet_jax import data
from unet_jax.data.real import pixels
from unet_jax.errors import UserError

H, W = 20, 24  # image size of the fake PNG sets


def save(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def grey(seed, h=H, w=W):
  return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def box(top, left, bottom, right, value=255, dtype=np.uint8, h=H, w=W):
  mask = np.zeros((h, w), dtype)
  mask[top:bottom, left:right] = value
  return mask


def write_busi(root, h=H, w=W):
  """BUSI: RGB, RGBA, 8-bit, 16-bit images; 0/255, 1-bit, 0/200 masks; one _mask_1."""
  d = root / 'Dataset_BUSI_with_GT'
  g = grey(0, h, w)
  b = lambda *corners, **kw: box(*corners, **kw, h=h, w=w)
  save(d / 'benign' / 'benign (1).png', np.dstack([g, g, g]))
  save(d / 'benign' / 'benign (1)_mask.png', b(2, 3, 8, 9))
  save(d / 'benign' / 'benign (2).png', np.dstack([g, g, g, np.full_like(g, 255)]))
  save(d / 'benign' / 'benign (2)_mask.png', b(0, 0, 5, 5))
  save(d / 'benign' / 'benign (2)_mask_1.png', b(10, 10, 15, 15))
  save(d / 'benign' / 'benign (10).png', g)
  save(d / 'benign' / 'benign (10)_mask.png', b(4, 4, 6, 6, value=True, dtype=bool))
  save(d / 'malignant' / 'malignant (1).png', g.astype(np.uint16) * 257)
  malignant_mask = b(12, 12, 16, 16, value=200)
  malignant_mask[0, 0] = 100  # a stray value (an edge): below the threshold, and rare
  save(d / 'malignant' / 'malignant (1)_mask.png', malignant_mask)
  save(d / 'normal' / 'normal (1).png', g)
  save(d / 'normal' / 'normal (1)_mask.png', b(0, 0, 0, 0))
  (d / 'normal' / 'Thumbs.db').write_bytes(b'not an image')
  return d, g


def write_udiat(root, sheet_rows=None):
  d = root / 'DatasetB'
  for i in range(1, 5):
    save(d / 'original' / f'{i:06d}.png', grey(i))
    save(d / 'GT' / f'{i:06d}.png', box(i, i, i + 5, i + 5))
  if sheet_rows is not None:
    book = openpyxl.Workbook()
    for row in sheet_rows:
      book.active.append(row)
    book.save(d / 'DatasetB.xlsx')
  return d


UDIAT_ROWS = [('Image', 'Type', 'Size (mm)'), (1, 'Benign', 5.0), ('000002', 'Malignant', 7.1),
              ('000003.png', 'benign', 3.3), (4.0, 'MALIGNANT ', 2.0)]


def write_montgomery(root, sixteen_bit=False):
  d = root / 'MontgomerySet'
  for i, suffix in enumerate(['0', '1', '1']):
    name = f'MCUCXR_{i + 1:04d}_{suffix}.png'
    image = grey(i)
    save(d / 'CXR_png' / name, image.astype(np.uint16) * 16 if sixteen_bit else image)
    save(d / 'ManualMask' / 'leftMask' / name, box(2, 2, 10, 8))
    save(d / 'ManualMask' / 'rightMask' / name, box(2, 14, 10, 20))
  (d / 'ClinicalReadings').mkdir()
  (d / 'ClinicalReadings' / 'MCUCXR_0001_0.txt').write_text('normal')
  return d


def write_jsrt(root, side=16):
  raw = (np.arange(side * side).reshape(side, side) * (4095 // (side * side - 1))).astype('>u2')
  for name in ('JPCLN001', 'JPCNN001'):
    (root / 'All247images').mkdir(parents=True, exist_ok=True)
    raw.tofile(root / 'All247images' / f'{name}.IMG')
  half = side // 2
  for fold, name in (('fold1', 'JPCLN001'), ('fold2', 'JPCNN001')):
    masks = root / 'scr' / fold / 'masks'
    save(masks / 'left lung' / f'{name}.gif', box(1, 1, 4, 3, h=half, w=half))
    save(masks / 'right lung' / f'{name}.gif', box(1, 5, 4, 7, h=half, w=half))
    save(masks / 'heart' / f'{name}.gif', box(0, 0, half, half, h=half, w=half))
  return raw


def test_busi_pairs_merges_binarises_and_labels(tmp_path):
  d, _ = write_busi(tmp_path)
  ds = data.load('busi', d, W)  # no resize along x; y is stretched 20 -> 24
  assert ds.ids == ['benign (1)', 'benign (2)', 'benign (10)', 'malignant (1)', 'normal (1)']
  assert ds.labels == ['benign'] * 3 + ['malignant', 'normal']
  assert ds.skipped == ()
  from_parent = data.load('busi', d.parent, W)  # the folder holding the set works too
  np.testing.assert_array_equal(from_parent.images, ds.images)
  assert [m['masks'] for m in ds.meta][1] == ['benign/benign (2)_mask.png',
                                              'benign/benign (2)_mask_1.png']
  assert ds.meta[3] == {'class': 'malignant', 'image': 'malignant/malignant (1).png',
                        'masks': ['malignant/malignant (1)_mask.png'], 'height': H,
                        'width': W, 'bits': 16}


def test_busi_at_native_size_keeps_values(tmp_path):
  d, g = write_busi(tmp_path, W, W)
  ds = data.load('busi', d, W)  # square at the output size: not resampled
  images, masks = ds.images[..., 0], ds.masks[..., 0].astype(bool)
  for image in images:  # RGB, RGBA, 8-bit and 16-bit encodings of one grey image
    np.testing.assert_allclose(image, g / 255, atol=1e-6)
  b = lambda *corners: box(*corners, h=W, w=W) > 0
  np.testing.assert_array_equal(masks[0], b(2, 3, 8, 9))
  np.testing.assert_array_equal(masks[1], b(0, 0, 5, 5) | b(10, 10, 15, 15))
  np.testing.assert_array_equal(masks[2], b(4, 4, 6, 6))
  np.testing.assert_array_equal(masks[3], b(12, 12, 16, 16))  # 200 kept, 100 not
  assert not masks[4].any()


@pytest.mark.parametrize('size', [8, 40])
def test_resize_shapes_dtypes_and_ranges(tmp_path, size):
  d, _ = write_busi(tmp_path)
  ds = data.load('busi', d, size)
  assert ds.images.shape == ds.masks.shape == (5, size, size, 1)
  assert ds.images.dtype == ds.masks.dtype == np.float32
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
  assert set(np.unique(ds.masks)) <= {0.0, 1.0}
  expected = 6 * 6 * size * size / (H * W)  # first mask's area, scaled
  assert ds.masks[0].sum() == pytest.approx(expected, rel=0.35)


def test_resize_is_area_based():
  image = np.zeros((40, 40), np.float32)
  image[::2] = 1.0  # stripes alias badly under plain subsampling
  np.testing.assert_allclose(pixels.resize_image(image, 10), 0.5, atol=0.05)
  mask = np.zeros((40, 40), bool)
  mask[:, :21] = True
  small = pixels.resize_mask(mask, 4)
  assert small[:, :2].all() and not small[:, 2:].any()


def test_sixteen_bit_scaling_and_masks(tmp_path):
  save(tmp_path / 'i12.png', np.array([[0, 4095]], np.uint16))
  save(tmp_path / 'i16.png', np.array([[0, 65535]], np.uint16))
  save(tmp_path / 'm16.png', np.array([[0, 30000] + [40000] * 10 + [65535]], np.uint16))
  image, bits = pixels.read_grey(tmp_path / 'i12.png')
  assert bits == 12 and image.tolist() == [[0.0, 1.0]]
  assert pixels.read_grey(tmp_path / 'i16.png')[1] == 16
  assert pixels.read_mask([tmp_path / 'm16.png']).tolist() == [[False, False] + [True] * 11]


@pytest.mark.parametrize('values, message', [
    ((0, 1, 2), r'values \{0, 1, 2\} are nonzero but none is above 127'),
    ((0, 100), r'values \{0, 100\} are nonzero but none is above 127'),
    ((0, 128, 255), r'values \{0, 128, 255\} look like a label map'),
    ((0, 85, 170, 255), r'values \{0, 85, 170, 255\} look like a label map'),
])
def test_label_maps_are_refused_naming_the_file_and_values(tmp_path, values, message):
  """A label map read as a binary mask would be empty (0, 1, 2) or merge structures."""
  mask = np.zeros((12, 12), np.uint8)
  for i, v in enumerate(values):
    mask[:, 3 * i:3 * i + 3] = v
  d = tmp_path / 'Dataset_BUSI_with_GT' / 'benign'
  save(d / 'benign (1).png', grey(0, 12, 12))
  save(d / 'benign (1)_mask.png', mask)
  with pytest.raises(UserError, match=message) as e:
    data.load('busi', d.parent, 8)
  assert 'benign (1)_mask.png' in str(e.value)


def test_anti_aliased_edges_are_still_binary(tmp_path):
  mask = box(4, 4, 16, 20)
  mask[3, 4:20] = np.linspace(20, 240, 16).astype(np.uint8)  # many values, each rare
  save(tmp_path / 'm.png', mask)
  read = pixels.read_mask([tmp_path / 'm.png'])
  assert read.sum() == 12 * 16 + 8


def test_a_set_of_empty_masks_is_refused(tmp_path):
  d = tmp_path / 'Dataset_BUSI_with_GT' / 'normal'
  for i in (1, 2):
    save(d / f'normal ({i}).png', grey(i))
    save(d / f'normal ({i})_mask.png', box(0, 0, 0, 0))
  with pytest.raises(UserError, match='every one of the 2 masks .* is empty'):
    data.load('busi', d.parent, 8)


def test_zero_one_masks_are_labels(tmp_path):
  save(tmp_path / 'm.png', np.array([[0, 1, 1]], np.uint8))
  assert pixels.read_mask([tmp_path / 'm.png']).tolist() == [[False, True, True]]


def test_udiat_classes_from_the_sheet(tmp_path):
  d = write_udiat(tmp_path, UDIAT_ROWS)
  ds = data.load('udiat_b', tmp_path, 16)
  assert ds.ids == ['000001', '000002', '000003', '000004']
  assert ds.labels == ['benign', 'malignant', 'benign', 'malignant']
  assert ds.meta[0]['label_source'] == 'DatasetB.xlsx'
  assert data.load('udiat_b', d, 16).labels == ds.labels


def test_udiat_sheet_columns_found_by_content(tmp_path):
  rows = [('notes',), ('Class', 'whatever', 'File')] + [
      (c, None, f'{i:06d}') for i, c in enumerate(['M', 'Malignant', 'Benign', 'Benign'], 1)]
  write_udiat(tmp_path, rows)
  with pytest.warns(UserWarning, match='1 images have no Benign/Malignant class'):
    ds = data.load('udiat_b', tmp_path, 16)
  assert ds.labels == ['unknown', 'malignant', 'benign', 'benign']


def test_udiat_without_sheet_is_unknown_with_a_warning(tmp_path):
  write_udiat(tmp_path)
  with pytest.warns(UserWarning, match='no DatasetB.xlsx'):
    ds = data.load('udiat_b', tmp_path, 16)
  assert ds.labels == ['unknown'] * 4
  assert ds.meta[0]['label_source'].startswith('none')


def test_udiat_sheet_without_classes_names_the_sheet(tmp_path):
  d = write_udiat(tmp_path, [('Image', 'Size'), (1, 3.0)])
  with pytest.raises(UserError, match=str(d / 'DatasetB.xlsx')):
    data.load('udiat_b', tmp_path, 16)


@pytest.mark.parametrize('sixteen_bit', [False, True])
def test_montgomery_or_of_both_lungs(tmp_path, sixteen_bit):
  d = write_montgomery(tmp_path, sixteen_bit)
  for root in (tmp_path, d):
    ds = data.load('montgomery', root, W)
    assert ds.ids == ['MCUCXR_0001_0', 'MCUCXR_0002_1', 'MCUCXR_0003_1']
    assert ds.labels == ['normal', 'tb', 'tb']
  assert ds.meta[0]['bits'] == (12 if sixteen_bit else 8)
  both = ds.masks[0, ..., 0].astype(bool)
  assert both[:, :W // 2].any() and both[:, W // 2:].any()
  assert ds.masks[0].sum() == pytest.approx(2 * 8 * 6 * W / H, rel=0.2)


def test_jsrt_raw_is_inverted_and_paired_with_scr(tmp_path):
  raw = write_jsrt(tmp_path)
  ds = data.load('jsrt_scr', tmp_path, 16)
  assert ds.ids == ['JPCLN001', 'JPCNN001']
  assert ds.labels == ['nodule', 'normal']
  assert [m['fold'] for m in ds.meta] == ['fold1', 'fold2']
  assert ds.meta[0]['masks'] == ['scr/fold1/masks/left lung/JPCLN001.gif',
                                 'scr/fold1/masks/right lung/JPCLN001.gif']
  np.testing.assert_allclose(ds.images[0, ..., 0], 1 - raw / 4095, atol=1e-6)
  expected = np.kron(box(1, 1, 4, 3, h=8, w=8) | box(1, 5, 4, 7, h=8, w=8), np.ones((2, 2)))
  np.testing.assert_array_equal(ds.masks[0, ..., 0], expected > 0)


def test_jsrt_rejects_a_raw_file_that_is_not_square(tmp_path):
  write_jsrt(tmp_path)
  bad = tmp_path / 'All247images' / 'JPCLN001.IMG'
  np.zeros((16, 15), '>u2').tofile(bad)
  with pytest.raises(UserError, match=re.escape(str(bad)) + '.*not a square'):
    data.load('jsrt_scr', tmp_path, 16)


def test_folder_layouts(tmp_path):
  duts = tmp_path / 'DUTS-TR'
  for name in ('b', 'a'):
    save(duts / 'DUTS-TR-Image' / f'{name}.jpg', np.dstack([grey(1)] * 3))
    save(duts / 'DUTS-TR-Mask' / f'{name}.png', box(2, 2, 9, 9))
  ds = data.load('folder', duts, 16)
  assert ds.ids == ['a', 'b'] and ds.labels == ['object', 'object']
  assert ds.meta[0]['masks'] == ['DUTS-TR-Mask/a.png']
  pair = (duts / 'DUTS-TR-Image', duts / 'DUTS-TR-Mask')
  np.testing.assert_array_equal(data.load('folder', pair, 16).masks, ds.masks)
  joined = os.pathsep.join(map(str, pair))
  np.testing.assert_array_equal(data.load('folder', joined, 16).masks, ds.masks)

  msra = tmp_path / 'MSRA10K_Imgs_GT' / 'Imgs'
  save(msra / '0_1.jpg', np.dstack([grey(2)] * 3))
  save(msra / '0_1.png', box(1, 1, 5, 5))
  save(msra / '7.png', grey(3))
  save(msra / '7_mask.png', box(1, 1, 5, 5))
  ds = data.load('folder', msra, 16)
  assert ds.ids == ['0_1', '7']
  assert ds.meta[1]['masks'] == ['7_mask.png']


def test_folder_that_is_ambiguous_says_how_to_choose(tmp_path):
  for sub in ('images', 'img_extra', 'masks'):
    (tmp_path / sub).mkdir()
  with pytest.raises(UserError, match=r'images, img_extra, masks.*\(images_dir, masks_dir\)'):
    data.load('folder', tmp_path, 16)


def test_take_keeps_meta(tmp_path):
  d, _ = write_busi(tmp_path)
  ds = data.load('busi', d, 8)
  part = ds.take([4, 0])
  assert part.ids == ['normal (1)', 'benign (1)']
  assert [m['class'] for m in part.meta] == ['normal', 'benign']
  assert part.images.shape == (2, 8, 8, 1)


def test_cache_is_reused_and_invalidated_by_a_changed_file(tmp_path, monkeypatch):
  d, _ = write_busi(tmp_path / 'data')
  cache_dir = tmp_path / 'cache'
  first = data.load('busi', d, 8, cache_dir=cache_dir)
  assert len(list(cache_dir.glob('*.npz'))) == 1
  assert not list(cache_dir.glob('*.tmp'))

  real_read = pixels.read_grey
  calls = []
  monkeypatch.setattr(pixels, 'read_grey', lambda p: calls.append(p) or real_read(p))
  second = data.load('busi', d, 8, cache_dir=cache_dir)
  assert calls == []
  np.testing.assert_array_equal(second.images, first.images)
  np.testing.assert_array_equal(second.masks, first.masks)
  assert (second.ids, second.labels, second.meta) == (first.ids, first.labels, first.meta)

  changed = d / 'benign' / 'benign (1)_mask.png'
  save(changed, box(0, 0, 20, 24))
  os.utime(changed, ns=(1, 1))  # a new mtime even on coarse file-system clocks
  third = data.load('busi', d, 8, cache_dir=cache_dir)
  assert len(calls) == 5
  assert third.masks[0].sum() == 64 != first.masks[0].sum()
  assert len(list(cache_dir.glob('*.npz'))) == 2


def test_a_broken_cache_file_is_rebuilt(tmp_path):
  d, _ = write_busi(tmp_path / 'data')
  cache_dir = tmp_path / 'cache'
  first = data.load('busi', d, 8, cache_dir=cache_dir)
  (cached,) = cache_dir.glob('*.npz')
  cached.write_bytes(b'garbage')
  with pytest.warns(UserWarning, match='unreadable cache'):
    again = data.load('busi', d, 8, cache_dir=cache_dir)
  np.testing.assert_array_equal(again.images, first.images)


@pytest.mark.parametrize('name, where', [
    ('busi', 'https://scholar.cu.edu.eg/?q=afahmy/pages/dataset'),
    ('udiat_b', 'Yap et al. 2018'),
    ('montgomery', 'https://lhncbc.nlm.nih.gov/'),
    ('jsrt_scr', 'http://db.jsrt.or.jp/eng.php and SCR at https://www.isi.uu.nl/'),
    ('folder', 'DUTS-TR-Image'),
])
def test_missing_folder_names_layout_and_source(tmp_path, name, where):
  nope = tmp_path / 'nope'
  with pytest.raises(UserError, match=re.escape(f'no folder {nope}') + '.*expected') as e:
    data.load(name, tmp_path / 'nope', 16)
  assert where in str(e.value)
  with pytest.raises(UserError, match='expected') as e:
    data.load(name, tmp_path, 16)  # exists, but empty
  assert where in str(e.value)


def _break(d, how):
  """Breaks the BUSI tree one way; returns the file(s) the message must name."""
  if how == 'image without mask':
    image = d / 'benign' / 'benign (11).png'
    save(image, grey(5))
    return [image]
  if how == 'mask without image':
    mask = d / 'malignant' / 'malignant (7)_mask.png'
    save(mask, box(1, 1, 3, 3))
    return [mask]
  if how == 'unreadable':
    image = d / 'benign' / 'benign (2).png'
    image.write_bytes(b'\x89PNG not really')
    return [image]
  if how == 'size mismatch':
    mask = d / 'malignant' / 'malignant (1)_mask.png'
    save(mask, box(0, 0, 3, 3, h=H - 1))
    return [d / 'malignant' / 'malignant (1).png', mask]
  raise ValueError(how)


@pytest.mark.parametrize('how', ['image without mask', 'mask without image', 'unreadable',
                                 'size mismatch'])
def test_bad_pairs_raise_or_are_skipped_and_reported(tmp_path, how):
  d, _ = write_busi(tmp_path)
  files = _break(d, how)
  with pytest.raises(UserError) as e:
    data.load('busi', d, 8)
  assert all(str(f) in str(e.value) for f in files), str(e.value)
  assert "on_bad='skip'" in str(e.value)

  with pytest.warns(UserWarning, match='skipped 1 unusable') as record:
    ds = data.load('busi', d, 8, on_bad='skip')
  assert str(files[0]) in str(record[0].message)
  assert len(ds.skipped) == 1 and all(str(f) in ds.skipped[0] for f in files)
  assert len(ds) == (5 if how in ('image without mask', 'mask without image') else 4)


def test_skip_is_cached_and_reported_again(tmp_path):
  d, _ = write_busi(tmp_path / 'data')
  _break(d, 'unreadable')
  for _ in range(2):
    with pytest.warns(UserWarning, match='skipped 1'):
      ds = data.load('busi', d, 8, on_bad='skip', cache_dir=tmp_path / 'cache')
    assert len(ds) == 4 and 'benign (2).png' in ds.skipped[0]


def test_montgomery_missing_one_lung_names_the_expected_file(tmp_path):
  d = write_montgomery(tmp_path)
  (d / 'ManualMask' / 'rightMask' / 'MCUCXR_0002_1.png').unlink()
  with pytest.raises(UserError, match='rightMask/MCUCXR_0002_1.png'):
    data.load('montgomery', d, 8)


def test_all_bad_or_empty_is_an_error(tmp_path):
  d = tmp_path / 'Dataset_BUSI_with_GT'
  (d / 'benign').mkdir(parents=True)
  with pytest.raises(UserError, match='no image with a mask'):
    data.load('busi', d, 8)
  save(d / 'benign' / 'benign (1).png', grey(0))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    with pytest.raises(UserError, match=r'no image with a mask.*benign \(1\).png'):
      data.load('busi', d, 8, on_bad='skip')
  save(d / 'benign' / 'benign (1)_mask.png', box(0, 0, 3, 3, h=5))
  with pytest.raises(UserError, match='every image .* is unusable'):
    data.load('busi', d, 8, on_bad='skip')


@pytest.mark.parametrize('kwargs, message', [
    ({'name': 'busy'}, 'valid names: busi, udiat_b, montgomery, jsrt_scr, folder'),
    ({'on_bad': 'ignore'}, 'on_bad must be one of error, skip'),
    ({'size': 0}, 'size must be a positive integer'),
    ({'root': ('a', 'b')}, "only 'folder' takes"),
])
def test_argument_errors(tmp_path, kwargs, message):
  args = {'name': 'busi', 'root': tmp_path, 'size': 8, **kwargs}
  with pytest.raises(UserError, match=message):
    data.load(args.pop('name'), args.pop('root'), args.pop('size'), **args)


def test_oxford_pets_from_tfds_as_a_pretraining_set():
  import tensorflow_datasets as tfds

  from unet_jax.data import pets
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = pets.load(6, 16)  # 4 from train, 2 from test
  assert ds.images.shape == ds.masks.shape == (6, 16, 16, 1)
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
  assert set(np.unique(ds.masks)) <= {0.0, 1.0}
  assert set(ds.labels) <= {'cat', 'dog'}


def test_oxford_pets_unreadable_says_what_to_do(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  from unet_jax.data import pets

  def offline(*args, **kwargs):
    raise ConnectionError('network unreachable')

  monkeypatch.setattr(tfds, 'data_source', offline)
  with pytest.raises(UserError, match="network needed.*pretrain.source='folder'"):
    pets.load(4, 16, str(tmp_path))
