"""A statistically controlled race: replicates where the decision is, none elsewhere.

The procedure is the fully sequential indifference-zone procedure of Kim and
Nelson (2001, "KN"), on paired differences of replicate means. A replicate is
one training run of every strategy still in the race under one seed (paired
through common random numbers); its observation of a strategy is that run's
mean test score. With ``k`` strategies, first-stage size ``n0``, error rate
``alpha`` and indifference zone ``delta``:

- ``eta = ((2 alpha / (k - 1)) ** (-2 / (n0 - 1)) - 1) / 2``, ``h2 = 2 eta (n0 - 1)``;
- ``S2[i, l]``: the sample variance of the differences ``X_i - X_l`` over the
  first ``n0`` replicates (common random numbers make it small);
- after every replicate ``r >= n0``, strategy ``i`` is eliminated when its mean
  is below some other survivor's mean by more than
  ``W[i, l](r) = max(0, delta / (2 r) * (h2 S2[i, l] / delta ** 2 - r))``;
- it ends when one strategy is left (``W`` shrinks to 0 by
  ``r = h2 S2 / delta ** 2``, so it always ends), or when the budget of
  replicates runs out.

What it guarantees (KN's theorem, for normally distributed replicate means
with any covariance across strategies): if the best strategy's true mean
beats every other by at least ``delta``, it is named with probability at
least ``1 - alpha``, over all looks. For configurations closer than
``delta`` the procedure still ends, and the simulations of
``tests/analysis/race_test.py`` check that a strategy more than ``delta``
worse than the best is named at most ``alpha`` of the time (at the
slippage configuration, where every other is exactly ``delta`` worse, and
with all equal). The observations are replicate means over one fixed test
set: the guarantee is about that test set, unless every replicate draws its
own split (``data.split_per_seed``; ``RaceRecord.resampled``, found from the
table: the seeds' test images differ), when it is about the data set
averaged over its splits; with a fixed split the record says when the test
images alone are too few to resolve ``delta``.

No JAX: ``race`` takes any results table (``from_frame`` columns).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from unet_jax.analysis.results import resampled
from unet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Look:
  """The race after ``replicates`` replicates: every survivor's mean, who went out."""

  replicates: int
  means: dict[str, float]
  eliminated: list[str]


@dataclasses.dataclass(frozen=True)
class RaceRecord:
  """Where a race stands, as a pure function of the results so far.

  ``decided``: one strategy is left (``best``). Otherwise ``next_runs`` says
  what to train next (every survivor's next replicates), unless the budget is
  spent (``budget_spent``): then ``best`` is the highest mean among the
  ``survivors`` and the answer gives their intervals against it.
  """

  strategies: list[str]
  survivors: list[str]
  eliminated: dict[str, int]  # strategy -> the replicate count of the look that removed it
  decided: bool
  best: str | None
  replicates: dict[str, int]  # used per strategy (those it had when it went out)
  looks: list[Look]
  answer: str
  next_runs: dict | None  # {'strategies': [...], 'replicates': [r, ...]} (1-based)
  budget_spent: bool
  delta: float
  alpha: float
  n0: int
  h2: float
  # Per survivor against the leader: the half-width of a 95% interval of their
  # difference from the variation over test images alone, and whether every
  # one of them exceeds delta (more seeds cannot resolve delta on this test set).
  test_set_halfwidth: dict[str, float] = dataclasses.field(default_factory=dict)
  limited_by_test_set: bool = False
  # Whether the replicates drew their own test images (data.split_per_seed):
  # the guarantee is then about the data set averaged over its splits, and
  # more replicates also average over test images (no test-set limit).
  resampled: bool = False


def kn_constants(k: int, n0: int, alpha: float) -> float:
  """KN's ``h2`` for ``k`` strategies, first stage ``n0`` and error rate ``alpha``."""
  if k < 2:
    return 0.0
  eta = 0.5 * ((2 * alpha / (k - 1)) ** (-2 / (n0 - 1)) - 1)
  return 2 * eta * (n0 - 1)


def kn_screen(values: np.ndarray, counts: np.ndarray, *, delta: float, alpha: float, n0: int,
              max_replicates: int | None = None):
  """The KN race on an array: ``values[i, j]`` is strategy i's replicate j (higher better).

  ``counts[i]`` replicates of strategy i are valid. Returns (alive [k] bool,
  eliminated {i: r}, looks [(r, means [k], out [i...])], budget_spent,
  next_r): the screening is applied at every look ``r = n0, n0 + 1, ...``
  for which every survivor has ``r`` replicates.
  """
  k = values.shape[0]
  alive = np.ones(k, bool)
  eliminated: dict[int, int] = {}
  looks = []
  if counts.min() < n0:
    return alive, eliminated, looks, False, n0
  h2 = kn_constants(k, n0, alpha)
  first = values[:, :n0]
  diffs = first[:, None, :] - first[None, :, :]
  s2 = diffs.var(axis=2, ddof=1)
  r = n0
  while True:
    if (counts[alive] < r).any():
      return alive, eliminated, looks, False, r
    means = values[:, :r].mean(axis=1)
    width = np.maximum(0.0, delta / (2 * r) * (h2 * s2 / delta ** 2 - r))
    beaten = (means[:, None] < means[None, :] - width) & alive[:, None] & alive[None, :]
    np.fill_diagonal(beaten, False)
    out = [int(i) for i in np.flatnonzero(beaten.any(axis=1))]
    for i in out:
      alive[i] = False
      eliminated[i] = r
    looks.append((r, means, out))
    if alive.sum() == 1:
      return alive, eliminated, looks, False, None
    rest = np.flatnonzero(alive)
    if np.all(width[np.ix_(rest, rest)] == 0):  # exact ties at the procedure's end
      return alive, eliminated, looks, False, None
    if max_replicates is not None and r >= max_replicates:
      return alive, eliminated, looks, True, None
    r += 1


def race(frame: pd.DataFrame, *, delta: float, alpha: float = 0.05, n0: int = 3,
         metric: str = 'dice', higher_is_better: bool = True,
         max_replicates: int | None = None, per_round: int = 1,
         costs: Mapping[str, float] | None = None, by: str = 'experiment') -> RaceRecord:
  """Races the strategies of a results table; what is decided and what to run next.

  Args:
    frame: one row per (strategy, seed, test image) like ``from_frame``'s
      input: columns ``by`` (the strategy), ``seed``, ``image_id`` (optional)
      and ``metric``. Replicates are the seeds in increasing order; a
      strategy's first ``n`` seeds are its first ``n`` replicates.
    delta: the indifference zone, in the metric's units (Dice: 0.02).
    alpha: the error rate over all looks.
    n0: first-stage replicates of every strategy (at least 2).
    max_replicates: the budget, most replicates per strategy (None: none).
    per_round: replicates a round adds to every survivor (``next_runs``).
    costs: optional strategy -> cost (trainable parameters, seconds): the
      answer names the cheapest of the strategies that survive to the end.

  Returns:
    A :class:`RaceRecord`.

  Example::

    record = analysis.race(df, delta=0.02, alpha=0.05, n0=3)
    print(record.answer)
    if not record.decided and record.next_runs:
      train(record.next_runs['strategies'], record.next_runs['replicates'])
  """
  for column in (by, 'seed', metric):
    if column not in frame.columns:
      raise UserError(f'race: the table has no column {column!r}; columns: '
                      f'{", ".join(map(str, frame.columns))}')
  if not 0 < alpha < 1 or not delta > 0 or n0 < 2 or per_round < 1:
    raise UserError(f'race: needs 0 < alpha < 1, delta > 0, n0 >= 2 and per_round >= 1; got '
                    f'alpha={alpha}, delta={delta}, n0={n0}, per_round={per_round}')
  sign = 1.0 if higher_is_better else -1.0
  per_seed = frame.groupby([by, 'seed'])[metric].mean().unstack('seed').sort_index(axis=1)
  per_seed = per_seed.loc[list(dict.fromkeys(frame[by]))]  # the table's order
  names = [str(n) for n in per_seed.index]
  if len(names) < 2:
    raise UserError(f'race: needs at least 2 strategies in column {by!r}; got {names}')
  values = np.full(per_seed.shape, np.nan)
  counts = np.zeros(len(names), int)
  for i, (_, row) in enumerate(per_seed.iterrows()):
    seen = row.dropna().to_numpy(float) * sign
    values[i, :len(seen)] = seen
    counts[i] = len(seen)
  alive, out, looks, spent, next_r = kn_screen(values, counts, delta=delta, alpha=alpha, n0=n0,
                                               max_replicates=max_replicates)
  survivors = [names[i] for i in np.flatnonzero(alive)]
  used = {names[i]: int(out.get(i, counts[i])) for i in range(len(names))}
  last = looks[-1] if looks else None
  means = {names[i]: float(sign * last[1][i]) for i in np.flatnonzero(alive)} if last else {}
  decided = len(survivors) == 1 or (last is not None and next_r is None and not spent)
  leader = max(means, key=lambda n: sign * means[n]) if means else None
  next_runs = None
  if not decided and not spent:
    # The first stage: replicates 1..n0; later rounds: per_round more of each survivor.
    want = (list(range(next_r, next_r + per_round)) if looks else list(range(1, n0 + 1)))
    if max_replicates is not None:
      want = [r for r in want if r <= max_replicates] or want[:1]
    lacking = [n for n in survivors if counts[names.index(n)] < want[-1]]
    next_runs = {'strategies': lacking or survivors, 'replicates': want}
  resampled_design = resampled(frame, by)
  limits = ({} if resampled_design else
            _test_set_limits(frame, by, metric, leader, survivors))
  record = RaceRecord(
      strategies=names, survivors=survivors,
      eliminated={names[i]: r for i, r in out.items()}, decided=decided,
      best=leader if (decided or spent) else None, replicates=used,
      looks=[Look(r, {names[i]: float(sign * m[i]) for i in range(len(names))},
                  [names[i] for i in gone]) for r, m, gone in looks],
      answer='', next_runs=next_runs, budget_spent=spent, delta=delta, alpha=alpha, n0=n0,
      h2=kn_constants(len(names), n0, alpha), test_set_halfwidth=limits,
      limited_by_test_set=bool(limits) and all(h > delta for h in limits.values()),
      resampled=resampled_design)
  return dataclasses.replace(record, answer=_answer(record, means, costs))


def _test_set_limits(frame: pd.DataFrame, by: str, metric: str, leader: str | None,
                     survivors: Sequence[str]) -> dict[str, float]:
  """Per other survivor: the 95% half-width of its mean difference from the leader
  due to the test images alone (differences averaged over their shared seeds)."""
  if leader is None or 'image_id' not in frame.columns:
    return {}
  out = {}
  cell = frame.groupby([by, 'image_id', 'seed'])[metric].mean()
  for name in survivors:
    if name == leader:
      continue
    a, b = cell.loc[leader].unstack('seed'), cell.loc[name].unstack('seed')
    seeds = a.columns.intersection(b.columns)
    images = a.index.intersection(b.index)
    d = (a.loc[images, seeds] - b.loc[images, seeds]).mean(axis=1).dropna().to_numpy()
    if len(d) > 1:
      out[name] = float(scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
  return out


def _covers(record: RaceRecord) -> str:
  """What the replicates generalise over, as the end of the answer's sentence."""
  if record.resampled:
    return 'on this data set (every replicate drew its own split)'
  return 'on this test set (every replicate shared one split)'


def _answer(record: RaceRecord, means: dict[str, float], costs) -> str:
  """The decision in one sentence, then what it rests on."""
  delta, alpha = record.delta, record.alpha
  gone = ', '.join(f'{n} (after {r})' for n, r in sorted(record.eliminated.items(),
                                                        key=lambda kv: kv[1]))
  tail = f' Eliminated: {gone}.' if gone else ''
  if record.limited_by_test_set:
    widest = min(record.test_set_halfwidth.values())
    tail += (f' On this test set the differences among the survivors are known only to '
             f'+-{widest:.3f} from the test images alone, more than delta = {delta:g}: more '
             'seeds cannot resolve that; more test images or cross-validation folds '
             '(data.folds) would.')
  if not record.looks:
    return (f'Not started: every strategy needs {record.n0} replicates (seeds) first.' + tail)
  if record.decided and len(record.survivors) == 1:
    best = record.best
    return (f'Train {best} (mean {means[best]:.3f}): with probability at least '
            f'{1 - alpha:.0%} it is the best or within {delta:g} of the best '
            f'{_covers(record)}.' + tail)
  if record.decided:  # exact ties at the procedure's end
    names = ' and '.join(record.survivors)
    cheapest = (f'; the cheapest is {min(record.survivors, key=lambda n: costs[n])}'
                if costs and all(n in costs for n in record.survivors) else '')
    return (f'{names} are within {delta:g} of each other and of everything else '
            f'{_covers(record)}{cheapest}.' + tail)
  if record.budget_spent:
    listed = ', '.join(f'{n} ({means[n]:.3f})' for n in sorted(means, key=means.get,
                                                                 reverse=True))
    return (f'The budget ran out: the best is among {{{listed}}}; none could be separated '
            f'from the others by {delta:g} with error rate {alpha:g} {_covers(record)}.'
            + tail)
  runs = record.next_runs or {}
  return (f'Undecided after {record.looks[-1].replicates} replicates: '
          f'{len(record.survivors)} strategies left; run replicate(s) '
          f'{", ".join(map(str, runs.get("replicates", [])))} of '
          f'{", ".join(runs.get("strategies", []))}.' + tail)
