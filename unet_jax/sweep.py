"""A layer-subset sweep, end to end: pretrain once, fine-tune every experiment, evaluate.

Experiments (``config.experiments`` x ``config.grid``) are grouped into
bundles that each run as one compiled program (``unet_jax.engine``).

Work directory layout::

  config.json                      the resolved config
  pretrain/weights/                orbax checkpoint of the pretrained U-Net
  pretrain/meta.json               what it was trained with (reused if equal)
  experiments/<name>/weights/      orbax checkpoint after fine-tuning
  experiments/<name>/results.jsonl one row per test image
  experiments/<name>/history.jsonl one row per chunk: step, loss, val_dice, ...
  experiments/<name>/rules.txt     the rule that decided each parameter, per stage
  experiments/<name>/summary.json  rules, frozen paths, Dice, CI, bundle, timings;
                                   written last: its presence means "finished"
  checkpoints/<bundle>/<step>/     orbax checkpoints of unfinished bundles
  tensorboard/<name>/              TensorBoard event files, one run per experiment
  test_set.npz                     the test images, masks and ids
  report.md, report/               tables, findings F1-F6 and figures
  bundles.json                     each bundle's strategy and autotuning timings
  autotune.json                    cached strategy choices
  .lock                            held while a sweep runs
  results.jsonl                    one row per (experiment, test image)

Resuming: running the same sweep again skips finished experiments (their
summary's fingerprint matches the settings) and restores unfinished bundles
from their newest sound checkpoint (``unet_jax.resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import socket
import sys

import jax
import numpy as np
import tqdm

from unet_jax import checkpoint, data, freeze, grid, metrics, results, stats
from unet_jax.bundle import BundleContext
from unet_jax.data import pets
from unet_jax.distributed import is_writer
from unet_jax.engine import BundleResult, Weights, run_bundle
from unet_jax.errors import UserError
from unet_jax.model import count_params, init_model
from unet_jax.resume import BundleCheckpoints, StopRequest
from unet_jax.schedules import Schedule
from unet_jax.settings import SweepSettings
from unet_jax.train import predict


class WorkdirLock:
  """An exclusive lock on a work directory, so two sweeps never write one.

  ``fcntl.flock`` on ``<workdir>/.lock``: the kernel releases it when the
  process dies, so a crashed or killed sweep never leaves a stale lock.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, '.lock')
    self._file = None

  def __enter__(self):
    self._file = open(self.path, 'a+')
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._file.seek(0)
      owner = self._file.read().strip() or 'another process'
      self._file.close()
      raise UserError(f'work directory {os.path.dirname(self.path)} is in use by '
                      f'another sweep ({owner}); wait for it to finish or choose '
                      'another --workdir') from None
    self._file.truncate(0)
    self._file.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    self._file.flush()
    return self

  def __exit__(self, *exc):
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


def prepare_workdir(workdir: str) -> str:
  """Creates the work directory and proves it is writable."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(os.path.join(workdir, 'experiments'), exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.unlink(probe)
  except OSError as e:
    raise UserError(f'work directory {workdir} is not writable: '
                    f'{e.strerror or e}') from None
  return workdir


def _pretrain_fingerprint(s: SweepSettings) -> dict:
  return {'seed': s.seed, 'image_size': s.image_size,
          'model': dataclasses.asdict(s.model), 'source': s.pretrain_source,
          'root': s.pretrain_root,
          'num_images': s.pretrain_images, 'train': dataclasses.asdict(s.pretrain)}


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _checkpoints(workdir: str, key: str) -> BundleCheckpoints:
  return BundleCheckpoints(os.path.join(workdir, 'checkpoints', key), writer=is_writer())


def pretrain(s: SweepSettings, init: Weights, workdir: str, bar: tqdm.tqdm,
             stop: StopRequest | None = None) -> Weights:
  """Pretrains on the natural-image-like source, or reuses a matching run."""
  folder = os.path.join(workdir, 'pretrain')
  meta_path = os.path.join(folder, 'meta.json')
  fingerprint = _pretrain_fingerprint(s)
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get('fingerprint') == fingerprint:
      bar.write(f'reusing pretrained weights from {folder}', file=sys.stderr)
      bar.update(s.pretrain.steps)
      return Weights(*checkpoint.load_weights(os.path.join(folder, 'weights')))
    bar.write('pretrain settings changed: pretraining again', file=sys.stderr)
  if s.pretrain_source in data.LOADERS:  # a saliency set such as XPIE or DUTS
    dataset = data.load(s.pretrain_source, s.pretrain_root, s.image_size,
                        cache_dir=os.path.join(workdir, 'cache'), on_bad=s.on_bad)
  elif s.pretrain_source == pets.NAME:  # from TFDS; root, if given, is its data_dir
    dataset = pets.load(s.pretrain_images, s.image_size, s.pretrain_root)
  else:
    dataset = data.make_dataset(s.pretrain_source, s.pretrain_images, s.image_size, s.seed + 1)
  dataset = dataset.with_channels(s.model.in_channels)
  run = grid.Experiment('pretrain', 'pretrain',
                        Schedule.constant(freeze.preset_rules('full', s.model.depth)),
                        'random', s.seed + 2, s.pretrain.learning_rate,
                        s.pretrain.weight_decay, s.pretrain.steps, s.pretrain.batch_size)
  ctx = BundleContext(s.model, s.pretrain.batch_size, update_frozen_stats=True)
  key = _hash(fingerprint)
  checkpoints = _checkpoints(workdir, f'pretrain-{key}')
  result = run_bundle(ctx, [run], [init], dataset.images, dataset.masks, strategy='static',
                      loop=s.loop, chunk_steps=s.chunk_steps, bar=bar,
                      checkpoints=checkpoints, checkpoint_every=s.checkpoint_every,
                      fingerprint=key, stop=stop)
  if result.diverged_at[0] is not None:
    raise UserError(f'pretraining diverged at step {result.diverged_at[0]} (a loss or '
                    'weight became NaN or Inf); lower pretrain.learning_rate')
  weights = result.weights[0]
  if is_writer():
    os.makedirs(folder, exist_ok=True)
    checkpoint.save_weights(os.path.join(folder, 'weights'), weights.params, weights.stats)
    results.write_json(meta_path, {'fingerprint': fingerprint, 'losses': result.losses[0],
                                   'seconds': result.report.seconds})
  checkpoints.remove()
  return weights


def evaluate(graphdef, weights: Weights, test: data.Dataset) -> list[dict]:
  """One record per test image: Dice, IoU, HD95, ASSD (pixels) and mask sizes.

  Distances are in pixels of the network's input (``image_size``); they are
  NaN when a mask is empty (``metrics.EMPTY_MASK_CONVENTION``).
  """
  probs = predict(graphdef, weights.params, weights.stats, test.images)
  pred = (probs > 0.5).astype(np.float32)
  scores = metrics.score_masks(pred, test.masks)
  return [{'image_id': test.ids[i], 'label': test.labels[i],
           **{name: float(values[i]) for name, values in scores.items()},
           'pred_pixels': int(pred[i].sum()), 'true_pixels': int(test.masks[i].sum())}
          for i in range(len(test))]


def _describe_schedule(params, schedule: Schedule) -> str:
  parts = []
  for start, rules in zip(schedule.starts, schedule.stages):
    parts.append(f'# stage from step {start}\n' + freeze.describe_labels(params, rules))
  return '\n\n'.join(parts) + '\n'


def summarise(s: SweepSettings, exp: grid.Experiment, weights: Weights, rows: list[dict],
              result: BundleResult, index: int, bundle: int, fingerprint: str) -> dict:
  """The summary.json of one experiment."""
  last = exp.schedule.stages[-1]
  mask = jax.tree.leaves(freeze.trainable_mask(weights.params, last))
  trainable = sum(int(x.size) for x, m in zip(jax.tree.leaves(weights.params), mask) if m)
  dice = [r['dice'] for r in rows]
  report = result.report
  return {
      'name': exp.name, 'base': exp.base, 'init': exp.init, 'seed': exp.seed,
      'learning_rate': exp.learning_rate, 'weight_decay': exp.weight_decay,
      'schedule': [{'start': start, 'rules': [[r.pattern, r.action] for r in rules]}
                   for start, rules in zip(exp.schedule.starts, exp.schedule.stages)],
      'rules': [[r.pattern, r.action] for r in exp.schedule.stages[0]],
      'frozen': freeze.frozen_paths(weights.params, exp.schedule.stages[0]),
      'trainable_params': trainable, 'total_params': count_params(weights.params),
      'steps': exp.steps, 'batch_size': exp.batch_size,
      'seconds': report.seconds / len(report.experiments),
      'bundle': bundle, 'strategy': report.strategy,
      'resumed_from_step': result.resumed_from,
      # Diverged: the weights are those of the last step with finite values.
      'diverged_at_step': result.diverged_at[index],
      'mean_dice': float(np.mean(dice)),
      'dice_ci95': list(stats.bootstrap_ci(dice, s.bootstrap_samples, seed=s.seed)),
      'mean_iou': float(np.mean([r['iou'] for r in rows])),
      'mean_hd95_px': _nanmean([r['hd95'] for r in rows]),
      'mean_assd_px': _nanmean([r['assd'] for r in rows]),
      'undefined_distances': int(np.sum(np.isnan([r['hd95'] for r in rows]))),
      'test_images': len(rows), 'chunk_losses': result.losses[index],
      'final_val_dice': result.history[index][-1]['val_dice'],
      'empty_mask_convention': metrics.EMPTY_MASK_CONVENTION,
      'fingerprint': fingerprint,
  }


def _nanmean(values) -> float | None:
  values = np.asarray(values, float)
  return float(np.nanmean(values)) if np.isfinite(values).any() else None


def experiment_fingerprint(s: SweepSettings, exp: grid.Experiment) -> str:
  """Everything a finished experiment's results depend on."""
  return _hash({'pretrain': _pretrain_fingerprint(s) if exp.init == 'pretrained' else None,
                'data': [s.target_source, s.target_root, s.on_bad, s.target_images,
                         s.test_fraction, s.val_fraction, s.image_size, s.seed],
                'model': dataclasses.asdict(s.model),
                'finetune': [s.update_frozen_stats, s.rewarmup_steps],
                'experiment': dataclasses.asdict(exp)})


def _finished(workdir: str, exp: grid.Experiment, fingerprint: str
              ) -> tuple[dict, list[dict]] | None:
  """(summary, rows) of an experiment a previous run finished with these settings."""
  folder = os.path.join(workdir, 'experiments', exp.name)
  try:
    with open(os.path.join(folder, 'summary.json')) as f:
      summary = json.load(f)
    if summary.get('fingerprint') != fingerprint:
      return None
    return summary, results.read_jsonl(os.path.join(folder, 'results.jsonl'))
  except (OSError, ValueError):
    return None


def _write_experiment(workdir: str, exp: grid.Experiment, weights: Weights, rows, history,
                      summary: dict) -> None:
  """Writes an experiment's files; summary.json last, as the 'finished' mark."""
  folder = os.path.join(workdir, 'experiments', exp.name)
  os.makedirs(folder, exist_ok=True)
  marker = os.path.join(folder, 'summary.json')
  if os.path.exists(marker):  # stale results of other settings
    os.unlink(marker)
  checkpoint.save_weights(os.path.join(folder, 'weights'), weights.params, weights.stats)
  results.write_jsonl(os.path.join(folder, 'results.jsonl'), rows)
  results.write_jsonl(os.path.join(folder, 'history.jsonl'), history)
  results.write_atomic(os.path.join(folder, 'rules.txt'),
                       _describe_schedule(weights.params, exp.schedule))
  results.write_json(marker, summary)


def run_sweep(config, workdir: str, *, progress: bool = True) -> list[dict]:
  """Runs the sweep a config describes into ``workdir``; returns the summaries.

  Rerunning it on the same work directory resumes: finished experiments are
  read back, unfinished bundles restart from their newest checkpoint.
  SIGTERM or SIGINT saves a checkpoint and raises
  :class:`unet_jax.resume.Interrupted`.

  Example::

    from unet_jax.settings import load_config
    summaries = run_sweep(load_config('configs/default.py:tiny'), '/tmp/run')
  """
  s = SweepSettings.from_config(config)
  if s.compilation_cache and not jax.config.jax_compilation_cache_dir:
    # Reruns and resumed sweeps load compiled programs instead of compiling
    # (a cache set through JAX_COMPILATION_CACHE_DIR takes precedence).
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(s.compilation_cache))
  writer = is_writer()
  workdir = prepare_workdir(workdir) if writer else os.path.abspath(workdir)
  # Only the writing process takes the work directory's lock.
  with WorkdirLock(workdir) if writer else contextlib.nullcontext(), StopRequest() as stop:
    return _run(s, config, workdir, progress, stop)


def _split(s: SweepSettings, workdir: str
           ) -> tuple[data.Dataset, data.Dataset, data.Dataset]:
  """(train, validation, test) of the target data, stratified, fixed by the seed."""
  if s.target_source in data.LOADERS:
    target = data.load(s.target_source, s.target_root, s.image_size,
                       cache_dir=os.path.join(workdir, 'cache'), on_bad=s.on_bad)
    s.check_split(len(target))
  else:
    target = data.make_dataset(s.target_source, s.target_images, s.image_size, s.seed + 3)
  target = target.with_channels(s.model.in_channels)
  train_idx, test_idx = data.holdout_split(target.labels, s.test_fraction, s.seed)
  train = target.take(train_idx)
  fit_idx, val_idx = data.holdout_split(train.labels, s.val_fraction, s.seed + 1)
  return train.take(fit_idx), train.take(val_idx), target.take(test_idx)


def _run(s: SweepSettings, config, workdir: str, progress: bool, stop: StopRequest
         ) -> list[dict]:
  """The body of run_sweep, inside the work directory's lock."""
  runs = s.runs()
  writer = is_writer()
  fingerprints = {r.name: experiment_fingerprint(s, r) for r in runs}
  done = {r.name: found for r in runs
          if (found := _finished(workdir, r, fingerprints[r.name])) is not None}
  todo = [r for r in runs if r.name not in done]
  bundles, split_by = grid.group_bundles(todo, s.max_bundle) if todo else ([], [])
  if writer:
    results.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  train_set, val_set, test_set = _split(s, workdir)
  if writer:  # for report figures and for looking at what was tested
    results.write_npz(os.path.join(workdir, 'test_set.npz'), images=test_set.images,
                      masks=test_set.masks, ids=np.asarray(test_set.ids))
  val = (val_set.images, val_set.masks) if len(val_set) else None
  graphdef, params, batch_stats = init_model(s.model, s.seed)
  tuning_path = os.path.join(workdir, 'autotune.json')
  tuning, reports = {}, []
  if os.path.exists(tuning_path):
    with open(tuning_path) as f:
      tuning = json.load(f)
  total = s.pretrain.steps + sum(r.steps for r in todo)
  summaries = {name: found[0] for name, found in done.items()}
  rows = {name: found[1] for name, found in done.items()}
  with tqdm.tqdm(total=total, unit='step', disable=not (progress and writer),
                 file=sys.stderr, dynamic_ncols=True) as bar:
    if done:
      bar.write(f'{len(done)} of {len(runs)} experiment(s) already finished in {workdir}',
                file=sys.stderr)
    if split_by:
      bar.write(f'{len(bundles)} bundles: different {", ".join(split_by)} need '
                'separate programs', file=sys.stderr)
    pretrained = None
    if any(r.init == 'pretrained' for r in todo):
      pretrained = pretrain(s, Weights(params, batch_stats), workdir, bar, stop)
    else:
      bar.update(s.pretrain.steps)
    for b, members in enumerate(bundles):
      inits = [pretrained if e.init == 'pretrained'
               else Weights(*init_model(s.model, e.seed + 4)[1:]) for e in members]
      ctx = BundleContext(s.model, members[0].batch_size,
                          update_frozen_stats=s.update_frozen_stats,
                          rewarmup_steps=s.rewarmup_steps)
      key = _hash([fingerprints[e.name] for e in members])
      checkpoints = _checkpoints(workdir, key)
      result = run_bundle(
          ctx, members, inits, train_set.images, train_set.masks, strategy=s.strategy,
          loop=s.loop, chunk_steps=s.chunk_steps, bar=bar, tuning_cache=tuning, val=val,
          checkpoints=checkpoints, checkpoint_every=s.checkpoint_every, fingerprint=key,
          stop=stop, events_dir=os.path.join(workdir, 'tensorboard'))
      report = result.report
      reports.append(dataclasses.asdict(report))
      bar.write(f'bundle {b}: {len(members)} experiment(s), strategy {report.strategy}, '
                f'{report.exp_steps_per_s:.2f} exp-steps/s', file=sys.stderr)
      for i, (exp, weights) in enumerate(zip(members, result.weights)):
        if result.diverged_at[i] is not None:
          bar.write(f'{exp.name} diverged at step {result.diverged_at[i]}: its weights '
                    'are those of the step before', file=sys.stderr)
        exp_rows = [dict(experiment=exp.name, seed=exp.seed, **r)
                    for r in evaluate(graphdef, weights, test_set)]
        summary = summarise(s, exp, weights, exp_rows, result, i, b, fingerprints[exp.name])
        summaries[exp.name], rows[exp.name] = summary, exp_rows
        if writer:
          _write_experiment(workdir, exp, weights, exp_rows, result.history[i], summary)
      if writer:
        ordered = [r for run in runs if run.name in rows for r in rows[run.name]]
        results.write_jsonl(os.path.join(workdir, 'results.jsonl'), ordered)
        results.write_json(os.path.join(workdir, 'bundles.json'),
                           {'split_by': split_by, 'bundles': reports})
        results.write_json(tuning_path, tuning)
      checkpoints.remove()
    if writer:
      if not bundles:  # all finished before: the per-bundle writes did not run
        ordered = [r for run in runs for r in rows[run.name]]
        results.write_jsonl(os.path.join(workdir, 'results.jsonl'), ordered)
      bar.set_description('writing report')
      _write_report(workdir, bar)
  return [summaries[r.name] for r in runs]


def _write_report(workdir: str, bar: tqdm.tqdm) -> None:
  """report.md; a failure here never costs the results, which are written."""
  from unet_jax import report  # pandas, scipy, matplotlib: only once results exist
  try:
    report.write_report(workdir)
  except Exception as e:  # noqa: BLE001 - the results are safe; say how to retry
    bar.write(f'warning: the report could not be written ({type(e).__name__}: {e}); '
              f'results are in {workdir}; retry with: python launch/report.py '
              f'--workdir={workdir}', file=sys.stderr)
