"""The sweep on the ResNet U-Net: settings, and a tiny sweep from a torchvision weights file."""

import hashlib
import json
import os

import jax
import numpy as np
import pytest
import tqdm
from flax import nnx
from repo import CONFIGS, set_fields
from safetensors.numpy import save_file
from torch_state import random_state

from unet_jax import resnet
from unet_jax.errors import UserError
from unet_jax.files import read_jsonl
from unet_jax.freeze import leaf_paths
from unet_jax.model import UNetSpec, split_model
from unet_jax.sweep import checkpoint
from unet_jax.sweep.pretraining import pretrain, pretrain_steps
from unet_jax.sweep.run import run_sweep
from unet_jax.sweep.settings import SweepSettings, load_config
from unet_jax.workdir import WorkdirPaths

CHANNELS = (16, 8, 8, 4, 4)


def _write_weights(path: str) -> dict[str, np.ndarray]:
  """Random resnet18 tensors under torchvision's names and shapes (RGB stem, fc, counters)."""
  spec = UNetSpec(encoder='resnet18', in_channels=3, decoder_channels=CHANNELS)
  _, params, stats = split_model(nnx.eval_shape(lambda: resnet.ResNetUNet(spec, nnx.Rngs(0))))
  state = random_state(params, stats, resnet.ENCODER_BLOCKS, resnet.torch_name,
                       np.random.default_rng(7), scale=0.05)
  for name in [n for n in state if n.endswith('.running_mean')]:
    # torchvision counts batches per BatchNorm layer
    state[name.replace('running_mean', 'num_batches_tracked')] = np.array(3, np.int64)
  state['fc.weight'] = np.zeros((10, 512), np.float32)
  state['fc.bias'] = np.zeros(10, np.float32)
  save_file(state, path)
  return state


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('weights') / 'resnet18.safetensors')
  return path, _write_weights(path)


def resnet_config(weights_path: str = '', **overrides):
  """configs/default.py:tiny on a resnet18 U-Net: three experiments, one seed, two steps."""
  config = load_config(os.path.join(CONFIGS, 'default.py') + ':tiny')
  config.model.encoder = 'resnet18'
  config.model.decoder_channels = CHANNELS
  config.image_size = 32
  config.only = 'full,contracting,head'
  config.grid.seed = (0,)
  config.finetune.steps = config.chunk_steps = 2
  # One program for the three (masks as data); no validation or re-estimation programs.
  config.executor = 'per_experiment'
  config.data.val_fraction = 0.0
  config.evaluation.norm_check = False
  # Frozen layers keep their statistics, so the frozen encoder stays the file's.
  config.finetune.frozen_norm = 'inference'
  if weights_path:
    config.pretrain.source = 'torchvision'
    config.pretrain.weights = weights_path
  return set_fields(config, overrides)


def test_settings_read_the_resnet_and_its_weights(weights):
  s = SweepSettings.from_config(resnet_config(weights[0]))
  assert s.model.encoder == 'resnet18' and s.model.decoder_channels == CHANNELS
  assert s.pretrain_weights == weights[0] and s.pretrain_grey == 'sum'
  assert pretrain_steps(s) == 0  # the progress bar counts no pretraining steps
  assert [r.as_list() for r in s.experiments[1].schedule.stages[0]] == [
      ['stem|layer1|layer2|layer3|layer4', 'train'], ['.*', 'freeze']]
  # Without a weights file the whole ResNet U-Net pretrains on dead leaves.
  s = SweepSettings.from_config(resnet_config())
  assert s.pretrain_source == 'dead_leaves' and pretrain_steps(s) == s.pretrain.steps
  # Configs written before the encoder existed are the paper's U-Net.
  config = load_config(os.path.join(CONFIGS, 'default.py') + ':tiny')
  del config.model['encoder'], config.model['decoder_channels']
  del config.pretrain['weights'], config.pretrain['grey']
  s = SweepSettings.from_config(config)
  assert s.model.encoder == 'unet' and s.pretrain_weights == ''


@pytest.mark.parametrize('overrides, message', [
    ({'model.encoder': 'vgg16'}, "'model.encoder' is 'vgg16'; valid choices: unet, resnet18, "
                                 'resnet34, resnet50, efficientnet_b0, '),
    ({'image_size': 48}, "'image_size': image size 48 must be divisible by 32 (the resnet18"),
    ({'model.decoder_channels': (16, 8, 8, 4)}, "'model.decoder_channels' must be five "
                                                'integers >= 1'),
    ({'model.encoder': 'unet', 'pretrain.source': 'torchvision'},
     "'pretrain.source' is 'torchvision', which loads an encoder from a weights file; "
     "model.encoder is 'unet'"),
    ({'pretrain.source': 'torchvision'}, "needs config field 'pretrain.weights'"),
    ({'pretrain.source': 'torchvision', 'pretrain.weights': '/nonexistent/r18.pth'},
     "config field 'pretrain.weights': no file /nonexistent/r18.pth"),
    ({'pretrain.weights': 'WEIGHTS'}, "'pretrain.weights' is read only with "
                                      "pretrain.source='torchvision'"),
    ({'pretrain.source': 'torchvision', 'pretrain.weights': 'WEIGHTS', 'pretrain.grey': 'repeat'},
     "'pretrain.grey' is 'repeat' (the grey image repeated over the RGB stem's channels), "
     'which needs model.in_channels=3'),
    ({'pretrain.grey': 'mean'}, "'pretrain.grey' is 'mean'; valid choices: sum, repeat"),
])
def test_bad_resnet_settings_are_named(weights, overrides, message):
  overrides = {k: weights[0] if v == 'WEIGHTS' else v for k, v in overrides.items()}
  with pytest.raises(UserError) as e:
    SweepSettings.from_config(resnet_config(**overrides))
  assert message in str(e.value)


@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory, weights):
  workdir = str(tmp_path_factory.mktemp('resnet_sweep'))
  summaries = run_sweep(resnet_config(weights[0]), workdir, progress=False)
  return workdir, summaries


def _by_path(tree) -> dict[str, np.ndarray]:
  return {p: np.asarray(x) for p, x in zip(leaf_paths(tree), jax.tree.leaves(tree))}


def _from_file(state: dict, path: str) -> np.ndarray:
  """The file's tensor for a leaf, as the model holds it (HWIO; the RGB stem summed)."""
  value = state[resnet.torch_name(tuple(path.split('/')))]
  if value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)
    if path == 'stem/conv1/kernel':
      value = value.sum(axis=2, keepdims=True)
  return value


def test_frozen_encoder_is_the_files(sweep_dir, weights):
  workdir, _ = sweep_dir
  state = weights[1]
  params, stats = checkpoint.load_weights(os.path.join(workdir, 'experiments', 'head',
                                                       'weights'))
  encoder = {p: v for p, v in {**_by_path(params), **_by_path(stats)}.items()
             if p.split('/')[0] in resnet.ENCODER_BLOCKS}
  assert len(encoder) == len([k for k in state if not k.startswith('fc.')
                              and not k.endswith('num_batches_tracked')])
  for path, value in encoder.items():
    np.testing.assert_array_equal(value, _from_file(state, path), err_msg=path)
  # The trained encoder moved.
  trained, _ = checkpoint.load_weights(os.path.join(workdir, 'experiments', 'contracting',
                                                    'weights'))
  assert not np.allclose(_by_path(trained)['layer1/0/conv1/kernel'],
                         _from_file(state, 'layer1/0/conv1/kernel'))


def test_pretraining_is_the_file_and_fingerprints_it(sweep_dir, weights):
  workdir, _ = sweep_dir
  with open(os.path.join(workdir, 'pretrain', 'meta.json')) as f:
    meta = json.load(f)
  with open(weights[0], 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert meta['fingerprint']['weights'] == {'sha256': digest,
                                            'bytes': os.path.getsize(weights[0])}
  assert meta['fingerprint']['source'] == 'torchvision' and meta['losses'] == []
  params, _ = checkpoint.load_weights(os.path.join(workdir, 'pretrain', 'weights'))
  np.testing.assert_array_equal(_by_path(params)['layer3/1/bn2/scale'],
                                _from_file(weights[1], 'layer3/1/bn2/scale'))


def test_pretraining_from_the_file_is_reused(sweep_dir, weights, capsys):
  workdir, _ = sweep_dir
  settings = SweepSettings.from_config(resnet_config(weights[0], **{'finetune.steps': 3}))
  # No initial weights: a reused pretraining reads them from the work directory.
  params = pretrain(settings, None, WorkdirPaths(workdir), tqdm.tqdm(disable=True)).params
  assert 'reusing pretrained weights' in capsys.readouterr().err
  np.testing.assert_array_equal(_by_path(params)['layer1/0/conv1/kernel'],
                                _from_file(weights[1], 'layer1/0/conv1/kernel'))


def test_results_summaries_and_report(sweep_dir):
  workdir, summaries = sweep_dir
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  assert {r['experiment'] for r in rows} == {'full', 'contracting', 'head'}
  assert len(rows) == 3 * summaries[0].test_images
  assert all(0.0 <= r['dice'] <= 1.0 for r in rows)
  contracting = summaries[[s.name for s in summaries].index('contracting')]
  assert set(contracting.schedule[0].trained) == set(resnet.ENCODER_BLOCKS)
  assert tuple(contracting.schedule[0].block_fractions) == UNetSpec(
      encoder='resnet18').block_names()
  with open(os.path.join(workdir, 'config.json')) as f:
    model = json.load(f)['model']
  assert model['encoder'] == 'resnet18' and model['decoder_channels'] == list(CHANNELS)
  assert os.path.isfile(os.path.join(workdir, 'report.md'))
