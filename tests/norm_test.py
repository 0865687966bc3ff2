"""BatchNorm under freezing: which statistics every layer uses and keeps, per policy."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from unet_jax.engine.executors import make_bundle_chunk
from unet_jax.engine.experiment import Experiment
from unet_jax.engine.run import Weights
from unet_jax.engine.step import BundleContext, init_experiment_state, make_setup, stack, unstack
from unet_jax.errors import UserError
from unet_jax.files import read_jsonl
from unet_jax.freeze import FROZEN_NORM, norm_masks, preset_rules
from unet_jax.model import UNetSpec, apply_model, init_model
from unet_jax.schedules import Schedule
from unet_jax.sweep import checkpoint, evaluate
from unet_jax.sweep.run import load_target, run_sweep
from unet_jax.sweep.settings import SweepSettings, load_config
from unet_jax.workdir import WorkdirPaths

SPEC = UNetSpec(base_width=4, depth=2, norm='batch')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def pretrained():
  """A U-Net whose running statistics differ from any batch's, like pretrained ones."""
  graphdef, params, stats = init_model(SPEC, seed=0)
  rng = np.random.default_rng(1)
  stats = jax.tree.map(lambda x: x * rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
                       + 0.05 * rng.standard_normal(x.shape).astype(np.float32), stats)
  images = rng.random((6, 16, 16, 1), np.float32)
  return graphdef, params, stats, images


def test_masks_follow_the_policy_layer_by_layer(pretrained):
  _, params, stats, _ = pretrained
  rules = preset_rules('contracting', SPEC.depth)  # enc1, enc2, bottleneck trained
  inference = norm_masks(stats, params, rules, 'inference')
  encoder = {'enc1': True, 'enc2': True, 'bottleneck': True, 'dec2': False, 'dec1': False}
  for block, trained in encoder.items():
    layers = inference.running[block].get('block', inference.running[block])
    assert layers == {'norm1': not trained, 'norm2': not trained}, block
    stats_of = inference.update[block].get('block', inference.update[block])
    assert stats_of['norm2'] == {'mean': trained, 'var': trained}, block
  adapt = norm_masks(stats, params, rules, 'adapt')
  assert all(jax.tree.leaves(adapt.update)) and not any(jax.tree.leaves(adapt.running))
  head_only = norm_masks(stats, params, preset_rules('head', SPEC.depth), 'inference')
  assert all(jax.tree.leaves(head_only.running))  # the head has no BatchNorm


def test_unknown_policy_is_named(pretrained):
  _, params, stats, _ = pretrained
  with pytest.raises(UserError, match='inference, adapt'):
    norm_masks(stats, params, preset_rules('full', 2), 'batch')


def test_frozen_block_trains_as_it_evaluates_under_inference(pretrained):
  graphdef, params, stats, images = pretrained
  running = norm_masks(stats, params, preset_rules('contracting', 2), 'inference').running
  model = nnx.merge(graphdef, params, stats)
  skip = jax.random.normal(jax.random.key(0), (6, 16, 16, 4))
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 8))
  # dec1 is frozen: in training mode it normalises with its pretrained
  # statistics, exactly as in evaluation.
  trained_mode = model.dec1(x, skip, train=True, running=running['dec1'])
  eval_mode = model.dec1(x, skip, train=False)
  np.testing.assert_array_equal(trained_mode, eval_mode)
  # enc1 is trained: batch statistics in training, so the two differ.
  assert not np.array_equal(model.enc1(images, train=True, running=running['enc1']),
                            model.enc1(images, train=False))


@pytest.mark.parametrize('as_data', [False, True])
def test_whole_network_trains_as_it_evaluates_when_only_the_head_trains(pretrained, as_data):
  graphdef, params, stats, images = pretrained
  running = norm_masks(stats, params, preset_rules('head', 2), 'inference').running
  eval_logits, _ = apply_model(graphdef, params, stats, images, train=False)
  if as_data:
    # Traced 0/1 flags, as the per_experiment and vmap strategies pass them,
    # in a compiled program: the same arithmetic, which XLA may fuse in
    # another order than the evaluation program's.
    flags = jax.tree.map(np.float32, running)
    train_logits, new_stats = jax.jit(lambda r: apply_model(
        graphdef, params, stats, images, train=True, running=r))(flags)
    np.testing.assert_allclose(train_logits, eval_logits, rtol=1e-5, atol=1e-6)
  else:  # op by op, the very same operations: bit for bit
    train_logits, new_stats = apply_model(graphdef, params, stats, images, train=True,
                                          running=running)
    np.testing.assert_array_equal(train_logits, eval_logits)
  for a, b in zip(jax.tree.leaves(new_stats), jax.tree.leaves(stats)):
    np.testing.assert_array_equal(a, b)  # statistics stay bitwise as pretrained


def test_adapt_normalises_frozen_blocks_with_batch_statistics(pretrained):
  graphdef, params, stats, images = pretrained
  running = norm_masks(stats, params, preset_rules('head', 2), 'adapt').running
  train_logits, new_stats = apply_model(graphdef, params, stats, images, train=True,
                                        running=running)
  eval_logits, _ = apply_model(graphdef, params, stats, images, train=False)
  assert not np.allclose(train_logits, eval_logits)
  assert all(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(new_stats), jax.tree.leaves(stats)))


def test_reestimated_statistics_make_evaluation_match_training_on_that_batch(pretrained):
  graphdef, params, stats, images = pretrained
  masks = norm_masks(stats, params, preset_rules('full', 2), 'adapt')
  fresh = evaluate.reestimate_stats(SPEC, params, stats, images, update=masks.update,
                                      running=masks.running, batch_size=len(images))
  train_logits, _ = apply_model(graphdef, params, stats, images, train=True)
  eval_logits, _ = apply_model(graphdef, params, fresh, images, train=False)
  # BatchNorm's eps sits inside the square root in both: the same numbers up
  # to float rounding.
  np.testing.assert_allclose(eval_logits, train_logits, rtol=1e-4, atol=1e-4)
  frozen = norm_masks(stats, params, preset_rules('contracting', 2), 'inference')
  partly = evaluate.reestimate_stats(SPEC, params, stats, images, update=frozen.update,
                                       running=frozen.running, batch_size=3)
  for keep, new, old in zip(jax.tree.leaves(frozen.update), jax.tree.leaves(partly),
                            jax.tree.leaves(stats)):
    assert np.array_equal(new, old) != keep


# A small sweep that trains for real. At this size (32 x 32, 100 steps) the
# running averages lag the still-moving weights enough to move test Dice by
# 0.01-0.04 when re-estimated with the final weights on one 2-core machine
# and by up to 0.053 (contracting, adapt) on another, whose XLA CPU code
# rounds differently (measured: an EMA over 60 more forward passes with the
# weights fixed lands where the re-estimate does), so the bound here is
# 0.08; the default sweep's own changes are in README.md. The mix the
# policies replaced moved it by 0.1-0.65 (test below, and the default sweep
# before them).
CONSISTENT = 0.08
PRESETS = ('full', 'contracting', 'expanding', 'last')


def _small_config():
  config = load_config(os.path.join(ROOT, 'configs', 'default.py') + ':tiny')
  config.image_size = 32
  config.model.base_width = 8
  config.pretrain.steps = 60
  config.pretrain.num_images = 64
  config.data.num_images = 96
  config.finetune.steps = 100
  config.chunk_steps = 50
  config.checkpoint_every = 0
  config.evaluation.norm_check = True
  config.only = ','.join(PRESETS)
  config.grid.seed = (0,)
  return config


@pytest.fixture(scope='module')
def both_policies(tmp_path_factory):
  config = _small_config()
  config.grid.frozen_norm = tuple(FROZEN_NORM)
  workdir = str(tmp_path_factory.mktemp('policies'))
  return workdir, run_sweep(config, workdir, progress=False)


def test_scores_do_not_hang_on_running_averages_under_either_policy(both_policies):
  workdir, summaries = both_policies
  assert {s.frozen_norm for s in summaries} == set(FROZEN_NORM)
  assert len(summaries) == 2 * len(PRESETS)
  changes = {s.name: s.norm_check['change'] for s in summaries}
  assert max(abs(c) for c in changes.values()) <= CONSISTENT, changes
  full = [s.mean_dice for s in summaries if s.base == 'full']
  assert min(full) > 0.5  # the network learned something: the check is not vacuous
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  assert {r['experiment'] for r in rows} == set(changes)


def test_the_old_mix_is_what_the_check_catches(both_policies):
  # Frozen blocks normalising with batch statistics in training while
  # keeping their pretrained ones for evaluation: the behaviour before the
  # policies, rebuilt from an 'adapt' setup whose frozen statistics do not move.
  workdir, _ = both_policies
  s = SweepSettings.from_config(_small_config())
  paths = WorkdirPaths(workdir)
  target = load_target(s, paths)
  split = target.splits[0]
  params, stats = checkpoint.load_weights(paths.pretrain_weights)
  rules = preset_rules('last', SPEC.depth)
  inference = norm_masks(stats, params, rules, 'inference')
  setup = make_setup(params, stats, Schedule.constant(rules), num_stages=1,
                     learning_rate=1e-3, weight_decay=0.0, seed_key=jax.random.key(0),
                     frozen_norm='adapt', train_index=split.fit, index_length=len(split.fit))
  setup = setup._replace(stats_masks=jax.tree.map(
      lambda m: np.float32(m) * np.ones(1, np.float32), inference.update))
  spec = s.model
  chunk = make_bundle_chunk(BundleContext(spec, 8), 'per_experiment', loop='host')
  state, _ = chunk(stack([init_experiment_state(params, stats)]), stack([setup]),
                   target.dataset.images, target.dataset.masks, num_steps=100)
  weights = Weights(*unstack((state.params, state.stats), 0))
  graphdef = init_model(spec, 0)[0]
  test = target.part(split.test)
  dice = np.mean([r['dice'] for r in evaluate.evaluate(graphdef, weights, test)])
  exp = Experiment('mixed', 'last', Schedule.constant(rules), 'pretrained', 0, 1e-3, 0.0,
                   100, 8, frozen_norm='adapt')
  found = evaluate.check_norm(spec, graphdef, exp, weights, target.part(split.fit), test,
                              float(dice))
  assert found["change"] > 2 * CONSISTENT, found


@pytest.mark.skipif(not os.environ.get('UNET_JAX_DEFAULT_SWEEP'),
                    reason='set UNET_JAX_DEFAULT_SWEEP to the work directory of a finished '
                           '`python launch/sweep.py` (5 minutes on 2 cores) to check it')
def test_the_default_sweep_scores_its_trained_networks():
  # The bound docs/DESIGN.md quotes for the default sweep under 'adapt':
  # re-estimated statistics move no subset's mean test Dice by more than 0.02.
  from unet_jax import analysis
  res = analysis.load(os.environ['UNET_JAX_DEFAULT_SWEEP'])
  changes = {}
  for run in res.loaded:
    s = run.summary
    if s.frozen_norm == 'adapt' and s.norm_check:
      changes.setdefault(s.base, []).append(s.norm_check['change'])
  assert len(changes) == 8, sorted(changes)
  assert max(abs(np.mean(c)) for c in changes.values()) <= 0.02, changes
