"""Label-map masks of several structures, declared by name (and value), in folder sets."""

import numpy as np
import pytest
from PIL import Image

from unet_jax import data, structures
from unet_jax.data.real import pixels
from unet_jax.errors import UserError

NAMES = ('cavity', 'wall', 'atrium')


def save(path, array, palette=False):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(array)
  if palette:
    image = image.convert('P') if array.ndim == 3 else Image.fromarray(array, 'P')
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (252 * 3))
  image.save(path)


def label_image(h=16, w=16, values=(1, 2, 3)):
  labels = np.zeros((h, w), np.uint8)
  labels[2:6, 2:14] = values[0]
  labels[6:10, 2:14] = values[1]
  labels[10:14, 2:8] = values[2]
  return labels


def write_set(root, labels, n=2, palette=False):
  for i in range(n):
    grey = np.random.default_rng(i).integers(0, 256, labels.shape, dtype=np.uint8)
    save(root / 'images' / f'case{i}.png', grey)
    save(root / 'masks' / f'case{i}.png', labels, palette=palette)
  return root


def test_a_label_map_is_read_as_one_channel_per_structure(tmp_path):
  root = write_set(tmp_path / 'set', label_image())
  ds = data.load('folder', root, 16, structures=NAMES, label_values=(1, 2, 3))
  assert ds.masks.shape == (2, 16, 16, 3) and ds.structures == NAMES
  np.testing.assert_array_equal(structures.label_map(ds.masks[0]), label_image())
  assert (ds.masks.sum(axis=-1) <= 1).all()


def test_declared_values_and_palette_indices(tmp_path):
  root = write_set(tmp_path / 'a', label_image(values=(10, 20, 40)))
  names, values = structures.parse('cavity=10,wall=20,atrium=40')
  ds = data.open_source('folder', num=0, size=16, seed=0, root=str(root),
                        declared='cavity=10,wall=20,atrium=40')
  assert (names, values) == (NAMES, (10, 20, 40))
  np.testing.assert_array_equal(structures.label_map(ds.masks[1]), label_image())
  # A palette PNG holds indices; its colours do not matter.
  root = write_set(tmp_path / 'b', label_image(), palette=True)
  ds = data.open_source('folder', num=0, size=16, seed=0, root=str(root),
                        declared=','.join(NAMES))
  np.testing.assert_array_equal(structures.label_map(ds.masks[0]), label_image())


def test_resizing_a_label_map_gives_each_pixel_its_largest_label():
  labels = np.zeros((4, 4), np.uint8)
  labels[:, :1] = 1  # half of each left output pixel: a tie, the lower label wins
  labels[:2, 2:] = 2  # all of the top-right one
  labels[2:, 2:] = 3
  labels[3, 3] = 1  # a quarter of the bottom-right one
  np.testing.assert_array_equal(pixels.resize_labels(labels, 2, 3), [[0, 2], [0, 3]])
  labels[0, 1] = 1  # three quarters of the top-left one
  np.testing.assert_array_equal(pixels.resize_labels(labels, 2, 3), [[1, 2], [0, 3]])


def test_values_that_are_not_declared_are_refused_naming_the_file(tmp_path):
  root = write_set(tmp_path / 'set', label_image(values=(1, 2, 7)))
  with pytest.raises(UserError, match=r'values \{0, 1, 2, 7\} are not all declared label '
                                      r'values \{0, 1, 2, 3\}') as e:
    data.load('folder', root, 16, structures=NAMES, label_values=(1, 2, 3))
  assert 'case0.png' in str(e.value)


def test_a_colour_label_map_is_refused(tmp_path):
  rgb = np.zeros((16, 16, 3), np.uint8)
  rgb[2:6, 2:6] = (255, 0, 0)
  root = write_set(tmp_path / 'set', rgb)
  with pytest.raises(UserError, match='a colour label map'):
    data.load('folder', root, 16, structures=NAMES, label_values=(1, 2, 3))


def test_a_binary_set_reads_as_before(tmp_path):
  binary = (label_image() > 0).astype(np.uint8) * 255
  root = write_set(tmp_path / 'set', binary)
  ds = data.open_source('folder', num=0, size=8, seed=0, root=str(root))
  assert ds.masks.shape == (2, 8, 8, 1) and ds.structures == structures.BINARY
  named = data.open_source('folder', num=0, size=8, seed=0, root=str(root), declared='lesion')
  assert named.structures == ('lesion',)
  np.testing.assert_array_equal(named.masks, ds.masks)
  # A label map read as binary still says how to declare it.
  root = write_set(tmp_path / 'labels', label_image())
  with pytest.raises(UserError, match="data.structures"):
    data.open_source('folder', num=0, size=8, seed=0, root=str(root))


def test_a_built_in_source_keeps_its_own_structures():
  assert data.structures_of('cardiac') == (NAMES, (1, 2, 3))
  assert data.structures_of('ultrasound') == (structures.BINARY, None)
  assert data.structures_of('cardiac', 'cavity,wall,atrium')[0] == NAMES
  with pytest.raises(UserError, match="data source 'ultrasound' has the structures "
                                      'foreground; leave it empty'):
    data.structures_of('ultrasound', 'lesion,gland')


def test_pad_keeps_the_aspect_ratio_and_pads_with_background(tmp_path):
  labels = label_image(h=16, w=32)
  root = write_set(tmp_path / 'set', labels)
  ds = data.load('folder', root, 16, structures=NAMES, label_values=(1, 2, 3), resize='pad')
  assert ds.meta[0]['placement'] == [8, 16, 4, 0]
  assert (ds.images[:, :4] == 0).all() and (ds.images[:, 12:] == 0).all()
  assert (ds.masks[:, :4] == 0).all() and (ds.masks[:, 12:] == 0).all()
  # The structures keep their order, top to bottom, inside the image's rows.
  inside = structures.label_map(ds.masks[0])[4:12]
  assert set(np.unique(inside)) == {0, 1, 2, 3}
  rows = [np.nonzero((inside == k).any(axis=1))[0].mean() for k in (1, 2, 3)]
  assert rows == sorted(rows)
  stretched = data.load('folder', root, 8, structures=NAMES, label_values=(1, 2, 3))
  assert 'placement' not in stretched.meta[0]
  assert pixels.placement(16, 32, 8, 'stretch') == (8, 8, 0, 0)
  assert pixels.placement(30, 10, 8, 'pad') == (8, 3, 0, 2)
  with pytest.raises(UserError, match='resize must be one of stretch, pad'):
    data.load('folder', root, 8, resize='crop')


def test_one_binary_mask_per_structure_in_named_sub_folders(tmp_path):
  labels = label_image()
  root = tmp_path / 'set'
  for i in range(2):
    save(root / 'images' / f'case{i}.png', np.full(labels.shape, 99, np.uint8))
    for k, name in enumerate(NAMES, 1):
      save(root / 'masks' / name / f'case{i}_mask.png', (labels == k).astype(np.uint8) * 255)
  ds = data.open_source('folder', num=0, size=16, seed=0, root=str(root),
                        declared=','.join(NAMES))
  assert ds.masks.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(structures.label_map(ds.masks[1]), labels)
  assert ds.meta[0]['masks'] == [f'masks/{n}/case0_mask.png' for n in NAMES]
  # A missing structure's file names it; overlapping structures are refused.
  (root / 'masks' / 'wall' / 'case1_mask.png').unlink()
  with pytest.raises(UserError, match=r'case1.png: image without its mask of wall \(expected '
                                      r'.*masks/wall/case1.png\)'):
    data.open_source('folder', num=0, size=16, seed=0, root=str(root),
                     declared=','.join(NAMES))
  save(root / 'masks' / 'wall' / 'case1_mask.png', (labels > 0).astype(np.uint8) * 255)
  with pytest.raises(UserError, match='structures may not overlap'):
    data.open_source('folder', num=0, size=16, seed=0, root=str(root),
                     declared=','.join(NAMES))
