"""The real sweep, tiny: two experiments, a few steps, into a temporary directory."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from repo import ROOT, set_fields  # noqa: E402

import unet_jax
from unet_jax.errors import UserError
from unet_jax.files import read_jsonl
from unet_jax.sweep.run import run_sweep
from unet_jax.sweep.settings import load_config
from unet_jax.workdir import WorkdirLock

SWEEP = os.path.join(ROOT, 'launch', 'sweep.py')
TINY = os.path.join(ROOT, 'configs', 'default.py') + ':tiny'


def tiny_config(**overrides):
  """configs/default.py:tiny with two experiments and one seed (names without suffixes)."""
  config = load_config(TINY)
  config.only = 'full,head'
  config.grid.seed = (0,)
  return set_fields(config, overrides)


@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('sweep'))
  summaries = run_sweep(tiny_config(), workdir, progress=False)
  return workdir, summaries


def test_results_file_has_a_row_per_experiment_and_test_image(sweep_dir):
  workdir, summaries = sweep_dir
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  n_test = summaries[0].test_images
  assert n_test == 6  # 40% of 16, stratified
  assert len(rows) == 2 * n_test
  assert {r['experiment'] for r in rows} == {'full', 'head'}
  for r in rows:
    assert 0.0 <= r['dice'] <= 1.0 and 0.0 <= r['iou'] <= r['dice'] + 1e-9
  full = [r['dice'] for r in rows if r['experiment'] == 'full']
  assert summaries[[s.name for s in summaries].index('full')].mean_dice == \
      pytest.approx(np.mean(full))


def test_summary_records_rules_and_frozen_paths(sweep_dir):
  workdir, _ = sweep_dir
  with open(os.path.join(workdir, 'experiments', 'head', 'summary.json')) as f:
    head = json.load(f)
  assert head['schedule'][0]['rules'] == [['head', 'train'], ['.*', 'freeze']]
  assert 'enc1/conv1/kernel' in head['frozen']
  assert not any(p.startswith('head/') for p in head['frozen'])
  assert head['trainable_params'] == 4 + 1  # 1x1 conv, 4 channels -> 1, plus bias
  lo, hi = head['dice_ci95']
  assert lo <= head['mean_dice'] <= hi
  with open(os.path.join(workdir, 'experiments', 'full', 'summary.json')) as f:
    assert json.load(f)['frozen'] == []
  with open(os.path.join(workdir, 'experiments', 'head', 'rules.txt')) as f:
    lines = f.read().splitlines()
  assert any(line.startswith('head/kernel') and "rule 0: 'head'" in line for line in lines)
  assert any(line.startswith('enc1/conv1/kernel') and 'freeze' in line for line in lines)


def test_checkpoints_read_back_with_plain_orbax(sweep_dir):
  workdir, _ = sweep_dir
  checkpointer = ocp.StandardCheckpointer()
  pre = checkpointer.restore(os.path.join(workdir, 'pretrain', 'weights'))
  head = checkpointer.restore(os.path.join(workdir, 'experiments', 'head', 'weights'))
  full = checkpointer.restore(os.path.join(workdir, 'experiments', 'full', 'weights'))
  # 'head' froze everything but the head: its encoder is the pretrained one,
  # its statistics followed the target data (frozen_norm='adapt', the default).
  np.testing.assert_array_equal(pre['params']['enc1']['conv1']['kernel'],
                                head['params']['enc1']['conv1']['kernel'])
  assert not np.array_equal(pre['batch_stats']['enc1']['norm1']['mean'],
                            head['batch_stats']['enc1']['norm1']['mean'])
  assert not np.array_equal(pre['params']['head']['kernel'], head['params']['head']['kernel'])
  assert not np.array_equal(pre['params']['enc1']['conv1']['kernel'],
                            full['params']['enc1']['conv1']['kernel'])
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)  # the resolved settings
  assert [e['name'] for e in config['experiments']] == ['full', 'head']
  assert config['runs'] == ['full', 'head'] and config['frozen_norm'] == 'adapt'
  with open(os.path.join(workdir, 'experiments', 'head', 'summary.json')) as f:
    summary = json.load(f)
  assert summary['frozen_norm'] == 'adapt' and summary['hd95_convention'] == 'max'
  assert summary['schedule'][0]['trained'] == ['head']
  assert summary['train_images'] + summary['val_images'] + summary['test_images'] == 16


def test_summary_records_where_each_run_stopped_and_its_best(sweep_dir):
  workdir, summaries = sweep_dir
  for summary in summaries:
    history = read_jsonl(os.path.join(workdir, 'experiments', summary.name, 'history.jsonl'))
    assert summary.stop_reason in ('converged', 'cap')
    assert summary.stopped_at_step == history[-1]['step'] <= summary.steps
    best = max(history, key=lambda h: h['val_dice'])  # min_delta 0.005: the first best
    assert summary.best_val_dice == pytest.approx(best['val_dice'], abs=0.005)
    assert summary.best_step in [h['step'] for h in history]
    assert summary.early_stop == {'patience': 4, 'min_delta': 0.005}


def test_a_cap_in_epochs_becomes_steps_of_whole_chunks(tmp_path):
  # ceil(7 epochs x training images / batch 8), rounded up to whole chunks of 2.
  config = tiny_config(**{'finetune.epochs': 7, 'only': 'head'})
  summaries = run_sweep(config, str(tmp_path), progress=False)
  train = summaries[0].train_images
  steps = -(-7 * train // 8)
  assert summaries[0].steps == -(-steps // 2) * 2  # chunk_steps = 2
  written = json.load(open(os.path.join(tmp_path, 'config.json')))
  assert written['finetune']['steps'] == summaries[0].steps and written['epochs'] == 7.0


def test_sweep_ends_with_a_report_history_and_events(sweep_dir):
  workdir, summaries = sweep_dir
  with open(os.path.join(workdir, 'report.md')) as f:
    text = f.read()
  assert '| F1 |' in text and '| full |' in text
  for figure in ('dice', 'curves', 'schedules', 'overlays'):
    with open(os.path.join(workdir, 'report', f'{figure}.png'), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  history = read_jsonl(os.path.join(workdir, 'experiments', 'full', 'history.jsonl'))
  assert [h['step'] for h in history] == [2, 4]
  assert all(0.0 <= h['val_dice'] <= 1.0 for h in history)
  assert summaries[0].final_val_dice == history[-1]['val_dice']
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  assert all(r['hd95'] >= 0 or np.isnan(r['hd95']) for r in rows)
  # TensorBoard events, one run folder per experiment, readable without TF.
  tags = _event_tags(os.path.join(workdir, 'tensorboard', 'head'))
  assert {'loss', 'val_dice', 'learning_rate', 'trainable_fraction'} <= set(tags)
  assert sorted(tags['val_dice']) == [2, 4]


def test_a_workdir_without_saved_predictions_reports_overlays_only_from_the_launcher(
    sweep_dir, tmp_path):
  # As a work directory scored before the sweep saved predictions: the analysis runs no
  # network (no figure), launch/report.py runs the saved ones (the same masks).
  from unet_jax.analysis import load, report  # noqa: PLC0415
  from unet_jax.sweep.evaluate import predictions_from_weights  # noqa: PLC0415
  from unet_jax.workdir import WorkdirPaths  # noqa: PLC0415
  old = str(tmp_path / 'old')
  shutil.copytree(sweep_dir[0], old, ignore=shutil.ignore_patterns('report*', 'tensorboard'))
  paths = WorkdirPaths(old)
  saved = {}
  for name in os.listdir(os.path.join(old, 'experiments')):
    path = paths.experiment(name).predictions
    saved[name] = unet_jax.files.read_masks(path)
    os.remove(path)
  res = load(old)
  assert report.saved_overlays(old, res) is None
  overlays = report.saved_overlays(old, res, predictions_from_weights)
  for name, masks in overlays.predictions.items():
    ids, want = saved[name]
    where = {image: i for i, image in enumerate(ids)}
    np.testing.assert_array_equal(masks, want[[where[i] for i in overlays.ids]])
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'report.py'),
                         f'--workdir={old}'], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  assert os.path.isfile(os.path.join(paths.report_dir, 'overlays.png'))


def _event_tags(folder: str) -> dict[str, list[int]]:
  """tag -> steps, read from TFRecord event files with tensorboardX's protobufs."""
  import struct

  from tensorboardX.proto import event_pb2
  tags: dict[str, list[int]] = {}
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  return tags


def test_finished_experiments_are_not_run_again(sweep_dir, capsys):
  workdir, summaries = sweep_dir
  again = run_sweep(tiny_config(), workdir, progress=True)
  assert '2 of 2 experiment(s) already finished' in capsys.readouterr().err
  assert again == summaries
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  assert len(rows) == 2 * summaries[0].test_images  # nothing duplicated


def test_new_evaluation_settings_score_finished_experiments_again(tmp_path, capsys):
  workdir = str(tmp_path)
  first = run_sweep(tiny_config(), workdir, progress=False)
  capsys.readouterr()
  again = run_sweep(tiny_config(**{'evaluation.hd95': 'pooled'}), workdir, progress=True)
  err = capsys.readouterr().err
  assert 'scoring 2 finished experiment(s) again' in err and 'bundle 0' not in err
  for old, new in zip(first, again):
    assert new.hd95_convention == 'pooled' and old.hd95_convention == 'max'
    assert new.chunk_losses == old.chunk_losses  # not trained again
    assert new.mean_dice == old.mean_dice and new.fingerprint == old.fingerprint
  rows = read_jsonl(os.path.join(workdir, 'experiments', 'full', 'results.jsonl'))
  assert len(rows) == first[0].test_images
  with open(os.path.join(workdir, 'experiments', 'full', 'summary.json')) as f:
    assert json.load(f)['evaluation'] == {'hd95_convention': 'pooled', 'norm_check': True}


def test_pretraining_is_reused(sweep_dir, tmp_path, capsys):
  # On a copy: the other tests read the module's sweep as it was written.
  workdir = str(tmp_path / 'copy')
  shutil.copytree(sweep_dir[0], workdir)
  before = os.path.getmtime(os.path.join(workdir, 'pretrain', 'meta.json'))
  # Other fine-tuning settings: 'head' runs again on the same pretrained net.
  run_sweep(tiny_config(only='head', **{'finetune.learning_rate': 2e-3}), workdir,
            progress=True)
  assert 'reusing pretrained weights' in capsys.readouterr().err
  assert os.path.getmtime(os.path.join(workdir, 'pretrain', 'meta.json')) == before


@pytest.mark.parametrize('overrides, message', [
    ({'model.norm': 'layer'}, "'model.norm' is 'layer'; valid choices: batch, group, none"),
    ({'image_size': 34}, 'image size 34 must be divisible by 4 (2**model.depth)'),
    ({'only': 'full,encoder'}, 'unknown experiment(s) encoder; valid names:'),
    ({'experiments.head.rules': 'encoder'}, "'experiments.head.rules': unknown freeze preset"),
    ({'experiments.head.init': 'imagenet'}, 'valid choices: pretrained, random'),
    ({'finetune.steps': 0}, "'finetune.steps' must be an integer >= 1"),
    ({'data.test_fraction': 0.01}, '0 test images (split per class); every part needs'),
    ({'finetune.frozen_norm': 'train'}, "'finetune.frozen_norm' is 'train'; valid choices: "
                                        'inference, adapt'),
    ({'grid.frozen_norm': ('adapt', 'eval')}, "'grid.frozen_norm' has a bad value 'eval'; "
                                              'valid: inference, adapt'),
    ({'grid.fold': (0, 1)}, "'grid.fold' needs data.folds >= 2"),
    ({'data.folds': 3, 'grid.fold': (3,)}, "bad value 3; folds are 0..2"),
    ({'evaluation.hd95': 'mean'}, "'evaluation.hd95' is 'mean'; valid choices: max, pooled"),
    # A config file can set any type (a --config.x flag is cast by ml_collections).
    ({'evaluation': {'hd95': 'max', 'norm_check': 'yes'}},
     "'evaluation.norm_check' must be True or False"),
    ({'data.folds': -1}, "'data.folds' must be an integer >= 0"),
    ({'data.folds': 3, 'grid.fold': ('a',)}, "'grid.fold' has a bad value 'a'"),
    ({'grid.frozen_norm': (['adapt'],)}, "'grid.frozen_norm' has a bad value ['adapt']"),
    ({'data.folds': 17}, 'data.folds=17 needs at least 17 images'),
    ({'finetune.update_frozen_stats': True}, "'finetune.update_frozen_stats' was replaced by "
                                             "finetune.frozen_norm"),
    ({'pretrain.source': 'xpie'}, 'valid choices: ultrasound, chest_xray, dead_leaves'),
    ({'finetune.patience': -1}, "'finetune.patience' (evaluations without improvement"),
    ({'finetune.min_delta': 2.0}, "'finetune.min_delta' (validation Dice an evaluation"),
    ({'finetune.epochs': -3}, "'finetune.epochs' (the step cap in epochs"),
    ({'finetune.epochs': 2, 'grid.steps': (4, 8)}, "'finetune.epochs' and 'grid.steps' are "
                                                   'both set'),
])
def test_bad_config_fields_are_named(tmp_path, overrides, message):
  with pytest.raises(UserError) as e:
    run_sweep(tiny_config(**overrides), str(tmp_path), progress=False)
  assert message in str(e.value)


def test_unknown_block_in_rules_lists_valid_blocks(tmp_path):
  config = tiny_config(only='mine')
  config.experiments['mine'] = {'rules': (('enc7', 'train'), ('.*', 'freeze')),
                                'init': 'pretrained'}
  with pytest.raises(UserError, match='valid block names: bottleneck, dec1, dec2, enc1'):
    run_sweep(config, str(tmp_path), progress=False)


def test_export_and_predict_at_any_size(sweep_dir, tmp_path):
  workdir, _ = sweep_dir
  out = unet_jax.export_experiment(workdir, 'full', str(tmp_path / 'model'))
  with open(os.path.join(out, 'model.json')) as f:
    assert json.load(f)['frozen_norm'] == 'adapt'
  images = np.random.default_rng(0).random((3, 45, 70)).astype(np.float32)
  probs = unet_jax.predict(out, images)
  assert probs.shape == (3, 45, 70) and probs.dtype == np.float32
  assert 0.0 <= probs.min() and probs.max() <= 1.0
  assert unet_jax.predict(out, images[..., None]).shape == (3, 45, 70, 1)
  # At the model's own size, prediction is the evaluation path's.
  test = np.random.default_rng(1).random((2, 32, 32, 1)).astype(np.float32)
  from unet_jax.model import UNetSpec, init_model
  from unet_jax.model import predict as predict_batches
  from unet_jax.sweep.checkpoint import load_weights
  graphdef = init_model(UNetSpec(base_width=4, depth=2), 0)[0]
  params, stats = load_weights(os.path.join(workdir, 'experiments', 'full', 'weights'))
  np.testing.assert_allclose(unet_jax.predict(out, test),
                             predict_batches(graphdef, params, stats, test), atol=1e-5)


def test_export_errors_name_the_problem(sweep_dir, tmp_path):
  workdir, _ = sweep_dir
  with pytest.raises(UserError, match="no finished experiment 'nope'.*full, head"):
    unet_jax.export_experiment(workdir, 'nope', str(tmp_path / 'm'))
  with pytest.raises(UserError, match='not an exported model'):
    unet_jax.predict(str(tmp_path), np.zeros((1, 8, 8)))
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'export.py'),
                         f'--workdir={workdir}', '--experiment=head'],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and 'missing flag(s): --out' in proc.stderr


def test_a_workdir_in_use_is_refused(tmp_path):
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(UserError, match='is in use by another sweep \\(pid'):
      run_sweep(tiny_config(only='head'), str(tmp_path), progress=False)
  # Released: the same directory works again, and the lock was not the
  # reason anything else failed.
  with WorkdirLock(str(tmp_path)):
    pass


def test_rgb_shaped_network_gets_repeated_grey(tmp_path):
  summaries = run_sweep(tiny_config(**{'model.in_channels': 3}, only='head'),
                        str(tmp_path), progress=False)
  assert summaries[0].test_images == 6


def _cli(*args, cwd):
  return subprocess.run([sys.executable, SWEEP, *args], cwd=cwd, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.parametrize('args, message', [
    (['--config.model.norm=layer'], "'model.norm' is 'layer'"),
    (['--config.no_such_field=1'], 'no_such_field'),
    (['--config=configs/nope.py'], 'nope.py'),
    (['--workdir=/dev/null/sub'], 'is not writable'),
])
def test_cli_user_errors_exit_2_without_traceback(tmp_path, args, message):
  proc = _cli(f'--config={ROOT}/configs/default.py:tiny', *args, cwd=tmp_path) \
      if not args[0].startswith('--config=') else _cli(*args, cwd=ROOT)
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_cli_runs_and_prints_the_table_with_seed_spread(tmp_path):
  proc = _cli(f'--config={ROOT}/configs/default.py:tiny', '--config.only=head,full',
              '--workdir', str(tmp_path / 'w'), '--noprogress', cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[0].split() == ['experiment', 'trained', 'dice', 'seed', 'SD', 'seed', 'means',
                              '(n)', '95%', 'CI', 'best@/stop', 's/run']
  assert {lines[2].split()[0], lines[3].split()[0]} == {'head', 'full'}
  assert '(3)' in lines[2]  # three seeds each
  assert any(line.startswith('F1 ') for line in lines)
  assert os.path.exists(tmp_path / 'w' / 'results.jsonl')


def _sweep_command(workdir):
  return [sys.executable, SWEEP, f'--config={TINY}', f'--workdir={workdir}',
          '--config.only=full,head', '--config.grid.seed=(0,)', '--config.finetune.steps=12',
          '--config.executor=static', '--progress=false']


def _finetune_checkpoints(workdir) -> list[int]:
  folder = os.path.join(workdir, 'checkpoints')
  bundles = [b for b in (os.listdir(folder) if os.path.isdir(folder) else [])
             if not b.startswith('pretrain') and os.path.isdir(os.path.join(folder, b))]
  return [int(s) for b in bundles for s in os.listdir(os.path.join(folder, b)) if s.isdigit()]


def _stop_after_checkpoint(workdir, signum, after_step=0) -> subprocess.CompletedProcess:
  """Starts the sweep, sends ``signum`` once fine-tuning saved a step > after_step."""
  proc = subprocess.Popen(_sweep_command(workdir), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 600
  while proc.poll() is None and time.monotonic() < deadline:
    if any(step > after_step for step in _finetune_checkpoints(workdir)):
      proc.send_signal(signum)
      break
    time.sleep(0.05)
  out, err = proc.communicate(timeout=600)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _outcome(workdir):
  """Everything a sweep leaves that must not depend on interruptions."""
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  weights, history = {}, {}
  for name in ('full', 'head'):
    folder = os.path.join(workdir, 'experiments', name)
    weights[name] = ocp.StandardCheckpointer().restore(os.path.join(folder, 'weights'))
    history[name] = read_jsonl(os.path.join(folder, 'history.jsonl'))
  return rows, weights, history


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('straight'))
  subprocess.run(_sweep_command(workdir), check=True, capture_output=True)
  return _outcome(workdir)


def test_interrupted_sweep_resumes_to_identical_results(tmp_path, straight_run):
  workdir = str(tmp_path)
  # SIGTERM: a checkpoint, a message, exit code 143.
  stopped = _stop_after_checkpoint(workdir, signal.SIGTERM)
  assert stopped.returncode == 143, stopped.stderr
  assert 'checkpoint saved; run the same command again to resume' in stopped.stderr
  assert 'resume with: python ' in stopped.stderr
  assert 'Traceback' not in stopped.stderr
  saved = max(_finetune_checkpoints(workdir))
  # The resumed run killed outright once it has saved a later step.
  killed = _stop_after_checkpoint(workdir, signal.SIGKILL, after_step=saved)
  assert killed.returncode == -9, killed.stderr
  assert f'resuming a bundle of 2 at step {saved} of 12' in killed.stderr
  later = max(_finetune_checkpoints(workdir))
  assert later > saved
  resumed = subprocess.run(_sweep_command(workdir), capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr
  assert f'resuming a bundle of 2 at step {later} of 12' in resumed.stderr
  rows, weights, history = _outcome(workdir)
  want_rows, want_weights, want_history = straight_run
  assert rows == want_rows and history == want_history
  for name in want_weights:
    for a, b in zip(jax.tree.leaves(want_weights[name]), jax.tree.leaves(weights[name])):
      np.testing.assert_array_equal(a, b)  # bitwise
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))



def _weights(workdir, name):
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'experiments', name, 'weights'))


def test_common_random_numbers_whatever_the_names(tmp_path):
  # Two experiments with the same rules and seed under different names train
  # the same network; adding experiments to a sweep changes no result.
  config = tiny_config(only='twin_a,twin_b,full')
  for name in ('twin_a', 'twin_b'):
    config.experiments[name] = {'rules': 'contracting', 'init': 'pretrained'}
  workdir = str(tmp_path / 'both')
  run_sweep(config, workdir, progress=False)
  a, b = _weights(workdir, 'twin_a'), _weights(workdir, 'twin_b')
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a['params']['enc1']['conv1']['kernel'],
                            _weights(workdir, 'full')['params']['enc1']['conv1']['kernel'])
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  scores = {n: [(r['image_id'], r['dice'], r['hd95']) for r in rows if r['experiment'] == n]
            for n in ('twin_a', 'twin_b')}
  assert scores['twin_a'] == scores['twin_b']
  alone = tiny_config(only='twin_b')
  alone.experiments['twin_b'] = {'rules': 'contracting', 'init': 'pretrained'}
  workdir_alone = str(tmp_path / 'alone')
  run_sweep(alone, workdir_alone, progress=False)
  for x, y in zip(jax.tree.leaves(b), jax.tree.leaves(_weights(workdir_alone, 'twin_b'))):
    np.testing.assert_array_equal(x, y)


def test_cross_validation_folds_in_one_bundle(tmp_path):
  workdir = str(tmp_path)
  summaries = run_sweep(tiny_config(**{'data.folds': 4, 'grid.seed': (0, 1)}), workdir,
                        progress=False)
  assert len(summaries) == 2 * 2 * 4 and {s.bundle for s in summaries} == {0}
  assert {s.fold for s in summaries} == {0, 1, 2, 3}
  assert sorted(s.name for s in summaries)[:2] == ['full-seed0-fold0', 'full-seed0-fold1']
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  for seed in (0, 1):
    tested = [r['image_id'] for r in rows if r['seed'] == seed and r['experiment'].startswith(
        'head')]
    assert sorted(tested) == sorted(set(tested)) and len(tested) == 16  # each image once
  by_fold = {s.fold: s for s in summaries if s.base == 'head' and s.seed == 0}
  assert sum(s.test_images for s in by_fold.values()) == 16
  assert all(s.train_images + s.val_images + s.test_images == 16
             for s in by_fold.values())
  with np.load(os.path.join(workdir, 'test_set.npz')) as f:
    assert len(f['ids']) == 16  # every image is a test image once
  from unet_jax import analysis
  res = analysis.load(workdir)
  row = res.summary().set_index('base').loc['head']
  assert (row['n_runs'], row['n_images']) == (2, 16)  # folds pooled per seed


def test_sweep_on_a_real_set_from_its_folder(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  for i in range(12):
    image = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[5 + i:20 + i, 10:30] = 255
    for folder, array in (('images', image), ('masks', mask)):
      os.makedirs(tmp_path / 'set' / folder, exist_ok=True)
      Image.fromarray(array).save(tmp_path / 'set' / folder / f'img{i:02d}.png')
  workdir = str(tmp_path / 'run')
  summaries = run_sweep(tiny_config(**{'only': 'head', 'data.source': 'folder',
                                       'data.root': str(tmp_path / 'set'),
                                       'pretrain.source': 'folder',
                                       'pretrain.root': str(tmp_path / 'set')}),
                        workdir, progress=False)
  assert summaries[0].test_images == round(12 * load_config(TINY).data.test_fraction)
  rows = read_jsonl(os.path.join(workdir, 'results.jsonl'))
  assert {r['image_id'] for r in rows} <= {f'img{i:02d}' for i in range(12)}
  assert os.listdir(os.path.join(workdir, 'cache'))  # preprocessed arrays kept


@pytest.mark.parametrize('overrides, message', [
    ({'data.source': 'busi'}, "data.source='busi' is a real data set: give its folder as "
                              'data.root'),
    ({'data.source': 'busi', 'data.root': '/nonexistent/busi'}, 'Dataset_BUSI_with_GT'),
    ({'data.source': 'mnist'}, 'valid choices: ultrasound'),
    ({'pretrain.source': 'folder'}, "pretrain.source='folder' is a real data set: give its "
                                    'folder as pretrain.root'),
])
def test_bad_real_set_settings_are_named(tmp_path, overrides, message):
  with pytest.raises(UserError, match=re.escape(message)):
    run_sweep(tiny_config(**overrides), str(tmp_path), progress=False)
