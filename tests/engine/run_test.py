"""run_bundle: history per chunk, checkpoints and resume, fallback, failed saves, divergence."""

import glob
import os

import jax
import numpy as np
import pytest
import tqdm

from unet_jax import freeze
from unet_jax.engine.experiment import Experiment
from unet_jax.engine.resume import BundleCheckpoints, Interrupted, StopRequest
from unet_jax.engine.run import (
  BundleData,
  Restored,
  RunOptions,
  Weights,
  choose_executor,
  run_bundle,
)
from unet_jax.engine.step import BundleContext
from unet_jax.model import UNetSpec, init_model
from unet_jax.schedules import Schedule

SPEC = UNetSpec(base_width=4, depth=2, norm='batch')
STEPS = 6


@pytest.fixture(scope='module')
def problem():
  _, params, stats = init_model(SPEC, seed=0)
  rng = np.random.default_rng(0)
  images = rng.random((12, 16, 16, 1), np.float32)
  masks = (images > 0.5).astype(np.float32)
  return Weights(params, stats), images, masks


def _experiment(name, preset='full', lr=1e-3, seed=0):
  return Experiment(name, name, Schedule.constant(freeze.preset_rules(preset, SPEC.depth)),
                    'pretrained', seed, lr, 0.0, STEPS, 4, 'adapt')


def _run(problem, experiments, executor='static', checkpoint_every=0, **kwargs):
  init, images, masks = problem
  num = len(experiments)
  data = BundleData(images, masks, [np.arange(len(images))] * num,
                    [(images[:4], masks[:4])] * num)
  with tqdm.tqdm(disable=True) as bar:
    return run_bundle(BundleContext(SPEC, 4), experiments, [init] * num, data,
                      RunOptions(executor, 'host', 2, checkpoint_every), bar=bar, **kwargs)


def _assert_same_weights(a: Weights, b: Weights):
  for x, y in zip(jax.tree.leaves((a.params, a.stats)), jax.tree.leaves((b.params, b.stats))):
    np.testing.assert_array_equal(x, y)


def test_history_has_a_row_per_chunk(problem):
  result = _run(problem, [_experiment('full'), _experiment('head', 'head')])
  for rows in result.history:
    assert [r['step'] for r in rows] == [2, 4, 6]
    assert all(0.0 <= r['val_dice'] <= 1.0 and np.isfinite(r['loss']) for r in rows)
  assert result.history[0][0]['trainable_fraction'] == 1.0
  assert 0.0 < result.history[1][0]['trainable_fraction'] < 0.01
  assert result.diverged_at == [None, None]


def test_damaged_latest_checkpoint_falls_back_to_previous(problem, tmp_path, capsys):
  exps = [_experiment('full'), _experiment('contracting', 'contracting', seed=1)]
  straight = _run(problem, exps)
  directory = str(tmp_path / 'ck')
  ck = BundleCheckpoints(directory)
  _run(problem, exps, checkpoints=ck, checkpoint_every=2, fingerprint='f')
  ck.close()
  assert BundleCheckpoints(directory).steps() == [2, 4]  # the two newest are kept
  for path in glob.glob(os.path.join(directory, '4', 'state', '**', 'd', '*'),
                        recursive=True):
    with open(path, 'wb') as f:
      f.write(b'not a checkpoint')
  ck = BundleCheckpoints(directory)
  resumed = _run(problem, exps, checkpoints=ck, checkpoint_every=2, fingerprint='f')
  ck.close()
  err = capsys.readouterr().err
  assert f'checkpoint {os.path.join(directory, "4")} cannot be used' in err
  assert 'resuming a bundle of 2 at step 2 of 6' in err
  assert resumed.resumed_from == 2
  for a, b in zip(straight.weights, resumed.weights):
    _assert_same_weights(a, b)
  assert resumed.history == straight.history


def test_checkpoint_of_other_settings_is_not_used(problem, tmp_path, capsys):
  exps = [_experiment('full')]
  ck = BundleCheckpoints(str(tmp_path / 'ck'))
  _run(problem, exps, checkpoints=ck, checkpoint_every=2, fingerprint='old')
  ck.close()
  ck = BundleCheckpoints(str(tmp_path / 'ck'))
  result = _run(problem, exps, checkpoints=ck, checkpoint_every=2, fingerprint='new')
  ck.close()
  assert result.resumed_from == 0
  assert 'saved for other settings' in capsys.readouterr().err


def test_failed_save_keeps_previous_checkpoint_and_goes_on(problem, tmp_path, capsys,
                                                            monkeypatch):
  exps = [_experiment('full')]
  ck = BundleCheckpoints(str(tmp_path / 'ck'))
  real_save = ck._manager.save

  def save(step, *args, **kwargs):
    if step > 2:
      raise OSError(28, 'No space left on device')
    return real_save(step, *args, **kwargs)

  monkeypatch.setattr(ck._manager, 'save', save)
  result = _run(problem, exps, checkpoints=ck, checkpoint_every=2, fingerprint='f')
  ck.close()
  err = capsys.readouterr().err
  assert 'could not write the checkpoint at step 4' in err
  assert 'No space left on device' in err
  assert 'the checkpoint at step 2 and all finished results are intact' in err
  assert [r['step'] for r in result.history[0]] == [2, 4, 6]  # training went on
  assert BundleCheckpoints(str(tmp_path / 'ck')).steps() == [2]


def test_stop_request_saves_and_resume_matches(problem, tmp_path):
  exps = [_experiment('full'), _experiment('head', 'head')]
  straight = _run(problem, exps)
  stop = StopRequest()
  stop.signal = 15  # as if SIGTERM had arrived during the first chunk
  ck = BundleCheckpoints(str(tmp_path / 'ck'))
  with pytest.raises(Interrupted, match='stopped at step 2 of 6.*checkpoint saved'):
    _run(problem, exps, checkpoints=ck, fingerprint='f', stop=stop)
  ck.close()
  ck = BundleCheckpoints(str(tmp_path / 'ck'))
  resumed = _run(problem, exps, checkpoints=ck, fingerprint='f')
  ck.close()
  assert resumed.resumed_from == 2
  for a, b in zip(straight.weights, resumed.weights):
    _assert_same_weights(a, b)


# static: one program per experiment; vmap: both experiments in one program.
@pytest.mark.parametrize('executor', ['static', 'vmap'])
def test_diverging_experiment_is_frozen_and_others_unaffected(problem, executor):
  sound = [_experiment('a'), _experiment('b', 'contracting', seed=1)]
  wild = [sound[0], _experiment('b', 'contracting', lr=1e30, seed=1)]
  want, got = _run(problem, sound, executor), _run(problem, wild, executor)
  assert want.diverged_at == [None, None]
  assert got.diverged_at[0] is None
  assert got.diverged_at[1] is not None and 0 <= got.diverged_at[1] < STEPS
  # The sound experiment trains exactly as it does next to a sound partner.
  _assert_same_weights(want.weights[0], got.weights[0])
  assert got.history[0] == want.history[0]
  # The diverged one keeps its last finite weights.
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got.weights[1].params))


def test_the_executor_choice_is_a_value_and_times_only_when_it_must():
  restored = Restored(4, None, None, [[]], 'vmap', [{'executor': 'vmap'}], [])
  calls = []
  def choose(requested, candidates, cached=None, restored_=None):
    return choose_executor(BundleContext(SPEC, 4), requested, candidates, cached=cached,
                           restored=restored_, inputs_for=lambda s: calls.append(s),
                           steps=10, loop='host', mesh=None, timing_steps=1)
  # A restored bundle keeps the executor it was saved with, whatever is asked.
  got = choose('static', ['static', 'per_experiment'], restored_=restored)
  assert (got.executor, got.how, got.trials) == ('vmap', 'restored', restored.trials)
  assert choose('vmap_matmul', ['static']).how == 'forced'
  cached = {'executor': 'per_experiment', 'trials': [{'executor': 'x'}]}
  got = choose('auto', ['static', 'per_experiment'], cached=cached)
  assert (got.executor, got.how) == ('per_experiment', 'cached')
  # An autotuning cache written before the rename called it 'strategy'.
  old = {'strategy': 'per_experiment', 'trials': []}
  assert choose('auto', ['static', 'per_experiment'], cached=old).executor == 'per_experiment'
  got = choose('auto', ['static'])
  assert (got.executor, got.how, got.chunk) == ('static', 'only candidate', None)
  assert calls == []  # nothing was timed
