"""The race: decisions from a results table, and its error rate checked by simulation."""

import numpy as np
import pandas as pd
import pytest

from unet_jax import analysis
from unet_jax.analysis.race import kn_constants, kn_screen
from unet_jax.errors import UserError

# Replicate-to-replicate variation as measured on the default sweep (seed SD of a
# strategy's mean test Dice 0.002-0.018; a common per-seed part from common random
# numbers).
RUN_SD, COMMON_SD = 0.012, 0.02
DELTA = 0.02


def _draw(rng, mu, replicates):
  common = rng.normal(0, COMMON_SD, (1, replicates))
  return mu[:, None] + common + rng.normal(0, RUN_SD, (len(mu), replicates))


def _named(values, n0=5, alpha=0.05):
  k = values.shape[0]
  alive, out, looks, spent, waiting = kn_screen(values, np.full(k, values.shape[1]),
                                                delta=DELTA, alpha=alpha, n0=n0)
  assert waiting is None and not spent  # enough replicates: the race ended
  rest = np.flatnonzero(alive)
  used = sum(out.get(i, looks[-1][0]) for i in range(k))
  return int(rest[np.argmax(looks[-1][1][rest])]), used


@pytest.mark.parametrize('k,sims', [(8, 400), (27, 150)])
def test_error_rate_at_the_slippage_configuration_is_at_most_alpha(k, sims):
  """The best leads every other by exactly delta: naming another is an error."""
  rng = np.random.default_rng(k)
  mu = np.zeros(k)
  mu[3] = DELTA
  wrong = [(_named(_draw(rng, mu, 300))[0] != 3) for _ in range(sims)]
  # alpha 0.05; the bound 0.05 + 2 binomial SEs.
  assert np.mean(wrong) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / sims)


@pytest.mark.parametrize('k', [8, 27])
def test_with_all_equal_it_ends_and_names_one(k):
  rng = np.random.default_rng(100 + k)
  picks = [_named(_draw(rng, np.zeros(k), 300))[0] for _ in range(40)]
  assert len(set(picks)) > 1  # any is right; which one is chance


def test_a_strategy_far_behind_goes_out_at_the_first_look():
  rng = np.random.default_rng(1)
  mu = np.asarray([0.896, 0.887, 0.874, 0.828, 0.808, 0.758, 0.719, 0.456])  # default sweep
  values = _draw(rng, mu, 300)
  alive, out, looks, _, _ = kn_screen(values, np.full(8, 300), delta=DELTA, alpha=0.05, n0=5)
  assert out[7] == 5 and looks[0][0] == 5
  assert alive[0] or alive[1] or alive[2]


def test_constants_follow_kim_and_nelson():
  # eta = ((2 alpha / (k - 1)) ** (-2 / (n0 - 1)) - 1) / 2, h2 = 2 eta (n0 - 1)
  assert kn_constants(2, 3, 0.05) == pytest.approx(2 * 0.5 * (0.1 ** -1 - 1) * 2)
  assert kn_constants(8, 5, 0.05) == pytest.approx(2 * 0.5 * ((0.1 / 7) ** -0.5 - 1) * 4)


def _frame(values, names, images=4):
  rows = []
  for name, series in zip(names, values):
    for seed, v in enumerate(series):
      for image in range(images):
        rows.append({'experiment': name, 'seed': seed, 'image_id': f'i{image}',
                     'dice': v + 0.01 * (image - 1.5)})
  return pd.DataFrame(rows)


def test_race_from_a_table_says_what_to_run_next_then_decides():
  rng = np.random.default_rng(3)
  mu = np.asarray([0.90, 0.85, 0.50])
  values = _draw(rng, mu, 60)
  names = ['full', 'contracting', 'head']
  first = analysis.race(_frame(values[:, :2], names), delta=DELTA, n0=5)
  assert not first.decided and first.next_runs == {'strategies': names,
                                                   'replicates': [1, 2, 3, 4, 5]}
  assert first.answer.startswith('Not started')
  staged = analysis.race(_frame(values[:, :5], names), delta=DELTA, n0=5)
  assert staged.eliminated.get('head') == 5 and 'head' not in staged.survivors
  if not staged.decided:
    assert staged.next_runs['replicates'] == [6]
    assert 'head' not in staged.next_runs['strategies']
  # Eliminated strategies never need more runs: give the survivors theirs only.
  full = _frame(values[:2], names[:2]).pipe(
      lambda df: pd.concat([df, _frame(values[2:, :5], names[2:])]))
  done = analysis.race(full, delta=DELTA, n0=5)
  assert done.decided and done.best == 'full' and done.survivors == ['full']
  assert done.answer.startswith('Train full')
  assert done.replicates['head'] == 5


def test_the_budget_ends_an_undecided_race_with_the_set_it_could_not_split():
  values = np.asarray([[0.80, 0.82, 0.78, 0.81, 0.79, 0.80],
                       [0.80, 0.78, 0.82, 0.79, 0.81, 0.80]])
  record = analysis.race(_frame(values, ['a', 'b']), delta=0.001, n0=3, max_replicates=6)
  assert record.budget_spent and not record.decided
  assert set(record.survivors) == {'a', 'b'} and record.answer.startswith('The budget ran out')


def test_too_few_test_images_to_resolve_delta_is_said():
  rng = np.random.default_rng(5)
  rows = []
  for name, mu in (('a', 0.80), ('b', 0.80)):
    for seed in range(8):
      for image in range(6):
        rows.append({'experiment': name, 'seed': seed, 'image_id': image,
                     'dice': mu + rng.normal(0, 0.2)})
  record = analysis.race(pd.DataFrame(rows), delta=0.01, n0=3, max_replicates=8)
  assert record.limited_by_test_set
  assert 'more seeds cannot resolve that' in record.answer


@pytest.mark.parametrize('kwargs,message', [
    ({'delta': 0.0}, 'delta > 0'),
    ({'delta': 0.02, 'n0': 1}, 'n0 >= 2'),
    ({'delta': 0.02, 'metric': 'hd95'}, "no column 'hd95'"),
])
def test_bad_arguments_are_named(kwargs, message):
  with pytest.raises(UserError, match=message):
    analysis.race(_frame(np.zeros((2, 3)), ['a', 'b']), **kwargs)


def _resampled_frame(rng, means, seeds, pool=60, tested=12):
  """Every seed scores its own test images (data.split_per_seed), shared by the strategies."""
  rows = []
  for seed in range(seeds):
    images = rng.choice(pool, tested, replace=False)
    common = rng.normal(0, 0.01)
    for name, mu in means.items():
      for image in images:
        rows.append({'experiment': name, 'seed': seed, 'image_id': f'i{image}',
                     'dice': mu + common + rng.normal(0, 0.2)})
  return pd.DataFrame(rows)


def test_a_race_on_resampled_splits_says_so_and_is_not_limited_by_one_test_set():
  """The same noisy images that limit a fixed split are averaged over when every
  replicate draws its own: no test-set limit, and the answer says what it covers."""
  rng = np.random.default_rng(6)
  frame = _resampled_frame(rng, {'a': 0.80, 'b': 0.80}, seeds=8)
  record = analysis.race(frame, delta=0.01, n0=3, max_replicates=8)
  assert record.resampled and not record.limited_by_test_set
  assert record.test_set_halfwidth == {}
  assert 'on this data set (every replicate drew its own split)' in record.answer
  fixed = analysis.race(_frame(np.full((2, 8), 0.8), ['a', 'b']), delta=0.01, n0=3,
                        max_replicates=8)
  assert not fixed.resampled and 'on this test set' in fixed.answer


def test_results_of_resampled_splits_use_run_means_as_replicates():
  rng = np.random.default_rng(7)
  frame = _resampled_frame(rng, {'full': 0.85, 'head': 0.60, 'deep': 0.84}, seeds=5)
  res = analysis.from_frame(frame)
  assert res.resampled and not analysis.from_frame(_frame(np.zeros((2, 3)), 'ab')).resampled
  table = res.summary()
  assert (table['ci_over'] == 'seeds, each its own split').all()
  assert (table['n_runs'] == 5).all() and table['n_images'].max() > 12
  t = res.paired('full', 'head')
  run_means = frame.groupby(['experiment', 'seed'])['dice'].mean().unstack('experiment')
  d = run_means['full'] - run_means['head']
  assert t.mean_diff == pytest.approx(d.mean())
  assert t.se == pytest.approx(d.std(ddof=1) / np.sqrt(5)) and t.df == 4
  answer = res.recommend(delta=0.02).set_index('condition')
  assert answer.loc['head', 'verdict'] == 'worse'
