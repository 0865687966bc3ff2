"""A sweep config, checked field by field and frozen into plain dataclasses.

``SweepSettings.from_config(config)`` is the only place that reads an
``ml_collections`` config; everything after it works on these dataclasses,
so derived values never get written back into the config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from typing import Any

from unet_jax import augment, data, encoder_weights, encoders, structures
from unet_jax.block_order import ORDERS
from unet_jax.conventions import HD95_CONVENTIONS
from unet_jax.encoders import ENCODERS, UNET
from unet_jax.engine.choices import EXECUTORS, LOOPS
from unet_jax.engine.experiment import LR_SCALINGS, Experiment
from unet_jax.engine.stopping import StopRule
from unet_jax.errors import UserError
from unet_jax.freeze import FROZEN_NORM, FreezeRule
from unet_jax.model import NORMS, UNetSpec, adapter_limit
from unet_jax.schedules import Schedule, parse_schedule
from unet_jax.structures import BINARY
from unet_jax.sweep.fields import (
    NUMBERS,
    bool_field,
    choice,
    field_value,
    float_field,
    float_problem,
    int_field,
    int_problem,
    number,
    number_problem,
    optional,
    optional_bool,
    optional_choice,
)
from unet_jax.sweep.grid import AXES, STRATEGY_AXES, expand

INITS = ('pretrained', 'random')
# pretrain.source that pretrains nothing: a ResNet or EfficientNet encoder's weights are read
# from pretrain.weights, a torchvision (or timm) state dict, and the rest stays as initialised.
TORCHVISION = 'torchvision'


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  steps: int
  batch_size: int
  learning_rate: float
  weight_decay: float


@dataclasses.dataclass(frozen=True)
class RaceSettings:
  """config.race: a Kim-Nelson race over the strategies (unet_jax/analysis/race.py).

  Replicate r (1-based) is seed ``r - 1``: the race chooses the seeds, so
  ``grid.seed`` is replaced by ``0 .. max_replicates - 1``.
  """

  delta: float  # indifference zone, Dice
  alpha: float
  n0: int  # first-stage replicates of every strategy
  per_round: int  # replicates a later round adds to every survivor
  max_replicates: int  # the budget per strategy
  # race.metric: what the race ranks on: 'dice' (for several structures their mean) or
  # 'dice:<structure>' for one of them.
  metric: str = 'dice'


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
  """An entry of ``config.experiments``: a subset or schedule, an init, a strategy."""

  name: str
  schedule: Schedule  # at finetune.steps (an LP-FT schedule depends on the steps)
  init: str  # 'pretrained' or 'random'
  # Experiment strategy fields the entry sets (layer_decay, decay_order,
  # l2sp, lr_scaling); the others are plain fine-tuning's.
  strategy: dict = dataclasses.field(default_factory=dict)
  rules: Any = None  # the entry's rules as written (schedule_for)
  model: UNetSpec | None = None  # the network its presets resolve against
  # The head is new (pretraining's had another width: NEW_HEAD_RULE goes first).
  new_head: bool = False

  def schedule_for(self, steps: int) -> Schedule:
    """The schedule of a run of ``steps`` steps."""
    schedule = parse_schedule(self.rules, encoders.layout(self.model), steps)
    return schedule.first(NEW_HEAD_RULE) if self.new_head else schedule


# A head that pretraining did not train (a set of several structures after a binary
# pretraining source) starts from random weights; frozen it could never learn, so every
# pretrained run trains it (README "Several structures").
NEW_HEAD_RULE = FreezeRule('head', 'train')


@dataclasses.dataclass(frozen=True)
class SweepSettings:
  seed: int
  image_size: int
  model: UNetSpec
  pretrain_source: str
  pretrain_root: str  # folder of a real set (data.is_real(pretrain_source))
  pretrain_weights: str  # the weights file of pretrain_source 'torchvision', else ''
  pretrain_grey: str  # encoder_weights.GREY: a 3-channel stem on a 1-channel model ('torchvision')
  pretrain_images: int
  pretrain: TrainSettings
  target_source: str
  target_root: str  # folder of a real set (data.is_real(target_source))
  on_bad: str  # 'error' or 'skip': what a real set's unusable image/mask pair does
  target_images: int
  test_fraction: float  # of the target images, held out for testing (folds <= 1)
  val_fraction: float  # of the training images, held out for validation Dice
  folds: int  # k-fold cross-validation of the target set; 0 or 1: one hold-out split
  # data.split_per_seed: every training seed draws its own split (its own
  # fold partition under data.folds) instead of sharing the one of data.seed.
  split_per_seed: bool
  # data.empty_masks: images whose mask is empty (BUSI's 'normal' class) are
  # kept (data.EMPTY_MASKS[0]) or left out of training, of test, or of both.
  empty_masks: str
  # data.intensity: the network's input convention (data.INTENSITIES), for
  # the pretraining and the target images alike.
  intensity: str
  finetune: TrainSettings
  frozen_norm: str  # freeze.FROZEN_NORM: frozen blocks' BatchNorm in fine-tuning
  hd95_convention: str  # conventions.HD95_CONVENTIONS
  norm_check: bool  # also score each run with re-estimated BatchNorm statistics
  chunk_steps: int
  checkpoint_every: int  # steps between bundle checkpoints; 0 = only on a signal
  loop: str
  experiments: tuple[ExperimentSpec, ...]
  grid: dict  # axis -> tuple of values, defaults filled in
  executor: str  # how a bundle runs: 'auto' or one of engine.choices.EXECUTORS
  max_bundle: int  # 0 = no limit
  rewarmup_steps: int
  early_stop: StopRule  # finetune.patience, finetune.min_delta (engine.stopping)
  # finetune.epochs: the step cap in epochs of the training set (0: finetune.steps);
  # resolved into steps by with_train_images once the split is known.
  epochs: float
  race: RaceSettings | None  # config.race when enabled, else None
  bootstrap_samples: int
  compilation_cache: str  # '' = off
  # config.augmentation: policy name -> its numbers (unet_jax.augment.NAMES
  # order); config.augment (or grid.augment) names the ones trained with.
  augment_policies: dict = dataclasses.field(default_factory=augment.built_in)
  # data.structures resolved (data.structures_of): the target's structure names,
  # one per mask channel, and their values in label-map files (None: binary masks).
  structures: tuple[str, ...] = BINARY
  label_values: tuple[int, ...] | None = None
  # data.resize: how a real set's images become squares (data.RESIZES).
  resize: str = 'stretch'

  def runs(self) -> list[Experiment]:
    """Every experiment of the sweep: config.experiments x config.grid."""
    return expand([(e.name, e.schedule_for, e.init, e.strategy) for e in self.experiments],
                  self.grid, self.augment_policies)

  def with_train_images(self, train_images: int) -> 'SweepSettings':
    """The settings with ``finetune.epochs`` resolved into a step cap.

    ``ceil(epochs * train_images / batch_size)`` steps, rounded up to whole
    chunks (``chunk_steps``: validation is scored at chunk boundaries, so the
    cap is an evaluation). Unchanged when ``epochs`` is 0.
    """
    if not self.epochs:
      return self
    batch = self.finetune.batch_size
    steps = max(1, math.ceil(self.epochs * train_images / batch))
    steps = math.ceil(steps / self.chunk_steps) * self.chunk_steps
    experiments = tuple(dataclasses.replace(e, schedule=e.schedule_for(steps))
                        for e in self.experiments)
    return dataclasses.replace(self, finetune=dataclasses.replace(self.finetune, steps=steps),
                               experiments=experiments, grid={**self.grid, 'steps': (steps,)})

  def to_json(self, runs: list[Experiment] | None = None) -> dict:
    """The resolved settings as written to config.json (``records.SweepRecord`` reads them).

    ``runs``: the runs the sweep has asked for so far, when not all of them
    (a race adds its replicates round by round).
    """
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out['model'] = dataclasses.asdict(self.model)
    out['pretrain'] = dataclasses.asdict(self.pretrain)
    out['finetune'] = dataclasses.asdict(self.finetune)
    out['early_stop'] = dataclasses.asdict(self.early_stop)
    out['race'] = dataclasses.asdict(self.race) if self.race else None
    out['experiments'] = [{'name': e.name, 'init': e.init,
                           'schedule': [{'start': start, 'rules': [r.as_list() for r in rules]}
                                        for start, rules in zip(e.schedule.starts,
                                                                e.schedule.stages)],
                           'schedule_kind': e.schedule.describe_kind(),
                           'strategy': e.strategy}
                          for e in self.experiments]
    out['grid'] = {axis: list(values) for axis, values in self.grid.items()}
    out['runs'] = [r.name for r in (self.runs() if runs is None else runs)]
    return out

  @classmethod
  def from_config(cls, config) -> 'SweepSettings':
    """Validates ``config`` once; a bad field raises UserError naming it."""
    _refuse_replaced_fields(config)
    model = _model(config)
    size = int_field(config, 'image_size', 8)
    divisor = encoders.family(model.encoder).divisor(model)
    if size % divisor:
      why = ('2**model.depth' if model.encoder == UNET
             else f'the {model.encoder} encoder halves it five times')
      raise UserError(f"config field 'image_size': image size {size} must be divisible by "
                      f'{divisor} ({why})')
    only = [n.strip() for n in str(field_value(config, 'only')).split(',') if n.strip()]
    seed, finetune = number(config, 'seed'), _train(config, 'finetune')
    frozen_norm = choice(config, 'finetune.frozen_norm', tuple(FROZEN_NORM))
    folds = int_field(config, 'data.folds', 0)
    policies = _augment_policies(config)
    sources = _sources(config, model)
    names, values = data.structures_of(sources['target_source'],
                                       str(optional(config, 'data.structures', '')).strip())
    model = dataclasses.replace(model, out_channels=structures.out_channels(len(names)))
    settings = cls(
        seed=seed, image_size=size, model=model, structures=names, label_values=values,
        resize=optional_choice(config, 'data.resize', data.RESIZES),
        **sources,
        pretrain_images=int_field(config, 'pretrain.num_images', 1),
        pretrain=_train(config, 'pretrain'),
        on_bad=choice(config, 'data.on_bad', ('error', 'skip')),
        target_images=int_field(config, 'data.num_images', 2),
        test_fraction=float_field(config, 'data.test_fraction', 0.0, 1.0),
        val_fraction=float_field(config, 'data.val_fraction', 0.0, 0.9),
        folds=folds, split_per_seed=optional_bool(config, 'data.split_per_seed'),
        empty_masks=optional_choice(config, 'data.empty_masks', data.EMPTY_MASKS),
        intensity=optional_choice(config, 'data.intensity', data.INTENSITIES),
        finetune=finetune, frozen_norm=frozen_norm,
        hd95_convention=choice(config, 'evaluation.hd95', tuple(HD95_CONVENTIONS)),
        norm_check=bool_field(config, 'evaluation.norm_check'),
        chunk_steps=int_field(config, 'chunk_steps', 1),
        checkpoint_every=int_field(config, 'checkpoint_every', 0),
        loop=choice(config, 'loop', LOOPS),
        experiments=_experiments(config, model, only, finetune.steps,
                                 _new_head(sources['pretrain_source'], len(names))),
        grid=_grid(config, folds, {'seed': seed, 'frozen_norm': frozen_norm,
                                   'augment': _augment_choice(config, policies),
                                   **dataclasses.asdict(finetune)}, policies),
        augment_policies=policies,
        executor=choice(config, 'executor', ('auto',) + EXECUTORS),
        max_bundle=int_field(config, 'max_bundle', 0),
        rewarmup_steps=int_field(config, 'finetune.rewarmup_steps', 0),
        early_stop=_early_stop(config),
        epochs=_epochs(config),
        race=_race(config),
        bootstrap_samples=int_field(config, 'bootstrap_samples', 100),
        compilation_cache=str(field_value(config, 'compilation_cache')))
    for axis in STRATEGY_AXES:
      if settings.grid[axis] and not any(axis in e.strategy for e in settings.experiments):
        raise UserError(f'config field {"grid." + axis!r} crosses the experiments whose '
                        f'entry sets {axis}, and none does; set experiments.<name>.{axis}')
    if settings.race is not None:
      metrics = ['dice'] + ([f'dice:{n}' for n in names] if len(names) > 1 else [])
      if settings.race.metric not in metrics:
        raise UserError(f"config field 'race.metric' is {settings.race.metric!r}; valid "
                        f'choices: {", ".join(metrics)}')
      seeds = tuple(range(settings.race.max_replicates))
      settings = dataclasses.replace(settings, grid={**settings.grid, 'seed': seeds})
    names = [r.name for r in settings.runs()]
    if len(set(names)) != len(names):
      raise UserError(f'experiment names collide after grid expansion: {names}')
    if not data.is_real(settings.target_source) and folds > settings.target_images:
      raise UserError(f'data.folds={folds} needs at least {folds} images; '
                      f'data.num_images is {settings.target_images}')
    # Split sizes are checked on the class labels once the data exist
    # (data.plan_splits), the same computation that makes the split.
    return settings


def _early_stop(config) -> StopRule:
  """finetune.patience and finetune.min_delta (configs written before them: the defaults)."""
  default = StopRule()
  patience = optional(config, 'finetune.patience', default.patience)
  if int_problem(patience, 0):
    raise UserError(f"config field 'finetune.patience' (evaluations without improvement "
                    f"before a run stops; 0 = train to the cap) must be an integer >= 0; "
                    f"got {patience!r}")
  min_delta = optional(config, 'finetune.min_delta', default.min_delta)
  if float_problem(min_delta, 0.0, 1.0):
    raise UserError(f"config field 'finetune.min_delta' (validation Dice an evaluation must "
                    f"gain to count as an improvement) must be a number in [0, 1]; "
                    f"got {min_delta!r}")
  return StopRule(patience=patience, min_delta=float(min_delta))


def _race(config) -> RaceSettings | None:
  """config.race (configs written before it, or enabled=False: None)."""
  race = optional(config, 'race', None)
  if race is None or not bool_field(config, 'race.enabled'):
    return None
  out = RaceSettings(delta=float_field(config, 'race.delta', 1e-6, 1.0),
                     alpha=float_field(config, 'race.alpha', 1e-6, 0.5),
                     n0=int_field(config, 'race.n0', 2),
                     per_round=int_field(config, 'race.per_round', 1),
                     max_replicates=int_field(config, 'race.max_replicates', 2),
                     metric=str(optional(config, 'race.metric', 'dice')))
  if out.max_replicates < out.n0:
    raise UserError(f"config field 'race.max_replicates' ({out.max_replicates}) must be at "
                    f"least race.n0 ({out.n0})")
  seeds = tuple(field_value(config, 'grid.seed'))
  if seeds not in ((), (0, 1, 2), tuple(range(out.max_replicates))):
    raise UserError("config field 'grid.seed' is set with race.enabled: the race chooses the "
                    "seeds (replicate r is seed r - 1); leave grid.seed=()")
  return out


def _epochs(config) -> float:
  """finetune.epochs: 0 (the cap is finetune.steps) or a positive number of epochs."""
  epochs = optional(config, 'finetune.epochs', 0)
  if float_problem(epochs, 0.0, 1e6):
    raise UserError(f"config field 'finetune.epochs' (the step cap in epochs of the "
                    f"training set; 0 = finetune.steps) must be a number >= 0; got {epochs!r}")
  if epochs and tuple(optional(config, 'grid.steps', ())):
    raise UserError("config fields 'finetune.epochs' and 'grid.steps' are both set: the "
                    "step cap is either in epochs (grid.steps=()) or a grid of steps "
                    "(finetune.epochs=0)")
  return float(epochs)


def _model(config) -> UNetSpec:
  """config.model; ``encoder`` absent means the paper's U-Net, ``decoder_channels`` is read
  only for an encoder with smp's decoder (ResNet, EfficientNet)."""
  encoder = optional(config, 'model.encoder', UNET)
  if encoder not in ENCODERS:
    raise UserError(f"config field 'model.encoder' is {encoder!r}; valid choices: "
                    f'{", ".join(ENCODERS)}')
  pyramid_fields = {}
  if encoder != UNET:
    field = 'model.decoder_channels'
    channels = optional(config, field, UNetSpec.decoder_channels)
    if (not isinstance(channels, (tuple, list)) or len(channels) != 5
        or any(int_problem(c, 1) for c in channels)):
      raise UserError(f'config field {field!r} must be five integers >= 1, the widths of '
                      f'dec5..dec1; got {channels!r}')
    pyramid_fields['decoder_channels'] = tuple(channels)
  spec = UNetSpec(
      base_width=int_field(config, 'model.base_width', 1),
      depth=int_field(config, 'model.depth', 1),
      norm=choice(config, 'model.norm', NORMS),
      in_channels=int_field(config, 'model.in_channels', 1),
      group_size=int_field(config, 'model.group_size', 1),
      bn_momentum=float_field(config, 'model.bn_momentum', 0.0, 1.0),
      encoder=encoder, **pyramid_fields, **_adapters(config, encoder))
  if spec.adapter_rank:
    limit, block = adapter_limit(spec)
    if not limit:
      raise UserError(f"config field 'model.adapter_blocks' {spec.adapter_blocks!r} matches "
                      f'no block with 3x3 convolutions; blocks: '
                      f'{", ".join(b for b in spec.block_names() if b != "head")}')
    if spec.adapter_rank > limit:
      raise UserError(f"config field 'model.adapter_rank' is {spec.adapter_rank}; valid: 1 to "
                      f'{limit} (a rank-r update of a kernel needs r <= min(kernel inputs, '
                      f'outputs); {block} allows {limit}), or 0 for no adapters')
  return spec


def _adapters(config, encoder: str) -> dict:
  """model.adapter_rank (0: none) and model.adapter_blocks; absent means none."""
  rank = optional(config, 'model.adapter_rank', 0)
  problem = int_problem(rank, 0)
  if problem:
    raise UserError(f"config field 'model.adapter_rank' {problem}; got {rank!r}")
  blocks = str(optional(config, 'model.adapter_blocks', _default_adapter_blocks(encoder)))
  try:
    re.compile(blocks)
  except re.error as e:
    raise UserError(f"config field 'model.adapter_blocks' is not a valid regular expression: "
                    f'{e}') from None
  if rank and not encoders.family(encoder).adapters:
    raise UserError(f"config field 'model.adapter_rank': adapters are not built for "
                    f'{encoder}; set it to 0')
  return {'adapter_rank': rank, 'adapter_blocks': blocks}


def _default_adapter_blocks(encoder: str) -> str:
  """Every block but the head: the paper U-Net's pattern as first released, the others'
  blocks by name."""
  if encoder == UNET:
    return UNetSpec.adapter_blocks
  return '|'.join(b for b in encoders.layout({'encoder': encoder}).flow if b != 'head')


def _new_head(pretrain_source: str, num_structures: int) -> bool:
  """Whether fine-tuning's head has another width than pretraining's (a weights file
  gives only an encoder: its head was never pretrained, as before)."""
  if pretrain_source == TORCHVISION:
    return False
  pretrained = len(data.structures_of(pretrain_source)[0])
  return structures.out_channels(pretrained) != structures.out_channels(num_structures)


def _sources(config, model: UNetSpec) -> dict:
  """The pretraining and target sources and their folders; a real set needs one."""
  sources = data.source_names(pets=True) + (TORCHVISION,)
  out = {'pretrain_source': choice(config, 'pretrain.source', sources),
         'pretrain_root': os.path.expanduser(str(field_value(config, 'pretrain.root'))),
         'target_source': choice(config, 'data.source', data.source_names()),
         'target_root': os.path.expanduser(str(field_value(config, 'data.root')))}
  for kind, field in (('pretrain', 'pretrain'), ('target', 'data')):
    if data.is_real(out[f'{kind}_source']) and not out[f'{kind}_root']:
      raise UserError(f'{field}.source={out[f"{kind}_source"]!r} is a real data set: give '
                      f'its folder as {field}.root')
  return {**out, **_pretrained_weights(config, out['pretrain_source'], model)}


def _pretrained_weights(config, source: str, model: UNetSpec) -> dict:
  """pretrain.weights and pretrain.grey, checked against the source and the model."""
  weights = str(optional(config, 'pretrain.weights', ''))
  # Absolute, so config.json says which file was read from wherever the sweep ran.
  weights = os.path.abspath(os.path.expanduser(weights)) if weights else ''
  grey = optional(config, 'pretrain.grey', 'sum')
  if grey not in encoder_weights.GREY:
    raise UserError(f"config field 'pretrain.grey' is {grey!r}; valid choices: "
                    f'{", ".join(encoder_weights.GREY)}')
  if source != TORCHVISION:
    if weights:
      raise UserError(f"config field 'pretrain.weights' is read only with pretrain.source="
                      f"'{TORCHVISION}' (an encoder's weights); pretrain.source is "
                      f'{source!r}: set it, or remove pretrain.weights')
    return {'pretrain_weights': '', 'pretrain_grey': grey}
  if not encoders.family(model.encoder).weights:
    readable = [e for e in ENCODERS if encoders.family(e).weights]
    raise UserError(f"config field 'pretrain.source' is '{TORCHVISION}', which loads an "
                    f'encoder from a weights file; model.encoder is {model.encoder!r}: set '
                    f'model.encoder to one of {", ".join(readable)}, or pretrain on a '
                    'data source (dead_leaves, ...)')
  if not weights:
    raise UserError(f"pretrain.source='{TORCHVISION}' needs config field 'pretrain.weights': "
                    f'a {model.encoder} state dict saved by torch.save (.pth) or a '
                    '.safetensors file (README)')
  if not os.path.isfile(weights):
    raise UserError(f"config field 'pretrain.weights': no file {weights}")
  if model.in_channels not in (1, 3):
    raise UserError(f"pretrain.source='{TORCHVISION}' needs config field 'model.in_channels' "
                    f'1 (grey images) or 3 (grey repeated over RGB); got {model.in_channels}')
  if grey == 'repeat' and model.in_channels != 3:
    raise UserError("config field 'pretrain.grey' is 'repeat' (the grey image repeated "
                    "over the RGB stem's channels), which needs model.in_channels=3; got "
                    f"{model.in_channels}: set it, or grey='sum'")
  return {'pretrain_weights': weights, 'pretrain_grey': grey}


# Fields that were replaced: a config that still sets one gets told what to write.
_REPLACED = {
    'finetune.update_frozen_stats': "finetune.frozen_norm ('inference' | 'adapt'): "
                                    "update_frozen_stats=True is 'adapt'; False "
                                    'normalised frozen blocks with batch statistics '
                                    'in training but pretrained ones in evaluation, '
                                    'which no policy does any more (docs/DESIGN.md)',
    'strategy': "executor (how a bundle runs: 'auto', " + ', '.join(EXECUTORS) + '); '
                '"strategy" now means only a fine-tuning method (experiments.<name>)',
}


def _refuse_replaced_fields(config) -> None:
  for field, instead in _REPLACED.items():
    try:
      field_value(config, field)
    except UserError:
      continue
    raise UserError(f'config field {field!r} was replaced by {instead}; remove it')


def _train(config, prefix) -> TrainSettings:
  return TrainSettings(**{f.name: number(config, f'{prefix}.{f.name}')
                          for f in dataclasses.fields(TrainSettings)})


def _experiments(config, model, only, steps, new_head: bool = False
                 ) -> tuple[ExperimentSpec, ...]:
  """config.experiments (those ``only`` names); ``new_head``: pretrained runs also train the
  head (:data:`NEW_HEAD_RULE`)."""
  table = field_value(config, 'experiments')
  names = list(table.keys())
  unknown = [n for n in only if n not in names]
  if unknown:
    raise UserError(f'config field \'only\' names unknown experiment(s) '
                    f'{", ".join(unknown)}; valid names: {", ".join(names)}')
  specs = []
  for name in (only or names):
    field = f'experiments.{name}'
    rules = field_value(config, f'{field}.rules')
    try:
      schedule = parse_schedule(rules, encoders.layout(model), steps)
    except UserError as e:
      raise UserError(f'config field {field + ".rules"!r}: {e}') from None
    init = choice(config, f'{field}.init', INITS)
    new = new_head and init == 'pretrained'
    specs.append(ExperimentSpec(name, schedule.first(NEW_HEAD_RULE) if new else schedule,
                                init, _strategy(config, field, init), rules, model, new))
  if not specs:
    raise UserError("config field 'experiments' is empty; add at least one")
  return tuple(specs)


# Optional fields of an experiment entry: the strategies beyond the rules.
_STRATEGY_FIELDS = {'layer_decay', 'decay_order', 'l2sp', 'lr_scaling'}
_ENTRY_FIELDS = {'rules', 'init'} | _STRATEGY_FIELDS


def _strategy(config, field: str, init: str) -> dict:
  """The strategy fields an experiment entry sets, checked."""
  entry = field_value(config, field)
  keys = set(entry.keys()) if hasattr(entry, 'keys') else set()
  extra = sorted(keys - _ENTRY_FIELDS)
  if extra:
    raise UserError(f'config field {field!r} has unknown key(s) {", ".join(extra)}; valid '
                    f'keys: {", ".join(sorted(_ENTRY_FIELDS))}')
  out = {}
  for key in sorted(keys & _STRATEGY_FIELDS):
    name = f'{field}.{key}'
    if key in NUMBERS:
      out[key] = number(config, name)
    else:
      out[key] = choice(config, name, ORDERS if key == 'decay_order' else LR_SCALINGS)
  if 'decay_order' in out and 'layer_decay' not in out:
    raise UserError(f'config field {field + ".decay_order"!r} needs {field}.layer_decay')
  if 'l2sp' in out and init != 'pretrained':
    raise UserError(f"config field {field + '.l2sp'!r}: L2-SP pulls toward the pretrained "
                    f"weights; {field}.init must be 'pretrained'")
  return out


def _augment_policies(config) -> dict[str, tuple[float, ...]]:
  """config.augmentation (policy name -> fields) over the built-in policies."""
  table = {name: dict(fields) for name, fields in augment.POLICIES.items()}
  given = optional(config, 'augmentation', None)
  if given is not None:
    if not hasattr(given, 'items'):
      raise UserError(f"config field 'augmentation' must map policy names to their fields; "
                      f'got {given!r}')
    for name, fields in given.items():
      if not hasattr(fields, 'items'):
        raise UserError(f'config field {"augmentation." + name!r} must be a dict of '
                        f'{", ".join(augment.NAMES)}; got {fields!r}')
      fields = dict(fields)
      problems = augment.problems(fields)
      if problems:
        raise UserError(f'config field {"augmentation." + name!r}: ' + '; '.join(problems))
      table[name] = fields
  return {name: augment.values(fields) for name, fields in table.items()}


def _augment_choice(config, policies: dict) -> str:
  value = optional(config, 'augment', augment.DEFAULT)
  if value not in policies:
    raise UserError(f"config field 'augment' is {value!r}; valid policies: "
                    f'{", ".join(policies)} (config.augmentation defines more)')
  return value


def _grid(config, folds: int, defaults: dict, policies: dict | None = None) -> dict:
  """config.grid with empty axes filled from the single-valued fields' checked values.

  ``fold`` defaults to every fold when ``data.folds`` > 1, else to the one
  hold-out split (None).
  """
  grid = {}
  for axis in AXES:
    field = f'grid.{axis}'
    if axis in STRATEGY_AXES and axis not in field_value(config, 'grid'):
      grid[axis] = ()  # configs written before the strategy axes
      continue
    if axis == 'augment' and axis not in field_value(config, 'grid'):
      grid[axis] = (defaults[axis],)  # configs written before the axis
      continue
    values = field_value(config, field)
    if isinstance(values, (int, float, str)) and not isinstance(values, bool):
      values = (values,)
    if not isinstance(values, (tuple, list)):
      raise UserError(f'config field {field!r} must be a tuple of values; got {values!r}')
    if axis == 'fold':
      grid[axis] = _folds(field, tuple(values), folds)
      continue
    for v in values:
      if axis == 'augment':
        problem = ('' if isinstance(v, str) and v in (policies or {}) else
                   f'valid policies: {", ".join(policies or {})}')
      else:
        problem = (number_problem(axis, v) if axis in NUMBERS else
                   '' if isinstance(v, str) and v in FROZEN_NORM else
                   f'valid: {", ".join(FROZEN_NORM)}')
      if problem:
        raise UserError(f'config field {field!r} has a bad value {v!r}; {problem}')
    values = tuple(NUMBERS[axis][0](v) if axis in NUMBERS else v for v in values)
    if len(set(values)) != len(values):
      raise UserError(f'config field {field!r} repeats a value: {values}')
    grid[axis] = values if axis in STRATEGY_AXES else values or (defaults[axis],)
  return grid


def _folds(field: str, values: tuple, folds: int) -> tuple:
  if folds <= 1:
    if values:
      raise UserError(f'config field {field!r} needs data.folds >= 2 (k-fold '
                      f'cross-validation); data.folds is {folds}')
    return (None,)
  if not values:
    return tuple(range(folds))
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < folds:
      raise UserError(f'config field {field!r} has a bad value {v!r}; folds are '
                      f'0..{folds - 1} (data.folds={folds})')
  if len(set(values)) != len(values):
    raise UserError(f'config field {field!r} repeats a value: {values}')
  return tuple(values)


def load_config(spec: str):
  """Loads ``path/to/config.py[:variant]`` the way ``launch/sweep.py`` does.

  For notebooks and tests: ``load_config('configs/default.py:tiny')``.
  """
  path, _, variant = spec.partition(':')
  if not os.path.isfile(path):
    raise UserError(f'config file {path} does not exist')
  module_spec = importlib.util.spec_from_file_location('_unet_jax_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)
