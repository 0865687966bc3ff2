"""The ResNet U-Net: layout, BatchNorm modes, torchvision weights, parity with torchvision."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from torch_state import randomise_batchnorm

from unet_jax import resnet
from unet_jax.errors import UserError
from unet_jax.freeze import leaf_paths
from unet_jax.model import UNetSpec, apply_model, norm_layer_tree, split_model

SPEC = UNetSpec(encoder='resnet18', in_channels=1, out_channels=2,
                decoder_channels=(16, 8, 8, 4, 4))
RGB = dataclasses.replace(SPEC, in_channels=3)
ENCODER = resnet.ENCODER_BLOCKS


def _abstract(spec):
  """(graphdef, params, stats) of ``spec``'s model with zero leaves, built without running init.

  Leaves are JAX arrays: training writes BatchNorm statistics into numpy leaves in place.
  """
  graphdef, params, stats = split_model(nnx.eval_shape(lambda: resnet.ResNetUNet(
      spec, nnx.Rngs(0))))
  def zeros(tree):
    return jax.tree.map(lambda a: jnp.asarray(np.zeros(a.shape, a.dtype)), tree)
  return graphdef, zeros(params), zeros(stats)


def _random(tree, rng):
  """Leaves drawn by kind: He-scaled kernels, BatchNorm leaves unlike any batch's."""
  def draw(path, x):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(0, (2 / np.prod(x.shape[:-1])) ** 0.5, x.shape)
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, x.shape)
    else:
      value = rng.normal(0, 0.2, x.shape)
    return jnp.asarray(value, x.dtype)
  return jax.tree_util.tree_map_with_path(draw, tree)


@pytest.fixture(scope='module')
def model():
  """Random weights and running statistics, as after pretraining (init is slow to compile)."""
  graphdef, params, stats = _abstract(SPEC)
  rng = np.random.default_rng(1)
  return graphdef, _random(params, rng), _random(stats, rng)


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(2).random((2, 32, 32, 1), np.float32)


def _torchvision_state(rng, in_channels=3, blocks=(2, 2, 2, 2), expansion=1):
  """A state dict named and shaped as torchvision's ResNet (written out independently)."""
  state = {}
  def conv(name, cout, cin, size):
    state[f'{name}.weight'] = rng.normal(0, (2 / (cin * size * size)) ** 0.5,
                                         (cout, cin, size, size)).astype(np.float32)
  def bn(name, c):
    state.update({f'{name}.weight': rng.uniform(0.5, 1.5, c).astype(np.float32),
                  f'{name}.bias': rng.normal(0, 0.1, c).astype(np.float32),
                  f'{name}.running_mean': rng.normal(0, 0.1, c).astype(np.float32),
                  f'{name}.running_var': rng.uniform(0.5, 1.5, c).astype(np.float32),
                  f'{name}.num_batches_tracked': np.array(7, np.int64)})
  conv('conv1', 64, in_channels, 7)
  bn('bn1', 64)
  cin = 64
  for level, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
    cout = planes * expansion
    for i in range(count):
      name = f'layer{level}.{i}'
      sizes = [(planes, cin, 3), (planes, planes, 3)] if expansion == 1 else [
          (planes, cin, 1), (planes, planes, 3), (cout, planes, 1)]
      for k, shape in enumerate(sizes, start=1):
        conv(f'{name}.conv{k}', *shape)
        bn(f'{name}.bn{k}', shape[0])
      if i == 0 and (level > 1 or cin != cout):
        conv(f'{name}.downsample.0', cout, cin, 1)
        bn(f'{name}.downsample.1', cout)
      cin = cout
  state['fc.weight'] = np.zeros((10, cin), np.float32)
  state['fc.bias'] = np.zeros(10, np.float32)
  return state


@pytest.fixture(scope='module')
def torch_state():
  return _torchvision_state(np.random.default_rng(3))


def _flags(stats, value):
  return jax.tree.map(lambda _: value, norm_layer_tree(stats))


def _encoder_only(stats):
  """Flags True (running statistics) for the encoder, False for the decoder."""
  return {b: _flags(s, b in ENCODER) for b, s in stats.items()}


@pytest.fixture(scope='module')
def eager_runs(model, images):
  """Op by op: evaluation, and training with the encoder on running statistics."""
  graphdef, params, stats = model
  logits, _ = apply_model(graphdef, params, stats, images, train=False)
  frozen = apply_model(graphdef, params, stats, images, train=True,
                       running=_encoder_only(stats))
  return logits, frozen


def test_output_shape_block_names_and_paths(model, eager_runs):
  _, params, stats = model
  assert eager_runs[0].shape == (2, 32, 32, 2)
  assert SPEC.block_names() == ENCODER + ('dec5', 'dec4', 'dec3', 'dec2', 'dec1', 'head')
  assert sorted({p.split('/')[0] for p in leaf_paths(params)}) == sorted(SPEC.block_names())
  paths = set(leaf_paths(params))
  for path in ['stem/conv1/kernel', 'stem/bn1/scale', 'stem/bn1/bias', 'layer1/0/conv1/kernel',
               'layer1/1/bn2/scale', 'layer2/0/downsample/0/kernel',
               'layer2/0/downsample/1/scale', 'layer4/1/conv2/kernel', 'dec5/conv1/kernel',
               'dec1/norm2/bias', 'head/kernel', 'head/bias']:
    assert path in paths, path
  assert not any(p.startswith('layer1/0/downsample') or p.endswith('conv1/bias')
                 for p in paths)  # torchvision's layer1 keeps 64 channels; no conv bias
  assert 'layer2/0/downsample/1/mean' in leaf_paths(stats)
  shapes = {p: x.shape for p, x in zip(leaf_paths(params), jax.tree.leaves(params))}
  assert shapes['stem/conv1/kernel'] == (7, 7, 1, 64)
  assert shapes['dec5/conv1/kernel'] == (3, 3, 512 + 256, 16)
  assert shapes['dec2/conv1/kernel'] == (3, 3, 8 + 64, 4)
  assert shapes['dec1/conv1/kernel'] == (3, 3, 4, 4)
  assert shapes['head/kernel'] == (3, 3, 4, 2)


def _same_by_block(a, b):
  return {k: [np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a[k]), jax.tree.leaves(b[k]))]
          for k in a}


def test_every_layer_on_running_statistics_trains_as_it_evaluates(model, images, eager_runs):
  graphdef, params, stats = model
  logits, new_stats = apply_model(graphdef, params, stats, images, train=True,
                                  running=_flags(stats, True))
  np.testing.assert_array_equal(logits, eager_runs[0])
  assert all(all(same) for same in _same_by_block(new_stats, stats).values())
  batch_logits, batch_stats = apply_model(graphdef, params, stats, images, train=True)
  assert not np.allclose(batch_logits, eager_runs[0])
  assert not any(any(same) for same in _same_by_block(batch_stats, stats).values())


def test_flags_choose_statistics_layer_by_layer(model, images, eager_runs):
  graphdef, params, stats = model
  same = _same_by_block(eager_runs[1][1], stats)
  assert all(all(same[b]) for b in ENCODER) and not any(any(same[b]) for b in same
                                                       if b not in ENCODER)
  running = _encoder_only(stats)
  running['layer2']['0']['downsample']['1'] = False  # one layer adapts, the others keep
  _, new_stats = apply_model(graphdef, params, stats, images, train=True, running=running)
  changed = [p for p, a, b in zip(leaf_paths(new_stats['layer2']),
                                  jax.tree.leaves(new_stats['layer2']),
                                  jax.tree.leaves(stats['layer2'])) if not np.array_equal(a, b)]
  assert changed == ['0/downsample/1/mean', '0/downsample/1/var']
  net = nnx.merge(graphdef, params, stats, copy=True)
  train_features = net.encode(images, train=True, running=_encoder_only(stats))
  for a, b in zip(train_features, net.encode(images, train=False)):
    np.testing.assert_array_equal(a, b)


def test_traced_flags_under_vmap_over_stacked_experiments(model, images, eager_runs):
  graphdef, params, stats = model
  def step(p, s, flags):
    return apply_model(graphdef, p, s, images, train=True, running=flags)
  stack = lambda *trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)  # noqa: E731
  frozen = jax.tree.map(np.float32, _encoder_only(stats))  # traced 0/1 flags
  other = jax.tree.map(lambda x: 1.1 * x, params)
  logits, new_stats = jax.jit(jax.vmap(step))(stack(params, other), stack(stats, stats),
                                              stack(frozen, _flags(frozen, 0.0)))
  # Experiment 0 is the eager run with Python flags, up to the order of float operations.
  want_logits, want_stats = eager_runs[1]
  np.testing.assert_allclose(logits[0], want_logits, rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(new_stats), jax.tree.leaves(want_stats)):
    np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5)
  for block in ENCODER:  # flagged layers keep their statistics bitwise
    for a, b in zip(jax.tree.leaves(new_stats[block]), jax.tree.leaves(stats[block])):
      np.testing.assert_array_equal(a[0], b)
  # Experiment 1 normalises every layer with batch statistics: the stem's adapt too.
  assert not np.allclose(logits[1], want_logits)
  assert not np.array_equal(new_stats['stem']['bn1']['mean'][1], stats['stem']['bn1']['mean'])


@pytest.mark.parametrize('size, stride', [(7, 2), (3, 2), (3, 1), (1, 2), (1, 1)])
def test_convolutions_pad_like_pytorch_and_matmul_matches(size, stride):
  rng = np.random.default_rng(4)
  weights = {'kernel': jnp.asarray(rng.standard_normal((size, size, 3, 5)), jnp.float32),
             'bias': jnp.asarray(rng.standard_normal(5), jnp.float32)}
  def conv(conv):
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: resnet.Conv(
        dataclasses.replace(SPEC, conv=conv), 3, 5, size, stride=stride, bias=True,
        rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, weights)
  x = rng.standard_normal((2, 10, 10, 3)).astype(np.float32)
  # PyTorch's Conv2d(padding=size // 2), written with lax in PyTorch's layout.
  want = jax.lax.conv_general_dilated(
      x.transpose(0, 3, 1, 2), np.transpose(weights['kernel'], (3, 2, 0, 1)), (stride, stride),
      [(size // 2, size // 2)] * 2, dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
  want = want.transpose(0, 2, 3, 1) + weights['bias']
  np.testing.assert_allclose(conv('xla')(x), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(conv('matmul')(x), want, rtol=1e-5, atol=1e-5)


def _convert(state, spec=SPEC, **kwargs):
  graphdef, params, stats = _abstract(spec)
  return (graphdef,) + resnet.encoder_from_torchvision(state, params, stats, spec,
                                                       source='r18.pth', **kwargs)


def test_torchvision_names_and_layouts(torch_state):
  graphdef, params, stats = _abstract(RGB)
  before = jax.tree.leaves(params['dec3'])
  params, stats = resnet.encoder_from_torchvision(torch_state, params, stats, RGB,
                                                  source='r18.pth')
  np.testing.assert_array_equal(params['layer2']['0']['downsample']['1']['scale'],
                                torch_state['layer2.0.downsample.1.weight'])
  np.testing.assert_array_equal(stats['layer3']['1']['bn2']['var'],
                                torch_state['layer3.1.bn2.running_var'])
  np.testing.assert_array_equal(stats['stem']['bn1']['mean'], torch_state['bn1.running_mean'])
  assert all(a is b for a, b in zip(jax.tree.leaves(params['dec3']), before))
  net = nnx.merge(graphdef, params, stats)
  x = np.random.default_rng(5).standard_normal((2, 32, 32, 64)).astype(np.float32)
  convs = [('conv1.weight', net.stem.conv1, 2, 3, 3), ('layer2.0.conv1.weight',
           net.layer2[0].conv1, 2, 1, 64), ('layer2.0.downsample.0.weight',
           net.layer2[0].downsample[0], 2, 0, 64), ('layer1.1.conv2.weight',
           net.layer1[1].conv2, 1, 1, 64)]
  for name, conv, stride, pad, cin in convs:
    want = jax.lax.conv_general_dilated(
        x[..., :cin].transpose(0, 3, 1, 2), torch_state[name], (stride, stride),
        [(pad, pad)] * 2, dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
    np.testing.assert_allclose(conv(x[..., :cin]), want.transpose(0, 2, 3, 1), rtol=1e-5,
                               atol=1e-4, err_msg=name)


def test_prefixed_checkpoint_and_grey_sum(torch_state):
  smp = {f'encoder.{k}': v for k, v in torch_state.items()}
  grey_graph, grey_params, grey_stats = _convert(smp)
  rgb_graph, rgb_params, rgb_stats = _abstract(RGB)
  rgb_params, rgb_stats = resnet.encoder_from_torchvision(
      torch_state, rgb_params, rgb_stats, RGB, source='r18.pth', grey='repeat')
  grey = np.random.default_rng(6).random((2, 32, 32, 1), np.float32)
  grey_stem = nnx.merge(grey_graph, grey_params, grey_stats).stem
  rgb_stem = nnx.merge(rgb_graph, rgb_params, rgb_stats).stem
  np.testing.assert_allclose(grey_stem(grey, train=False),
                             rgb_stem(np.repeat(grey, 3, axis=-1), train=False),
                             rtol=1e-5, atol=1e-5)


def _renamed(state, old, new):
  return {new if k == old else k: v for k, v in state.items()}


@pytest.mark.parametrize('change, message', [
    (lambda s: {k: v for k, v in s.items() if k != 'layer3.1.bn1.running_var'},
     r"r18.pth \(resnet18 encoder\): missing 'layer3.1.bn1.running_var'"),
    (lambda s: {**s, 'layer1.0.conv3.weight': np.zeros((256, 64, 1, 1), np.float32)},
     r"r18.pth \(resnet18 encoder\): unexpected 'layer1.0.conv3.weight'"),
    (lambda s: {**s, 'layer2.0.conv2.weight': np.zeros((128, 64, 3, 3), np.float32)},
     r"r18.pth \(resnet18 encoder\): 'layer2.0.conv2.weight' has shape \(128, 64, 3, 3\), "
     r'expected \(128, 128, 3, 3\)'),
    (lambda s: {**s, 'bn1.weight': np.zeros(32, np.float32)},
     r"'bn1.weight' has shape \(32,\), expected \(64,\)"),
    (lambda s: _renamed(s, 'layer1.0.bn1.weight', 'layer1.0.bn1.gamma'),
     "missing 'layer1.0.bn1.weight'"),
])
def test_refusals_name_the_file_encoder_and_key(torch_state, change, message):
  with pytest.raises(UserError, match=message):
    _convert(change(torch_state))


def test_grey_choices_refused_where_they_cannot_apply(torch_state):
  with pytest.raises(UserError, match='grey=repeat needs model.in_channels=3'):
    _convert(torch_state, grey='repeat')
  with pytest.raises(UserError, match="grey='mean' is not one of sum, repeat"):
    _convert(torch_state, grey='mean')
  two = dataclasses.replace(SPEC, in_channels=2)
  with pytest.raises(UserError, match=r"'conv1.weight' has shape \(64, 3, 7, 7\), expected "
                                      r'\(64, 2, 7, 7\)'):
    _convert(torch_state, spec=two)


def test_spec_and_image_size_refusals():
  resnet.check_image_size(SPEC, 64)
  resnet.check_image_size(SPEC, (32, 96))
  with pytest.raises(UserError, match='image size 48 must be divisible by 32'):
    resnet.check_image_size(SPEC, 48)
  with pytest.raises(UserError, match="'unet' is not a ResNet encoder; valid: resnet18"):
    resnet.ResNetUNet(UNetSpec(), nnx.Rngs(0))
  with pytest.raises(UserError, match='five positive integers'):
    resnet.check_spec(dataclasses.replace(SPEC, decoder_channels=(8, 8, 8, 8)))


@pytest.mark.parametrize('norm', ['group', 'none'])
def test_decoder_norm_other_than_batch(norm):
  spec = dataclasses.replace(SPEC, norm=norm, group_size=4)
  graphdef, params, stats = _abstract(spec)
  assert set(stats) == set(ENCODER)  # only the encoder keeps running statistics
  paths = leaf_paths(params)
  assert ('dec5/conv1/bias' in paths) == (norm == 'none')
  assert ('dec5/norm1/scale' in paths) == (norm == 'group')


@pytest.mark.parametrize('encoder', ['resnet18', 'resnet50'])
def test_encoder_features_match_torchvision(encoder):
  torch = pytest.importorskip('torch', reason='torch is not installed: no parity check')
  try:
    import torchvision  # noqa: PLC0415 - optional, for this test only
  except Exception as e:  # noqa: BLE001 - a CUDA build's C extension fails on a CPU-only box
    pytest.skip(f'torchvision does not import: {e}')
  torch.manual_seed(0)
  net = getattr(torchvision.models, encoder)().eval()
  randomise_batchnorm(torch, net)
  spec = dataclasses.replace(RGB, encoder=encoder)
  graphdef, params, stats = _abstract(spec)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  params, stats = resnet.encoder_from_torchvision(state, params, stats, spec,
                                                  source=f'{encoder}.pth')
  x = np.random.default_rng(7).standard_normal((2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    t = net.relu(net.bn1(net.conv1(torch.from_numpy(x.transpose(0, 3, 1, 2)))))
    want = [t]
    t = net.maxpool(t)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
      t = layer(t)
      want.append(t)
  encode = jax.jit(lambda p, s, x: nnx.merge(graphdef, p, s).encode(x, train=False))
  got = encode(params, stats, x)
  for name, a, b in zip(ENCODER, got, want):
    b = b.numpy().transpose(0, 2, 3, 1)
    assert a.shape == b.shape, name
    scale = max(1.0, float(np.abs(b).max()))
    assert float(np.abs(np.asarray(a) - b).max()) / scale < 1e-4, name
