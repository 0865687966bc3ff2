"""Findings F1-F6 on made-up sweeps whose verdicts are known, the paper's design included."""

import os

import fake_workdir
import pytest
from repo import ROOT  # noqa: E402

from unet_jax import analysis
from unet_jax.analysis.findings import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE
from unet_jax.block_order import ORDERS
from unet_jax.schedules import parse_schedule
from unet_jax.sweep.settings import load_config

GRADUAL = {'gradual_depth_shallow_to_deep': 0.8, 'gradual_depth_deep_to_shallow': 0.6,
           'gradual_flow_shallow_to_deep': 0.8, 'gradual_flow_deep_to_shallow': 0.65}


def _findings(res):
  return {f.id: f for f in res.findings()}


@pytest.mark.parametrize('contracting, expanding, verdict', [
    (0.8, 0.5, HOLDS), (0.5, 0.8, DOES_NOT_HOLD), (0.7, 0.7, INCONCLUSIVE)])
def test_f1(tmp_path, contracting, expanding, verdict):
  res = analysis.load(fake_workdir.write(
      tmp_path, {'contracting': contracting, 'expanding': expanding}, shared_noise=True))
  f = _findings(res)
  assert f['F1'].verdict == verdict
  assert f['F2'].verdict == INCONCLUSIVE and 'gradual' in f['F2'].evidence
  assert f['F4'].verdict == INCONCLUSIVE and 'X-ray' in f['F4'].evidence
  assert f['F5'].verdict == INCONCLUSIVE


def test_one_seed_never_gives_a_verdict(tmp_path):
  res = analysis.load(fake_workdir.write(
      tmp_path, {'full': 0.85, 'contracting': 0.9, 'expanding': 0.3, 'shallow': 0.7,
                 'last': 0.1, 'head': 0.12, **GRADUAL}, seeds=(0,)))
  for f in res.findings():
    assert f.verdict == INCONCLUSIVE, f
  f = _findings(res)
  assert 'one seed' in f['F1'].evidence and 'of one run' in f['F1'].evidence
  assert 'one seed' in f['F2'].evidence and 'one seed' in f['F3'].evidence


def test_run_to_run_variation_that_swamps_the_difference_is_inconclusive(tmp_path):
  # A 0.05 difference on 20 images is decisive image by image, but not when
  # runs of one procedure differ by 0.1 SD.
  res = analysis.load(fake_workdir.write(tmp_path, {'contracting': 0.75, 'expanding': 0.7},
                                        seeds=(0, 1, 2), noise=0.01, seed_sd=0.1))
  t = res.paired('contracting', 'expanding')
  assert t.p_images < 0.05 and t.favours() is None
  assert _findings(res)['F1'].verdict == INCONCLUSIVE


def test_f2_f6_gradual_schedules(tmp_path):
  f = _findings(analysis.load(fake_workdir.write(tmp_path / 'a', GRADUAL)))
  assert f['F2'].verdict == HOLDS and f['F6'].verdict == HOLDS
  reversed_flow = {**GRADUAL, 'gradual_flow_deep_to_shallow': 0.95}
  f = _findings(analysis.load(fake_workdir.write(tmp_path / 'b', reversed_flow)))
  assert f['F6'].verdict == DOES_NOT_HOLD and 'flow: does not hold' in f['F6'].evidence
  assert f['F2'].verdict == INCONCLUSIVE  # one order each way
  depth_only = {k: v for k, v in GRADUAL.items() if 'depth' in k}
  f = _findings(analysis.load(fake_workdir.write(tmp_path / 'c', depth_only)))
  assert f['F2'].verdict == HOLDS
  assert f['F6'].verdict == INCONCLUSIVE and 'flow not swept' in f['F6'].evidence


def _cumulative(s2d, d2s, names=None):
  """Flow cumulative subsets k = 1..5 of the depth-2 U-Net with these means."""
  out = {}
  for k in range(1, len(s2d) + 1):
    out[(names or {}).get(('s2d', k), f's2d_{k}')] = s2d[k - 1]
    out[(names or {}).get(('d2s', k), f'd2s_{k}')] = d2s[k - 1]
  return out


def test_f2_on_cumulative_subsets_found_by_what_they_train(tmp_path):
  # Flow: d2s_1 trains the head alone, d2s_2 dec1 + head: under the preset
  # names 'head' and 'last' they are still the cumulative subsets.
  names = {('d2s', 1): 'head', ('d2s', 2): 'last', ('s2d', 3): 'contracting',
           ('d2s', 3): 'expanding'}
  means = _cumulative([0.6, 0.7, 0.8, 0.8, 0.85], [0.3, 0.4, 0.5, 0.8, 0.85], names)
  f = _findings(analysis.load(fake_workdir.write(tmp_path / 'a', means)))
  assert f['F2'].verdict == HOLDS
  assert 'cumulative flow k=1: s2d_1' in f['F2'].evidence and 'head' in f['F2'].evidence
  assert '3 of 5 comparisons significantly favour shallow-to-deep' in f['F2'].evidence
  reverse = _cumulative([0.3, 0.4, 0.5, 0.8, 0.85], [0.6, 0.7, 0.8, 0.8, 0.85], names)
  f = _findings(analysis.load(fake_workdir.write(tmp_path / 'b', reverse)))
  assert f['F2'].verdict == DOES_NOT_HOLD
  mixed = _cumulative([0.6, 0.4, 0.5], [0.3, 0.7, 0.5])
  f = _findings(analysis.load(fake_workdir.write(tmp_path / 'c', mixed)))
  assert f['F2'].verdict == INCONCLUSIVE and '1 deep-to-shallow' in f['F2'].evidence


@pytest.mark.parametrize('last, verdict', [(0.2, HOLDS), (0.75, DOES_NOT_HOLD)])
def test_f3(tmp_path, last, verdict):
  res = analysis.load(fake_workdir.write(
      tmp_path, {'full': 0.85, 'contracting': 0.8, 'shallow': 0.7, 'last': last,
                 'head': 0.9 if verdict == HOLDS else 0.8}))
  assert _findings(res)['F3'].verdict == verdict


def test_f3_counts_a_subset_swept_under_two_names_once(tmp_path):
  # 'again@head' trains exactly the head too: compared with its own
  # duplicate, head could never be significantly worse than everything.
  means = {'full': 0.85, 'contracting': 0.8, 'shallow': 0.7, 'head': 0.2,
           'again@head': 0.2}
  f = _findings(analysis.load(fake_workdir.write(tmp_path, means)))['F3']
  assert f.verdict == HOLDS and '3 other distinct subsets' in f.evidence


def test_f4_needs_two_domains(tmp_path):
  us = fake_workdir.write(tmp_path / 'us', {'contracting': 0.8, 'expanding': 0.5})
  xray = fake_workdir.write(tmp_path / 'xr', {'contracting': 0.8, 'expanding': 0.79},
                            source='xray', seed=1)
  res = analysis.load([us, xray])
  assert res.domains == ['ultrasound', 'xray']
  f = _findings(res)
  assert f['F4'].verdict == HOLDS
  assert f['F1'].verdict == HOLDS  # judged on the ultrasound domain
  same = fake_workdir.write(tmp_path / 'xr2', {'contracting': 0.8, 'expanding': 0.5},
                            source='xray', seed=2)
  assert _findings(analysis.load([us, same]))['F4'].verdict == DOES_NOT_HOLD


def _jittered_curve(rise, best, phase=0):
  """A validation curve per seed, reaching ``best`` by rise +- 5 steps."""
  return lambda seed: fake_workdir.curve(rise + 5 * (((seed + phase) % 3) - 1), best)


@pytest.mark.parametrize('shallow_rise, verdict', [(10, HOLDS), (35, DOES_NOT_HOLD)])
def test_f5_convergence_with_five_seeds(tmp_path, shallow_rise, verdict):
  histories = {'shallow': _jittered_curve(shallow_rise, 0.85),
               'full': _jittered_curve(25, 0.85, phase=1)}
  res = analysis.load(fake_workdir.write(tmp_path, {'full': 0.85, 'shallow': 0.8},
                                        histories=histories))
  conv = res.convergence(0.9, reference='full').set_index('experiment')
  # full-seed1 rises linearly to 0.85 by step 30 (25 + 5 with phase 1), logged
  # every 5 steps: 0.9 * 0.85 is crossed at step 27, between the logs at 25 and 30.
  assert conv.loc['full-seed1', 'steps'] == pytest.approx(27.0)
  f = _findings(res)['F5']
  assert f.verdict == verdict and 'paired t-test over seeds' in f.evidence


def test_f5_when_every_seed_differs_by_the_same_steps(tmp_path):
  # Curves that jump at chunk boundaries cross at the same step in every seed:
  # no spread for a t-test; the exact sign test answers (2 x 0.5^6 = 0.031).
  def step_curve(reach):
    return lambda seed: [{'step': t, 'loss': 0.0, 'val_dice': 0.85 if t >= reach else 0.1}
                         for t in range(10, 41, 10)]
  histories = {'shallow': step_curve(10), 'full': step_curve(30)}
  res = analysis.load(fake_workdir.write(tmp_path, {'full': 0.85, 'shallow': 0.8},
                                        seeds=range(6), histories=histories))
  f = _findings(res)['F5']
  # Interpolated between the logs at 20 (0.1) and 30 (0.85): 28.87 against 10.
  assert f.verdict == HOLDS and 'every seed differs by 18.8667 steps' in f.evidence
  assert 'exact sign test over seeds p=0.031' in f.evidence


def test_f5_states_its_convention_and_when_full_had_not_converged(tmp_path):
  histories = {'shallow': _jittered_curve(10, 0.85),
               'full': _jittered_curve(25, 0.85, phase=1)}
  convention = ("steps until validation Dice first reaches 90% of full's best-validation "
                "Dice in the same seed; full's best is its converged value")
  converged = _findings(analysis.load(fake_workdir.write(
      tmp_path / 'a', {'full': 0.85, 'shallow': 0.8}, histories=histories)))['F5']
  assert converged.evidence.startswith(convention + ': shallow median')
  assert 'had not converged' not in converged.evidence
  capped = _findings(analysis.load(fake_workdir.write(
      tmp_path / 'b', {'full': 0.85, 'shallow': 0.8}, histories=histories,
      stops={'full': lambda seed: {'stop_reason': 'cap'} if seed <= 2 else {}})))['F5']
  assert (convention + " (full had not converged in 2 run(s): its best is a lower bound)"
          in capped.evidence)
  # The statistics do not depend on how the runs stopped.
  assert capped.verdict == converged.verdict == HOLDS
  def numbers(finding):
    return finding.evidence[finding.evidence.index('shallow median'):]
  assert numbers(capped) == numbers(converged)
  old = _findings(analysis.load(fake_workdir.write(
      tmp_path / 'c', {'full': 0.85, 'shallow': 0.8}, histories=histories, old=True)))['F5']
  assert 'converged' not in old.evidence and 'older version' in old.evidence


def test_f5_a_run_that_stopped_short_of_the_target_counts_as_past_its_cap(tmp_path):
  # shallow converges at 0.5 and stops at step 15 (history ends there), never
  # reaching 90% of full's best: it counts as its cap (40) + 1, not as 16.
  histories = {'shallow': fake_workdir.curve(10, 0.5)[:3],
               'full': _jittered_curve(25, 0.85, phase=1)}
  res = analysis.load(fake_workdir.write(tmp_path, {'full': 0.85, 'shallow': 0.8},
                                        histories=histories))
  assert (res.runs.loc[res.runs['base'] == 'shallow', 'stopped_at_step'] == 15).all()
  f = _findings(res)['F5']
  assert f.verdict == DOES_NOT_HOLD
  assert 'shallow median 41' in f.evidence
  assert 'shallow never reached it in 5 run(s) (counted as its step cap + 1)' in f.evidence


def test_convergence_is_judged_fold_by_fold(tmp_path):
  histories = {'full': _jittered_curve(25, 0.85), 'shallow': _jittered_curve(10, 0.85)}
  res = analysis.load(fake_workdir.write(tmp_path, {'full': 0.85, 'shallow': 0.8},
                                        seeds=(0, 1, 2), folds=3, histories=histories))
  conv = res.convergence(0.9, reference='full')
  assert len(conv) == 2 * 3 * 3 and conv['steps'].notna().all()
  full = conv[conv['base'] == 'full']
  assert (full['target'] == 0.9 * full['best_val_dice']).all()  # each fold its own bar


def test_convergence_without_history(tmp_path):
  res = analysis.load(fake_workdir.write(tmp_path, {'full': 0.85, 'shallow': 0.8}))
  conv = res.convergence()
  assert conv['steps'].isna().all() and (conv['note'] != '').all()
  assert 'history.jsonl' in _findings(res)['F5'].evidence


# -- the paper's design: every finding decidable -------------------------------------

# Value of training each block (depth-2 U-Net): shallow blocks help most.
SHALLOW_FIRST = {'enc1': 0.20, 'enc2': 0.16, 'bottleneck': 0.12, 'dec2': 0.10, 'dec1': 0.08,
                 'head': 0.0}


def _paper_world(tmp_path, values, *, gradual, seed=0, source='ultrasound',
                 contrast=None):
  """configs/paper.py:smoke's experiments with scores made from ``values``."""
  config = load_config(os.path.join(ROOT, 'configs', 'paper.py') + ':smoke')
  means, specs = {}, {}
  for name, entry in config.experiments.items():
    schedule = parse_schedule(entry.rules, fake_workdir.DEPTH)
    specs[name] = (schedule, entry.init)
    if name.startswith('gradual_'):
      means[name] = gradual if name.endswith('_s2d') else 1.4 - gradual
    elif entry.init == 'random':
      means[name] = 0.5
    else:
      pattern = schedule.stages[0][0].pattern
      blocks = fake_workdir.BLOCKS if pattern == '.*' else pattern.split('|')
      means[name] = 0.25 + sum(values[b] for b in blocks)
  if contrast is not None:  # contracting - expanding on this domain
    means['expanding'] = means['contracting'] - contrast
  shallow, full = (10, 25) if values['enc1'] > values['head'] else (35, 25)
  histories = {'shallow': _jittered_curve(shallow, 0.8),
               'full': _jittered_curve(full, 0.8, phase=1)}
  return fake_workdir.write(tmp_path, means, specs=specs, histories=histories, seed=seed,
                            source=source)


def test_the_paper_design_can_decide_every_finding(tmp_path):
  us = _paper_world(tmp_path / 'us', SHALLOW_FIRST, gradual=0.8)
  xray = _paper_world(tmp_path / 'xr', SHALLOW_FIRST, gradual=0.8, seed=1,
                      source='chest_xray', contrast=0.0)
  found = _findings(analysis.load([us, xray]))
  for fid in ('F1', 'F2', 'F3', 'F4', 'F5', 'F6'):
    assert found[fid].verdict == HOLDS, found[fid]
  for order in ORDERS:
    assert f'cumulative {order} k=2' in found['F2'].evidence
    assert f'gradual {order}' in found['F2'].evidence


# The head end of the data flow helps most; under the depth order, where the
# head is a shallow block, shallow and deep groups come out even (flow and
# depth cannot both be reversed by block values that add up).
HEAD_END_FIRST = {'enc1': 0.0, 'enc2': 0.01, 'bottleneck': 0.225, 'dec2': 0.075,
                  'dec1': 0.10, 'head': 0.125}


def test_the_paper_design_can_refute_every_finding(tmp_path):
  us = _paper_world(tmp_path / 'us', HEAD_END_FIRST, gradual=0.6)
  found = _findings(analysis.load(us))
  for fid in ('F1', 'F2', 'F3', 'F5', 'F6'):
    assert found[fid].verdict == DOES_NOT_HOLD, found[fid]
  assert 'flow: does not hold' in found['F6'].evidence
  # F4 refuted: X-ray shows the same pattern as ultrasound, as strongly.
  same = _paper_world(tmp_path / 'xr-same', SHALLOW_FIRST, gradual=0.8, seed=2,
                      source='chest_xray')
  us_holds = _paper_world(tmp_path / 'us2', SHALLOW_FIRST, gradual=0.8, seed=3)
  assert _findings(analysis.load([us_holds, same]))['F4'].verdict == DOES_NOT_HOLD
