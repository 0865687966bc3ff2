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

from unet_jax import checkpoint, data, freeze, grid, metrics, norm_check, results, stats
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


# Part of every fingerprint: results made by an engine that drew batches or
# treated BatchNorm differently are never reused (2: common random numbers
# and finetune.frozen_norm).
_ENGINE_VERSION = 2


def _pretrain_fingerprint(s: SweepSettings) -> dict:
  return {'seed': s.seed, 'image_size': s.image_size,
          'model': dataclasses.asdict(s.model), 'source': s.pretrain_source,
          'root': s.pretrain_root, 'engine': _ENGINE_VERSION,
          'num_images': s.pretrain_images, 'train': dataclasses.asdict(s.pretrain)}


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _checkpoints(workdir: str, key: str) -> BundleCheckpoints:
  return BundleCheckpoints(os.path.join(workdir, 'checkpoints', key), writer=is_writer())


def _pretrain_data(s: SweepSettings, workdir: str) -> data.Dataset:
  if s.pretrain_source in data.LOADERS:  # a saliency set such as XPIE or DUTS
    dataset = data.load(s.pretrain_source, s.pretrain_root, s.image_size,
                        cache_dir=os.path.join(workdir, 'cache'), on_bad=s.on_bad)
  elif s.pretrain_source == pets.NAME:  # from TFDS; root, if given, is its data_dir
    dataset = pets.load(s.pretrain_images, s.image_size, s.pretrain_root)
  else:
    dataset = data.make_dataset(s.pretrain_source, s.pretrain_images, s.image_size, s.seed + 1)
  return dataset.with_channels(s.model.in_channels)


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
  dataset = _pretrain_data(s, workdir)
  # Everything is trained, so every BatchNorm layer uses batch statistics
  # and updates its running ones whatever the policy.
  run = grid.Experiment('pretrain', 'pretrain',
                        Schedule.constant(freeze.preset_rules('full', s.model.depth)),
                        'random', s.seed + 2, s.pretrain.learning_rate,
                        s.pretrain.weight_decay, s.pretrain.steps, s.pretrain.batch_size,
                        frozen_norm='adapt')
  ctx = BundleContext(s.model, s.pretrain.batch_size)
  key = _hash(fingerprint)
  checkpoints = _checkpoints(workdir, f'pretrain-{key}')
  result = run_bundle(ctx, [run], [init], dataset.images, dataset.masks,
                      train_index=[np.arange(len(dataset))], strategy='static',
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


@dataclasses.dataclass(frozen=True)
class Target:
  """The target data set and its splits (one hold-out split, or one per fold)."""

  dataset: data.Dataset
  splits: list[data.Split]

  def split(self, exp: grid.Experiment) -> data.Split:
    return self.splits[0 if exp.fold is None else exp.fold]

  def part(self, index: np.ndarray) -> data.Dataset:
    return self.dataset.take(index)


def load_target(s: SweepSettings, workdir: str) -> Target:
  """The target data and its stratified splits, fixed by ``s.seed``.

  Raises UserError, with the sizes, when a split would leave a part empty.
  """
  if s.target_source in data.LOADERS:
    target = data.load(s.target_source, s.target_root, s.image_size,
                       cache_dir=os.path.join(workdir, 'cache'), on_bad=s.on_bad)
  else:
    target = data.make_dataset(s.target_source, s.target_images, s.image_size, s.seed + 3)
  target = target.with_channels(s.model.in_channels)
  splits = data.plan_splits(target.labels, test_fraction=s.test_fraction,
                            val_fraction=s.val_fraction, folds=s.folds, seed=s.seed)
  return Target(target, splits)


def evaluate(graphdef, weights: Weights, test: data.Dataset, *,
             hd95_convention: str = 'max') -> list[dict]:
  """One record per test image: Dice, IoU, HD95, ASSD (pixels) and mask sizes.

  Distances are in pixels of the network's input (``image_size``); they are
  NaN when a mask is empty (``metrics.EMPTY_MASK_CONVENTION``).
  """
  probs = predict(graphdef, weights.params, weights.stats, test.images)
  pred = (probs > 0.5).astype(np.float32)
  scores = metrics.score_masks(pred, test.masks, hd95_convention=hd95_convention)
  return [{'image_id': test.ids[i], 'label': test.labels[i],
           **{name: float(values[i]) for name, values in scores.items()},
           'pred_pixels': int(pred[i].sum()), 'true_pixels': int(test.masks[i].sum())}
          for i in range(len(test))]


def check_norm(s: SweepSettings, graphdef, exp: grid.Experiment, weights: Weights,
               fit: data.Dataset, test: data.Dataset, mean_dice: float) -> dict | None:
  """Test Dice again with re-estimated BatchNorm statistics (``unet_jax.norm_check``).

  Only the statistics the policy lets follow the target data are
  re-estimated, on the fit images, with the final weights; a large change
  means the scores depend on the running averages rather than the weights.
  """
  if not jax.tree.leaves(weights.stats):
    return None
  masks = freeze.norm_masks(weights.stats, weights.params, exp.schedule.stages[-1],
                            exp.frozen_norm)
  stats = norm_check.reestimate_stats(s.model, weights.params, weights.stats, fit.images,
                                      update=masks.update, running=masks.running,
                                      batch_size=exp.batch_size)
  probs = predict(graphdef, weights.params, stats, test.images)
  dice = np.asarray(metrics.dice((probs > 0.5).astype(np.float32), test.masks))
  return {'mean_dice_reestimated': float(dice.mean()),
          'change': float(dice.mean() - mean_dice)}


def _describe_schedule(params, schedule: Schedule) -> str:
  parts = []
  for start, rules in zip(schedule.starts, schedule.stages):
    parts.append(f'# stage from step {start}\n' + freeze.describe_labels(params, rules))
  return '\n\n'.join(parts) + '\n'


def summarise(s: SweepSettings, exp: grid.Experiment, weights: Weights, rows: list[dict],
              result: BundleResult, index: int, bundle: int, fingerprint: str,
              split: data.Split, norm: dict | None) -> dict:
  """The summary.json of one experiment."""
  last = exp.schedule.stages[-1]
  mask = jax.tree.leaves(freeze.trainable_mask(weights.params, last))
  trainable = sum(int(x.size) for x, m in zip(jax.tree.leaves(weights.params), mask) if m)
  report = result.report
  return {
      'name': exp.name, 'base': exp.base, 'variant': exp.variant, 'init': exp.init,
      'seed': exp.seed, 'fold': exp.fold, 'folds': s.folds,
      'learning_rate': exp.learning_rate, 'weight_decay': exp.weight_decay,
      'frozen_norm': exp.frozen_norm,
      'schedule': [{'start': start, 'rules': [[r.pattern, r.action] for r in rules],
                    **freeze.trained_blocks(weights.params, rules)}
                   for start, rules in zip(exp.schedule.starts, exp.schedule.stages)],
      'schedule_kind': exp.schedule.describe_kind(),
      'rules': [[r.pattern, r.action] for r in exp.schedule.stages[0]],
      'frozen': freeze.frozen_paths(weights.params, exp.schedule.stages[0]),
      'trainable_params': trainable, 'total_params': count_params(weights.params),
      'steps': exp.steps, 'batch_size': exp.batch_size,
      'train_images': len(split.fit), 'val_images': len(split.val),
      'seconds': report.seconds / len(report.experiments),
      'bundle': bundle, 'strategy': report.strategy,
      'resumed_from_step': result.resumed_from,
      # Diverged: the weights are those of the last step with finite values.
      'diverged_at_step': result.diverged_at[index],
      'chunk_losses': result.losses[index],
      'final_val_dice': result.history[index][-1]['val_dice'],
      'fingerprint': fingerprint,
      **evaluation_fields(s, rows, norm),
  }


def evaluation_settings(s: SweepSettings) -> dict:
  """What scoring a trained network depends on, apart from the network and the data.

  A finished experiment whose summary records other values is scored again
  from its saved weights, without training again.
  """
  return {'hd95_convention': s.hd95_convention, 'norm_check': s.norm_check}


def evaluation_fields(s: SweepSettings, rows: list[dict], norm: dict | None) -> dict:
  """The summary's fields that come from scoring the test images."""
  dice = [r['dice'] for r in rows]
  return {
      'mean_dice': float(np.mean(dice)),
      'dice_ci95': list(stats.bootstrap_ci(dice, s.bootstrap_samples, seed=s.seed)),
      'mean_iou': float(np.mean([r['iou'] for r in rows])),
      'mean_hd95_px': _nanmean([r['hd95'] for r in rows]),
      'mean_assd_px': _nanmean([r['assd'] for r in rows]),
      'undefined_distances': int(np.sum(np.isnan([r['hd95'] for r in rows]))),
      'test_images': len(rows), 'norm_check': norm,
      'empty_mask_convention': metrics.EMPTY_MASK_CONVENTION,
      'hd95_convention': s.hd95_convention, 'evaluation': evaluation_settings(s),
  }


def _nanmean(values) -> float | None:
  values = np.asarray(values, float)
  return float(np.nanmean(values)) if np.isfinite(values).any() else None


def experiment_fingerprint(s: SweepSettings, exp: grid.Experiment) -> str:
  """Everything a finished experiment's weights depend on (scoring: evaluation_settings)."""
  return _hash({'pretrain': _pretrain_fingerprint(s) if exp.init == 'pretrained' else None,
                'data': [s.target_source, s.target_root, s.on_bad, s.target_images,
                         s.test_fraction, s.val_fraction, s.folds, s.image_size, s.seed],
                'model': dataclasses.asdict(s.model), 'engine': _ENGINE_VERSION,
                'finetune': [s.rewarmup_steps], 'experiment': dataclasses.asdict(exp)})


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
    return _Sweep(s, config, workdir, stop).run(progress)


class _Sweep:
  """One run of a sweep inside its work directory's lock: plan, train, write."""

  def __init__(self, s: SweepSettings, config, workdir: str, stop: StopRequest):
    self.s, self.config, self.workdir, self.stop = s, config, workdir, stop
    self.writer = is_writer()
    self.runs = s.runs()
    self.fingerprints = {r.name: experiment_fingerprint(s, r) for r in self.runs}
    done = {r.name: found for r in self.runs
            if (found := _finished(workdir, r, self.fingerprints[r.name])) is not None}
    self.todo = [r for r in self.runs if r.name not in done]
    self.summaries = {name: found[0] for name, found in done.items()}
    self.rows = {name: found[1] for name, found in done.items()}
    self.bundles, self.split_by = (grid.group_bundles(self.todo, s.max_bundle)
                                   if self.todo else ([], []))
    self.reports: list[dict] = []
    tuning_path = os.path.join(workdir, 'autotune.json')
    self.tuning = {}
    if os.path.exists(tuning_path):
      with open(tuning_path) as f:
        self.tuning = json.load(f)

  def run(self, progress: bool) -> list[dict]:
    s, workdir = self.s, self.workdir
    if self.writer:
      # The config as given, and the names of the runs it expands to (readers
      # take this sweep's runs and no folder left by another).
      results.write_json(os.path.join(workdir, 'config.json'),
                         {**self.config.to_dict(), 'runs': [r.name for r in self.runs]})
    target = load_target(s, workdir)
    if self.writer:  # for report figures and for looking at what was tested
      tested = np.unique(np.concatenate([target.split(r).test for r in self.runs]))
      part = target.part(tested)
      results.write_npz(os.path.join(workdir, 'test_set.npz'), images=part.images,
                        masks=part.masks, ids=np.asarray(part.ids))
    graphdef, params, batch_stats = init_model(s.model, s.seed)
    total = s.pretrain.steps + sum(r.steps for r in self.todo)
    with tqdm.tqdm(total=total, unit='step', disable=not (progress and self.writer),
                   file=sys.stderr, dynamic_ncols=True) as bar:
      if self.summaries:
        bar.write(f'{len(self.summaries)} of {len(self.runs)} experiment(s) already finished '
                  f'in {workdir}', file=sys.stderr)
      if self.split_by:
        bar.write(f'{len(self.bundles)} bundles: different {", ".join(self.split_by)} need '
                  'separate programs', file=sys.stderr)
      pretrained = None
      if any(r.init == 'pretrained' for r in self.todo):
        pretrained = pretrain(s, Weights(params, batch_stats), workdir, bar, self.stop)
      else:
        bar.update(s.pretrain.steps)
      self._score_again(target, graphdef, bar)
      for b, members in enumerate(self.bundles):
        self._run_bundle(b, members, pretrained, target, graphdef, bar)
      if self.writer:
        if not self.bundles:  # all finished before: the per-bundle writes did not run
          self._write_results()
        bar.set_description('writing report')
        _write_report(workdir, bar)
    return [self.summaries[r.name] for r in self.runs]

  def _run_bundle(self, b: int, members: list[grid.Experiment], pretrained: Weights | None,
                  target: Target, graphdef, bar: tqdm.tqdm) -> None:
    s, workdir = self.s, self.workdir
    inits = [pretrained if e.init == 'pretrained'
             else Weights(*init_model(s.model, e.seed + 4)[1:]) for e in members]
    splits = [target.split(e) for e in members]
    images, masks = target.dataset.images, target.dataset.masks
    val = ([(images[sp.val], masks[sp.val]) for sp in splits]
           if all(len(sp.val) for sp in splits) else None)
    ctx = BundleContext(s.model, members[0].batch_size, rewarmup_steps=s.rewarmup_steps)
    key = _hash([self.fingerprints[e.name] for e in members])
    checkpoints = _checkpoints(workdir, key)
    result = run_bundle(
        ctx, members, inits, images, masks, train_index=[sp.fit for sp in splits],
        strategy=s.strategy, loop=s.loop, chunk_steps=s.chunk_steps, bar=bar,
        tuning_cache=self.tuning, val=val, checkpoints=checkpoints,
        checkpoint_every=s.checkpoint_every, fingerprint=key, stop=self.stop,
        events_dir=os.path.join(workdir, 'tensorboard'))
    report = result.report
    self.reports.append(dataclasses.asdict(report))
    bar.write(f'bundle {b}: {len(members)} experiment(s), strategy {report.strategy}, '
              f'{report.exp_steps_per_s:.2f} exp-steps/s', file=sys.stderr)
    for i, (exp, weights, split) in enumerate(zip(members, result.weights, splits)):
      if result.diverged_at[i] is not None:
        bar.write(f'{exp.name} diverged at step {result.diverged_at[i]}: its weights '
                  'are those of the step before', file=sys.stderr)
      exp_rows, norm = self._score(exp, weights, target, graphdef)
      summary = summarise(s, exp, weights, exp_rows, result, i, b,
                          self.fingerprints[exp.name], split, norm)
      self.summaries[exp.name], self.rows[exp.name] = summary, exp_rows
      if self.writer:
        _write_experiment(workdir, exp, weights, exp_rows, result.history[i], summary)
    if self.writer:
      self._write_results()
      results.write_json(os.path.join(workdir, 'bundles.json'),
                         {'split_by': self.split_by, 'bundles': self.reports})
      results.write_json(os.path.join(workdir, 'autotune.json'), self.tuning)
    checkpoints.remove()

  def _score(self, exp: grid.Experiment, weights: Weights, target: Target, graphdef
             ) -> tuple[list[dict], dict | None]:
    """(rows, norm check) of one trained network on its split's test images."""
    s, split = self.s, target.split(exp)
    test = target.part(split.test)
    rows = [dict(experiment=exp.name, seed=exp.seed, fold=exp.fold, **r)
            for r in evaluate(graphdef, weights, test, hd95_convention=s.hd95_convention)]
    norm = (check_norm(s, graphdef, exp, weights, target.part(split.fit), test,
                       float(np.mean([r['dice'] for r in rows])))
            if s.norm_check else None)
    return rows, norm

  def _score_again(self, target: Target, graphdef, bar: tqdm.tqdm) -> None:
    """Finished experiments scored under other evaluation settings: score them again."""
    wanted = evaluation_settings(self.s)
    again = [r for r in self.runs if r.name in self.summaries
             and self.summaries[r.name].get('evaluation') != wanted]
    if not again:
      return
    bar.write(f'scoring {len(again)} finished experiment(s) again under the new evaluation '
              f'settings {wanted} (no training)', file=sys.stderr)
    for exp in again:
      folder = os.path.join(self.workdir, 'experiments', exp.name)
      weights = Weights(*checkpoint.load_weights(os.path.join(folder, 'weights')))
      rows, norm = self._score(exp, weights, target, graphdef)
      summary = {**self.summaries[exp.name], **evaluation_fields(self.s, rows, norm)}
      self.summaries[exp.name], self.rows[exp.name] = summary, rows
      if self.writer:
        results.write_jsonl(os.path.join(folder, 'results.jsonl'), rows)
        results.write_json(os.path.join(folder, 'summary.json'), summary)
    if self.writer:
      self._write_results()

  def _write_results(self) -> None:
    ordered = [r for run in self.runs if run.name in self.rows for r in self.rows[run.name]]
    results.write_jsonl(os.path.join(self.workdir, 'results.jsonl'), ordered)


def _write_report(workdir: str, bar: tqdm.tqdm) -> None:
  """report.md; a failure here never costs the results, which are written."""
  from unet_jax import report  # pandas, scipy, matplotlib: only once results exist
  try:
    report.write_report(workdir)
  except Exception as e:  # noqa: BLE001 - the results are safe; say how to retry
    bar.write(f'warning: the report could not be written ({type(e).__name__}: {e}); '
              f'results are in {workdir}; retry with: python launch/report.py '
              f'--workdir={workdir}', file=sys.stderr)
