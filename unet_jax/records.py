"""What a sweep writes about itself and each run: typed records shared by writer and readers.

``summary.json`` of an experiment is an :class:`ExperimentSummary`;
``config.json`` of a work directory is the resolved settings, read back as
a :class:`SweepRecord`. The sweep writes them and every reader
(``unet_jax.analysis``, export, the report) reads them through these types,
so a field added here is written and read in one place, and nothing
downstream parses names or re-derives settings. No JAX.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from unet_jax import files
from unet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class StageRecord:
  """One stage of a run's schedule, and the blocks it trains."""

  start: int
  rules: list  # [[pattern, action(, kind)], ...], first match wins
  trained: list[str]  # blocks with every parameter trained
  partly: list[str]  # blocks with some parameters trained
  block_fractions: dict[str, float]  # block -> share of its parameters trained (flow order)


@dataclasses.dataclass(frozen=True)
class ExperimentSummary:
  """``experiments/<name>/summary.json``: one trained network; written last ("finished").

  Fields after ``seed`` have defaults so that a reader can describe rows
  whose summary is missing (an interrupted write).
  """

  name: str
  base: str  # the entry of config.experiments it came from
  seed: int
  variant: str = ''  # name suffix of its non-replicate grid axes ('' for most)
  # Experiment strategy fields that differ from plain fine-tuning (layer_decay,
  # decay_order, l2sp, lr_scaling); {} for a plain layer subset or schedule.
  finetune_strategy: dict = dataclasses.field(default_factory=dict)
  grid: dict = dataclasses.field(default_factory=dict)  # its value on every grid axis
  # Its augmentation policy's numbers by field (unet_jax.augment.NAMES; the
  # policy's name is grid['augment']); None in older summaries (a flip).
  augmentation: dict | None = None
  init: str = 'unknown'  # 'pretrained' or 'random'
  fold: int | None = None  # cross-validation fold; None: the hold-out split
  folds: int = 0
  learning_rate: float | None = None
  weight_decay: float | None = None
  frozen_norm: str | None = None  # freeze.FROZEN_NORM
  steps: int | None = None  # the step cap
  batch_size: int | None = None
  schedule: list[StageRecord] = dataclasses.field(default_factory=list)
  # {'kind': 'gradual', 'order', 'direction', 'stage_steps'} or
  # {'kind': 'unfreeze_at', 'step'}, None for one-stage subsets.
  schedule_kind: dict | None = None
  frozen: list[str] = dataclasses.field(default_factory=list)  # parameter paths, stage 0
  trainable_params: int | None = None  # in the last stage
  total_params: int | None = None
  train_images: int | None = None
  val_images: int | None = None
  # The seed its split was drawn with (data.seed, or per training seed with
  # data.split_per_seed: sweep.run.split_seed); None in older summaries.
  split_seed: int | None = None
  # data.empty_masks: whether images with empty masks were left out of
  # training or test (data.EMPTY_MASKS); None in older summaries ('keep').
  empty_masks: str | None = None
  test_images: int | None = None
  # Wall seconds of scoring: {'test': the test images' metrics, 'norm_check':
  # the BatchNorm re-check or None}; None in older summaries.
  scoring_seconds: dict | None = None
  seconds: float | None = None  # its share of its bundle's training time
  # Its own training time (seconds per step measured when its bundle ran one
  # experiment at a time, x steps); None when the executor trained the bundle
  # as one program (vmap, ...), where one experiment's time is not separable.
  own_seconds: float | None = None
  extra_params: int = 0  # parameters added to the network (adapters), merged on export
  bundle: int | None = None
  executor: str | None = None  # how its bundle ran (engine.choices.EXECUTORS)
  resumed_from_step: int = 0
  diverged_at_step: int | None = None  # weights are those before that step
  chunk_losses: list[float] = dataclasses.field(default_factory=list)
  final_val_dice: float | None = None  # at its last evaluation (stopped_at_step)
  # Training to convergence (engine.stopping): its weights are those of
  # best_step, the evaluation with the best validation Dice; it trained to
  # stopped_at_step ('converged': patience ran out; 'cap': still improving
  # at the step cap, ``steps``; 'diverged'; 'no_validation': no validation
  # images, last weights). seconds_to_best: its own seconds per step x
  # best_step, where its time is separable (own_seconds).
  stop_reason: str | None = None
  stopped_at_step: int | None = None
  best_step: int | None = None
  best_val_dice: float | None = None
  seconds_to_best: float | None = None
  early_stop: dict = dataclasses.field(default_factory=dict)  # {'patience', 'min_delta'}
  fingerprint: str = ''  # of everything its weights depend on
  # Scores on its test images, and how they were computed.
  mean_dice: float | None = None
  dice_ci95: list[float] = dataclasses.field(default_factory=list)  # over its images
  mean_iou: float | None = None
  mean_hd95_px: float | None = None
  mean_assd_px: float | None = None
  undefined_distances: int = 0
  norm_check: dict | None = None  # {'mean_dice_reestimated', 'change'}
  empty_mask_convention: str = ''
  hd95_convention: str = 'max'
  evaluation: dict = dataclasses.field(default_factory=dict)  # sweep.evaluate settings

  @property
  def trained_blocks(self) -> frozenset[str] | None:
    """The blocks the first stage trains, when it trains whole blocks only."""
    if not self.schedule or self.schedule[0].partly:
      return None
    return frozenset(self.schedule[0].trained)

  @property
  def blocks(self) -> tuple[str, ...]:
    """Every block of the network, in data-flow order (from the first stage)."""
    return tuple(self.schedule[0].block_fractions) if self.schedule else ()

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> 'ExperimentSummary':
    known = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in data.items() if k in known}
    if 'executor' not in data and isinstance(data.get('strategy'), str):  # before the rename
      fields['executor'] = data['strategy']
    fields['schedule'] = [StageRecord(**stage) for stage in data.get('schedule') or []]
    return cls(**fields)


@dataclasses.dataclass(frozen=True)
class SweepRecord:
  """``config.json``: a sweep's resolved settings (``SweepSettings.to_json``), for readers."""

  target_source: str  # the domain of its results
  runs: list[str]  # every run name of the sweep, in order
  experiments: list[str]  # the bases (entries of config.experiments)
  model: dict  # UNetSpec fields
  image_size: int
  settings: dict  # everything, as written
  structures: tuple[str, ...] = ('foreground',)  # one per mask channel (unet_jax.structures)

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> 'SweepRecord':
    return cls(target_source=data['target_source'], runs=list(data['runs']),
               experiments=[e['name'] for e in data['experiments']], model=data['model'],
               image_size=data['image_size'], settings=data,
               structures=tuple(data.get('structures') or ('foreground',)))


_OLD = ('was written by an older version of unet_jax; rerun its sweep with this version '
        '(finished experiments are trained again)')


def read_sweep(path: str) -> SweepRecord:
  """``config.json`` as a SweepRecord; a missing or older file is a UserError naming it."""
  if not os.path.exists(path):
    raise UserError(f'no results in {os.path.dirname(path)}: not a sweep work directory '
                    '(no config.json), or its sweep has not started')
  try:
    return SweepRecord.from_json(files.read_json(path))
  except (ValueError, KeyError, TypeError):
    raise UserError(f'{path} {_OLD}') from None


def read_summary(path: str) -> ExperimentSummary:
  """A ``summary.json`` as an ExperimentSummary; an older one is a UserError naming it."""
  try:
    return ExperimentSummary.from_json(files.read_json(path))
  except (ValueError, KeyError, TypeError):
    raise UserError(f'{path} {_OLD}') from None
