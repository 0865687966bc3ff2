"""Strategies from a config: refusals before training, what the sweep records, the answer."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from repo import CONFIGS

from unet_jax import analysis, model
from unet_jax.errors import UserError
from unet_jax.model import UNetSpec
from unet_jax.sweep import checkpoint, run_sweep
from unet_jax.sweep.export import export_experiment, predict
from unet_jax.sweep.settings import SweepSettings, load_config


def _tiny(**experiments):
  config = load_config(os.path.join(CONFIGS, 'strategies.py:tiny'))
  if experiments:
    config.experiments = experiments
  return config


@pytest.mark.parametrize('entry, grid, message', [
    (dict(rules='full', init='pretrained', layer_decay=0.0), {},
     "'experiments.x.layer_decay' must be a number in (0, 1]"),
    (dict(rules='full', init='pretrained', layer_decay=1.5), {}, 'in (0, 1]'),
    (dict(rules='full', init='pretrained', l2sp=-1.0), {},
     "'experiments.x.l2sp' must be a number in [0.0, 100.0]"),
    (dict(rules='full', init='random', l2sp=1.0), {}, "init must be 'pretrained'"),
    (dict(rules='full', init='pretrained', lr_scaling='lars'), {},
     'valid choices: none, rgn'),
    (dict(rules='full', init='pretrained', layer_decay=0.5, decay_order='sideways'), {},
     'valid choices: flow, depth'),
    (dict(rules='full', init='pretrained', adapter_rank=4), {},
     'unknown key(s) adapter_rank; valid keys'),
    (dict(rules='full', init='pretrained'), {'l2sp': (0.1,)},
     "'grid.l2sp' crosses the experiments whose entry sets l2sp, and none does"),
    (dict(rules='full', init='pretrained', layer_decay=0.5), {'layer_decay': (0.5, 2.0)},
     "'grid.layer_decay' has a bad value 2.0; must be a number in (0, 1]"),
    (dict(rules=(('enc1', -0.5), ('.*', 'freeze')), init='pretrained'), {},
     'learning-rate multiplier > 0'),
    (dict(rules=(('.*', 'train', 'weights'),), init='pretrained'), {},
     "kind 'weights' is not one of kernel, bias"),
    (dict(rules={'lp_ft': 1.5}, init='pretrained'), {}, "'lp_ft' is the share of steps"),
    (dict(rules={'lr': 0.1}, init='pretrained'), {}, "the dict form is {'lr'"),
])
def test_bad_strategy_settings_are_refused_naming_the_field(entry, grid, message):
  config = _tiny(x=entry)
  for axis, values in grid.items():
    config.grid[axis] = values
  with pytest.raises(UserError) as e:
    SweepSettings.from_config(config)
  assert message in str(e.value)


@pytest.mark.parametrize('rules, message', [
    ('surgical:enc9', "freeze rule 'enc9' matches no parameter; valid block names: "
                      'bottleneck, dec1, dec2, enc1, enc2, head'),
    ((('enc1', 'train', 'adapter'), ('.*', 'freeze')), "of kind 'adapter'"),
])
def test_rules_that_fit_no_parameter_are_refused_before_any_training(tmp_path, rules,
                                                                      message):
  config = _tiny(bad=dict(rules=rules, init='pretrained'))
  config.model.adapter_rank = 0  # no adapters: a rule for them fits nothing
  with pytest.raises(UserError) as e:
    run_sweep(config, str(tmp_path), progress=False)
  assert "config field 'experiments.bad.rules'" in str(e.value) and message in str(e.value)
  assert not os.path.exists(tmp_path / 'pretrain')  # nothing was trained


def _frame(effects: dict[str, float], seeds=3, images=24, run_sd=0.01, noise=0.02):
  rng = np.random.default_rng(0)
  image_effect = rng.normal(0, 0.1, images)
  rows = []
  for seed in range(seeds):
    for name, effect in effects.items():
      run = rng.normal(0, run_sd)
      for i in range(images):
        rows.append({'experiment': name, 'seed': seed, 'image_id': f'im{i}',
                     'dice': 0.7 + effect + image_effect[i] + run + rng.normal(0, noise)})
  return pd.DataFrame(rows)


def test_recommend_names_the_best_the_not_shown_worse_and_the_worse():
  table = analysis.from_frame(_frame({'a': 0.0, 'b': 0.002, 'c': -0.2})).recommend()
  verdicts = dict(zip(table['condition'], table['verdict']))
  assert verdicts == {'b': 'best', 'a': 'not shown worse', 'c': 'worse'}
  assert table['condition'].iloc[0] == 'b' and np.isnan(table['p_holm'].iloc[0])
  assert table['p_holm'][table['condition'] == 'c'].iloc[0] < 0.05
  assert table['diff_vs_best'][table['condition'] == 'c'].iloc[0] < -0.1


def test_recommend_with_one_seed_decides_nothing():
  table = analysis.from_frame(_frame({'a': 0.0, 'c': -0.2}, seeds=1)).recommend()
  assert list(table['verdict']) == ['best', 'untested']


def test_strategy_sweep_records_rules_times_and_the_answer(tmp_path):
  config = _tiny()
  config.only = 'full,layer_decay,l2sp,bitfit_head,auto_rgn,lp_ft,lora'
  config.grid.seed = (0, 1)
  config.executor = 'per_experiment'
  run_sweep(config, str(tmp_path), progress=False)
  exp = tmp_path / 'experiments'
  rules = (exp / 'bitfit_head-seed0' / 'rules.txt').read_text()
  assert "(kind bias)" in rules and 'enc1/conv1/kernel' in rules
  decay = (exp / 'layer_decay-seed0' / 'rules.txt').read_text()
  assert decay.startswith('# layer_decay: 0.8\n# decay_order: flow\n')
  assert 'x0.8 ' in decay and 'head/kernel' in decay
  summary = json.loads((exp / 'l2sp-seed1' / 'summary.json').read_text())
  assert summary['finetune_strategy'] == {'l2sp': 1.0}
  assert summary['own_seconds'] is not None and summary['own_seconds'] > 0
  lp_ft = json.loads((exp / 'lp_ft-seed0' / 'summary.json').read_text())
  assert [s['start'] for s in lp_ft['schedule']] == [0, 2]
  report = (tmp_path / 'report.md').read_text()
  assert report.index('## What to train (ultrasound)') < report.index('## Findings')
  assert 'tradeoff-params.png' in report
  table = analysis.load(str(tmp_path)).recommend()
  assert set(table['condition']) == {'full', 'layer_decay', 'l2sp', 'bitfit_head',
                                     'auto_rgn', 'lp_ft', 'lora'}
  param = lambda name, column: table[column][table['condition'] == name].iloc[0]
  assert param('bitfit_head', 'trainable_params') < param('full', 'trainable_params')
  assert param('lora', 'extra_params') > 0 and param('full', 'extra_params') == 0
  # An adapter experiment exports merged: predict needs no adapters.
  out = export_experiment(str(tmp_path), 'lora-seed0', str(tmp_path / 'exported'))
  meta = json.loads((tmp_path / 'exported' / 'model.json').read_text())
  assert meta['model']['adapter_rank'] == 0 and meta['adapters_merged']
  test = np.load(tmp_path / 'test_set.npz')
  spec = UNetSpec(**json.loads((tmp_path / 'config.json').read_text())['model'])
  params, stats = checkpoint.load_weights(str(exp / 'lora-seed0' / 'weights'))
  unmerged = model.predict(model.init_model(spec, 0)[0], params, stats, test['images'])
  merged = predict(out, test['images'][..., 0])
  np.testing.assert_allclose(merged, unmerged[..., 0], atol=1e-4)
