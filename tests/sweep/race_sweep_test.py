"""A race end to end: rounds of replicates, resume to the same decisions, its report."""

import json
import os
import shutil

import pytest
from repo import ROOT

from unet_jax.sweep.run import run_sweep
from unet_jax.sweep.settings import load_config

TINY_RACE = os.path.join(ROOT, 'configs', 'race.py') + ':tiny'


def _decisions(workdir):
  with open(os.path.join(workdir, 'race.json')) as f:
    race = json.load(f)
  return {k: race[k] for k in ('survivors', 'eliminated', 'decided', 'best', 'replicates',
                               'budget_spent', 'answer', 'rounds')}


@pytest.fixture(scope='module')
def raced(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('race'))
  summaries = run_sweep(load_config(TINY_RACE), workdir, progress=False)
  return workdir, summaries


def test_a_race_trains_round_by_round_and_writes_its_decision(raced):
  workdir, summaries = raced
  race = _decisions(workdir)
  # delta 0.001 with 2 first-stage replicates cannot separate anything: a second
  # round adds replicate 3 of both, and the budget (3) ends the race.
  assert [r['runs'] for r in race['rounds']] == [4, 6]
  assert race['budget_spent'] and not race['decided']
  assert race['answer'].startswith('The budget ran out')
  assert sorted(s.name for s in summaries) == ['full-seed0', 'full-seed1', 'full-seed2',
                                               'head-seed0', 'head-seed1', 'head-seed2']
  with open(os.path.join(workdir, 'config.json')) as f:
    assert len(json.load(f)['runs']) == 6
  with open(os.path.join(workdir, 'report.md')) as f:
    text = f.read()
  assert '## The race' in text and 'The budget ran out' in text
  assert os.path.exists(os.path.join(workdir, 'report', 'race.png'))


def test_an_interrupted_race_resumes_to_the_same_decisions(raced, tmp_path, capsys):
  workdir, _ = raced
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  # As if stopped during round 2: its runs never finished, no decision was written.
  for name in ('full-seed2', 'head-seed2'):
    os.unlink(os.path.join(copy, 'experiments', name, 'summary.json'))
  os.unlink(os.path.join(copy, 'race.json'))
  run_sweep(load_config(TINY_RACE), copy, progress=False)
  assert _decisions(copy) == _decisions(workdir)
  with open(os.path.join(copy, 'results.jsonl')) as a, \
       open(os.path.join(workdir, 'results.jsonl')) as b:
    assert a.read() == b.read()  # bitwise the same training on CPU


def test_a_finished_race_rerun_trains_nothing(raced, capsys):
  workdir, _ = raced
  before = _decisions(workdir)
  run_sweep(load_config(TINY_RACE), workdir, progress=False)
  err = capsys.readouterr().err
  assert 'bundle 0' not in err and '6 of 6 experiment(s) already finished' in err
  assert _decisions(workdir) == before
