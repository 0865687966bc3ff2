"""Training to convergence inside a bundle: best weights, masked-off runs, bundles, resume."""

import jax
import numpy as np
import pytest
import tqdm

from unet_jax import freeze
from unet_jax.engine.executors import make_bundle_chunk
from unet_jax.engine.experiment import Experiment
from unet_jax.engine.resume import BundleCheckpoints, Interrupted
from unet_jax.engine.run import BundleData, RunOptions, Weights, run_bundle
from unet_jax.engine.step import BundleContext, init_experiment_state, make_setup, stack
from unet_jax.engine.stopping import StopRule, StopTracker
from unet_jax.model import UNetSpec, init_model
from unet_jax.schedules import Schedule

SPEC = UNetSpec(base_width=4, depth=2, norm='batch')
CHUNK = 2


@pytest.fixture(scope='module')
def problem():
  _, params, stats = init_model(SPEC, seed=0)
  rng = np.random.default_rng(0)
  images = rng.random((16, 16, 16, 1), np.float32)
  masks = (images > 0.5).astype(np.float32)
  return Weights(params, stats), images, masks


def _experiment(name, steps, preset='full', seed=0, unfreeze_at=None):
  rules = freeze.preset_rules(preset, SPEC.depth)
  schedule = (Schedule.constant(rules) if unfreeze_at is None else
              Schedule((0, unfreeze_at), (tuple(freeze.preset_rules('head', SPEC.depth)),
                                          tuple(rules))))
  return Experiment(name, name, schedule, 'pretrained', seed, 3e-3, 0.0, steps, 4, 'adapt')


def _run(problem, experiments, rule, executor='static', val=True, **kwargs):
  init, images, masks = problem
  num = len(experiments)
  data = BundleData(images, masks, [np.arange(12)] * num,
                    [(images[12:], masks[12:])] * num if val else None)
  with tqdm.tqdm(disable=True) as bar:
    return run_bundle(BundleContext(SPEC, 4), experiments, [init] * num, data,
                      RunOptions(executor, 'host', CHUNK, kwargs.pop('checkpoint_every', 0),
                                 rule), bar=bar, **kwargs)


def _same(a: Weights, b: Weights):
  for x, y in zip(jax.tree.leaves((a.params, a.stats)), jax.tree.leaves((b.params, b.stats))):
    np.testing.assert_array_equal(x, y)


def test_a_run_stops_after_its_best_and_keeps_that_steps_weights(problem):
  rule = StopRule(patience=2)
  free = _run(problem, [_experiment('full', 24)], StopRule(patience=0))
  # The rule replayed on the run trained to the cap says where it must stop.
  replay = StopTracker(rule, [0])
  for row in free.history[0]:
    if replay.active[0]:
      replay.update(row['step'], [row['val_dice']], [False])
  replay.finish(24, True)
  stopped = _run(problem, [_experiment('full', 24)], rule)
  run = stopped.progress[0]
  assert run == replay.runs[0]
  assert free.progress[0].best_step >= run.best_step  # 0: the best over all 24 steps
  if run.reason == 'converged':
    assert run.stopped_at == run.best_step + rule.patience * CHUNK
  assert [r['step'] for r in stopped.history[0]] == list(range(CHUNK, run.stopped_at + 1, CHUNK))
  assert stopped.history[0] == free.history[0][:len(stopped.history[0])]
  # Its weights are bitwise those of a run trained exactly to its best step.
  upto = _run(problem, [_experiment('full', run.best_step)], rule, val=False)
  _same(stopped.weights[0], upto.weights[0])
  assert upto.progress[0].reason == 'no_validation'


def test_min_delta_one_stops_every_run_after_patience(problem):
  result = _run(problem, [_experiment('a', 20), _experiment('b', 20, 'head', seed=1)],
                StopRule(patience=2, min_delta=1.0))
  assert [(r.best_step, r.stopped_at, r.reason) for r in result.progress] == [
      (2, 6, 'converged')] * 2
  assert result.report.exp_steps_per_s > 0


@pytest.mark.parametrize('executor', ['static', 'vmap'])
def test_a_stopped_experiment_stays_bitwise_while_its_bundle_trains(problem, executor):
  init, images, masks = problem
  exps = [_experiment('a', 8), _experiment('b', 8, 'contracting', seed=1)]
  setup = stack([make_setup(init.params, init.stats, e.schedule, num_stages=1,
                            learning_rate=e.learning_rate, weight_decay=0.0,
                            seed_key=jax.random.key(e.seed), frozen_norm='adapt',
                            train_index=np.arange(12), index_length=12) for e in exps])
  state = stack([init_experiment_state(init.params, init.stats)] * 2)
  state = state._replace(stopped_at=np.asarray([-1, 0], np.int32))
  chunk = make_bundle_chunk(BundleContext(SPEC, 4), executor, loop='host')
  after, losses = chunk(jax.device_put(state), jax.device_put(setup), images, masks,
                        num_steps=3)
  before, after = jax.tree.map(np.asarray, (state, after))
  for x, y in zip(jax.tree.leaves((before.params, before.stats, before.opt_state)),
                  jax.tree.leaves((after.params, after.stats, after.opt_state))):
    np.testing.assert_array_equal(x[1], y[1])  # stopped: bitwise unchanged
  assert any(not np.array_equal(x[0], y[0]) for x, y in
             zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)))
  assert int(after.diverged_at[1]) == -1
  if executor == 'static':  # not run at all
    assert np.isnan(np.asarray(losses)[:, 1]).all() and int(after.step[1]) == 0


def test_a_bundle_whose_runs_stop_apart_equals_each_run_alone(problem):
  # 'late' cannot stop before its last stage starts at step 10.
  rule = StopRule(patience=2, min_delta=1.0)
  exps = [_experiment('early', 20), _experiment('late', 20, seed=1, unfreeze_at=10)]
  together = _run(problem, exps, rule)
  assert [(r.stopped_at, r.reason) for r in together.progress] == [(6, 'converged'),
                                                                   (14, 'converged')]
  for i, exp in enumerate(exps):
    alone = _run(problem, [exp], rule)
    _same(together.weights[i], alone.weights[0])
    assert together.history[i] == alone.history[0]
    assert together.progress[i] == alone.progress[0]
  # One program for both (vmap): the same decisions.
  vmapped = _run(problem, exps, rule, executor='vmap')
  assert [(r.best_step, r.stopped_at, r.reason) for r in vmapped.progress] == [
      (r.best_step, r.stopped_at, r.reason) for r in together.progress]
  np.testing.assert_allclose([r.best_val_dice for r in vmapped.progress],
                             [r.best_val_dice for r in together.progress], atol=0.01)
  # Weights are not compared: in float32, Adam turns the rounding of
  # near-zero gradients (convolution biases before BatchNorm) into steps of
  # either sign; the executors' float64 equivalence test holds them.


def test_resume_after_a_stop_mid_bundle_decides_and_ends_the_same(problem, tmp_path):
  rule = StopRule(patience=2, min_delta=1.0)
  exps = [_experiment('early', 20), _experiment('late', 20, seed=1, unfreeze_at=10)]
  straight = _run(problem, exps, rule)
  ck = BundleCheckpoints(str(tmp_path / 'ck'))

  class SigtermAt8:
    """A SIGTERM seen at the fourth chunk boundary (step 8)."""
    signal, calls = 15, 0

    @property
    def requested(self):
      self.calls += 1
      return self.calls >= 4

  with pytest.raises(Interrupted, match='stopped at step 8 of 20'):
    _run(problem, exps, rule, checkpoints=ck, fingerprint='f', stop=SigtermAt8())
  ck.close()
  assert max(BundleCheckpoints(str(tmp_path / 'ck')).steps()) == 8
  ck = BundleCheckpoints(str(tmp_path / 'ck'))
  resumed = _run(problem, exps, rule, checkpoints=ck, fingerprint='f')
  ck.close()
  assert resumed.resumed_from == 8
  assert resumed.progress == straight.progress  # 'early' had stopped at 6, before the cut
  assert resumed.history == straight.history
  for a, b in zip(straight.weights, resumed.weights):
    _same(a, b)
