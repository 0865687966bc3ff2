"""configs/*.py: every variant loads and validates; the paper's design is complete."""

import os

import pytest
from repo import ROOT  # noqa: E402

from unet_jax.block_order import block_groups, cumulative
from unet_jax.freeze import parse_rules, trained_blocks
from unet_jax.model import UNetSpec, init_model
from unet_jax.schedules import parse_schedule
from unet_jax.sweep.settings import SweepSettings, load_config

PAPER = os.path.join(ROOT, 'configs', 'paper.py')


@pytest.mark.parametrize('variant, seeds, schemes', [
    ('', 5, 2), ('smoke', 5, 2), ('scheme=depth', 5, 1), ('smoke,scheme=flow', 5, 1),
    ('dataset=chest_xray', 5, 2), ('seeds=3,smoke', 3, 2)])
def test_paper_variants_validate(variant, seeds, schemes):
  settings = SweepSettings.from_config(load_config(f'{PAPER}:{variant}'))
  assert settings.grid['seed'] == tuple(range(seeds))
  assert len(settings.runs()) == seeds * len(settings.experiments)
  gradual = [e for e in settings.experiments if e.schedule.describe_kind()]
  assert len(gradual) == 2 * schemes


def _trained_sets(config, depth):
  """Experiment name -> the set of blocks it trains (one-stage, pretrained ones)."""
  params = init_model(UNetSpec(base_width=4, depth=depth), 0)[1]
  out = {}
  for name, entry in config.experiments.items():
    if isinstance(entry.rules, (str, tuple)) and entry.init == 'pretrained':
      blocks = trained_blocks(params, parse_rules(entry.rules, depth))
      assert not blocks['partly'], name
      out[name] = frozenset(blocks['trained'])
  return out


@pytest.mark.parametrize('variant, depth', [('', 4), ('smoke', 2), ('scheme=flow', 4)])
def test_paper_design_sweeps_every_subset_once(variant, depth):
  config = load_config(f'{PAPER}:{variant}')
  sets = _trained_sets(config, depth)
  assert len(set(sets.values())) == len(sets)  # no subset under two names
  schemes = ('flow',) if 'flow' in variant else ('flow', 'depth')
  wanted = {frozenset(['head']), frozenset(['dec1', 'head'])}  # head and last: F3
  for scheme in schemes:
    groups = block_groups(scheme, depth)
    wanted |= {frozenset(g) for g in groups}  # every block (group) alone
    for k in range(1, len(groups)):
      for direction in ('shallow_to_deep', 'deep_to_shallow'):
        wanted.add(cumulative(scheme, depth, k, direction))
  assert wanted <= set(sets.values())
  for name in ('last', 'head', 'contracting', 'expanding', 'shallow', 'full', 'scratch'):
    assert name in config.experiments
  assert config.experiments['scratch'].init == 'random'
  assert sets['last'] == {'dec1', 'head'}


def test_paper_gradual_schedules_cover_both_orders():
  config = load_config(f'{PAPER}:smoke')
  kinds = {}
  for name, entry in config.experiments.items():
    schedule = parse_schedule(entry.rules, 2)
    if schedule.describe_kind():
      kinds[name] = schedule.describe_kind()
  assert {(k['order'], k['direction']) for k in kinds.values()} == {
      (o, d) for o in ('flow', 'depth') for d in ('shallow_to_deep', 'deep_to_shallow')}
  # smoke: 8 steps; one stage per group and a last one with everything,
  # flow has 6 groups (1 step each), depth 3 (2 steps each).
  assert {k['order']: k['stage_steps'] for k in kinds.values()} == {'flow': 1, 'depth': 2}


@pytest.mark.parametrize('variant, message', [
    ('scheme=diagonal', 'valid: both, flow, depth'),
    ('dataset=busi', 'add root=<its folder>'),
    ('dataset=imagenet', 'valid: ultrasound, chest_xray, busi'),
    ('fast', "unknown variant 'fast'"),
])
def test_paper_bad_variants_are_named(variant, message):
  with pytest.raises(ValueError, match=message):
    load_config(f'{PAPER}:{variant}')


@pytest.mark.parametrize('variant', ['', 'tiny'])
def test_default_config_sweeps_seeds_under_the_measured_policy(variant):
  spec = os.path.join(ROOT, 'configs', 'default.py') + (f':{variant}' if variant else '')
  settings = SweepSettings.from_config(load_config(spec))
  assert settings.grid['seed'] == (0, 1, 2)  # a verdict needs seeds
  assert settings.frozen_norm == 'adapt'  # chosen by measurement, docs/DESIGN.md section 3
  assert len(settings.runs()) == 3 * 8
