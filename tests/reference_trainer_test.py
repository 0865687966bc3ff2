import jax
import numpy as np
import pytest
from reference_trainer import init_state, make_optimizer, make_train_chunk

from unet_jax.freeze import freeze_labels, norm_masks, preset_rules, trainable_mask
from unet_jax.model import UNetSpec, init_model

STEPS = 3


def _train(spec, preset, frozen_norm='inference'):
  graphdef, params, stats = init_model(spec, seed=0)
  rules = preset_rules(preset, spec.depth)
  optimizer = make_optimizer(freeze_labels(params, rules), 1e-2)
  norm = norm_masks(stats, params, rules, frozen_norm)
  chunk = make_train_chunk(graphdef, optimizer, norm.update, batch_size=4,
                           running=norm.running)
  rng = np.random.default_rng(0)
  images = rng.random((8, 16, 16, 1), np.float32)
  masks = (images > 0.5).astype(np.float32)
  state, losses = chunk(init_state(params, stats, optimizer), images, masks,
                        jax.random.key(0), num_steps=STEPS)
  return params, stats, state, losses, rules


@pytest.mark.parametrize('preset', ['contracting', 'expanding', 'head', 'shallow'])
def test_frozen_leaves_bit_identical_and_trained_leaves_move(preset):
  spec = UNetSpec(base_width=4, depth=2, norm='batch')
  params, _, state, losses, rules = _train(spec, preset)
  assert int(state.step) == STEPS and losses.shape == (STEPS,)
  mask = trainable_mask(params, rules)
  flat_mask = jax.tree.leaves(mask)
  assert any(flat_mask) and not all(flat_mask)
  for before, after, trained in zip(jax.tree.leaves(params),
                                    jax.tree.leaves(state.params), flat_mask):
    if trained:
      assert not np.array_equal(before, after)
    else:
      np.testing.assert_array_equal(before, after)


def test_frozen_blocks_keep_batchnorm_statistics_under_inference():
  spec = UNetSpec(base_width=4, depth=2, norm='batch')
  _, stats, state, _, _ = _train(spec, 'contracting', 'inference')
  # The encoder's statistics move, the decoder's stay.
  assert not np.array_equal(stats['enc1']['norm1']['mean'],
                            state.stats['enc1']['norm1']['mean'])
  np.testing.assert_array_equal(stats['dec1']['block']['norm1']['mean'],
                                state.stats['dec1']['block']['norm1']['mean'])
  np.testing.assert_array_equal(stats['dec2']['block']['norm2']['var'],
                                state.stats['dec2']['block']['norm2']['var'])


def test_frozen_blocks_statistics_follow_the_data_under_adapt():
  spec = UNetSpec(base_width=4, depth=2, norm='batch')
  _, stats, state, _, _ = _train(spec, 'contracting', 'adapt')
  assert not np.array_equal(stats['dec1']['block']['norm1']['mean'],
                            state.stats['dec1']['block']['norm1']['mean'])


@pytest.mark.parametrize('norm', ['group', 'none'])
def test_other_norms_train(norm):
  spec = UNetSpec(base_width=4, depth=2, norm=norm, group_size=2)
  params, stats, state, losses, _ = _train(spec, 'full')
  assert stats == {} and np.all(np.isfinite(losses))
  assert not np.array_equal(params['head']['kernel'], state.params['head']['kernel'])


def test_block_names_and_shapes(tiny_spec, tiny_model):
  _, params, _ = tiny_model
  assert tiny_spec.block_names() == ('enc1', 'enc2', 'bottleneck', 'dec2', 'dec1', 'head')
  assert set(params) == set(tiny_spec.block_names())
  assert params['dec1']['up']['kernel'].shape == (2, 2, 8, 4)
  assert params['head']['kernel'].shape == (1, 1, 4, 1)
