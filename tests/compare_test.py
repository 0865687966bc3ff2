"""Statistics and findings on made-up sweeps whose answers are known."""

import json
import os

import fake_workdir
import numpy as np
import pytest

from unet_jax import compare, stats
from unet_jax.errors import UserError
from unet_jax.findings import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE

GRADUAL = {'gradual_depth_shallow_to_deep': 0.8, 'gradual_depth_deep_to_shallow': 0.6,
           'gradual_flow_shallow_to_deep': 0.8, 'gradual_flow_deep_to_shallow': 0.65}


def _findings(res):
  return {f.id: f for f in res.findings()}


# -- statistics by hand -------------------------------------------------------


def test_holm_by_hand():
  # Sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 -> max(0.06, 0.04).
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
  np.testing.assert_allclose(stats.holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
  np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])


def test_rank_biserial_and_wilcoxon_by_hand():
  assert stats.rank_biserial([1, 2, 3]) == 1.0
  assert stats.rank_biserial([1, 2, -3]) == 0.0  # rank sums 3 and 3
  assert stats.rank_biserial([-1, 2, 3, 0]) == pytest.approx((5 - 1) / 6)  # zero dropped
  assert stats.wilcoxon([0.0, 0.0]) == 1.0
  assert stats.wilcoxon([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)  # exact, all positive


def test_kendall_w_by_hand():
  w, _ = stats.kendall_w([[3, 2, 1], [3, 2, 1], [1, 2, 3]])  # ranks 1,2,3 / 1,2,3 / 3,2,1
  # Rank sums 5, 6, 7 around 6: S = 2, W = 12 * 2 / (3^2 * (3^3 - 3)) = 1/9.
  assert w == pytest.approx(1 / 9)
  w, p = stats.kendall_w([[1, 2, 3, 4]] * 4)
  assert w == pytest.approx(1.0) and p < 0.05


def test_cluster_bootstrap_is_wider_when_seeds_disagree():
  rng = np.random.default_rng(0)
  cells = rng.normal(0.8, 0.05, (5, 40)) + rng.normal(0, 0.1, (5, 1))  # seed effects
  lo, hi = stats.cluster_bootstrap_ci(cells)
  naive_lo, naive_hi = stats.bootstrap_ci(cells.ravel())
  assert lo < cells.mean() < hi
  assert hi - lo > 2 * (naive_hi - naive_lo)
  with_nan = cells.copy()
  with_nan[:, 0] = np.nan
  assert np.isfinite(stats.cluster_bootstrap_ci(with_nan)).all()


# -- loading and tables -------------------------------------------------------


def test_load_summary_and_paired(tmp_path):
  res = compare.load(fake_workdir.write(tmp_path, {'contracting': 0.8, 'expanding': 0.5},
                                        distances=True))
  assert len(res.df) == 2 * 5 * 20 and not res.notes
  assert {'experiment', 'base', 'seed', 'init', 'image_id', 'label', 'dice', 'iou', 'hd95',
          'assd'} <= set(res.df.columns)
  table = res.summary()
  assert list(table['base']) == ['contracting', 'expanding']
  top = table.iloc[0]
  assert top['mean'] == pytest.approx(res.df.loc[res.df.base == 'contracting', 'dice'].mean())
  assert top['ci_lo'] < top['mean'] < top['ci_hi']
  assert (top['n_runs'], top['n_images'], top['n_nan']) == (5, 20, 0)
  assert res.summary(metric='hd95').iloc[0]['n_nan'] == 5  # one empty-mask image per seed
  t = res.paired('contracting', 'expanding')
  assert (t.n_images, t.n_runs, t.wins, t.losses) == (20, 5, 20, 0)
  assert t.rank_biserial == 1.0 and t.p_images < 1e-4 and t.favours() == 'contracting'
  assert t.p_runs == pytest.approx(0.0625)  # five seeds, all one way: the smallest p
  hd = res.paired('contracting', 'expanding', metric='hd95')
  assert hd.n_excluded == 5 and hd.favours() == 'contracting'  # lower distance is better
  with pytest.raises(UserError, match='valid'):
    res.paired('contracting', 'nonsense')
  by_run = res.paired('contracting-seed1', 'expanding-seed2', by='experiment')
  assert (by_run.n_images, by_run.n_runs) == (20, 1)  # paired on images only
  df = res.df
  res.df = df[((df.base == 'contracting') & (df.seed <= 3)) |
              ((df.base == 'expanding') & (df.seed > 3))]
  with pytest.raises(UserError, match='share no variant, seed, image_id'):
    res.paired('contracting', 'expanding')


def test_pairwise_applies_holm(tmp_path):
  res = compare.load(fake_workdir.write(tmp_path, {'full': 0.8, 'shallow': 0.79,
                                                   'head': 0.4}))
  table = res.pairwise(reference='full')
  assert list(table['a']) == ['shallow', 'head']
  np.testing.assert_allclose(table['p_holm'], stats.holm(table['p_images']))


def test_rank_stability_and_variants(tmp_path):
  res = compare.load(fake_workdir.write(tmp_path, {'full': 0.9, 'contracting': 0.7,
                                                   'head': 0.3}))
  rs = res.rank_stability()
  assert rs.kendall_w == pytest.approx(1.0)
  assert list(rs.ranks.loc['full']) == [1.0] * 5
  assert compare._variant('full-seed1-lr0.001', 'full', 1) == '-lr0.001'
  assert compare._variant('full', 'full', 0) == ''


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
  res = compare.load(workdir)
  assert sorted(res.runs['experiment']) == [f'full-seed{s}' for s in range(1, 6)] + [
      'head-seed1']
  assert any('head-seed1 read from experiments/<name>/results.jsonl' in n for n in res.notes)
  assert any('no results yet for head-seed2' in n for n in res.notes)
  assert any('config.json lists last' in n for n in res.notes)
  with pytest.raises(UserError, match='no results in'):
    compare.load(tmp_path / 'elsewhere')


def test_schedule_kind_is_recognised(tmp_path):
  res = compare.load(fake_workdir.write(tmp_path, {'full': 0.8, **GRADUAL}, seeds=(1,)))
  kinds = res.runs.set_index('base')[['order', 'direction']]
  assert tuple(kinds.loc['gradual_flow_deep_to_shallow']) == ('flow', 'deep_to_shallow')
  assert tuple(kinds.loc['gradual_depth_shallow_to_deep']) == ('depth', 'shallow_to_deep')
  assert kinds.loc['full'].isna().all()


# -- findings -----------------------------------------------------------------


@pytest.mark.parametrize('contracting, expanding, verdict', [
    (0.8, 0.5, HOLDS), (0.5, 0.8, DOES_NOT_HOLD), (0.7, 0.7, INCONCLUSIVE)])
def test_f1(tmp_path, contracting, expanding, verdict):
  res = compare.load(fake_workdir.write(
      tmp_path, {'contracting': contracting, 'expanding': expanding}, shared_noise=True))
  f = _findings(res)
  assert f['F1'].verdict == verdict
  assert f['F2'].verdict == INCONCLUSIVE and 'gradual' in f['F2'].evidence
  assert f['F4'].verdict == INCONCLUSIVE and 'X-ray' in f['F4'].evidence
  assert f['F5'].verdict == INCONCLUSIVE


def test_f2_f6_gradual_schedules(tmp_path):
  f = _findings(compare.load(fake_workdir.write(tmp_path / 'a', GRADUAL)))
  assert f['F2'].verdict == HOLDS and f['F6'].verdict == HOLDS
  reversed_flow = {**GRADUAL, 'gradual_flow_deep_to_shallow': 0.95}
  f = _findings(compare.load(fake_workdir.write(tmp_path / 'b', reversed_flow)))
  assert f['F6'].verdict == DOES_NOT_HOLD and 'flow: does not hold' in f['F6'].evidence
  depth_only = {k: v for k, v in GRADUAL.items() if 'depth' in k}
  f = _findings(compare.load(fake_workdir.write(tmp_path / 'c', depth_only)))
  assert f['F2'].verdict == HOLDS
  assert f['F6'].verdict == INCONCLUSIVE and 'flow not swept' in f['F6'].evidence


@pytest.mark.parametrize('last, verdict', [(0.2, HOLDS), (0.75, DOES_NOT_HOLD)])
def test_f3(tmp_path, last, verdict):
  res = compare.load(fake_workdir.write(
      tmp_path, {'full': 0.85, 'contracting': 0.8, 'shallow': 0.7, 'last': last,
                 'head': 0.9 if verdict == HOLDS else 0.8}))
  assert _findings(res)['F3'].verdict == verdict


def test_f4_needs_two_domains(tmp_path):
  us = fake_workdir.write(tmp_path / 'us', {'contracting': 0.8, 'expanding': 0.5})
  xray = fake_workdir.write(tmp_path / 'xr', {'contracting': 0.8, 'expanding': 0.79},
                            source='xray', seed=1)
  res = compare.load([us, xray])
  assert res.domains == ['ultrasound', 'xray']
  with pytest.raises(UserError, match='several domains'):
    res.summary()
  f = _findings(res)
  assert f['F4'].verdict == HOLDS
  assert f['F1'].verdict == HOLDS  # judged on the ultrasound domain
  same = fake_workdir.write(tmp_path / 'xr2', {'contracting': 0.8, 'expanding': 0.5},
                            source='xray', seed=2)
  assert _findings(compare.load([us, same]))['F4'].verdict == DOES_NOT_HOLD


@pytest.mark.parametrize('shallow_rise, verdict', [(10, HOLDS), (40, DOES_NOT_HOLD)])
def test_f5_convergence(tmp_path, shallow_rise, verdict):
  histories = {'shallow': fake_workdir.curve(shallow_rise, 0.8),
               'full': fake_workdir.curve(25, 0.85)}
  res = compare.load(fake_workdir.write(tmp_path, {'full': 0.85, 'shallow': 0.8},
                                        seeds=range(6), histories=histories))
  conv = res.convergence(0.9, reference='full').set_index('experiment')
  assert conv.loc['full-seed0', 'steps'] == 25  # 0.9 * 0.85 first reached at step 25
  assert _findings(res)['F5'].verdict == verdict


def test_convergence_without_history(tmp_path):
  res = compare.load(fake_workdir.write(tmp_path, {'full': 0.85, 'shallow': 0.8}))
  conv = res.convergence()
  assert conv['steps'].isna().all() and (conv['note'] != '').all()
  assert 'history.jsonl' in _findings(res)['F5'].evidence


def test_rows_without_a_summary_are_kept(tmp_path):
  workdir = fake_workdir.write(tmp_path, {'full': 0.8}, seeds=(3,))
  os.remove(os.path.join(workdir, 'experiments', 'full', 'summary.json'))
  res = compare.load(workdir)
  assert list(res.runs['base']) == ['full'] and 'no summary.json' in res.notes[0]
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['data']['source'] == res.domains[0]
