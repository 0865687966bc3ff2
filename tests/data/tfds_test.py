"""TFDS builders: build to array_record and read back with tfds.data_source, no TensorFlow."""

import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from loaders_test import UDIAT_ROWS, box, grey, write_busi, write_montgomery, write_udiat

from unet_jax.data import tfds_builders
from unet_jax.data.tfds_builders.__main__ import main
from unet_jax.errors import UserError


def _read_all(builder):
  source = builder.as_data_source()['train']
  examples = [source[i] for i in range(len(source))]
  for e in examples:
    e['id'] = e['id'].decode()  # Text features come back as bytes
  return examples


def test_busi_builds_and_reads_back(tmp_path):
  d, g = write_busi(tmp_path / 'manual')
  builder = tfds_builders.build('busi', d, tmp_path / 'tfds')
  examples = sorted(_read_all(builder), key=lambda e: e['id'])
  assert [e['id'] for e in examples] == ['benign (1)', 'benign (10)', 'benign (2)',
                                         'malignant (1)', 'normal (1)']
  names = builder.info.features['label'].names
  assert [names[e['label']] for e in examples] == ['benign'] * 3 + ['malignant', 'normal']
  for e in examples:
    np.testing.assert_array_equal(e['image'][..., 0], g)  # every encoding, back to 8 bits
    assert e['mask'].shape == g.shape + (1,) and e['mask'].dtype == np.uint8
  merged = box(0, 0, 5, 5) | box(10, 10, 15, 15)
  np.testing.assert_array_equal(examples[2]['mask'][..., 0], merged > 0)
  # Read by name through the registry, as a user would.
  by_name = tfds.data_source('busi', data_dir=tmp_path / 'tfds')['train']
  assert len(by_name) == 5
  assert 'tensorflow' not in sys.modules


def test_udiat_and_montgomery_build(tmp_path):
  write_udiat(tmp_path / 'udiat', UDIAT_ROWS)
  udiat = _read_all(tfds_builders.build('udiat_b', tmp_path / 'udiat', tmp_path / 'tfds'))
  classes = tfds_builders.UdiatB.CLASSES
  assert sorted((e['id'], classes[e['label']]) for e in udiat) == [
      ('000001', 'benign'), ('000002', 'malignant'), ('000003', 'benign'),
      ('000004', 'malignant')]
  write_montgomery(tmp_path / 'mc', sixteen_bit=True)
  mc = _read_all(tfds_builders.build('montgomery', tmp_path / 'mc', tmp_path / 'tfds'))
  assert len(mc) == 3
  first = next(e for e in mc if e['id'] == 'MCUCXR_0001_0')
  np.testing.assert_allclose(first['image'][..., 0], grey(0).astype(int) * 16 / 4095 * 255,
                             atol=0.51)
  assert first['mask'].sum() == 2 * 8 * 6


def test_command_line(tmp_path, capsys):
  d, _ = write_busi(tmp_path / 'manual')
  assert main(['busi', f'--manual_dir={d}', f'--data_dir={tmp_path / "tfds"}']) == 0
  assert 'busi: 5 examples' in capsys.readouterr().out
  assert main(['busi', f'--manual_dir={tmp_path / "nope"}', '--data_dir=x']) == 2
  assert 'https://scholar.cu.edu.eg' in capsys.readouterr().err


def test_a_bad_pair_stops_the_build(tmp_path):
  d, _ = write_busi(tmp_path / 'manual')
  (d / 'benign' / 'benign (1)_mask.png').unlink()
  with pytest.raises(UserError, match=r'benign \(1\).png: image without mask'):
    tfds_builders.build('busi', d, tmp_path / 'tfds')
