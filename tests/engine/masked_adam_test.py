import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unet_jax.engine.masked_adam import apply_masked, masked_adam


@pytest.fixture
def params():
  return {'a': jnp.linspace(0.1, 2.0, 5), 'b': jnp.full((2, 2), 2.0)}


def _grads(params, i):
  return jax.tree.map(lambda x: jnp.sin(x * (i + 1)), params)


@pytest.mark.parametrize('weight_decay', [0.0, 1e-2])
def test_matches_optax_on_trained_leaves_and_freezes_the_rest(params, weight_decay):
  labels = {'a': 'train', 'b': 'freeze'}
  inner = optax.adamw(1e-2, weight_decay=weight_decay) if weight_decay else optax.adam(1e-2)
  static = optax.partition({'train': inner, 'freeze': optax.set_to_zero()}, labels)
  init_fn, update_fn = masked_adam()
  s1, s2, p1, p2 = static.init(params), init_fn(params), params, params
  mask = {'a': 1.0, 'b': 0.0}
  for i in range(5):
    u1, s1 = static.update(_grads(p1, i), s1, p1)
    p1 = optax.apply_updates(p1, u1)
    u2, s2 = update_fn(_grads(p2, i), s2, p2, mask=mask, learning_rate=1e-2,
                       weight_decay=weight_decay)
    p2 = apply_masked(p2, u2, mask)
  np.testing.assert_allclose(p2['a'], p1['a'], rtol=0, atol=1e-6)
  np.testing.assert_array_equal(p2['b'], params['b'])
  assert int(s2.count['a']) == 5 and int(s2.count['b']) == 0
  assert not np.any(s2.mu['b']) and not np.any(s2.nu['b'])


def test_nan_gradient_cannot_reach_a_frozen_leaf(params):
  init_fn, update_fn = masked_adam()
  grads = {'a': jnp.ones(5), 'b': jnp.full((2, 2), jnp.nan)}
  mask = {'a': True, 'b': False}
  updates, state = update_fn(grads, init_fn(params), params, mask=mask,
                             learning_rate=1e-2, weight_decay=0.0)
  new = apply_masked(params, updates, mask)
  np.testing.assert_array_equal(new['b'], params['b'])
  assert not np.any(np.isnan(state.nu['b']))


def test_unfrozen_leaf_starts_like_a_fresh_adam(params):
  init_fn, update_fn = masked_adam()
  state, p = init_fn(params), params
  for i in range(3):  # b frozen for 3 steps
    u, state = update_fn(_grads(p, i), state, p, mask={'a': 1, 'b': 0},
                         learning_rate=1e-2, weight_decay=0.0)
    p = apply_masked(p, u, {'a': 1, 'b': 0})
  g = _grads(p, 3)
  u, _ = update_fn(g, state, p, mask={'a': 1, 'b': 1}, learning_rate=1e-2,
                   weight_decay=0.0)
  fresh, _ = optax.adam(1e-2).update({'b': g['b']}, optax.adam(1e-2).init({'b': p['b']}))
  np.testing.assert_allclose(u['b'], fresh['b'], rtol=1e-6)


def test_rewarmup_ramps_each_leaf_from_its_unfreeze(params):
  init_fn, update_fn = masked_adam(rewarmup_steps=4)
  plain_init, plain_update = masked_adam()
  g = _grads(params, 0)
  kw = dict(mask={'a': 1, 'b': 1}, learning_rate=1e-2, weight_decay=0.0)
  warm, _ = update_fn(g, init_fn(params), params, **kw)
  plain, _ = plain_update(g, plain_init(params), params, **kw)
  np.testing.assert_allclose(warm['a'], plain['a'] / 4, rtol=1e-6)


def test_compile_time_mask_matches_the_same_mask_as_data(params):
  """Python-bool masks (the static strategy) skip work but not arithmetic."""
  init_fn, update_fn = masked_adam(rewarmup_steps=3)

  @jax.jit
  def run(params, data_mask):
    out = {}
    for name, mask in (('static', {'a': True, 'b': False}), ('data', data_mask)):
      state, p = init_fn(params), params
      for i in range(4):
        u, state = update_fn(_grads(p, i), state, p, mask=mask, learning_rate=1e-2,
                             weight_decay=1e-3)
        p = apply_masked(p, u, mask)
      out[name] = (p, state)
    return out

  out = run(params, {'a': jnp.float32(1), 'b': jnp.float32(0)})
  (p_static, s_static), (p_data, s_data) = out['static'], out['data']
  np.testing.assert_allclose(p_static['a'], p_data['a'], rtol=0, atol=1e-6)
  assert not np.allclose(p_static['a'], params['a'])
  np.testing.assert_array_equal(p_static['b'], params['b'])
  for a, b in zip(jax.tree.leaves(s_static), jax.tree.leaves(s_data)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # A compile-time frozen leaf is passed through as the very same array.
  updates = {'a': jnp.ones(5), 'b': jnp.ones((2, 2))}
  assert apply_masked(params, updates, {'a': True, 'b': False})['b'] is params['b']


def test_chains_with_optax_transforms():
  # An optax GradientTransformationExtraArgs: optax.chain passes the mask,
  # learning rate and weight decay on to it.
  params = {'a': jnp.ones(3), 'b': jnp.full(2, 2.0)}
  grads = {'a': jnp.asarray([3.0, -4.0, 12.0]), 'b': jnp.asarray([0.5, 0.5])}
  extra = dict(mask={'a': 1.0, 'b': 0.0}, learning_rate=1e-2, weight_decay=0.0)
  tx = masked_adam()
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  chained = optax.chain(optax.clip_by_global_norm(1.0), tx)
  got, _ = chained.update(grads, chained.init(params), params, **extra)
  clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
  want, _ = tx.update(clipped, tx.init(params), params, **extra)
  for key in params:
    np.testing.assert_array_equal(got[key], want[key])
  assert not np.any(got['b']) and np.all(got['a'] != 0)
  with pytest.raises(ValueError, match='needs params'):
    tx.update(grads, tx.init(params), None, **extra)
