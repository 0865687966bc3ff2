"""Low-rank adapters on convolutions: zero start, merged = unmerged, only adapters train."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bundles import LR
from flax import nnx

from unet_jax import encoders, freeze
from unet_jax.engine.executors import make_bundle_chunk
from unet_jax.engine.step import BundleContext, init_experiment_state, make_setup, stack, unstack
from unet_jax.model import (
    UNetSpec,
    adapter_limit,
    apply_model,
    init_model,
    merge_adapters,
    split_model,
)
from unet_jax.schedules import Schedule

SPEC = UNetSpec(base_width=4, depth=2, norm='batch')
LORA = dataclasses.replace(SPEC, adapter_rank=2)
ADAPTER_RULES = (freeze.FreezeRule('enc.*|bottleneck|dec.*', 'train', 'adapter'),
                 freeze.FreezeRule('head', 'train'), freeze.FreezeRule('.*', 'freeze'))


def _images(n=4):
  rng = np.random.default_rng(0)
  images = rng.random((n, 16, 16, 1), np.float32)
  return images, (images > 0.5).astype(np.float32)


def _with_random_update(params, scale=0.3):
  rng = np.random.default_rng(1)
  def leaf(path, x):
    if freeze.path_str(path).endswith('lora_b'):
      return scale * rng.standard_normal(x.shape).astype(np.float32)
    return np.asarray(x)
  return jax.tree_util.tree_map_with_path(leaf, params)


def test_zero_initialised_adapters_leave_the_network_unchanged():
  graphdef0, params0, stats0 = init_model(SPEC, 0)
  graphdef1, params1, stats1 = init_model(LORA, 0)
  images, _ = _images()
  assert 'lora_a' in params1['enc1']['conv1'] and 'lora_a' not in params1['head']
  # The other weights are the same seed's network without adapters, bit for bit.
  assert merge_adapters(jax.tree.map(np.asarray, params1)).keys() == params0.keys()
  for a, b in zip(jax.tree.leaves(merge_adapters(jax.tree.map(np.asarray, params1))),
                  jax.tree.leaves(params0)):
    np.testing.assert_array_equal(a, b)
  for train in (False, True):
    l0, _ = apply_model(graphdef0, params0, stats0, images, train=train)
    l1, _ = apply_model(graphdef1, params1, stats1, images, train=train)
    np.testing.assert_array_equal(np.asarray(l0), np.asarray(l1))


def test_merged_kernel_equals_the_unmerged_forward():
  graphdef0, _, _ = init_model(SPEC, 0)
  graphdef1, start, stats1 = init_model(LORA, 0)
  params1 = _with_random_update(start)
  images, _ = _images()
  adapted, _ = apply_model(graphdef1, params1, stats1, images, train=False)
  merged, _ = apply_model(graphdef0, merge_adapters(params1), stats1, images, train=False)
  before, _ = apply_model(graphdef1, start, stats1, images, train=False)
  assert not np.allclose(np.asarray(adapted), np.asarray(before), atol=1e-3)
  np.testing.assert_allclose(np.asarray(adapted), np.asarray(merged), rtol=1e-5, atol=1e-5)
  # The im2col convolution gives the same network.
  graphdef_mm, _, _ = init_model(dataclasses.replace(LORA, conv='matmul'), 0)
  mm, _ = apply_model(graphdef_mm, params1, stats1, images, train=False)
  np.testing.assert_allclose(np.asarray(mm), np.asarray(adapted), rtol=1e-5, atol=1e-5)


def test_adapter_limit_is_the_smallest_adapted_kernel():
  assert adapter_limit(LORA) == (4, 'dec1')  # min(3 x 3 x 8, 4 outputs)
  assert adapter_limit(dataclasses.replace(LORA, adapter_blocks='bottleneck')) == (
      16, 'bottleneck')  # 16 outputs


def _float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _train(spec, params, stats, schedules, images, masks):
  setup = stack([make_setup(params, stats, sch, num_stages=1, learning_rate=LR,
                            weight_decay=0.0, seed_key=jax.random.key(3), frozen_norm='adapt',
                            train_index=np.arange(len(images)), index_length=len(images))
                 for sch in schedules])
  state = stack([init_experiment_state(params, stats)] * len(schedules))
  chunk = make_bundle_chunk(BundleContext(spec, 4), 'vmap', loop='host')
  return chunk(state, setup, images, masks, num_steps=3)[0]


def test_adapters_train_alone_and_plain_experiments_keep_them_zero():
  """An adapter experiment moves only its adapters and the head; a plain subset in
  the same bundle leaves its adapters at zero and trains as without them (float64,
  so that the two programs' different roundings stay far below the tolerance)."""
  images, masks = _images(8)
  schedules = [Schedule.constant(ADAPTER_RULES),
               Schedule.constant(freeze.preset_rules('full', SPEC.depth))]
  with jax.enable_x64(True):
    params, stats = _float64(init_model(LORA, 0)[1:])
    state = _train(LORA, params, stats, schedules, *_float64((images, masks)))
    params0, stats0 = _float64(init_model(SPEC, 0)[1:])
    plain = _train(SPEC, params0, stats0, schedules[1:], *_float64((images, masks)))
  paths = freeze.leaf_paths(params)
  lora, full = unstack(state, 0), unstack(state, 1)
  for path, p0, a, f in zip(paths, jax.tree.leaves(params), jax.tree.leaves(lora.params),
                            jax.tree.leaves(full.params)):
    trained_by_lora = path.endswith(('lora_a', 'lora_b')) or path.startswith('head/')
    assert np.array_equal(a, p0) != trained_by_lora, path
    if path.endswith(('lora_a', 'lora_b')):
      np.testing.assert_array_equal(f, p0)  # the plain subset leaves them as they were
  for a, b in zip(jax.tree.leaves(merge_adapters(full.params)),
                  jax.tree.leaves(unstack(plain, 0).params)):
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-6 * LR)


def test_rules_txt_says_why_adapters_stay_frozen():
  _, params, _ = init_model(LORA, 0)
  text = freeze.describe_labels(params, freeze.preset_rules('full', SPEC.depth))
  line = next(ln for ln in text.splitlines() if ln.startswith('enc1/conv1/lora_b'))
  assert 'freeze' in line and 'no rule names kind adapter' in line
  text = freeze.describe_labels(params, ADAPTER_RULES)
  line = next(ln for ln in text.splitlines() if ln.startswith('enc1/conv1/lora_b'))
  assert 'train' in line and "(kind adapter)" in line


PYRAMIDS = [UNetSpec(encoder='resnet18', decoder_channels=(16, 8, 8, 4, 4), adapter_rank=2,
                     adapter_blocks='.*'),
            UNetSpec(encoder='efficientnet_b0', decoder_channels=(16, 8, 8, 4, 4),
                     adapter_rank=2, adapter_blocks='.*')]


def _abstract(spec):
  """(graphdef, params, stats) with random leaves drawn by name, without running init."""
  network = encoders.network_module(spec.encoder).Network
  graphdef, params, stats = split_model(nnx.eval_shape(lambda: network(spec, nnx.Rngs(0))))
  rng = np.random.default_rng(3)
  def draw(path, x):  # He-scaled kernels keep the activations of a deep network in range
    name = freeze.path_str(path)
    if name.endswith('lora_b'):
      return jnp.zeros(x.shape, x.dtype)
    if name.endswith('kernel') or name.endswith('lora_a'):
      return jnp.asarray(rng.normal(0, (2 / np.prod(x.shape[:-1])) ** 0.5, x.shape), x.dtype)
    if name.endswith('var') or name.endswith('scale'):
      return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
    return jnp.asarray(rng.normal(0, 0.2, x.shape), x.dtype)
  return (graphdef, jax.tree_util.tree_map_with_path(draw, params),
          jax.tree_util.tree_map_with_path(draw, stats))


@pytest.mark.parametrize('spec', PYRAMIDS, ids=lambda s: s.encoder)
def test_pyramid_encoders_carry_adapters(spec):
  graphdef, params, stats = _abstract(spec)
  paths = set(freeze.leaf_paths(params))
  adapted = {p.rsplit('/', 1)[0] for p in paths if p.endswith('lora_a')}
  if spec.encoder == 'resnet18':
    assert {'stem/conv1', 'layer1/0/conv1', 'layer2/0/downsample/0', 'dec1/conv2'} <= adapted
  else:  # dense convolutions only: no depthwise, no squeeze-excitation
    assert {'stem/conv', 'stage2/0/conv_pw', 'stage2/0/conv_pwl', 'dec3/conv1'} <= adapted
    assert not any('conv_dw' in p or '/se/' in p for p in adapted)
  assert not any(p.startswith('head') for p in adapted)
  # Zero-initialised adapters: bitwise the network without them.
  network = encoders.network_module(spec.encoder).Network
  def compiled(**changes):
    graph, _, _ = split_model(nnx.eval_shape(
        lambda: network(dataclasses.replace(spec, **changes), nnx.Rngs(0))))
    return jax.jit(lambda p, s, x, train: apply_model(graph, p, s, x, train=train)[0],
                   static_argnames='train')
  adapted, plain = compiled(), compiled(adapter_rank=0)
  images = np.random.default_rng(4).random((2, 32, 32, 1), np.float32)
  plain_params = merge_adapters(jax.tree.map(np.asarray, params))
  np.testing.assert_array_equal(np.asarray(adapted(params, stats, images, train=False)),
                                np.asarray(plain(plain_params, stats, images, train=False)))
  # A random update: the merged kernels are the adapted network, in both convolution forms.
  updated = _with_random_update(params, scale=0.3)
  out = np.asarray(adapted(updated, stats, images, train=False))
  scale = np.abs(out).max()
  def close(other):
    return np.abs(np.asarray(other) - out).max() / scale < 1e-4
  assert not close(adapted(params, stats, images, train=False))
  assert close(plain(merge_adapters(updated), stats, images, train=False))
  if spec.encoder == 'resnet18':  # strided im2col with adapters (depthwise: efficientnet_test)
    assert close(compiled(conv='matmul')(updated, stats, images, train=False))


def test_resnet_adapters_draw_from_their_own_stream():
  spec = PYRAMIDS[0]
  _, with_adapters, _ = init_model(spec, 0)
  _, without, _ = init_model(dataclasses.replace(spec, adapter_rank=0), 0)
  merged = merge_adapters(jax.tree.map(np.asarray, with_adapters))
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(without)):
    np.testing.assert_array_equal(a, b)
  assert adapter_limit(spec) == (4, 'dec1')  # min(3 x 3 x 8, 4 outputs)
  assert adapter_limit(dataclasses.replace(spec, adapter_blocks='stem')) == (49, 'stem')
