"""The race's error rate and cost against fixed designs, by simulation (no training).

Replicate means are drawn as ``mu_i + c_j + e_ij``: a per-replicate part ``c``
shared by every strategy (common random numbers) and a run part ``e``, with
SDs as on the default sweep. For each configuration it reports the race's
(``unet_jax.analysis.race.kn_screen``) rate of naming a strategy more than
delta worse than the best (at the slippage configuration: any but the best),
its mean total replicates, and two fixed designs that pick the highest mean
after n replicates of every strategy: the smallest n whose probability of a
good pick matches the race's (chosen knowing the true means and SDs, which a
user does not), and n = 3 (today's default).

  python benchmarks/race_simulation.py            # ~1 min on one core
"""

import argparse
import json
import platform
import time

import numpy as np

from unet_jax.analysis.race import kn_screen

DEFAULT_SWEEP = [0.896, 0.887, 0.874, 0.828, 0.808, 0.758, 0.719, 0.456]


def draw(rng, mu, n, run_sd, common_sd):
  return mu[:, None] + rng.normal(0, common_sd, (1, n)) + rng.normal(0, run_sd, (len(mu), n))


def good(mu, pick, delta):
  return mu.max() - mu[pick] < delta - 1e-12 or pick == int(np.argmax(mu))


def race_once(rng, mu, args):
  values = draw(rng, mu, 400, args.run_sd, args.common_sd)
  alive, out, looks, _, _ = kn_screen(values, np.full(len(mu), 400), delta=args.delta,
                                      alpha=args.alpha, n0=args.n0)
  rest = np.flatnonzero(alive)
  pick = rest[np.argmax(looks[-1][1][rest])]
  return good(mu, pick, args.delta), sum(out.get(i, looks[-1][0]) for i in range(len(mu)))


def fixed_rate(rng, mu, n, args, sims):
  hits = 0
  for _ in range(sims):
    hits += good(mu, int(np.argmax(draw(rng, mu, n, args.run_sd, args.common_sd).mean(1))),
                 args.delta)
  return hits / sims


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--delta', type=float, default=0.02)
  parser.add_argument('--alpha', type=float, default=0.05)
  parser.add_argument('--n0', type=int, default=5)
  parser.add_argument('--run_sd', type=float, default=0.012)
  parser.add_argument('--common_sd', type=float, default=0.02)
  parser.add_argument('--sims', type=int, default=400)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  configs = {
      'slippage, k=8': np.r_[args.delta, np.zeros(7)],
      'slippage, k=27': np.r_[args.delta, np.zeros(26)],
      'all equal, k=8': np.zeros(8),
      'default sweep means, k=8': np.asarray(DEFAULT_SWEEP),
  }
  rows = []
  for name, mu in configs.items():
    sims = args.sims if len(mu) <= 8 else args.sims // 3
    outcomes = [race_once(rng, mu, args) for _ in range(sims)]
    rate = float(np.mean([g for g, _ in outcomes]))
    used = float(np.mean([u for _, u in outcomes]))
    n = next(n for n in range(1, 300) if fixed_rate(rng, mu, n, args, 1000) >= min(rate, 0.999))
    rows.append({'configuration': name, 'k': len(mu), 'race_error': 1 - rate,
                 'race_replicates': used, 'fixed_n_same_rate': n,
                 'fixed_replicates_same_rate': n * len(mu),
                 'fixed_3_good_rate': fixed_rate(rng, mu, 3, args, 1000)})
  print(f'delta {args.delta}, alpha {args.alpha}, n0 {args.n0}, run SD {args.run_sd}, '
        f'common SD {args.common_sd}')
  print(f'{"configuration":<26} {"race error":>10} {"race reps":>10} {"fixed n":>8} '
        f'{"fixed reps":>10} {"3 seeds: P(good)":>17}')
  for r in rows:
    print(f'{r["configuration"]:<26} {r["race_error"]:>10.3f} {r["race_replicates"]:>10.1f} '
          f'{r["fixed_n_same_rate"]:>8} {r["fixed_replicates_same_rate"]:>10} '
          f'{r["fixed_3_good_rate"]:>17.3f}')
  print(json.dumps({'benchmark': 'race_simulation', 'date': time.strftime('%Y-%m-%d'),
                    'machine': platform.machine(), **vars(args), 'rows': rows}))


if __name__ == '__main__':
  main()
