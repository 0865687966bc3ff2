"""data.split_per_seed: every seed draws its own split, and the statistics follow."""

import json
import os

import numpy as np
import pytest
from repo import CONFIGS

from unet_jax import analysis
from unet_jax.errors import UserError
from unet_jax.sweep.run import experiment_fingerprint, load_target, run_sweep, split_seed
from unet_jax.sweep.settings import SweepSettings, load_config
from unet_jax.workdir import WorkdirPaths

TINY = os.path.join(CONFIGS, 'default.py') + ':tiny'


def _settings(**data):
  config = load_config(TINY)
  config.data.num_images = 40
  for k, v in data.items():
    config.data[k] = v
  return config, SweepSettings.from_config(config)


def test_each_seed_draws_its_own_split_and_seed_0_keeps_the_shared_one(tmp_path):
  _, shared = _settings()
  _, per_seed = _settings(split_per_seed=True)
  fixed = load_target(shared, WorkdirPaths(str(tmp_path)))
  target = load_target(per_seed, WorkdirPaths(str(tmp_path)))
  runs = {r.seed: r for r in per_seed.runs() if r.base == 'full'}
  assert [split_seed(per_seed, q) for q in (0, 1, 2)] == [0, 2, 4]
  assert [split_seed(shared, q) for q in (0, 1, 2)] == [0, 0, 0]
  first = target.split(runs[0])
  np.testing.assert_array_equal(first.test, fixed.split(runs[0]).test)
  tests = [tuple(target.split(runs[q]).test) for q in (0, 1, 2)]
  assert len(set(tests)) == 3  # three different test sets
  for q in (0, 1, 2):
    split = target.split(runs[q])
    parts = [set(split.fit), set(split.val), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert split.sizes() == first.sizes()  # stratified: the same sizes every time
    np.testing.assert_array_equal(fixed.split(runs[q]).test, first.test)
  # A run's weights depend on its split: the fingerprints differ; the shared split's
  # fingerprint is the one work directories written before the field have.
  assert experiment_fingerprint(per_seed, runs[1]) != experiment_fingerprint(
      shared, runs[1])


def test_a_bad_value_is_named():
  config = load_config(TINY)
  with config.ignore_type():
    config.data.split_per_seed = 'yes'
  with pytest.raises(UserError, match="'data.split_per_seed' must be True or False"):
    SweepSettings.from_config(config)


def test_a_sweep_with_a_split_per_seed_records_it_and_its_statistics_use_run_means(tmp_path):
  config, _ = _settings(split_per_seed=True)
  config.only = 'full,head'
  config.grid.seed = (0, 1, 2)
  workdir = str(tmp_path)
  summaries = run_sweep(config, workdir, progress=False)
  assert sorted({(s.seed, s.split_seed) for s in summaries}) == [(0, 0), (1, 2), (2, 4)]
  res = analysis.load(workdir)
  assert res.resampled
  tested = res.df.groupby('seed')['image_id'].agg(frozenset)
  assert len(set(tested)) == 3
  assert (res.summary()['ci_over'] == 'seeds, each its own split').all()
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['split_per_seed'] is True
  with open(os.path.join(workdir, 'data.json')) as f:
    assert json.load(f) == {
        'source': 'ultrasound', 'root': '', 'images': 40,
        'classes': {'benign': 26, 'malignant': 14}, 'skipped': [], 'duplicates': [],
        'empty_masks': {'images': 0, 'rule': 'keep'}, 'split_per_seed': True, 'folds': 0,
            'intensity': 'unit', 'structures': ['foreground'], 'resize': 'stretch',
            'label_values': None,
            'split_sizes': {'fit': 18, 'val': 10, 'test': 12}}
  with open(os.path.join(workdir, 'report.md')) as f:
    text = f.read()
  assert 'resampled_mean' in text
  assert 'Data: 40 images of ultrasound' in text and 'every seed its own split' in text
