"""A layer-subset sweep, end to end: plan, pretrain once, train the bundles, write the results.

Experiments (``config.experiments`` x ``config.grid``) are grouped into
bundles that each run as one compiled program (``unet_jax.engine``). What
the sweep writes is laid out by ``unet_jax.workdir`` and typed by
``unet_jax.records``.

Resuming: running the same sweep again skips finished experiments (their
summary's fingerprint matches the settings), scores finished ones again
when only the evaluation settings changed, and restores unfinished bundles
from their newest sound checkpoint (``unet_jax.engine.resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Callable, NamedTuple

import jax
import numpy as np
import tqdm

from unet_jax import augment, data, encoders, files, freeze, structures
from unet_jax.engine.choices import BATCHED
from unet_jax.engine.distributed import is_writer
from unet_jax.engine.experiment import AUGMENT_DEFAULTS, STRATEGY_DEFAULTS, Experiment
from unet_jax.engine.resume import StopRequest
from unet_jax.engine.run import BundleData, BundleResult, RunOptions, Weights, run_bundle
from unet_jax.engine.step import BundleContext
from unet_jax.errors import UserError
from unet_jax.model import init_model
from unet_jax.records import ExperimentSummary, StageRecord
from unet_jax.schedules import Schedule
from unet_jax.sweep import checkpoint, evaluate, grid
from unet_jax.sweep.pretraining import (
    bundle_checkpoints,
    fingerprint_hash,
    pretrain,
    pretrain_fingerprint,
    pretrain_steps,
)
from unet_jax.sweep.settings import SweepSettings
from unet_jax.workdir import WorkdirLock, WorkdirPaths, prepare_workdir

# Part of every fingerprint: results made by an engine that drew batches or
# treated BatchNorm differently, or summaries of another shape, are never
# reused (2: common random numbers and finetune.frozen_norm; 3: the typed
# summary record; 4: runs train to convergence and keep their best-validation
# weights). Pretraining was last changed by 2 (unet_jax.sweep.pretraining).
_ENGINE_VERSION = 4


def experiment_fingerprint(s: SweepSettings, exp: Experiment, copies: int = 0) -> str:
  """Everything a finished experiment's weights depend on (its scoring: evaluation).

  ``copies``: groups of copied images in the target set, which change its
  split (kept in one part); a set without copies keeps its older fingerprint.
  """
  pretrained = pretrain_fingerprint(s) if exp.init == 'pretrained' else None
  return fingerprint_hash({'pretrain': pretrained,
                          'data': [s.target_source, s.target_root, s.on_bad, s.target_images,
                                   s.test_fraction, s.val_fraction, s.folds, s.image_size, s.seed]
                          + (['split_per_seed'] if s.split_per_seed else [])
                          + ([f'empty masks: {s.empty_masks}']
                             if s.empty_masks != data.EMPTY_MASKS[0] else [])
                          + ([f'intensity: {s.intensity}'] if s.intensity != data.INTENSITIES[0]
                             else [])
                          + ([f'copies kept together: {copies}'] if copies else [])
                          + ([f'label maps: {list(s.structures)}={list(s.label_values)}']
                             if s.label_values else [])
                          + ([f'resize: {s.resize}'] if s.resize != data.RESIZES[0] else []),
                          'model': s.model.identity(), 'engine': _ENGINE_VERSION,
                          'finetune': [s.rewarmup_steps, dataclasses.asdict(s.early_stop)],
                          'experiment': _identity(exp)})


def _identity(exp: Experiment) -> dict:
  """The experiment's fields, strategy and augmentation fields only where they
  are not plain fine-tuning's (so runs made before they existed are still found)."""
  out = {k: v for k, v in dataclasses.asdict(exp).items()
         if k not in STRATEGY_DEFAULTS and k not in AUGMENT_DEFAULTS}
  # A rule's kind likewise, where it has none.
  out['schedule']['stages'] = [[{k: v for k, v in rule.items() if k != 'kind' or v is not None}
                                for rule in stage] for stage in out['schedule']['stages']]
  augmented = {k: getattr(exp, k) for k, v in AUGMENT_DEFAULTS.items() if getattr(exp, k) != v}
  return {**out, **exp.strategy_fields(), **augmented}


@dataclasses.dataclass(frozen=True)
class Target:
  """The target data set and its splits (one hold-out split, or one per fold).

  ``splits`` are those of ``data.seed``; with ``data.split_per_seed`` a run of
  training seed q uses the splits drawn from :func:`split_seed` instead.
  """

  dataset: data.Dataset
  splits: list[data.Split]
  plan: Callable[[int], list[data.Split]] | None = None  # per-seed splits, cached

  def split(self, exp: Experiment) -> data.Split:
    splits = self.splits if self.plan is None else self.plan(exp.seed)
    return splits[0 if exp.fold is None else exp.fold]

  def part(self, index: np.ndarray) -> data.Dataset:
    return self.dataset.take(index)


def split_seed(s: SweepSettings, seed: int) -> int:
  """The seed of the split a run of training seed ``seed`` uses.

  ``data.seed`` for every run, or with ``data.split_per_seed`` ``data.seed +
  2 seed`` (``plan_splits`` draws the test part with its seed and the
  validation part with seed + 1, so no two training seeds share a stream; seed
  0 keeps the shared split).
  """
  return s.seed + 2 * seed if s.split_per_seed else s.seed


def load_target(s: SweepSettings, paths: WorkdirPaths) -> Target:
  """The target data and its stratified splits, fixed by ``s.seed`` (and the run's
  seed with ``data.split_per_seed``).

  Raises UserError, with the sizes, when a split would leave a part empty.
  """
  target = data.open_source(s.target_source, num=s.target_images, size=s.image_size,
                            seed=s.seed + 3, root=s.target_root, cache_dir=paths.cache,
                            on_bad=s.on_bad, declared=_declared(s), resize=s.resize).with_channels(
                                s.model.in_channels).normalised(s.intensity)

  groups = target.groups()  # copies of one image stay in one part
  empty = target.empty()

  def plan(seed: int) -> list[data.Split]:
    splits = data.plan_splits(target.labels, test_fraction=s.test_fraction,
                              val_fraction=s.val_fraction, folds=s.folds,
                              seed=split_seed(s, seed), groups=groups)
    if s.empty_masks == data.EMPTY_MASKS[0]:
      return splits
    return [data.leave_out_empty(split, empty, s.empty_masks) for split in splits]

  return Target(target, plan(0), functools.lru_cache(maxsize=None)(plan)
                if s.split_per_seed else None)


def _declared(s: SweepSettings) -> str:
  """``data.structures`` as resolved, for :func:`data.open_source`."""
  if s.label_values is None:
    return '' if s.structures == structures.BINARY else s.structures[0]
  return ','.join(f'{n}={v}' for n, v in zip(s.structures, s.label_values))


def data_record(s: SweepSettings, target: Target) -> dict:
  """data.json: what the target set held, what was left out, copies, split sizes."""
  ds = target.dataset
  classes, counts = np.unique(ds.labels, return_counts=True)
  where = lambda i: (ds.meta[i].get('image', ds.ids[i]) if ds.meta else ds.ids[i])
  return {'source': s.target_source, 'root': s.target_root, 'images': len(ds),
          'classes': {str(c): int(n) for c, n in zip(classes, counts)},
          'skipped': list(ds.skipped),
          'duplicates': [[where(i) for i in group] for group in ds.duplicates],
          'empty_masks': {'images': int(ds.empty().sum()),
                          'rule': s.empty_masks},
          'split_per_seed': s.split_per_seed, 'folds': s.folds, 'intensity': s.intensity,
          'structures': list(ds.structures), 'resize': s.resize,
          'label_values': list(s.label_values) if s.label_values else None,
          'split_sizes': target.splits[0].sizes()}


def summarise(s: SweepSettings, exp: Experiment, weights: Weights, rows: list[dict],
              result: BundleResult, index: int, bundle: int, fingerprint: str,
              split: data.Split, norm: dict | None, seconds: dict | None = None
              ) -> ExperimentSummary:
  """The summary.json of one trained experiment (``seconds``: its scoring times)."""
  last = exp.schedule.stages[-1]
  mask = jax.tree.leaves(freeze.trainable_mask(weights.params, last))
  sizes = [int(x.size) for x in jax.tree.leaves(weights.params)]
  adapter = [kind == 'adapter' for kind in freeze.leaf_kinds(weights.params)]
  trainable = sum(n for n, m in zip(sizes, mask) if m)
  # Adapters an experiment trains are parameters added to the network; the
  # others stay zero and leave it as it was.
  extra = sum(n for n, m, a in zip(sizes, mask, adapter) if m and a)
  report = result.report
  run = result.progress[index]
  per_step = report.seconds_per_step[index] if report.seconds_per_step else None
  return ExperimentSummary(
      name=exp.name, base=exp.base, seed=exp.seed, variant=exp.variant,
      finetune_strategy=exp.strategy_fields(),
      grid={axis: getattr(exp, axis) for axis in grid.AXES}, init=exp.init, fold=exp.fold,
      augmentation=dict(zip(augment.NAMES, exp.augment_values)),
      folds=s.folds, learning_rate=exp.learning_rate, weight_decay=exp.weight_decay,
      frozen_norm=exp.frozen_norm, steps=exp.steps, batch_size=exp.batch_size,
      schedule=_stage_records(s, weights.params, exp.schedule),
      schedule_kind=exp.schedule.describe_kind(),
      frozen=freeze.frozen_paths(weights.params, exp.schedule.stages[0]),
      trainable_params=trainable, extra_params=extra,
      total_params=sum(n for n, a in zip(sizes, adapter) if not a),
      train_images=len(split.fit), val_images=len(split.val),
      split_seed=split_seed(s, exp.seed), empty_masks=s.empty_masks,
      seconds=report.seconds / len(report.experiments), bundle=bundle,
      own_seconds=per_step * run.stopped_at if per_step is not None else None,
      executor=report.executor, resumed_from_step=result.resumed_from,
      diverged_at_step=result.diverged_at[index], chunk_losses=result.losses[index],
      final_val_dice=result.history[index][-1]['val_dice'], fingerprint=fingerprint,
      stop_reason=run.reason, stopped_at_step=run.stopped_at,
      best_step=run.best_step if run.best_step else None,
      best_val_dice=run.best_val_dice if run.best_step else None,
      seconds_to_best=(per_step * run.best_step if per_step is not None and run.best_step
                       else None),
      early_stop=dataclasses.asdict(s.early_stop),
      **_score_fields(s, rows, norm, seconds))


def _stage_records(s: SweepSettings, params, schedule: Schedule) -> list[StageRecord]:
  out = []
  for start, rules in zip(schedule.starts, schedule.stages):
    blocks = freeze.trained_blocks(params, rules)
    fractions = blocks['block_fractions']
    out.append(StageRecord(start, [r.as_list() for r in rules], blocks['trained'],
                           blocks['partly'],
                           {b: fractions[b] for b in s.model.block_names()}))
  return out


def _score_fields(s: SweepSettings, rows: list[dict], norm: dict | None,
                  seconds: dict | None = None) -> dict:
  return evaluate.score_fields(rows, norm, hd95_convention=s.hd95_convention,
                               norm_check=s.norm_check,
                               bootstrap_samples=s.bootstrap_samples, seed=s.seed,
                               seconds=seconds)


def _describe_schedule(s: SweepSettings, params, exp: Experiment) -> str:
  """rules.txt: per stage, each parameter's action or learning-rate multiplier."""
  scale = exp.block_scale(encoders.layout(s.model))
  fields = exp.strategy_fields()
  if 'layer_decay' in fields:
    fields['decay_order'] = exp.decay_order
  head = ''.join(f'# {k}: {v}\n' for k, v in fields.items())
  parts = []
  for start, rules in zip(exp.schedule.starts, exp.schedule.stages):
    parts.append(f'# stage from step {start}\n' + freeze.describe_labels(params, rules, scale))
  return head + '\n\n'.join(parts) + '\n'


def check_rules(s: SweepSettings, params, runs) -> None:
  """Every run's rules fit the network (block names, kinds, coverage), before any
  training; a misfit is a UserError naming the experiment."""
  seen = set()
  for exp in runs:
    for rules in exp.schedule.stages:
      if (exp.base, rules) in seen:
        continue
      seen.add((exp.base, rules))
      try:
        freeze.matching_rules(params, rules)
      except UserError as e:
        raise UserError(f'config field {"experiments." + exp.base + ".rules"!r}: {e}') from None


class Finished(NamedTuple):
  summary: ExperimentSummary
  rows: list[dict]


def _finished(paths: WorkdirPaths, exp: Experiment, fingerprint: str) -> Finished | None:
  """What a previous run wrote for an experiment it trained with these settings."""
  where = paths.experiment(exp.name)
  try:
    summary = files.read_json(where.summary)
    if summary.get('fingerprint') != fingerprint:
      return None
    return Finished(ExperimentSummary.from_json(summary), files.read_jsonl(where.results))
  except (OSError, ValueError, TypeError):
    return None


def _write_experiment(s: SweepSettings, paths: WorkdirPaths, exp: Experiment,
                      weights: Weights, rows, history, summary: ExperimentSummary) -> None:
  """Writes an experiment's files; summary.json last, as the 'finished' mark."""
  where = paths.experiment(exp.name)
  os.makedirs(where.folder, exist_ok=True)
  if os.path.exists(where.summary):  # stale results of other settings
    os.unlink(where.summary)
  checkpoint.save_weights(where.weights, weights.params, weights.stats)
  files.write_jsonl(where.results, rows)
  files.write_jsonl(where.history, history)
  files.write_atomic(where.rules, _describe_schedule(s, weights.params, exp))
  files.write_json(where.summary, summary.to_json())


def run_sweep(config, workdir: str, *, progress: bool = True) -> list[ExperimentSummary]:
  """Runs the sweep a config describes into ``workdir``; returns the summaries.

  Rerunning it on the same work directory resumes: finished experiments are
  read back, unfinished bundles restart from their newest checkpoint.
  SIGTERM or SIGINT saves a checkpoint and raises
  :class:`unet_jax.engine.resume.Interrupted`.

  Example::

    from unet_jax.sweep import load_config, run_sweep
    summaries = run_sweep(load_config('configs/default.py:tiny'), '/tmp/run')
  """
  s = SweepSettings.from_config(config)
  if s.compilation_cache and not jax.config.jax_compilation_cache_dir:
    # Reruns and resumed sweeps load compiled programs instead of compiling
    # (a cache set through JAX_COMPILATION_CACHE_DIR takes precedence).
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(s.compilation_cache))
  writer = is_writer()
  paths = prepare_workdir(workdir) if writer else WorkdirPaths(os.path.abspath(workdir))
  # Only the writing process takes the work directory's lock.
  with WorkdirLock(paths.root) if writer else contextlib.nullcontext(), StopRequest() as stop:
    if s.race is not None:
      return _Race(s, paths, stop).run(progress)
    return _Sweep(s, paths, stop).run(progress)


class _Sweep:
  """One run of a sweep inside its work directory's lock: plan, train, write."""

  def __init__(self, s: SweepSettings, paths: WorkdirPaths, stop: StopRequest, *,
               runs: list[Experiment] | None = None, target: Target | None = None,
               report: bool = True):
    self.target = target or load_target(s, paths)
    # A cap in epochs becomes steps once the training split's size is known.
    fit = [len(split.fit) for split in self.target.splits]
    s = s.with_train_images(round(sum(fit) / len(fit)))
    self.s, self.paths, self.stop = s, paths, stop
    self.writer = is_writer()
    self.report = report
    self.runs = s.runs() if runs is None else runs
    copies = len(self.target.dataset.duplicates)
    self.fingerprints = {r.name: experiment_fingerprint(s, r, copies) for r in self.runs}
    done = {r.name: found for r in self.runs
            if (found := _finished(paths, r, self.fingerprints[r.name])) is not None}
    self.todo = [r for r in self.runs if r.name not in done]
    self.summaries = {name: found.summary for name, found in done.items()}
    self.rows = {name: found.rows for name, found in done.items()}
    self.bundles, self.split_by = (grid.group_bundles(self.todo, s.max_bundle)
                                   if self.todo else ([], []))
    self.reports: list[dict] = []
    self.tuning = files.read_json(paths.autotune) if os.path.exists(paths.autotune) else {}

  def run(self, progress: bool) -> list[ExperimentSummary]:
    s = self.s
    if self.writer:
      files.write_json(self.paths.config, s.to_json(self.runs))
    target = self.target
    if self.writer:  # for report figures and for looking at what was tested
      tested = target.part(np.unique(np.concatenate([target.split(r).test
                                                     for r in self.runs])))
      files.write_npz(self.paths.test_set, images=tested.images, masks=tested.masks,
                      ids=np.asarray(tested.ids))
      files.write_json(self.paths.data, data_record(s, target))
    graphdef, params, batch_stats = init_model(s.model, s.seed)
    check_rules(s, params, self.runs)
    total = pretrain_steps(s) + sum(r.steps for r in self.todo)
    with tqdm.tqdm(total=total, unit='step', disable=not (progress and self.writer),
                   file=sys.stderr, dynamic_ncols=True) as bar:
      self._say_what_is_planned(bar)
      pretrained = None
      if any(r.init == 'pretrained' for r in self.todo):
        pretrained = pretrain(s, Weights(params, batch_stats), self.paths, bar, self.stop)
      else:
        bar.update(pretrain_steps(s))
      self._score_again(target, graphdef, bar)
      for b, members in enumerate(self.bundles):
        self._run_bundle(b, members, pretrained, target, graphdef, bar)
      if self.writer:
        if not self.bundles:  # all finished before: the per-bundle writes did not run
          self._write_results()
        if self.report:
          bar.set_description('writing report')
          _write_report(self.paths.root, bar)
    return [self.summaries[r.name] for r in self.runs]

  def _say_what_is_planned(self, bar: tqdm.tqdm) -> None:
    if self.summaries:
      bar.write(f'{len(self.summaries)} of {len(self.runs)} experiment(s) already finished '
                f'in {self.paths.root}', file=sys.stderr)
    if self.split_by:
      bar.write(f'{len(self.bundles)} bundles: different {", ".join(self.split_by)} need '
                'separate programs', file=sys.stderr)

  def _run_bundle(self, b: int, members: list[Experiment], pretrained: Weights | None,
                  target: Target, graphdef, bar: tqdm.tqdm) -> None:
    s = self.s
    inits = [pretrained if e.init == 'pretrained'
             else Weights(*init_model(s.model, e.seed + 4)[1:]) for e in members]
    splits = [target.split(e) for e in members]
    images, masks = target.dataset.images, target.dataset.masks
    val = ([(images[sp.val], masks[sp.val]) for sp in splits]
           if all(len(sp.val) for sp in splits) else None)
    key = fingerprint_hash([self.fingerprints[e.name] for e in members])
    checkpoints = bundle_checkpoints(self.paths, key)
    result = run_bundle(
        BundleContext(s.model, members[0].batch_size, rewarmup_steps=s.rewarmup_steps),
        members, inits, BundleData(images, masks, [sp.fit for sp in splits], val),
        RunOptions(s.executor, s.loop, s.chunk_steps, s.checkpoint_every, s.early_stop),
        bar=bar,
        tuning=self.tuning, checkpoints=checkpoints, fingerprint=key, stop=self.stop,
        events_dir=self.paths.tensorboard)
    report = result.report
    if report.how in ('timed', 'only candidate'):
      self.tuning[report.signature] = {'executor': report.executor, 'trials': report.trials}
    self.reports.append(dataclasses.asdict(report))
    bar.write(f'bundle {b}: {len(members)} experiment(s), executor {report.executor}, '
              f'{report.exp_steps_per_s:.2f} exp-steps/s', file=sys.stderr)
    scoring = []
    for i, (exp, weights, split) in enumerate(zip(members, result.weights, splits)):
      if result.diverged_at[i] is not None:
        bar.write(f'{exp.name} diverged at step {result.diverged_at[i]}: its weights '
                  'are those of the step before', file=sys.stderr)
      rows, norm, seconds = self._score(exp, weights, target, graphdef)
      scoring.append(seconds)
      summary = summarise(s, exp, weights, rows, result, i, b, self.fingerprints[exp.name],
                          split, norm, seconds)
      self.summaries[exp.name], self.rows[exp.name] = summary, rows
      if self.writer:
        _write_experiment(s, self.paths, exp, weights, rows, result.history[i], summary)
    test = sum(t['test'] for t in scoring)
    check = sum(t['norm_check'] or 0.0 for t in scoring)
    bar.write(f'bundle {b}: scored in {test + check:.1f} s (test metrics {test:.1f} s'
              + (f', BatchNorm check {check:.1f} s)' if s.norm_check else ')'), file=sys.stderr)
    if self.writer:
      self._write_results()
      files.write_json(self.paths.bundles, {'split_by': self.split_by,
                                            'bundles': self.reports})
      files.write_json(self.paths.autotune, self.tuning)
    checkpoints.remove()

  def _score(self, exp: Experiment, weights: Weights, target: Target, graphdef
             ) -> tuple[list[dict], dict | None, dict]:
    """(rows, norm check, seconds) of one trained network on its split's test images.

    ``seconds``: wall time of scoring the test images (``test``) and of the
    BatchNorm check (``norm_check``, None when it is off), compilation included
    where this run was the first of its shape.
    """
    s, split = self.s, target.split(exp)
    test = target.part(split.test)
    start = time.perf_counter()
    pred = evaluate.predicted_masks(graphdef, weights, test.images)
    rows = [dict(experiment=exp.name, seed=exp.seed, fold=exp.fold, **r)
            for r in evaluate.score(pred, test, hd95_convention=s.hd95_convention)]
    scored = time.perf_counter()
    if self.writer:  # for the report's figures: it then needs no network
      os.makedirs(self.paths.experiment(exp.name).folder, exist_ok=True)
      files.write_masks(self.paths.experiment(exp.name).predictions, test.ids, pred)
    norm = (evaluate.check_norm(s.model, graphdef, exp, weights, target.part(split.fit),
                                test, float(np.mean([r['dice'] for r in rows])))
            if s.norm_check else None)
    seconds = {'test': round(scored - start, 3),
               'norm_check': round(time.perf_counter() - scored, 3) if s.norm_check else None}
    return rows, norm, seconds

  def _score_again(self, target: Target, graphdef, bar: tqdm.tqdm) -> None:
    """Finished experiments scored under other evaluation settings: score them again."""
    wanted = evaluate.evaluation_settings(self.s.hd95_convention, self.s.norm_check)
    again = [r for r in self.runs if r.name in self.summaries
             and self.summaries[r.name].evaluation != wanted]
    if not again:
      return
    bar.write(f'scoring {len(again)} finished experiment(s) again under the new evaluation '
              f'settings {wanted} (no training)', file=sys.stderr)
    for exp in again:
      where = self.paths.experiment(exp.name)
      weights = Weights(*checkpoint.load_weights(where.weights))
      rows, norm, seconds = self._score(exp, weights, target, graphdef)
      summary = dataclasses.replace(self.summaries[exp.name],
                                    **_score_fields(self.s, rows, norm, seconds))
      self.summaries[exp.name], self.rows[exp.name] = summary, rows
      if self.writer:
        files.write_jsonl(where.results, rows)
        files.write_json(where.summary, summary.to_json())
    if self.writer:
      self._write_results()

  def _write_results(self) -> None:
    ordered = [r for run in self.runs if run.name in self.rows for r in self.rows[run.name]]
    files.write_jsonl(self.paths.results, ordered)


class _Race:
  """A sweep whose replicates come round by round, where the decision is (config.race).

  Round 1 trains every strategy (an experiment and its variant: a
  condition) on replicates 1..n0 (seeds 0..n0-1); every later round trains
  the survivors on their next replicates; ``unet_jax.analysis.race`` decides
  after each round from all results so far, a pure function of them, so a
  race stopped at any moment and run again makes the same decisions (the
  finished runs are read back, not trained again) and a finished race rerun
  trains nothing. Each round is a sweep of the runs asked for so far.
  """

  def __init__(self, s: SweepSettings, paths: WorkdirPaths, stop: StopRequest):
    self.target = load_target(s, paths)
    fit = [len(split.fit) for split in self.target.splits]
    self.s = s.with_train_images(round(sum(fit) / len(fit)))
    self.paths, self.stop = paths, stop
    # Where one program trains a whole bundle (an accelerator, or a batched
    # executor forced), a bundle's size is its compiled shape: later rounds
    # are filled to the first round's size (fill_round).
    self.batched = s.executor in BATCHED or (s.executor == 'auto' and
                                             jax.default_backend() != 'cpu')

  def run(self, progress: bool) -> list[ExperimentSummary]:
    from unet_jax.analysis.race import race  # pandas, scipy
    s, settings = self.s, self.s.race
    every = s.runs()
    condition = {r.name: r.base + r.variant for r in every}
    wanted = {(c, r) for c in dict.fromkeys(condition.values())
              for r in range(1, settings.n0 + 1)}
    per_pair = len(every) // (len(set(condition.values())) * settings.max_replicates)
    slots = 0  # batched: every round trains as many runs as the first
    rounds = []
    while True:
      runs = [r for r in every if (condition[r.name], r.seed + 1) in wanted]
      if self.batched and not slots:
        slots = min(len(runs), s.max_bundle or len(runs))
      sweep = _Sweep(s, self.paths, self.stop, runs=runs, target=self.target, report=False)
      summaries = sweep.run(progress)
      frame = _race_frame(sweep.rows, condition, runs, settings.metric)
      costs = {condition[x.name]: x.trainable_params for x in summaries}
      record = race(frame, delta=settings.delta, alpha=settings.alpha, n0=settings.n0,
                    max_replicates=settings.max_replicates, per_round=settings.per_round,
                    costs=costs, by='condition')
      rounds.append({'runs': len(runs), 'survivors': record.survivors})
      if is_writer():
        files.write_json(self.paths.race, _race_json(record, settings, rounds))
      print(f'race round {len(rounds)}: {record.answer}', file=sys.stderr)
      if record.decided or record.budget_spent or not record.next_runs:
        break
      done = set(wanted)
      wanted |= {(c, r) for c in record.next_runs['strategies']
                 for r in record.next_runs['replicates']}
      if slots:
        wanted |= fill_round(wanted - done, record.survivors, wanted, slots // per_pair,
                             settings.max_replicates)
    if is_writer():
      with tqdm.tqdm(disable=True) as bar:
        _write_report(self.paths.root, bar)
    return summaries


def fill_round(new: set, survivors: list[str], wanted: set, slots: int,
               max_replicates: int) -> set:
  """More replicates of the survivors, so that a round trains ``slots`` pairs.

  ``new`` holds the round's (strategy, replicate) pairs the race asked for,
  ``wanted`` every pair asked for so far. Free slots take each survivor's
  next replicates in turn (replicate by replicate, survivors in order), up to
  ``max_replicates``; fewer when the budget leaves fewer. The race's
  decisions do not change: a look at r replicates uses each strategy's first
  r, so replicates trained early are used at the later looks they belong
  to, and a strategy eliminated meanwhile has spent its extra slot for
  nothing (free where the bundle runs as one program).
  """
  extra: set = set()
  have = {c: max([r for x, r in wanted if x == c], default=0) for c in survivors}
  while len(new) + len(extra) < slots:
    nxt = min(have.values(), default=max_replicates) + 1
    if nxt > max_replicates:
      break
    for c in survivors:
      if have[c] < nxt and len(new) + len(extra) < slots:
        extra.add((c, nxt))
        have[c] = nxt
  return extra


def _race_frame(rows: dict, condition: dict, runs: list[Experiment], metric: str = 'dice'):
  """The results so far as a table for ``analysis.race``: one row per run and test image,
  its ``metric`` (race.metric: Dice, or one structure's) as the column 'dice'."""
  import pandas as pd
  table = [{'condition': condition[r.name], 'seed': row['seed'], 'image_id': row['image_id'],
            'dice': row[metric]} for r in runs for row in rows.get(r.name, [])]
  return pd.DataFrame(table, columns=['condition', 'seed', 'image_id', 'dice'])


def _race_json(record, settings, rounds: list[dict]) -> dict:
  """race.json: the settings, every look and the decision (read by the report)."""
  out = dataclasses.asdict(record)
  out['settings'] = dataclasses.asdict(settings)
  out['rounds'] = rounds
  return json.loads(json.dumps(out, default=float))


def _write_report(workdir: str, bar: tqdm.tqdm) -> None:
  """report.md; a failure here never costs the results, which are written."""
  from unet_jax.analysis import report  # pandas, scipy, matplotlib: once results exist
  try:
    report.write_report(workdir)
  except Exception as e:  # noqa: BLE001 - the results are safe; say how to retry
    bar.write(f'warning: the report could not be written ({type(e).__name__}: {e}); '
              f'results are in {workdir}; retry with: python launch/report.py '
              f'--workdir={workdir}', file=sys.stderr)
