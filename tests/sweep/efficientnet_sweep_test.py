"""A tiny sweep on the EfficientNet U-Net from a weights file under timm's names."""

import os

import numpy as np
import pytest
from flax import nnx
from repo import CONFIGS
from safetensors.numpy import save_file
from torch_state import random_state

from unet_jax import efficientnet
from unet_jax.errors import UserError
from unet_jax.files import read_jsonl
from unet_jax.model import UNetSpec, split_model
from unet_jax.sweep import checkpoint
from unet_jax.sweep.run import run_sweep
from unet_jax.sweep.settings import SweepSettings, load_config

CHANNELS = (16, 8, 8, 4, 4)
SPEC = UNetSpec(encoder='efficientnet_b0', decoder_channels=CHANNELS)


def _write_weights(path: str) -> dict[str, np.ndarray]:
  """Random efficientnet_b0 tensors under timm's names and shapes (RGB stem, head)."""
  _, params, stats = split_model(nnx.eval_shape(
      lambda: efficientnet.EfficientNetUNet(SPEC, nnx.Rngs(0))))
  state = random_state(params, stats, efficientnet.ENCODER_BLOCKS,
                       lambda p: efficientnet.torch_name(p, 'timm'), np.random.default_rng(3),
                       rgb_stem='stem/conv/kernel')
  state['conv_head.weight'] = np.zeros((1280, 320, 1, 1), np.float32)
  state['classifier.weight'] = np.zeros((1000, 1280), np.float32)
  save_file(state, path)
  return state


def _config():
  config = load_config(os.path.join(CONFIGS, 'default.py') + ':tiny')
  config.model.encoder = 'efficientnet_b0'
  config.model.decoder_channels = CHANNELS
  config.image_size = 32
  return config


def test_adapters_default_to_every_block_but_the_head():
  config = _config()
  config.model.adapter_rank = 2
  s = SweepSettings.from_config(config)
  assert s.model.adapter_blocks == ('stem|stage1|stage2|stage3|stage4|stage5|stage6|stage7|'
                                    'dec5|dec4|dec3|dec2|dec1')
  config.model.adapter_rank = 5  # dec1's first convolution: 3 x 3 x 4 inputs, 4 outputs
  with pytest.raises(UserError, match="'model.adapter_rank' is 5; valid: 1 to 4"):
    SweepSettings.from_config(config)


def test_sweep_from_a_timm_file(tmp_path):
  weights = str(tmp_path / 'efficientnet_b0.safetensors')
  state = _write_weights(weights)
  config = _config()
  config.only = 'full,head'
  config.grid.seed = (0,)
  config.finetune.steps = config.chunk_steps = 2
  config.executor = 'per_experiment'
  config.data.val_fraction = 0.0
  config.evaluation.norm_check = False
  config.finetune.frozen_norm = 'inference'
  config.pretrain.source = 'torchvision'
  config.pretrain.weights = weights
  s = SweepSettings.from_config(config)
  assert [r.as_list() for r in s.experiments[1].schedule.stages[0]] == [['head', 'train'],
                                                                        ['.*', 'freeze']]
  workdir = str(tmp_path / 'sweep')
  summaries = run_sweep(config, workdir, progress=False)
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  assert {r['experiment'] for r in rows} == {'full', 'head'}
  assert len(rows) == 2 * summaries[0].test_images
  assert all(0.0 <= r['dice'] <= 1.0 for r in rows)
  # The frozen encoder of 'head' is the file's: a depthwise kernel, a squeeze-excitation
  # bias, running statistics, and the RGB stem summed for grey input.
  params, stats = checkpoint.load_weights(os.path.join(workdir, 'experiments', 'head',
                                                       'weights'))
  np.testing.assert_array_equal(params['stage3']['1']['conv_dw']['kernel'],
                                state['blocks.2.1.conv_dw.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['stage6']['3']['se']['conv_expand']['bias'],
                                state['blocks.5.3.se.conv_expand.bias'])
  np.testing.assert_array_equal(stats['stage7']['0']['bn3']['var'],
                                state['blocks.6.0.bn3.running_var'])
  np.testing.assert_allclose(params['stem']['conv']['kernel'],
                             state['conv_stem.weight'].transpose(2, 3, 1, 0).sum(2, keepdims=True),
                             rtol=1e-6)
  trained, _ = checkpoint.load_weights(os.path.join(workdir, 'experiments', 'full', 'weights'))
  assert not np.allclose(trained['stage3']['1']['conv_dw']['kernel'],
                         params['stage3']['1']['conv_dw']['kernel'])
