import jax
import numpy as np
import pytest

from unet_jax.errors import UserError
from unet_jax.freeze import (
  FreezeRule,
  describe_labels,
  freeze_labels,
  frozen_paths,
  leaf_paths,
  parse_rules,
  preset_rules,
)


@pytest.fixture
def tree():
  """A literal pytree shaped like a tiny U-Net's parameters."""
  leaf = np.zeros(2)
  return {'enc1': {'conv1': {'kernel': leaf, 'bias': leaf}},
          'bottleneck': {'conv1': {'kernel': leaf}},
          'dec1': {'up': {'kernel': leaf}, 'block': {'conv1': {'kernel': leaf}}},
          'head': {'kernel': leaf, 'bias': leaf}}


def _labels_by_path(tree, rules):
  return dict(zip(leaf_paths(tree), jax.tree.leaves(freeze_labels(tree, rules))))


@pytest.mark.parametrize('preset, trained', [
    ('full', {'enc1/conv1/kernel', 'enc1/conv1/bias', 'bottleneck/conv1/kernel',
              'dec1/up/kernel', 'dec1/block/conv1/kernel', 'head/kernel', 'head/bias'}),
    ('contracting', {'enc1/conv1/kernel', 'enc1/conv1/bias', 'bottleneck/conv1/kernel'}),
    ('expanding', {'dec1/up/kernel', 'dec1/block/conv1/kernel', 'head/kernel', 'head/bias'}),
    ('shallow', {'enc1/conv1/kernel', 'enc1/conv1/bias', 'dec1/up/kernel',
                 'dec1/block/conv1/kernel'}),
    ('deep', {'enc1/conv1/kernel', 'enc1/conv1/bias', 'bottleneck/conv1/kernel',
              'dec1/up/kernel', 'dec1/block/conv1/kernel'}),
    ('last', {'dec1/up/kernel', 'dec1/block/conv1/kernel', 'head/kernel', 'head/bias'}),
    ('head', {'head/kernel', 'head/bias'}),
])
def test_preset_labels_leaf_by_leaf(tree, preset, trained):
  # depth=1: the deepest encoder/decoder blocks are enc1/dec1.
  labels = _labels_by_path(tree, preset_rules(preset, network=1))
  for path, label in labels.items():
    assert label == ('train' if path in trained else 'freeze'), path


def test_deep_preset_on_a_real_unet(tiny_model):
  _, params, _ = tiny_model
  labels = _labels_by_path(params, preset_rules('deep', network=2))
  assert labels['bottleneck/conv1/kernel'] == 'train'
  assert labels['enc2/conv2/kernel'] == 'train'
  assert labels['dec2/up/kernel'] == 'train'
  assert labels['enc1/conv1/kernel'] == 'freeze'
  assert labels['dec1/block/conv1/kernel'] == 'freeze'
  assert labels['head/kernel'] == 'freeze'


def test_first_match_wins(tree):
  rules = parse_rules([('head/bias', 'freeze'), ('head', 'train'), ('.*', 'freeze')], 1)
  labels = _labels_by_path(tree, rules)
  assert labels['head/bias'] == 'freeze'
  assert labels['head/kernel'] == 'train'
  assert labels['enc1/conv1/kernel'] == 'freeze'


def test_pattern_matches_whole_names_only(tree):
  # 'enc' must not match 'enc1' by prefix: patterns match whole path parts.
  with pytest.raises(UserError, match="'enc' matches no parameter"):
    freeze_labels(tree, parse_rules([('enc', 'train'), ('.*', 'freeze')], 1))


def test_unknown_block_lists_valid_names(tree):
  with pytest.raises(UserError) as e:
    freeze_labels(tree, parse_rules([('enc9', 'train'), ('.*', 'freeze')], 1))
  assert 'valid block names: bottleneck, dec1, enc1, head' in str(e.value)


def test_uncovered_leaf_is_named(tree):
  with pytest.raises(UserError) as e:
    freeze_labels(tree, parse_rules([('enc1|bottleneck|dec1', 'train')], 1))
  assert 'head/kernel' in str(e.value) and 'head/bias' in str(e.value)
  assert '2 parameter(s) uncovered' in str(e.value)


@pytest.mark.parametrize('rule, message', [
    (('enc1', 'thaw'), "action 'thaw' is not one of train, freeze"),
    (('enc[', 'train'), 'not a valid regular expression'),
])
def test_bad_rules(rule, message):
  with pytest.raises(UserError, match=message):
    FreezeRule(*rule)


def test_unknown_preset_lists_presets():
  with pytest.raises(UserError, match='valid presets: bitfit, bitfit_head, contracting, deep'):
    preset_rules('encoder', network=4)


def test_describe_names_the_matching_rule(tree):
  text = describe_labels(tree, preset_rules('contracting', network=1))
  lines = {line.split()[0]: line for line in text.splitlines()}
  assert len(lines) == len(leaf_paths(tree))
  assert "train   rule 0: 'enc.*|bottleneck'" in lines['enc1/conv1/kernel']
  assert "freeze  rule 1: '.*'" in lines['head/bias']


def test_frozen_paths(tree):
  assert frozen_paths(tree, preset_rules('head', network=1)) == [
      p for p in leaf_paths(tree) if not p.startswith('head/')]
