"""report.md and its figures, from a made-up work directory and (opt-in) a real sweep."""

import os
import re
import subprocess
import sys

import fake_workdir
import numpy as np
import pytest
from repo import ROOT  # noqa: E402

from unet_jax import analysis
from unet_jax.analysis import report

PNG = b'\x89PNG\r\n\x1a\n'


def _is_png(path) -> bool:
  with open(path, 'rb') as f:
    return f.read(8) == PNG


@pytest.fixture(scope='module')
def fake_report(tmp_path_factory):
  workdir = fake_workdir.write(
      tmp_path_factory.mktemp('w'),
      {'full': 0.85, 'contracting': 0.8, 'expanding': 0.5, 'head': 0.3,
       'gradual_depth_shallow_to_deep': 0.8, 'gradual_depth_deep_to_shallow': 0.7},
      seeds=(1, 2, 3), images=12, distances=True,
      histories={'full': fake_workdir.curve(20, 0.85), 'head': fake_workdir.curve(5, 0.3)})
  rng = np.random.default_rng(0)
  masks = np.zeros((12, 16, 16, 1), np.float32)
  masks[:, 4:10, 4:10] = 1
  overlays = report.Overlays(
      images=rng.random((12, 16, 16, 1)), masks=masks,
      ids=[f'us_{i:05d}' for i in range(12)],
      predictions={'full-seed1': np.roll(masks, 1, axis=2), 'head-seed1': np.zeros_like(masks)})
  path = report.write_report(workdir, overlays=overlays)
  with open(path) as f:
    return workdir, f.read()


def test_report_has_tables_and_findings(fake_report):
  _, text = fake_report
  assert text.startswith('# Sweep report')
  for heading in ('## Findings', '## Scores', '### dice', '### hd95',
                  '## Against full fine-tuning', '## Rank stability', '## Convergence'):
    assert heading in text
  assert '| F1 | **holds** |' in text
  assert '| F2 | **holds** |' in text
  assert '| F4 | **inconclusive** |' in text
  assert "Kendall's W" in text
  # contracting's row against full: its Dice, full's, a negative difference.
  assert re.search(r'\| contracting \| 0\.7\d\d \| 0\.8\d\d \| -0\.0\d\d \|', text)


def test_the_answer_uses_multiple_comparisons_with_the_best(fake_report):
  _, text = fake_report
  answer = _answer(text)
  assert answer.index('Train **full** (Dice 0.8') < answer.index('| strategy |')
  header = _row(answer, 'strategy')
  assert header[:6] == ['strategy', 'verdict', 'Dice', '95% CI', 'vs best', 'MCB interval']
  head = dict(zip(header, _row(answer, 'head')))
  assert head['verdict'] == '**worse**' and head['MCB interval'].endswith(', 0.000]')
  best = dict(zip(header, _row(answer, 'full')))
  assert best['verdict'] == '**best**' and best['vs best'] == '-'
  assert "Hsu's multiple comparisons with the best" in answer
  assert 'Bonferroni-t critical value t(1 - alpha/5)' in answer and 'alpha = 0.05' in answer
  assert '**not shown worse**: it reaches above 0' in answer and 'within delta' in answer
  assert 'tied' not in text.lower() and 'p (Holm)' not in answer


def test_report_links_existing_pngs(fake_report):
  workdir, text = fake_report
  for name in ('dice', 'curves', 'schedules', 'overlays'):
    link = f'report/{name}.png'
    assert f']({link})' in text
    assert _is_png(os.path.join(workdir, link))
  leftovers = [f for f in os.listdir(os.path.join(workdir, 'report')) if 'part' in f]
  assert not leftovers


def test_markdown_table_escapes_and_formats():
  table = report.markdown_table(('a', 'b'), [('x|y', 0.12345), ('z', float('nan'))])
  assert table.splitlines() == ['| a | b |', '|---|---|', '| x\\|y | 0.123 |', '| z | - |']


def test_launcher_reports_a_bad_workdir_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'report.py'),
                         f'--workdir={tmp_path}'], capture_output=True, text=True)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f'error: no results in {tmp_path}: not a sweep work directory (no config.json), or '
      'its sweep has not started']


def _capped(seed):
  """head reached the cap (40) still improving in seeds 1 and 2."""
  if seed < 3:
    return {'stop_reason': 'cap', 'best_step': 40, 'stopped_at_step': 40, 'best_val_dice': 0.4}
  return {'stop_reason': 'converged', 'best_step': 20, 'stopped_at_step': 35,
          'best_val_dice': 0.38}


def _stopped_report(folder, **kwargs):
  workdir = fake_workdir.write(folder, {'full': 0.85, 'head': 0.4}, seeds=(1, 2, 3), images=8,
                               **kwargs)
  with open(report.write_report(workdir)) as f:
    return workdir, f.read()


def _answer(text) -> str:
  return text[text.index('## What to train'):text.index('## Findings')]


def _row(text, name) -> list[str]:
  """The cells of the first table row of ``name`` in ``text``."""
  line = next(ln for ln in text.splitlines() if ln.startswith(f'| {name} |'))
  return [c.strip() for c in line.strip('|').split('|')]


def test_report_says_which_runs_reached_the_cap(tmp_path):
  workdir, text = _stopped_report(tmp_path, stops={'head': _capped})
  answer = _answer(text)
  assert ('**head** (2/3 runs) reached the step cap still improving: their Dice is a lower '
          'bound and the ranking may change with a longer cap (raise `finetune.steps` or '
          '`finetune.epochs`).') in answer
  assert 'The other runs converged (patience 5 evaluations, min_delta 0)' in answer
  assert 'Every run converged' not in text
  header = _row(answer, 'strategy')
  head = dict(zip(header, _row(answer, 'head')))
  full = dict(zip(header, _row(answer, 'full')))
  assert (head['steps to best'], head['at cap'], full['steps to best'], full['at cap']) == (
      '33.3', '2/3', '15', '0/3')
  assert full['time to best'] == '-'  # no separable time recorded
  convergence = text[text.index('## Convergence'):text.index('## Figures')]
  cells = _row(convergence, 'head')
  assert cells[1:5] == ['0.393', '40', '40', '2/3']  # best val Dice from the summaries
  assert "90% of full's best-validation Dice in the same seed" in convergence
  res = analysis.load(workdir)
  console = report.console_summary(res)
  assert re.search(r'^head .* 40/40\* ', console, re.M)
  assert re.search(r'^full .* 15/40 ', console, re.M)
  assert '\n* a run reached the step cap still improving' in console


def test_report_says_every_run_converged(tmp_path):
  workdir, text = _stopped_report(tmp_path, early_stop={'patience': 3, 'min_delta': 0.01},
                                  stops={'head': {'seconds_to_best': 2.5}})
  answer = _answer(text)
  assert ("Every run converged (patience 3 evaluations, min_delta 0.01): the weights scored "
          "are each run's best-validation ones.") in answer
  assert 'still improving: their Dice' not in text and 'older version' not in text
  head = dict(zip(_row(answer, 'strategy'), _row(answer, 'head')))
  assert (head['at cap'], head['time to best']) == ('0/3', '2.5 s')
  console = report.console_summary(analysis.load(workdir))
  assert '*' not in console and re.search(r'^head .* 15/40 ', console, re.M)


def test_report_of_an_older_version_claims_no_convergence(tmp_path):
  workdir, text = _stopped_report(tmp_path, old=True)
  answer = _answer(text)
  assert 'trained a fixed number of steps (older version of unet_jax' in answer
  assert 'converged' not in answer and 'still improving: their Dice' not in answer
  assert dict(zip(_row(answer, 'strategy'), _row(answer, 'head')))['at cap'] == '-'
  console = report.console_summary(analysis.load(workdir))
  assert re.search(r'^head .* -/40 ', console, re.M) and '*' not in console


def test_report_with_a_margin_names_the_strategies_within_it(tmp_path):
  # Two strategies 0.002 apart, 8 seeds: within 0.05 of the best with delta=0.05
  # (their MCB intervals reach about -0.03).
  workdir = fake_workdir.write(tmp_path, {'full': 0.85, 'contracting': 0.848, 'head': 0.4},
                               seeds=tuple(range(1, 9)), images=12)
  with open(report.write_report(workdir, delta=0.05)) as f:
    answer = _answer(f.read())
  best, close = ('full', 'contracting') if '| full | **best** |' in answer else (
      'contracting', 'full')
  assert f'Train **{best}** (Dice 0.8' in answer
  assert f'; within 0.05 of the best: **{close}**.' in answer
  assert 'are at most 0.05 below the best of the others' in answer
  assert f'| {close} | **within 0.05** |' in answer and '| head | **worse** |' in answer
  assert '**within 0.05**: the interval starts above -0.05' in answer


def test_report_with_one_seed_decides_nothing(tmp_path):
  workdir = fake_workdir.write(tmp_path, {'full': 0.85, 'head': 0.4}, seeds=(1,), images=8)
  with open(report.write_report(workdir)) as f:
    answer = _answer(f.read())
  assert 'one seed run-to-run variation is unknown: no strategy is shown worse' in answer
  assert '| head | **untested** |' in answer
  assert dict(zip(_row(answer, 'strategy'), _row(answer, 'head')))['MCB interval'] == '-'
