"""Block layouts: the orders and preset roles of the paper U-Net and of the ResNet U-Net."""

import jax
import numpy as np
import pytest
from flax import nnx

from unet_jax import block_order, freeze, resnet
from unet_jax.encoders import RESNET, layout, layout_of_blocks
from unet_jax.errors import UserError
from unet_jax.model import UNetSpec, split_model
from unet_jax.schedules import gradual, parse_schedule, stage_table

SPEC = UNetSpec(encoder='resnet18', decoder_channels=(16, 8, 8, 4, 4))
ENCODER = ('stem', 'layer1', 'layer2', 'layer3', 'layer4')
DECODER = ('dec5', 'dec4', 'dec3', 'dec2', 'dec1', 'head')
NET = layout(SPEC)  # built once, as the sweep does


@pytest.fixture(scope='module')
def params():
  """The ResNet U-Net's parameter tree with zero leaves, built without drawing weights."""
  _, shapes, _ = split_model(nnx.eval_shape(lambda: resnet.ResNetUNet(SPEC, nnx.Rngs(0))))
  return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)


def test_every_description_of_a_network_finds_its_layout():
  assert layout(4) == layout(UNetSpec(depth=4)) == layout({'depth': 4})
  assert layout({'encoder': 'unet', 'depth': 2}).flow == UNetSpec(depth=2).block_names()
  for encoder in ('resnet18', 'resnet34', 'resnet50'):
    assert layout(UNetSpec(encoder=encoder)) is RESNET
    assert layout({'encoder': encoder, 'depth': 4}) is RESNET
  assert RESNET.flow == SPEC.block_names() == ENCODER + DECODER
  assert layout_of_blocks(SPEC.block_names()) is RESNET
  assert layout_of_blocks(UNetSpec(depth=3).block_names()) == layout(3)
  assert layout_of_blocks(['enc1', 'head']) is None
  with pytest.raises(UserError, match="model.encoder='vgg16' is not one of unet, resnet18"):
    layout({'encoder': 'vgg16'})
  # The block orders take the layout (or a paper U-Net's depth), never a model description.
  with pytest.raises(TypeError, match='encoders.layout'):
    freeze.preset_rules('deep', SPEC)
  with pytest.raises(TypeError, match='encoders.layout'):
    block_order.block_groups('flow', {'encoder': 'resnet18'})


def test_resnet_orders():
  assert RESNET.groups('flow') == [[b] for b in ENCODER + DECODER]
  assert RESNET.groups('depth') == [['dec1', 'head'], ['stem', 'dec2'], ['layer1', 'dec3'],
                                    ['layer2', 'dec4'], ['layer3', 'dec5'], ['layer4']]
  assert RESNET.bottleneck == 'layer4' and layout(4).bottleneck == 'bottleneck'
  assert block_order.cumulative('depth', NET, 2, 'shallow_to_deep') == {
      'dec1', 'head', 'stem', 'dec2'}
  assert block_order.cumulative('depth', NET, 2, 'deep_to_shallow') == {
      'layer4', 'layer3', 'dec5'}
  assert block_order.cumulative('flow', NET, 5, 'shallow_to_deep') == set(ENCODER)
  # Every block in exactly one group of each order.
  for order in block_order.ORDERS:
    flat = [b for g in RESNET.groups(order) for b in g]
    assert sorted(flat) == sorted(RESNET.flow)


def test_paper_unet_presets_keep_their_recorded_patterns():
  patterns = {name: [r.as_list() for r in freeze.preset_rules(name, 4)]
              for name in ('contracting', 'expanding', 'shallow', 'deep', 'last', 'head')}
  assert patterns == {
      'contracting': [['enc.*|bottleneck', 'train'], ['.*', 'freeze']],
      'expanding': [['dec.*|head', 'train'], ['.*', 'freeze']],
      'shallow': [['enc1|dec1', 'train'], ['.*', 'freeze']],
      'deep': [['enc4|bottleneck|dec4', 'train'], ['.*', 'freeze']],
      'last': [['dec1|head', 'train'], ['.*', 'freeze']],
      'head': [['head', 'train'], ['.*', 'freeze']]}


@pytest.mark.parametrize('preset, trained', [
    ('full', ENCODER + DECODER),
    ('contracting', ENCODER),
    ('expanding', DECODER),
    ('shallow', ('stem', 'dec2', 'dec1')),
    ('deep', ('layer3', 'layer4', 'dec5')),
    ('last', ('dec1', 'head')),
    ('head', ('head',)),
    ('none', ()),
    ('surgical:layer2', ('layer2',)),
])
def test_resnet_presets_leaf_by_leaf(params, preset, trained):
  rules = freeze.preset_rules(preset, NET)
  labels = freeze.freeze_labels(params, rules)
  for path, label in zip(freeze.leaf_paths(params), jax.tree.leaves(labels)):
    assert label == ('train' if path.split('/')[0] in trained else 'freeze'), path
  assert set(freeze.trained_blocks(params, rules)['trained']) == set(trained)


@pytest.mark.parametrize('preset, with_head, kinds', [
    ('bitfit', 'bitfit_head', {'norm_bias', 'conv_bias'}),
    ('norm_only', 'norm_head', {'norm_scale', 'norm_bias'})])
def test_resnet_kind_presets(params, preset, with_head, kinds):
  paths, leaf_kinds = freeze.leaf_paths(params), freeze.leaf_kinds(params)
  labels = jax.tree.leaves(freeze.freeze_labels(params, freeze.preset_rules(preset, NET)))
  for path, kind, label in zip(paths, leaf_kinds, labels):
    assert label == ('train' if kind in kinds else 'freeze'), path
  assert 'layer2/0/downsample/1/bias' in [p for p, lab in zip(paths, labels) if lab == 'train']
  labels = jax.tree.leaves(freeze.freeze_labels(params, freeze.preset_rules(with_head, NET)))
  for path, kind, label in zip(paths, leaf_kinds, labels):
    trained = kind in kinds or path.startswith('head/')
    assert label == ('train' if trained else 'freeze'), path


@pytest.mark.parametrize('order', block_order.ORDERS)
@pytest.mark.parametrize('direction', block_order.DIRECTIONS)
def test_resnet_gradual_schedules_stage_by_stage(params, order, direction):
  schedule = parse_schedule({'gradual': order, 'direction': direction, 'stage_steps': 3}, NET)
  assert schedule == gradual(order, direction, 3, NET)
  groups = RESNET.groups(order)[::1 if direction == 'shallow_to_deep' else -1]
  table = stage_table(params, schedule, len(groups) + 1)
  assert list(table['starts'][:len(groups)]) == [3 * i for i in range(len(groups))]
  paths = freeze.leaf_paths(params)
  for stage in range(len(groups)):
    wanted = {b for g in groups[:stage + 1] for b in g}
    for path, mask in zip(paths, jax.tree.leaves(table['masks'])):
      assert mask[stage] == (path.split('/')[0] in wanted), (stage, path)
  assert all(m[-1] == 1 for m in jax.tree.leaves(table['masks']))  # the last stage: all


def test_resnet_layer_decay_counts_from_the_head():
  flow = freeze.layer_decay_scale(0.5, 'flow', NET)
  assert flow['head'] == 1 and flow['dec1'] == 0.5 and flow['stem'] == 0.5 ** 10
  depth = freeze.layer_decay_scale(0.5, 'depth', NET)
  assert depth['dec1'] == depth['head'] == 1 and depth['stem'] == depth['dec2'] == 0.5
  assert depth['layer4'] == 0.5 ** 5
