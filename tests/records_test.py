"""What a sweep writes is typed: records round-trip, and the writer's fields are the readers'."""

import dataclasses
import json
import os

from repo import CONFIGS

from unet_jax.model import UNetSpec
from unet_jax.records import ExperimentSummary, StageRecord, SweepRecord
from unet_jax.sweep.settings import SweepSettings, load_config
from unet_jax.workdir import WorkdirPaths


def test_summary_round_trips_through_json():
  stage = StageRecord(0, [['head', 'train'], ['.*', 'freeze']], ['head'], [],
                      {'enc1': 0.0, 'head': 1.0})
  summary = ExperimentSummary(name='head-seed1', base='head', seed=1, fold=2, folds=5,
                              schedule=[stage], grid={'seed': 1, 'fold': 2},
                              frozen_norm='adapt', norm_check={'change': 0.01})
  back = ExperimentSummary.from_json(json.loads(json.dumps(summary.to_json())))
  assert back == summary
  assert back.trained_blocks == frozenset({'head'}) and back.blocks == ('enc1', 'head')
  partly = dataclasses.replace(summary, schedule=[dataclasses.replace(stage, partly=['enc1'])])
  assert partly.trained_blocks is None  # not a pure block subset
  # A field another version wrote and this one does not know is ignored.
  assert ExperimentSummary.from_json({**summary.to_json(), 'unknown': 1}) == summary


def test_config_json_is_the_resolved_settings_readers_need():
  settings = SweepSettings.from_config(load_config(os.path.join(CONFIGS, 'paper.py:smoke')))
  written = json.loads(json.dumps(settings.to_json()))
  record = SweepRecord.from_json(written)
  assert record.target_source == 'ultrasound'
  assert record.runs == [r.name for r in settings.runs()] and len(record.runs) == 5 * 25
  assert record.experiments == [e.name for e in settings.experiments]
  assert UNetSpec(**record.model) == settings.model and record.image_size == 32
  kinds = {e['name']: e['schedule_kind'] for e in written['experiments']}
  assert kinds['gradual_depth_s2d'] == {'kind': 'gradual', 'order': 'depth',
                                        'direction': 'shallow_to_deep', 'stage_steps': 2}


def test_paths_spell_the_layout_once():
  paths = WorkdirPaths('/w')
  assert paths.experiment('full').summary == '/w/experiments/full/summary.json'
  assert paths.pretrain_weights == '/w/pretrain/weights'
  assert paths.checkpoints('abc') == '/w/checkpoints/abc'
  assert paths.listed_experiments() == []  # no such folder: nothing listed


def test_files_of_an_older_version_are_refused_by_name(tmp_path):
  from unet_jax import files
  from unet_jax.errors import UserError
  from unet_jax.records import read_summary, read_sweep
  old_config = tmp_path / 'config.json'  # the raw config an earlier version wrote
  files.write_json(old_config, {'data': {'source': 'ultrasound'}, 'only': ''})
  old_summary = tmp_path / 'summary.json'
  files.write_json(old_summary, {'name': 'full', 'base': 'full', 'seed': 0,
                                 'schedule': [{'start': 0, 'rules': [['.*', 'train']]}]})
  for read, path in ((read_sweep, old_config), (read_summary, old_summary)):
    try:
      read(str(path))
    except UserError as e:
      assert str(path) in str(e) and 'older version' in str(e)
    else:
      raise AssertionError(f'{read.__name__} accepted an old file')
