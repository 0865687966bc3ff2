"""configs/*.py: every variant loads and validates; the paper's design is complete."""

import os

import pytest

from unet_jax.schedules import gradual
from unet_jax.settings import SweepSettings, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = os.path.join(ROOT, 'configs', 'paper.py')


@pytest.mark.parametrize('variant', ['', 'smoke', 'scheme=depth', 'smoke,scheme=depth',
                                     'dataset=chest_xray', 'seeds=3,smoke'])
def test_paper_variants_validate(variant):
  settings = SweepSettings.from_config(load_config(f'{PAPER}:{variant}'))
  seeds = 3 if 'seeds=3' in variant else 5
  assert settings.grid['seed'] == tuple(range(seeds))
  assert len(settings.runs()) == seeds * len(settings.experiments)


@pytest.mark.parametrize('scheme, depth, alone', [
    ('flow', 4, ['enc1', 'enc2', 'enc3', 'enc4', 'bottleneck', 'dec4', 'dec3', 'dec2',
                 'dec1']),
    ('depth', 4, ['enc1+dec1+head', 'enc2+dec2', 'enc3+dec3', 'enc4+dec4', 'bottleneck'])])
def test_paper_design(scheme, depth, alone):
  config = load_config(f'{PAPER}:scheme={scheme}')
  names = list(config.experiments.keys())
  assert sorted(n[len('alone_'):] for n in names if n.startswith('alone_')) == sorted(alone)
  groups = len(alone) + (scheme == 'flow')  # flow: 'head' alone is the 'head' experiment
  for prefix in ('s2d_', 'd2s_'):
    assert sorted(int(n[4:]) for n in names if n.startswith(prefix)) == \
        list(range(1, groups))
  for name in ('contracting', 'expanding', 'full', 'scratch', 'head', 'gradual_s2d',
               'gradual_d2s'):
    assert name in names
  assert config.experiments['scratch'].init == 'random'
  # Cumulative subsets: s2d_1 is the shallowest group, d2s_1 the deepest.
  s2d, d2s = config.experiments['s2d_1'].rules, config.experiments['d2s_1'].rules
  first = {'flow': 'enc1', 'depth': 'enc1|dec1|head'}[scheme]
  last = {'flow': 'head', 'depth': 'bottleneck'}[scheme]
  assert s2d[0] == (first, 'train') and d2s[0] == (last, 'train')
  spec = config.experiments['gradual_s2d'].rules
  schedule = gradual(spec['gradual'], spec['direction'], spec['stage_steps'], depth)
  assert len(schedule.stages) == groups


@pytest.mark.parametrize('variant, message', [
    ('scheme=diagonal', 'valid: flow, depth'),
    ('dataset=busi', 'add root=<its folder>'),
    ('dataset=imagenet', 'valid: ultrasound, chest_xray, busi'),
    ('fast', "unknown variant 'fast'"),
])
def test_paper_bad_variants_are_named(variant, message):
  with pytest.raises(ValueError, match=message):
    load_config(f'{PAPER}:{variant}')


def test_default_variants_validate():
  for variant in ('', 'tiny'):
    SweepSettings.from_config(load_config(os.path.join(ROOT, 'configs', 'default.py') +
                                          (f':{variant}' if variant else '')))
