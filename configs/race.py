"""A race: the least training that decides which layers to train, to within delta Dice.

The default sweep's data, network and training (each run to convergence),
but no fixed number of seeds: every strategy first gets n0 = 5 replicates
(seeds 0-4), then only the strategies still in the race get one more each
round, until one is left or 15 replicates are spent. A strategy leaves the
race as soon as the Kim-Nelson (2001) boundary says it is worse than another
by more than its sampling noise allows; the strategy named is within delta =
0.02 Dice of the best with probability at least 1 - alpha = 0.95, over all
looks (unet_jax/analysis/race.py; README "The race").

Commands:   python launch/sweep.py --config=configs/race.py
            python launch/sweep.py --config=configs/race.py:strategies
            python launch/sweep.py --config=configs/race.py:tiny   (seconds; the tests)
            --config.race.delta=0.01 --config.race.max_replicates=30
            --config.data.split_per_seed=True   (replicates that resample the split)
Variants:   (none) the eight layer subsets of configs/default.py;
            strategies: the eleven strategies of configs/strategies.py:smoke;
            tiny: configs/default.py:tiny, two rounds at most.
Time:       10 min 44 s (eight subsets, 48 runs) and 18 min 25 s (strategies,
            76 runs) on a 2-core CPU, fresh work directories, 2026-12-07.
Result:     race.json (every look, who was eliminated when, the decision) and
            report.md opening with the decision in one sentence. Both races
            named full (0.896): the subsets' after 9 replicates of full and
            contracting (the others out after 5), the strategies' after 12 of
            full, contracting and auto_rgn.
            With data.split_per_seed=True (15 min 16 s, 67 runs) the subsets'
            race spent its budget: the best is among {full (0.890), scratch
            (0.873)} over splits of this data set.
"""

import importlib.util
import os


def _config_module(name):
  spec = importlib.util.spec_from_file_location(
      f'_unet_jax_{name}_config', os.path.join(os.path.dirname(__file__), f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  variant = arg or ''
  if variant not in ('', 'strategies', 'tiny'):
    raise ValueError(f"unknown variant {arg!r} of configs/race.py; valid: 'strategies', "
                     "'tiny'")
  if variant == 'strategies':
    config = _config_module('strategies').get_config('smoke')
  else:
    config = _config_module('default').get_config('tiny' if variant == 'tiny' else None)
  config.grid.seed = ()  # the race chooses the seeds: replicate r is seed r - 1
  config.race.enabled = True
  if variant == 'tiny':
    config.only = 'full,head'
    config.race.n0 = 2
    config.race.max_replicates = 3
    config.race.delta = 0.001
  return config
