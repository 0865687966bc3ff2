"""Several structures per image: the head's meaning, the loss, the metrics (unet_jax.structures)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unet_jax import losses, metrics, structures
from unet_jax.errors import UserError


def _one_hot_masks(rng, shape, k):
  return structures.one_hot(rng.integers(0, k + 1, shape), k)


def test_head_width_follows_the_number_of_structures():
  assert [structures.out_channels(k) for k in (1, 2, 3)] == [1, 3, 4]
  assert [structures.count(c) for c in (1, 3, 4)] == [1, 2, 3]


def test_masks_from_logits_and_from_probabilities_agree():
  logits = jax.random.normal(jax.random.key(0), (2, 8, 8, 4)) * 3
  a = np.asarray(structures.masks_from_logits(logits))
  b = structures.masks_from_probabilities(np.asarray(structures.probabilities(logits)))
  np.testing.assert_array_equal(a, b)
  assert a.shape == (2, 8, 8, 3) and set(np.unique(a)) <= {0.0, 1.0}
  assert (a.sum(axis=-1) <= 1).all()  # at most one structure per pixel
  background = np.argmax(np.asarray(logits), axis=-1) == 0
  np.testing.assert_array_equal(a.sum(axis=-1) == 0, background)


def test_one_structure_is_the_sigmoid_as_before():
  logits = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  np.testing.assert_array_equal(structures.masks_from_logits(logits),
                                (logits > 0).astype(jnp.float32))
  np.testing.assert_array_equal(structures.probabilities(logits), jax.nn.sigmoid(logits))


def test_label_maps_and_one_hot_masks_round_trip():
  labels = np.random.default_rng(0).integers(0, 4, (3, 5, 6)).astype(np.uint8)
  masks = structures.one_hot(labels, 3)
  assert masks.shape == (3, 5, 6, 3)
  np.testing.assert_array_equal(structures.label_map(masks), labels)


def test_the_binary_loss_is_unchanged_bit_for_bit():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
  masks = jnp.asarray(rng.random((4, 8, 8, 1)) > 0.5, jnp.float32)
  probs = jax.nn.sigmoid(logits)
  inter = jnp.sum(probs * masks, axis=(1, 2, 3))
  total = jnp.sum(probs, axis=(1, 2, 3)) + jnp.sum(masks, axis=(1, 2, 3))
  before = (optax.sigmoid_binary_cross_entropy(logits, masks).mean()
            + 1.0 - jnp.mean((2 * inter + 1.0) / (total + 1.0)))
  assert float(losses.segmentation_loss(logits, masks)) == float(before)


def test_the_loss_of_several_structures_is_softmax_ce_plus_mean_soft_dice():
  rng = np.random.default_rng(1)
  masks = jnp.asarray(_one_hot_masks(rng, (2, 8, 8), 3))
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  p = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
  target = np.concatenate([1 - np.asarray(masks).sum(-1, keepdims=True), masks], -1)
  ce = -(target * np.log(p)).sum(-1).mean()
  s, m = p[..., 1:], np.asarray(masks)
  dice = (2 * (s * m).sum((1, 2)) + 1) / (s.sum((1, 2)) + m.sum((1, 2)) + 1)  # (N, K)
  np.testing.assert_allclose(float(losses.segmentation_loss(logits, masks)),
                             ce + 1 - dice.mean(), rtol=1e-5)
  # The right answer, confidently, costs little; a wrong one a lot.
  right = jnp.concatenate([1 - masks.sum(-1, keepdims=True), masks], -1) * 20 - 10
  assert float(losses.segmentation_loss(right, masks)) < 0.05
  assert float(losses.segmentation_loss(-right, masks)) > 2


def test_mean_dice_averages_the_structures():
  rng = np.random.default_rng(2)
  pred, true = (_one_hot_masks(rng, (3, 8, 8), 3) for _ in range(2))
  each = np.stack([np.asarray(metrics.dice(pred[..., k], true[..., k])) for k in range(3)], -1)
  np.testing.assert_allclose(metrics.mean_dice(pred, true), each.mean(-1), rtol=1e-6)
  np.testing.assert_array_equal(metrics.mean_dice(pred[..., :1], true[..., :1]),
                                metrics.dice(pred[..., :1], true[..., :1]))


@pytest.mark.parametrize('spec, names, values', [
    ('cavity,wall,atrium', ('cavity', 'wall', 'atrium'), (1, 2, 3)),
    (' gland = 128 , nodule=255', ('gland', 'nodule'), (128, 255)),
    ('lesion', ('lesion',), (1,)),
])
def test_structures_are_declared_by_name_and_value(spec, names, values):
  assert structures.parse(spec) == (names, values)


@pytest.mark.parametrize('spec, message', [
    ('', 'is empty'),
    ('a,a', 'names repeat: a'),
    ('a=1,b=1', 'label values repeat: 1'),
    ('a=x', "label value of 'a' must be an integer"),
    ('a=0', "label value of 'a' must be an integer from 1"),
    ('a b', "structure name 'a b'"),
])
def test_bad_declarations_are_named(spec, message):
  with pytest.raises(UserError, match=message):
    structures.parse(spec)
