"""A sweep on masks of several structures: softmax head, per-structure scores, report, export."""

import os

import jax
import numpy as np
import pytest
from PIL import Image
from repo import CONFIGS, set_fields

import unet_jax
from unet_jax import analysis, data, files, structures
from unet_jax.errors import UserError
from unet_jax.model import model_graphdef
from unet_jax.model import predict as predict_batches
from unet_jax.records import read_summary
from unet_jax.sweep.checkpoint import load_weights
from unet_jax.sweep.run import _race_frame, run_sweep
from unet_jax.sweep.settings import NEW_HEAD_RULE, SweepSettings, load_config

TINY = os.path.join(CONFIGS, 'default.py') + ':tiny'
NAMES = ['cavity', 'wall', 'atrium']


def test_a_cardiac_sweep_scores_each_structure_and_exports_label_maps(tmp_path):
  config = set_fields(load_config(TINY), {'only': 'full,head', 'grid.seed': (0,),
                                          'data.source': 'cardiac'})
  s = SweepSettings.from_config(config)
  assert s.structures == tuple(NAMES) and s.model.out_channels == 4
  workdir = str(tmp_path / 'run')
  run_sweep(config, workdir, progress=False)

  rows = files.read_jsonl(os.path.join(workdir, 'results.jsonl'))
  for row in rows:
    each = [row[f'dice:{n}'] for n in NAMES]
    assert row['dice'] == pytest.approx(np.mean(each))
    assert row['true_pixels'] == sum(row[f'true_pixels:{n}'] for n in NAMES)
    defined = [row[f'hd95:{n}'] for n in NAMES]
    assert np.isnan(row['hd95']) == any(np.isnan(defined))
  summary = read_summary(os.path.join(workdir, 'experiments', 'full', 'summary.json'))
  full = [r['dice'] for r in rows if r['experiment'] == 'full']
  assert summary.mean_dice == pytest.approx(np.mean(full))
  assert files.read_json(os.path.join(workdir, 'data.json'))['structures'] == NAMES

  # Pretraining (binary dead leaves) kept its one-logit head; fine-tuning got a new one.
  pre, _ = load_weights(os.path.join(workdir, 'pretrain', 'weights'))
  tuned, stats = load_weights(os.path.join(workdir, 'experiments', 'full', 'weights'))
  assert np.shape(pre['head']['kernel'])[-1] == 1
  assert np.shape(tuned['head']['kernel'])[-1] == 4

  # What was scored is what the network predicts; the saved predictions are its masks.
  test = np.load(os.path.join(workdir, 'test_set.npz'))
  graphdef = model_graphdef(s.model)
  probs = predict_batches(graphdef, tuned, stats, test['images'])
  masks = structures.masks_from_probabilities(probs)
  ids, saved = files.read_masks(os.path.join(workdir, 'experiments', 'full', 'predictions.npz'))
  assert saved.shape[-1] == 3
  np.testing.assert_array_equal(saved, masks[[list(test['ids']).index(i) for i in ids]])

  res = analysis.load(workdir)
  assert res.structures() == NAMES
  assert {'dice:wall', 'hd95:atrium'} <= set(res.metrics())
  assert len(res.recommend(metric='dice:wall')) == 2
  report = open(os.path.join(workdir, 'report.md')).read()
  assert '## By structure' in report and '| experiment | cavity | wall | atrium |' in report

  out = unet_jax.export_experiment(workdir, 'full', str(tmp_path / 'model'))
  assert files.read_json(os.path.join(out, 'model.json'))['structures'] == NAMES
  images = test['images'][:3]
  np.testing.assert_allclose(unet_jax.predict(out, images), probs[:3], atol=1e-5)
  labels = unet_jax.segment(out, images[..., 0])
  assert labels.shape == (3, 32, 32) and labels.dtype == np.uint8 and labels.max() <= 3
  np.testing.assert_array_equal(labels, structures.label_map(masks[:3]))


def _label_set(root, n=12, size=16, width=24):
  rng = np.random.default_rng(0)
  for i in range(n):
    labels = np.zeros((size, width), np.uint8)
    r = rng.integers(1, 6)
    labels[r:r + 5, 2:14] = 1
    labels[r + 5:r + 9, 2:14] = 2
    grey = (labels * 90 + rng.integers(0, 40, labels.shape)).astype(np.uint8)
    for folder, array in (('images', grey), ('masks', labels)):
      (root / folder).mkdir(parents=True, exist_ok=True)
      Image.fromarray(array).save(root / folder / f'case{i:02d}.png')
  return root


def test_a_folder_of_label_maps_trains_with_the_declared_structures(tmp_path):
  root = _label_set(tmp_path / 'set')  # 16 x 24 images, padded to 16 x 16 squares
  config = set_fields(load_config(TINY), {
      'only': 'scratch', 'grid.seed': (0,), 'data.source': 'folder', 'data.root': str(root),
      'data.structures': 'gland,nodule', 'image_size': 16, 'data.resize': 'pad'})
  s = SweepSettings.from_config(config)
  assert (s.structures, s.label_values, s.model.out_channels) == (('gland', 'nodule'), (1, 2), 3)
  workdir = str(tmp_path / 'run')
  run_sweep(config, workdir, progress=False)
  res = analysis.load(workdir)
  assert res.structures() == ['gland', 'nodule']
  test = np.load(os.path.join(workdir, 'test_set.npz'))
  assert (test['images'][:, :2] == 0).all() and (test['images'][:, 13:] == 0).all()
  assert test['images'][:, 2:13].std() > 0  # rows 16 * 16/24 = 10.7 -> 11, from row 2
  # Exported, the model pads new images the same way and returns their own shape.
  out = unet_jax.export_experiment(workdir, 'scratch', str(tmp_path / 'model'))
  raw = np.random.default_rng(1).random((2, 16, 24)).astype(np.float32)
  probs = unet_jax.predict(out, raw)
  assert probs.shape == (2, 16, 24, 2)
  tuned, stats = load_weights(os.path.join(workdir, 'experiments', 'scratch', 'weights'))
  square = np.zeros((2, 16, 16, 1), np.float32)
  square[:, 2:13] = np.asarray(jax.image.resize(raw[..., None], (2, 11, 16, 1), 'linear',
                                                antialias=True))
  inside = predict_batches(model_graphdef(s.model), tuned, stats, square)[:, 2:13]
  np.testing.assert_allclose(probs, jax.image.resize(inside, (2, 16, 24, 2), 'linear'),
                             atol=1e-5)
  # A binary declaration of the same set is refused with the file and its values.
  config = set_fields(load_config(TINY), {
      'only': 'scratch', 'grid.seed': (0,), 'data.source': 'folder', 'data.root': str(root),
      'image_size': 16})
  with pytest.raises(UserError, match=r"case00.png.*values \{0, 1, 2\}.*data.structures"):
    run_sweep(config, str(tmp_path / 'binary'), progress=False)


@pytest.mark.parametrize('fields, message', [
    ({'data.structures': 'a,a'}, "'data.structures': structure names repeat: a"),
    ({'data.source': 'cardiac', 'data.structures': 'lv,myo'},
     "data source 'cardiac' has the structures cavity,wall,atrium"),
])
def test_bad_structures_are_named(fields, message):
  with pytest.raises(UserError, match=message):
    SweepSettings.from_config(set_fields(load_config(TINY), {'data.source': 'folder',
                                                             'data.root': '/x', **fields}))


def test_binary_settings_are_as_before():
  s = SweepSettings.from_config(load_config(TINY))
  assert (s.structures, s.label_values, s.model.out_channels) == (structures.BINARY, None, 1)
  assert data.structures_of('busi') == (structures.BINARY, None)


def test_a_new_head_is_trained_by_every_pretrained_run():
  s = SweepSettings.from_config(set_fields(load_config(TINY), {'data.source': 'cardiac'}))
  for run in s.runs():
    first = [stage[0] for stage in run.schedule.stages]
    if run.init == 'pretrained':
      assert all(rule == NEW_HEAD_RULE for rule in first), run.name
    else:
      assert NEW_HEAD_RULE not in first, run.name
  binary = SweepSettings.from_config(load_config(TINY))
  assert not any(e.new_head for e in binary.experiments)
  contracting = next(r for r in binary.runs() if r.base == 'contracting')
  assert [r.pattern for r in contracting.schedule.stages[0]] == ['enc.*|bottleneck', '.*']


def test_the_race_may_rank_on_one_structure():
  fields = {'data.source': 'cardiac', 'race.enabled': True, 'grid.seed': ()}
  s = SweepSettings.from_config(set_fields(load_config(TINY), {**fields,
                                                               'race.metric': 'dice:wall'}))
  assert s.race.metric == 'dice:wall'
  runs = s.runs()[:2]
  rows = {r.name: [{'seed': r.seed, 'image_id': 'a', 'dice': 0.9, 'dice:wall': 0.4}]
          for r in runs}
  frame = _race_frame(rows, {r.name: r.base for r in runs}, runs, s.race.metric)
  assert list(frame['dice']) == [0.4, 0.4]
  with pytest.raises(UserError, match="'race.metric' is 'dice:lesion'; valid choices: dice, "
                                      'dice:cavity, dice:wall, dice:atrium'):
    SweepSettings.from_config(set_fields(load_config(TINY), {**fields,
                                                             'race.metric': 'dice:lesion'}))
