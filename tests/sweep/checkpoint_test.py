import jax
import numpy as np
import orbax.checkpoint as ocp

from unet_jax.sweep.checkpoint import load_weights, save_weights


def test_save_restore_identical(tmp_path, tiny_model):
  _, params, stats = tiny_model
  save_weights(tmp_path / 'w', params, stats)
  got_params, got_stats = load_weights(tmp_path / 'w')
  assert jax.tree.structure(got_params) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves((params, stats)), jax.tree.leaves((got_params, got_stats))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Readable with plain orbax, no unet_jax code involved.
  tree = ocp.StandardCheckpointer().restore(str(tmp_path / 'w'))
  assert set(tree) == {'params', 'batch_stats'}


def test_save_replaces(tmp_path, tiny_model):
  _, params, stats = tiny_model
  save_weights(tmp_path / 'w', params, stats)
  doubled = jax.tree.map(lambda x: 2 * x, params)
  save_weights(tmp_path / 'w', doubled, stats)
  got, _ = load_weights(tmp_path / 'w')
  np.testing.assert_array_equal(got['head']['kernel'], doubled['head']['kernel'])
