"""The EfficientNet U-Net: widths, layout, weights under torchvision's and timm's names,
the matmul form, and parity with torchvision and timm (where they are installed)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from torch_state import random_state, randomise_batchnorm

from unet_jax import efficientnet
from unet_jax.decoder import Conv
from unet_jax.encoders import EFFICIENTNET, layout, layout_of_blocks
from unet_jax.errors import UserError
from unet_jax.freeze import leaf_paths, preset_rules
from unet_jax.model import UNetSpec, apply_model, norm_layer_tree, split_model

SPEC = UNetSpec(encoder='efficientnet_b0', in_channels=1, out_channels=1,
                decoder_channels=(16, 8, 8, 4, 4))
RGB = dataclasses.replace(SPEC, in_channels=3)
ENCODER = efficientnet.ENCODER_BLOCKS


def _abstract(spec):
  """(graphdef, params, stats) of ``spec``'s model with zero leaves, built without init."""
  graphdef, params, stats = split_model(nnx.eval_shape(
      lambda: efficientnet.EfficientNetUNet(spec, nnx.Rngs(0))))
  def zeros(tree):
    return jax.tree.map(lambda a: jnp.asarray(np.zeros(a.shape, a.dtype)), tree)
  return graphdef, zeros(params), zeros(stats)


@pytest.mark.parametrize('encoder, widths, blocks', [
    # torchvision's efficientnet_b*: the channels of features[1, 2, 3, 5, 7] and the
    # MBConv blocks of features[1..7].
    ('efficientnet_b0', (16, 24, 40, 112, 320), 16),
    ('efficientnet_b1', (16, 24, 40, 112, 320), 23),
    ('efficientnet_b2', (16, 24, 48, 120, 352), 23),
    ('efficientnet_b3', (24, 32, 48, 136, 384), 26),
    ('efficientnet_b4', (24, 32, 56, 160, 448), 32),
])
def test_widths_and_depths_are_torchvisions(encoder, widths, blocks):
  spec = UNetSpec(encoder=encoder)
  assert efficientnet.encoder_widths(spec) == widths
  assert sum(n for *_, n in efficientnet.stages(spec)) == blocks


def test_blocks_layout_and_presets():
  _, params, stats = _abstract(SPEC)
  assert set(params) == set(SPEC.block_names()) and SPEC.block_names() == EFFICIENTNET.flow
  assert layout(SPEC) is EFFICIENTNET and layout_of_blocks(SPEC.block_names()) is EFFICIENTNET
  assert set(stats) == set(ENCODER) | {'dec5', 'dec4', 'dec3', 'dec2', 'dec1'}
  assert EFFICIENTNET.groups('depth') == [
      ['dec1', 'head'], ['stem', 'stage1', 'dec2'], ['stage2', 'dec3'], ['stage3', 'dec4'],
      ['stage4', 'stage5', 'dec5'], ['stage6', 'stage7']]
  assert preset_rules('shallow', EFFICIENTNET)[0].pattern == 'stem|stage1|dec2|dec1'
  assert EFFICIENTNET.blocks('deep') == ('stage4', 'stage5', 'stage6', 'stage7', 'dec5')
  paths = set(leaf_paths(params))
  # Expansion 1 (stage1) has no conv_pwl; the depthwise kernel is (k, k, 1, channels).
  assert {'stage1/0/conv_dw/kernel', 'stage1/0/se/conv_reduce/bias', 'stage1/0/conv_pw/kernel',
          'stage2/1/conv_pwl/kernel', 'stem/conv/kernel', 'head/bias'} <= paths
  assert not any(p.startswith('stage1/0/conv_pwl') for p in paths)
  assert params['stage3']['0']['conv_dw']['kernel'].shape == (5, 5, 1, 144)


@pytest.mark.parametrize('path, torchvision, timm', [
    (('stem', 'conv', 'kernel'), 'features.0.0.weight', 'conv_stem.weight'),
    (('stem', 'bn', 'var'), 'features.0.1.running_var', 'bn1.running_var'),
    (('stage1', '0', 'conv_dw', 'kernel'), 'features.1.0.block.0.0.weight',
     'blocks.0.0.conv_dw.weight'),
    (('stage1', '0', 'se', 'conv_reduce', 'bias'), 'features.1.0.block.1.fc1.bias',
     'blocks.0.0.se.conv_reduce.bias'),
    (('stage2', '0', 'conv_dw', 'kernel'), 'features.2.0.block.1.0.weight',
     'blocks.1.0.conv_dw.weight'),
    (('stage2', '1', 'se', 'conv_expand', 'kernel'), 'features.2.1.block.2.fc2.weight',
     'blocks.1.1.se.conv_expand.weight'),
    (('stage7', '0', 'bn3', 'scale'), 'features.7.0.block.3.1.weight',
     'blocks.6.0.bn3.weight'),
])
def test_torch_names(path, torchvision, timm):
  assert efficientnet.torch_name(path, 'torchvision') == torchvision
  assert efficientnet.torch_name(path, 'timm') == timm


def _state(params, stats, scheme, rng):
  """Random tensors under ``scheme``'s names and PyTorch's shapes, with the classifier,
  the final 1x1 convolution and the batch counters a whole checkpoint has."""
  state = random_state(params, stats, ENCODER, lambda p: efficientnet.torch_name(p, scheme),
                       rng, scale=1.0, rgb_stem='stem/conv/kernel')
  extra = (['features.8.0.weight', 'classifier.1.weight', 'features.0.1.num_batches_tracked']
           if scheme == 'torchvision' else ['conv_head.weight', 'bn2.weight', 'classifier.bias'])
  return {**state, **{k: np.zeros(3, np.float32) for k in extra}}


@pytest.mark.parametrize('scheme', efficientnet.SCHEMES)
def test_weights_under_either_names_fill_the_encoder_only(scheme):
  _, params, stats = _abstract(SPEC)
  state = _state(params, stats, scheme, np.random.default_rng(0))
  prefixed = {f'model.{k}': v for k, v in state.items()}
  new_params, new_stats = efficientnet.encoder_from_torchvision(prefixed, params, stats, SPEC,
                                                                source='b0.pth')
  dw = state[efficientnet.torch_name(('stage3', '1', 'conv_dw', 'kernel'), scheme)]
  np.testing.assert_array_equal(new_params['stage3']['1']['conv_dw']['kernel'],
                                dw.transpose(2, 3, 1, 0))
  stem = state[efficientnet.torch_name(('stem', 'conv', 'kernel'), scheme)]
  np.testing.assert_allclose(new_params['stem']['conv']['kernel'],  # the RGB filters summed
                             stem.transpose(2, 3, 1, 0).sum(axis=2, keepdims=True), rtol=1e-6)
  np.testing.assert_array_equal(
      new_stats['stage7']['0']['bn3']['mean'],
      state[efficientnet.torch_name(('stage7', '0', 'bn3', 'mean'), scheme)])
  assert not np.any(new_params['dec5']['conv1']['kernel'])  # the decoder is left as it was


@pytest.mark.parametrize('change, message', [
    (lambda s: {k: v for k, v in s.items() if k != 'features.4.2.block.1.1.bias'},
     "b0.pth (efficientnet_b0 encoder): missing 'features.4.2.block.1.1.bias'"),
    (lambda s: {**s, 'features.7.1.block.0.0.weight': np.zeros(1)},
     "unexpected 'features.7.1.block.0.0.weight'"),
    (lambda s: {**s, 'features.1.0.block.1.fc1.bias': np.zeros(9)},
     "'features.1.0.block.1.fc1.bias' has shape (9,), expected (8,)"),
    (lambda s: {'fc.weight': np.zeros(3)},
     "neither torchvision's names ('features.0.0.weight') nor timm's"),
])
def test_refusals_name_the_file_and_key(change, message):
  _, params, stats = _abstract(SPEC)
  state = change(_state(params, stats, 'torchvision', np.random.default_rng(1)))
  with pytest.raises(UserError) as e:
    efficientnet.encoder_from_torchvision(state, params, stats, SPEC, source='b0.pth')
  assert message in str(e.value)


def test_spec_refusals():
  with pytest.raises(UserError, match='not an EfficientNet encoder'):
    efficientnet.check_spec(UNetSpec(encoder='resnet18'))
  with pytest.raises(UserError, match='five positive integers'):
    efficientnet.check_spec(dataclasses.replace(SPEC, decoder_channels=(8, 8)))


@pytest.mark.parametrize('size, stride', [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_depthwise_convolution_pads_like_pytorch_and_matmul_matches(size, stride):
  rng = np.random.default_rng(4)
  weights = {'kernel': jnp.asarray(rng.standard_normal((size, size, 1, 6)), jnp.float32)}
  def conv(form):
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Conv(
        dataclasses.replace(SPEC, conv=form), 6, 6, size, stride=stride, groups=6,
        rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, weights)
  x = rng.standard_normal((2, 9, 9, 6)).astype(np.float32)
  # PyTorch's Conv2d(groups=6, padding=size // 2) written with lax in PyTorch's layout.
  want = jax.lax.conv_general_dilated(
      x.transpose(0, 3, 1, 2), np.transpose(weights['kernel'], (3, 2, 0, 1)), (stride, stride),
      [(size // 2, size // 2)] * 2, dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
      feature_group_count=6).transpose(0, 2, 3, 1)
  for form in ('xla', 'matmul'):
    np.testing.assert_allclose(conv(form)(x), want, rtol=1e-5, atol=1e-5, err_msg=form)


@pytest.mark.parametrize('encoder, library', [('efficientnet_b0', 'torchvision'),
                                              ('efficientnet_b2', 'torchvision'),
                                              ('efficientnet_b3', 'timm')])
def test_encoder_features_match_the_reference(encoder, library):
  """To float32 rounding, in evaluation mode; runs where torch and the library import
  (README "EfficientNet encoders" says how)."""
  torch = pytest.importorskip('torch', reason='torch is not installed: no parity check')
  try:
    reference = __import__(library)
  except Exception as e:  # noqa: BLE001 - a CUDA build's C extension fails on a CPU-only box
    pytest.skip(f'{library} does not import: {e}')
  torch.manual_seed(0)
  if library == 'torchvision':
    net = getattr(reference.models, encoder)().eval()
  else:
    net = reference.create_model(encoder).eval()
  randomise_batchnorm(torch, net)
  spec = dataclasses.replace(RGB, encoder=encoder)
  graphdef, params, stats = _abstract(spec)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  params, stats = efficientnet.encoder_from_torchvision(state, params, stats, spec,
                                                        source=f'{encoder}.pth')
  x = np.random.default_rng(7).standard_normal((2, 64, 64, 3)).astype(np.float32)
  want, t = [], torch.from_numpy(x.transpose(0, 3, 1, 2))
  with torch.no_grad():
    if library == 'torchvision':
      stages = list(net.features[:8])
    else:
      stages = [torch.nn.Sequential(net.conv_stem, net.bn1)] + list(net.blocks)
    for i, stage in enumerate(stages):
      t = stage(t)
      if i in efficientnet.TAPS:
        want.append(t)
  encode = jax.jit(lambda p, s, x: nnx.merge(graphdef, p, s).encode(x, train=False))
  got = encode(params, stats, x)
  for name, a, b in zip(efficientnet.TAPS, got, want):
    b = b.numpy().transpose(0, 2, 3, 1)
    assert a.shape == b.shape, name
    scale = max(1.0, float(np.abs(b).max()))
    assert float(np.abs(np.asarray(a) - b).max()) / scale < 1e-4, f'stage{name}'


def test_running_flags_reach_every_batchnorm():
  """Every layer flagged to its running statistics trains as it evaluates and keeps its
  statistics; unflagged, every layer adapts (the flags of unet_jax.model's docstring)."""
  graphdef, params, stats = _abstract(SPEC)
  rng = np.random.default_rng(6)
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.3, a.shape), a.dtype), params)
  stats = jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) if p[-1].key == 'var'
                               else rng.normal(0, 0.2, a.shape), a.dtype), stats)
  x = rng.random((2, 32, 32, 1), np.float32)
  flags = jax.tree.map(lambda _: True, norm_layer_tree(stats))
  run = jax.jit(lambda p, s, x: apply_model(graphdef, p, s, x, train=True, running=flags))
  logits, kept = run(params, stats, x)
  evaluated, _ = jax.jit(lambda p, s, x: apply_model(graphdef, p, s, x, train=False))(
      params, stats, x)
  np.testing.assert_allclose(logits, evaluated, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(stats)):
    np.testing.assert_array_equal(a, b)
  _, adapted = jax.jit(lambda p, s, x: apply_model(graphdef, p, s, x, train=True))(
      params, stats, x)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(adapted),
                                                    jax.tree.leaves(stats))]
  assert all(moved), f'{moved.count(False)} statistics did not move'
