"""How a bundle runs is its executor; "strategy" means a fine-tuning method only."""

import os
import sys

import pytest
from repo import CONFIGS, LAUNCH, set_fields

from unet_jax.errors import UserError
from unet_jax.records import ExperimentSummary
from unet_jax.sweep.settings import SweepSettings, load_config

TINY = os.path.join(CONFIGS, 'default.py') + ':tiny'


def test_the_executor_is_a_config_field_and_strategy_is_refused_naming_it():
  assert SweepSettings.from_config(set_fields(load_config(TINY), {'executor': 'vmap'})
                                   ).executor == 'vmap'
  config = load_config(TINY)
  config.strategy = 'vmap'  # a config file written before the rename
  with pytest.raises(UserError, match="config field 'strategy' was replaced by executor"):
    SweepSettings.from_config(config)


def test_a_command_line_override_of_strategy_names_the_executor():
  sys.path.insert(0, LAUNCH)
  try:
    import sweep  # launch/sweep.py
  finally:
    sys.path.remove(LAUNCH)
  with pytest.raises(UserError, match='--config.strategy was renamed: use --config.executor'):
    sweep.load_flags(['sweep.py', '--config.strategy=vmap'])


def test_summaries_written_before_the_rename_read_their_executor():
  old = ExperimentSummary.from_json({'name': 'full', 'base': 'full', 'seed': 0,
                                     'strategy': 'static'})
  assert old.executor == 'static'
  new = ExperimentSummary.from_json({'name': 'full', 'base': 'full', 'seed': 0,
                                     'executor': 'vmap'})
  assert new.executor == 'vmap'
