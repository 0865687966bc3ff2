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


def test_a_batched_round_is_filled_with_the_survivors_next_replicates():
  from unet_jax.sweep.run import fill_round
  wanted = {(c, r) for c in 'abcd' for r in range(1, 6)} | {('a', 6), ('c', 6)}
  new = {('a', 6), ('c', 6)}
  # 8 slots (the first round's size in pairs), two survivors: 6 more, 7..9 of each.
  extra = fill_round(new, ['a', 'c'], wanted, 8, 15)
  assert extra == {(c, r) for c in 'ac' for r in (7, 8, 9)}
  # The budget caps it: replicates 7 and 8 only.
  assert fill_round(new, ['a', 'c'], wanted, 8, 8) == {(c, r) for c in 'ac' for r in (7, 8)}
  # A survivor behind the others is brought level first.
  assert fill_round(set(), ['a', 'b'], wanted | {('a', 7)}, 3, 15) == {
      ('b', 6), ('b', 7), ('a', 8)}
  assert fill_round(new, [], wanted, 8, 15) == set()


def test_a_race_under_a_batched_executor_trains_rounds_of_one_size(tmp_path):
  """Forced vmap (one program per bundle, as on an accelerator): round 2 asks for
  replicate 3 of both strategies and takes replicate 4 too, filling the first
  round's four slots, so both rounds have one shape."""
  config = load_config(TINY_RACE)
  config.executor = 'vmap'
  config.race.max_replicates = 4
  workdir = str(tmp_path)
  run_sweep(config, workdir, progress=False)
  race = _decisions(workdir)
  assert [r['runs'] for r in race['rounds']] == [4, 8]
  assert race['replicates'] == {'full': 4, 'head': 4} and race['budget_spent']
