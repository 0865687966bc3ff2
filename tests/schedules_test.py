import jax
import numpy as np
import pytest

from unet_jax.errors import UserError
from unet_jax.freeze import leaf_paths
from unet_jax.schedules import (
  NEVER,
  Schedule,
  block_groups,
  gradual,
  parse_schedule,
  stage_index,
  stage_table,
  unfreeze_at,
)


def test_block_orders():
  assert block_groups('flow', 2) == [['enc1'], ['enc2'], ['bottleneck'], ['dec2'],
                                     ['dec1'], ['head']]
  assert block_groups('depth', 3) == [['enc1', 'dec1', 'head'], ['enc2', 'dec2'],
                                      ['enc3', 'dec3'], ['bottleneck']]


@pytest.mark.parametrize('order, direction, first, last_added', [
    ('flow', 'shallow_to_deep', 'enc1', 'head'),
    ('flow', 'deep_to_shallow', 'head', 'enc1'),
    ('depth', 'shallow_to_deep', 'enc1|dec1|head', 'bottleneck'),
    ('depth', 'deep_to_shallow', 'bottleneck', 'head'),
])
def test_gradual_is_cumulative(order, direction, first, last_added):
  sched = gradual(order, direction, 10, network=2)
  assert sched.starts == tuple(range(0, 10 * len(sched.stages), 10))
  assert sched.stages[0][0].pattern == first
  patterns = [stage[0].pattern.split('|') for stage in sched.stages]
  for earlier, later in zip(patterns, patterns[1:]):
    assert set(earlier) < set(later)
  assert last_added in patterns[-1] and last_added not in patterns[-2]
  assert stage_index(np.asarray(sched.starts), 0) == 0
  assert stage_index(np.asarray(sched.starts), 19) == 1
  assert dict(sched.kind) == {'kind': 'gradual', 'order': order, 'direction': direction,
                              'stage_steps': 10}


def test_stage_lookup_agrees_on_host_and_in_a_program():
  starts = np.asarray([0, 5, 9, NEVER], np.int32)
  steps = np.arange(0, 14)
  host = [stage_index(starts, int(t)) for t in steps]
  assert host == [0] * 5 + [1] * 4 + [2] * 5
  traced = jax.jit(jax.vmap(lambda t: stage_index(jax.numpy.asarray(starts), t)))(steps)
  assert traced.tolist() == host
  table = np.stack([starts, np.asarray([0, 2, NEVER, NEVER], np.int32)])
  assert stage_index(table, np.asarray([6, 6])).tolist() == [1, 1]


def test_stage_table_pads_with_stages_that_never_start(tiny_model):
  _, params, _ = tiny_model
  table = stage_table(params, unfreeze_at(parse_schedule('head', 2).stages[0], 5), 3)
  assert table['starts'].tolist() == [0, 5, NEVER]
  masks = dict(zip(leaf_paths(params), jax.tree.leaves(table['masks'])))
  np.testing.assert_array_equal(masks['head/kernel'], [1, 1, 1])
  np.testing.assert_array_equal(masks['enc1/conv1/kernel'], [0, 1, 1])


@pytest.mark.parametrize('spec, message', [
    ({'gradual': 'sideways'}, 'unknown block order'),
    ({'gradual': 'flow', 'direction': 'up'}, 'unknown schedule direction'),
    ({'gradual': 'flow', 'stage_steps': 0}, 'stage_steps must be >= 1'),
    ({'starts': (5, 10), 'stages': ('head', 'full')}, 'must begin at 0'),
    ({'unfreeze_at': 0}, 'unfreeze step must be >= 1'),
    ({'bogus': 1}, 'cannot read schedule'),
])
def test_bad_schedules(spec, message):
  with pytest.raises(UserError, match=message):
    parse_schedule(spec, 2)


def test_parse_forms():
  assert isinstance(parse_schedule('contracting', 2), Schedule)
  assert parse_schedule({'unfreeze_at': 7, 'rules': 'head'}, 2).starts == (0, 7)
  assert len(parse_schedule({'starts': (0, 3), 'stages': ('head', 'full')}, 2).stages) == 2
