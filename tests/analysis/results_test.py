"""Loading results and comparing experiments, on made-up sweeps whose answers are known."""

import json
import os

import fake_workdir
import numpy as np
import pandas as pd
import pytest

from unet_jax import analysis
from unet_jax.analysis import stats
from unet_jax.errors import UserError


def test_load_summary_and_paired(tmp_path):
  res = analysis.load(fake_workdir.write(tmp_path, {'contracting': 0.8, 'expanding': 0.5},
                                        distances=True))
  assert len(res.df) == 2 * 5 * 20 and not res.notes
  assert {'experiment', 'base', 'seed', 'fold', 'init', 'image_id', 'label', 'dice', 'iou',
          'hd95', 'assd'} <= set(res.df.columns)
  table = res.summary()
  assert list(table['base']) == ['contracting', 'expanding']
  top = table.iloc[0]
  assert top['mean'] == pytest.approx(res.df.loc[res.df.base == 'contracting', 'dice'].mean())
  assert top['ci_lo'] < top['mean'] < top['ci_hi']
  assert (top['n_runs'], top['n_images'], top['n_nan'], top['ci_over']) == (
      5, 20, 0, 'seeds and images')
  hd = res.summary(metric='hd95').set_index('base').loc['contracting']
  assert hd['n_nan'] == 5 and hd['n_images'] == 19  # the empty-mask image is left out
  t = res.paired('contracting', 'expanding')
  assert (t.n_images, t.n_runs, t.wins, t.losses) == (20, 5, 20, 0)
  assert t.rank_biserial == 1.0 and t.p < 1e-4 and t.favours() == 'contracting'
  assert t.diff_ci95[0] < t.mean_diff < t.diff_ci95[1]
  hd = res.paired('contracting', 'expanding', metric='hd95')
  assert hd.n_excluded == 5 and hd.favours() == 'contracting'  # lower distance is better
  with pytest.raises(UserError, match='valid'):
    res.paired('contracting', 'nonsense')
  by_run = res.paired('contracting-seed1', 'expanding-seed2', by='experiment')
  assert (by_run.n_images, by_run.n_runs) == (20, 1)  # paired on images only
  assert np.isnan(by_run.p) and by_run.favours() is None  # one run decides nothing
  df = res.df
  res.df = df[((df.base == 'contracting') & (df.seed <= 3)) |
              ((df.base == 'expanding') & (df.seed > 3))]
  with pytest.raises(UserError, match='share no variant, seed, image_id'):
    res.paired('contracting', 'expanding')


def test_the_paired_test_is_the_crossed_estimate_of_the_differences(tmp_path):
  res = analysis.load(fake_workdir.write(tmp_path, {'full': 0.8, 'shallow': 0.78},
                                        seed_sd=0.03))
  t = res.paired('full', 'shallow')
  df = res.df.pivot_table(index=['seed', 'image_id'], columns='base', values='dice')
  cells = (df['full'] - df['shallow']).unstack('image_id').to_numpy()
  est = stats.crossed_mean(cells)
  assert (t.mean_diff, t.se, t.df, t.p) == pytest.approx(
      (est.mean, est.se, est.df, est.p_value()))


def test_one_seed_gives_intervals_over_images_and_no_p(tmp_path):
  res = analysis.load(fake_workdir.write(tmp_path, {'contracting': 0.8, 'expanding': 0.4},
                                        seeds=(0,)))
  table = res.summary()
  assert (table['ci_over'] == 'images (1 seed)').all() and table['seed_sd'].isna().all()
  t = res.paired('contracting', 'expanding')
  assert t.n_runs == 1 and np.isnan(t.p) and t.p_images < 1e-4 and t.favours() is None
  assert res.pairwise(reference='contracting')['p_holm'].isna().all()


def test_pairwise_applies_holm(tmp_path):
  res = analysis.load(fake_workdir.write(tmp_path, {'full': 0.8, 'shallow': 0.79,
                                                   'head': 0.4}))
  table = res.pairwise(reference='full')
  assert list(table['a']) == ['shallow', 'head']
  np.testing.assert_allclose(table['p_holm'], stats.holm(table['p']))


def test_rank_stability(tmp_path):
  res = analysis.load(fake_workdir.write(tmp_path, {'full': 0.9, 'contracting': 0.7,
                                                   'head': 0.3}))
  rs = res.rank_stability()
  assert rs.kendall_w == pytest.approx(1.0)
  assert list(rs.ranks.loc['full']) == [1.0] * 5


def test_variant_and_schedule_come_from_the_summary(tmp_path):
  workdir = fake_workdir.write(tmp_path, {'full': 0.8, 'gradual_flow_deep_to_shallow': 0.7},
                               seeds=(1,))
  path = os.path.join(workdir, 'experiments', 'full', 'summary.json')
  with open(path) as f:
    summary = json.load(f)
  summary['variant'] = '-lr0.001'
  with open(path, 'w') as f:
    json.dump(summary, f)
  runs = analysis.load(workdir).runs.set_index('base')
  assert runs.loc['full', 'condition'] == 'full-lr0.001'
  assert tuple(runs.loc['gradual_flow_deep_to_shallow', ['order', 'direction']]) == (
      'flow', 'deep_to_shallow')
  assert runs.loc['full', 'trained'] == frozenset(fake_workdir.BLOCKS)
  assert runs.loc['full'][['order', 'direction']].isna().all()


def test_folds_pool_into_one_score_per_seed_and_image(tmp_path):
  res = analysis.load(fake_workdir.write(tmp_path, {'contracting': 0.8, 'expanding': 0.6},
                                        seeds=(0, 1, 2), folds=4))
  assert len(res.runs) == 2 * 3 * 4
  assert sorted(res.runs['fold'].unique()) == [0, 1, 2, 3]
  row = res.summary().set_index('base').loc['contracting']
  assert (row['n_runs'], row['n_images']) == (3, 20)  # every image tested once per seed
  t = res.paired('contracting', 'expanding')
  assert (t.n_runs, t.n_images) == (3, 20) and t.favours() == 'contracting'


def test_incomplete_workdir_is_loaded_with_notes(tmp_path):
  workdir = fake_workdir.write(tmp_path, {'full': 0.8, 'head': 0.4, 'last': 0.3})
  path = os.path.join(workdir, 'results.jsonl')
  with open(path) as f:
    rows = [r for r in f if '"full-' in r]
  with open(path, 'w') as f:  # the sweep's results.jsonl lags: only full so far
    f.writelines(rows)
  for s in (2, 3, 4, 5):  # head-seed1 finished; the rest of head is still running
    os.remove(os.path.join(workdir, 'experiments', f'head-seed{s}', 'summary.json'))
  for s in (1, 2, 3, 4, 5):
    os.remove(os.path.join(workdir, 'experiments', f'last-seed{s}', 'summary.json'))
  res = analysis.load(workdir)
  assert sorted(res.runs['experiment']) == [f'full-seed{s}' for s in range(1, 6)] + [
      'head-seed1']
  assert any('head-seed1 read from experiments/<name>/results.jsonl' in n for n in res.notes)
  assert any('no results yet for head-seed2' in n for n in res.notes)
  assert any('config.json lists last' in n for n in res.notes)
  with pytest.raises(UserError, match='no results in'):
    analysis.load(tmp_path / 'elsewhere')


def test_rows_without_a_summary_are_kept(tmp_path):
  workdir = fake_workdir.write(tmp_path, {'full': 0.8}, seeds=(3,))
  os.remove(os.path.join(workdir, 'experiments', 'full', 'summary.json'))
  res = analysis.load(workdir)
  assert list(res.runs['base']) == ['full'] and 'no summary.json' in res.notes[0]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['target_source'] == res.domains[0]


def _frame(seeds=(0, 1, 2, 3), images=30, effect=0.1, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(0.7, 0.1, images)
  rows = []
  for name, shift in (('decoder', effect), ('full', 0.0)):
    for s in seeds:
      run = rng.normal(0, 0.02)
      for i in range(images):
        rows.append({'experiment': name, 'seed': s, 'image_id': f'case{i}',
                     'dice': image[i] + shift + run + rng.normal(0, 0.03),
                     'hd95': 5 - 10 * shift + rng.normal(0, 0.5)})
  return pd.DataFrame(rows)


def test_any_results_table_gets_the_same_statistics():
  frame = _frame()
  res = analysis.from_frame(frame)
  assert res.domains == ['data'] and res.metrics() == ['dice', 'hd95']
  table = res.summary()
  assert list(table['base']) == ['decoder', 'full'] and (table['n_runs'] == 4).all()
  t = res.paired('decoder', 'full')
  assert t.n_runs == 4 and t.n_images == 30 and t.favours() == 'decoder'
  assert res.paired('decoder', 'full', metric='hd95').favours() == 'decoder'  # lower wins
  assert res.pairwise(reference='full')['p_holm'].notna().all()
  assert res.rank_stability().kendall_w == pytest.approx(1.0)
  # The same numbers as a sweep's work directory with the same scores.
  cells = frame.pivot_table(index=['seed', 'image_id'], columns='experiment', values='dice')
  est = stats.crossed_mean((cells['decoder'] - cells['full']).unstack('image_id').to_numpy())
  assert t.p == pytest.approx(est.p_value())
  with_domains = pd.concat([frame.assign(domain='us'), frame.assign(domain='xray')])
  assert analysis.from_frame(with_domains).domains == ['us', 'xray']


@pytest.mark.parametrize('change, message', [
    (lambda f: f.drop(columns='seed'), 'lacks column(s) seed'),
    (lambda f: f.drop(columns=['dice', 'hd95']), 'no metric column'),
    (lambda f: f.assign(surface_dice=1.0), "higher_is_better={'surface_dice': True}"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "repeat an (experiment, seed, image_id), first "
                                           "'decoder', seed 0, image 'case0'"),
])
def test_from_frame_names_what_is_wrong(change, message):
  with pytest.raises(UserError) as e:
    analysis.from_frame(change(_frame()))
  assert message in str(e.value)


def test_from_frame_takes_other_metrics_with_their_direction():
  res = analysis.from_frame(_frame().assign(surface_dice=0.5),
                           higher_is_better={'surface_dice': True})
  assert 'surface_dice' in res.metrics()


def test_paired_tests_keep_their_error_rate_end_to_end():
  # The calibration of tests/analysis/stats_test.py, through from_frame and paired():
  # identical procedures, run SD 0.05, cell SD 0.05, 5 seeds x 32 images.
  rng = np.random.default_rng(5)
  rejected = []
  for _ in range(200):
    image = rng.normal(0.7, 0.1, 32)
    rows = [{'experiment': name, 'seed': s, 'image_id': i,
             'dice': image[i] + run + rng.normal(0, 0.05)}
            for name in ('a', 'b') for s in range(5) for run in [rng.normal(0, 0.05)]
            for i in range(32)]
    rejected.append(analysis.from_frame(pd.DataFrame(rows)).paired('a', 'b').favours()
                    is not None)
  assert np.mean(rejected) <= 0.1


def test_two_pretrainings_of_one_domain_are_one_set_of_conditions(tmp_path):
  """The same data fine-tuned from two pretrainings (two work directories): runs
  are named <folder>:<experiment> and the answer ranks them together."""
  paper = fake_workdir.write(tmp_path / 'paper-unet', {'full': 0.80, 'head': 0.60})
  imagenet = fake_workdir.write(tmp_path / 'resnet34', {'full': 0.86, 'head': 0.70},
                                histories={'full': fake_workdir.curve(10, 0.86)})
  res = analysis.load([paper, imagenet])
  assert res.domains == ['ultrasound']
  assert set(res.groups()) == {'paper-unet:full', 'paper-unet:head', 'resnet34:full',
                               'resnet34:head'}
  table = res.recommend()
  assert table['condition'].iloc[0] == 'resnet34:full'
  assert dict(zip(table['condition'], table['verdict']))['paper-unet:head'] == 'worse'
  assert res.history('resnet34:full-seed1') is not None  # read from its own folder


def _capped(seed):
  """Stop fields of a run that reached the cap (40) still improving in seeds 1 and 2."""
  if seed < 3:
    return {'stop_reason': 'cap', 'best_step': 40, 'stopped_at_step': 40}
  return {'stop_reason': 'converged', 'best_step': 20, 'stopped_at_step': 35}


def test_recommend_gives_the_cost_to_reach_the_dice(tmp_path):
  stops = {'full': lambda seed: {'best_step': 10 * seed, 'stopped_at_step': 10 * seed + 25,
                                 'seconds_to_best': 0.5 * seed, 'best_val_dice': 0.8},
           'head': _capped}
  res = analysis.load(fake_workdir.write(tmp_path, {'full': 0.85, 'head': 0.4},
                                        seeds=(1, 2, 3), stops=stops))
  runs = res.runs.set_index('experiment')
  assert list(runs.loc[['head-seed1', 'head-seed3'], 'stop_reason']) == ['cap', 'converged']
  assert runs.loc['full-seed2', ['best_step', 'stopped_at_step', 'seconds_to_best',
                                 'best_val_dice']].tolist() == [20, 45, 1.0, 0.8]
  assert np.isnan(runs.loc['head-seed1', 'seconds_to_best'])
  table = res.recommend().set_index('condition')
  assert list(table.index) == ['full', 'head']  # verdicts and order as before
  assert table.loc['head', 'verdict'] == 'worse'
  full, head = table.loc['full'], table.loc['head']
  assert (full['best_step'], full['stopped_step'], full['seconds_to_best'], full['at_cap']) == (
      20, 45, 1.0, 0)
  assert head['best_step'] == pytest.approx(100 / 3)
  assert head['stopped_step'] == pytest.approx(115 / 3)
  assert np.isnan(head['seconds_to_best']) and head['at_cap'] == 2


def test_summaries_of_an_older_version_load_without_stop_fields(tmp_path):
  workdir = fake_workdir.write(tmp_path, {'full': 0.85, 'head': 0.4}, seeds=(1, 2, 3),
                               old=True)
  with open(os.path.join(workdir, 'experiments', 'full-seed1', 'summary.json')) as f:
    assert 'stop_reason' not in json.load(f)
  res = analysis.load(workdir)
  assert res.runs['stop_reason'].isna().all()
  assert res.runs[['stopped_at_step', 'best_step', 'best_val_dice',
                   'seconds_to_best']].isna().all().all()
  table = res.recommend()
  assert (table['at_cap'] == 0).all() and table['best_step'].isna().all()
  assert list(table['verdict']) == ['best', 'worse']


def test_from_frame_has_no_stop_fields():
  table = analysis.from_frame(_frame()).recommend()
  assert table[['best_step', 'stopped_step', 'seconds_to_best']].isna().all().all()
  assert (table['at_cap'] == 0).all()


def _strategies(effects, seeds=3, images=24, run_sd=0.01, noise=0.02):
  """Per-image Dice and HD95 of strategies crossed with seeds and images."""
  rng = np.random.default_rng(0)
  image = rng.normal(0, 0.1, images)
  rows = []
  for seed in range(seeds):
    for name, effect in effects.items():
      run = rng.normal(0, run_sd)
      for i in range(images):
        dice = 0.7 + effect + image[i] + run + rng.normal(0, noise)
        rows.append({'experiment': name, 'seed': seed, 'image_id': f'im{i}', 'dice': dice,
                     'hd95': 10 - 20 * dice})
  return pd.DataFrame(rows)


def test_recommend_gives_hsu_mcb_intervals():
  res = analysis.from_frame(_strategies({'a': 0.1, 'b': 0.0, 'c': -0.1, 'd': -0.3}))
  table = res.recommend(alpha=0.05)
  assert list(table['condition']) == ['a', 'b', 'c', 'd']
  assert list(table['verdict']) == ['best', 'worse', 'worse', 'worse']
  best = table.iloc[0]
  assert best['mcb_lo'] == 0 and best['mcb_hi'] > 0.05  # shown the best, by about 0.1
  assert (table['mcb_hi'].iloc[1:] == 0).all() and (table['mcb_lo'].iloc[1:] < 0).all()
  assert table['diff_vs_best'].iloc[3] == pytest.approx(-0.4, abs=0.03)
  assert 'tied' not in set(table['verdict'])
  # The columns are stats.mcb of the run-aware paired tests of every pair.
  names = list(table['condition'])
  diff, se, df = (np.zeros((4, 4)) for _ in range(3))
  for i, x in enumerate(names):
    for j, y in enumerate(names):
      if i != j:
        t = res.paired(x, y, by='condition')
        diff[i, j], se[i, j], df[i, j] = t.mean_diff, t.se, t.df
  lo, hi = stats.mcb(diff, se, df, alpha=0.05)
  np.testing.assert_allclose(table['mcb_lo'], lo)
  np.testing.assert_allclose(table['mcb_hi'], hi)
  np.testing.assert_allclose(table['p_holm'].iloc[1:], stats.holm(
      [res.paired(n, 'a', by='condition').p for n in names[1:]]))
  # Lower is better for HD95: the same answer, intervals signed so that + is better.
  hd = res.recommend('hd95')
  assert list(hd['condition']) == names and list(hd['verdict']) == list(table['verdict'])
  assert hd['mcb_lo'].iloc[0] == 0 and (hd['mcb_hi'].iloc[1:] == 0).all()


def test_recommend_within_delta_of_the_best():
  # Two nearly equal strategies with 10 seeds: not shown worse without a margin,
  # shown within 0.02 of the best with one; the clearly worse one stays worse.
  res = analysis.from_frame(_strategies({'a': 0.0, 'b': -0.002, 'c': -0.2}, seeds=10))
  plain = res.recommend().set_index('condition')
  close = [n for n in 'ab' if plain.loc[n, 'verdict'] != 'best']  # either may lead
  assert len(close) == 1 and plain.loc[close[0], 'verdict'] == 'not shown worse'
  assert plain.loc[close[0], 'mcb_lo'] < 0 < plain.loc[close[0], 'mcb_hi']
  assert plain.loc['c', 'verdict'] == 'worse'
  table = res.recommend(delta=0.02).set_index('condition')
  assert table.loc[close[0], 'verdict'] == 'within delta'
  assert table.loc[close[0], 'mcb_lo'] > -0.02 and table.loc['c', 'verdict'] == 'worse'
  # A margin wider than c's gap: worse, but by less than delta.
  wide = res.recommend(delta=0.5).set_index('condition')
  assert wide.loc['c', 'verdict'] == 'within delta' and wide.loc['c', 'mcb_hi'] == 0
  with pytest.raises(UserError, match='delta must be a positive'):
    res.recommend(delta=0)


def test_recommend_with_one_seed_is_untested():
  table = analysis.from_frame(_strategies({'a': 0.0, 'c': -0.2}, seeds=1)).recommend()
  assert list(table['verdict']) == ['best', 'untested']
  assert table[['mcb_lo', 'mcb_hi']].isna().all().all()


def test_recommend_by_base_pools_a_strategy_grid_as_paired_does():
  # 'ld' crossed with its own grid axis (two variants) against plain strategies:
  # by base its variants are pooled cell by cell, as in paired().
  res = analysis.from_frame(_strategies({'full': 0.0, 'ld1': 0.01, 'ld2': -0.02,
                                         'head': -0.2}))
  grid = res.df['base'].isin(['ld1', 'ld2'])
  res.df.loc[grid, 'variant'] = '-' + res.df.loc[grid, 'base']
  res.df.loc[grid, 'base'] = 'ld'
  table = res.recommend(by='base')
  names = list(table['base'])
  assert sorted(names) == ['full', 'head', 'ld']
  k = len(names)
  diff, se, df = np.zeros((k, k)), np.ones((k, k)), np.ones((k, k))
  for i, x in enumerate(names):
    for j, y in enumerate(names):
      if i != j:
        t = res.paired(x, y)
        diff[i, j], se[i, j], df[i, j] = t.mean_diff, t.se, t.df
  lo, hi = stats.mcb(diff, se, df)
  np.testing.assert_allclose(table['mcb_lo'], lo)
  np.testing.assert_allclose(table['mcb_hi'], hi)
  assert table.set_index('base').loc['head', 'verdict'] == 'worse'
