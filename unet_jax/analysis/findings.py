"""The paper's findings F1..F6 (DESIGN.md section 1), judged on a sweep's results.

Every test is run-aware (``analysis.PairedTest.p``: seeds and images both
random, ``stats.crossed_mean``), two-sided at ``alpha``. A finding is
``holds`` when the test is significant in the claimed direction, ``does not
hold`` when it is significant the other way (or, where stated, when the
claimed contrast is absent although the data could show it), and
``inconclusive`` otherwise, including with one seed (what that run showed is
reported, with the caution that run-to-run variation is unknown) and when
the experiments a finding needs were not run; the evidence says which.

Experiments are recognised by what they train, not by their names, where
that matters: a one-stage pretrained subset is known by the set of blocks
it trains (``summary.json`` records it), so a subset swept twice under two
names counts once, and the cumulative subsets of F2 are found by content.

- F1: ``contracting`` and ``expanding`` on an ultrasound domain.
- F2: shallow-to-deep against deep-to-shallow, a family of paired tests
  Holm-corrected together: gradual schedules of one order in both
  directions (same stage length, init and variant; config
  ``{'gradual': ...}``), and the cumulative subsets, the k shallowest block
  groups against the k deepest, for each k swept (``configs/paper.py``'s
  ``s2d_k`` / ``d2s_k``; at least two k). Holds when at least one test is significant and
  all significant ones favour shallow-to-deep; does not hold when all
  significant ones favour deep-to-shallow; mixed or none: inconclusive.
- F3: the worse of ``last`` (dec1 + head) and ``head`` against every other
  distinct pretrained one-stage subset that trains something: holds when it
  is significantly worse (Holm) than every one, does not hold when it is
  significantly better than one.
- F4: ``contracting`` - ``expanding`` on an ultrasound *and* an X-ray domain
  (two work directories given to ``analysis.load``): holds when the
  ultrasound effect is significantly larger (Welch-type t of the two
  run-aware estimates), does not hold when the F1 pattern holds on X-ray and
  is not significantly smaller there.
- F5: ``shallow`` and ``full`` with ``history.jsonl`` validation curves:
  steps to 90% of ``full``'s best validation Dice (interpolated between
  logged steps, ``Results.convergence``), paired over seeds (folds averaged
  within a seed), a t-test on the per-seed differences; when every seed
  differs by the same number of steps there is no spread for a t-test and
  the exact sign test decides (p = 2^(1-R): at least 6 seeds to reach 0.05).
  A run that never gets there counts as its step cap + 1 (runs stop early
  once converged, so their last logged step is not where they would have
  got there). Full's best is its converged value (the evidence says in how
  many runs full reached the cap still improving: there it is a lower bound).
- F6: F2 under each of the two orders (flow, depth): holds when it holds
  under both; does not hold when it does not hold under one of them (or
  both); otherwise inconclusive.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats as sps

from unet_jax.analysis import paired, stats
from unet_jax.block_order import ORDERS, Layout, cumulative
from unet_jax.encoders import layout_of_blocks

if TYPE_CHECKING:
  from unet_jax.analysis.paired import PairedTest
  from unet_jax.analysis.results import Results

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = 'holds', 'does not hold', 'inconclusive'

CLAIMS = {
    'F1': 'contracting path beats expanding path (ultrasound)',
    'F2': 'gradual shallow-to-deep beats deep-to-shallow',
    'F3': 'fine-tuning only the last blocks is the worst choice',
    'F4': 'the F1 pattern differs on chest X-ray',
    'F5': 'shallow blocks reach good Dice faster than full fine-tuning',
    'F6': 'F2 holds under both definitions of shallow/deep (flow, depth)',
}
_S2D, _D2S = 'shallow_to_deep', 'deep_to_shallow'
ONE_SEED = 'one seed: run-to-run variation unknown, no verdict (sweep 3 or more seeds)'
# Block sets of the subsets F3 is about.
LAST_BLOCKS = {'last': frozenset({'dec1', 'head'}), 'head': frozenset({'head'})}


@dataclasses.dataclass(frozen=True)
class Finding:
  id: str
  claim: str
  verdict: str  # HOLDS, DOES_NOT_HOLD or INCONCLUSIVE
  evidence: str  # the numbers, or why the data cannot decide


def evaluate(res: Results, alpha: float, kinds: dict[str, str]) -> list[Finding]:
  """Every finding, in order; ``kinds`` maps data sources to modalities."""
  domain, caveat = _primary_domain(res, kinds)
  out = [_f1(res, domain, alpha), _f2(res, domain, alpha), _f3(res, domain, alpha),
         _f4(res, kinds, alpha), _f5(res, domain, alpha), _f6(res, domain, alpha)]
  if caveat:
    out = [dataclasses.replace(f, evidence=f'{f.evidence} ({caveat})')
           if f.id != 'F4' else f for f in out]
  return out


def _finding(fid: str, verdict: str, evidence: str) -> Finding:
  return Finding(fid, CLAIMS[fid], verdict, evidence)


def _primary_domain(res: Results, kinds: dict[str, str]) -> tuple[str, str]:
  ultrasound = [d for d in res.domains if kinds.get(d) == 'ultrasound']
  if ultrasound:
    caveat = f'several ultrasound domains, used {ultrasound[0]}' if len(ultrasound) > 1 else ''
    return ultrasound[0], caveat
  return res.domains[0], f'domain {res.domains[0]!r} is not known to be ultrasound'


def _runs(res: Results, domain: str) -> pd.DataFrame:
  return res.runs[res.runs['domain'] == domain]


def _bases(res: Results, domain: str) -> set[str]:
  return set(_runs(res, domain)['base'])


def _missing(res: Results, domain: str, needed) -> str:
  lacking = [b for b in needed if b not in _bases(res, domain)]
  return (f'needs experiments {", ".join(needed)} in domain {domain!r}; missing: '
          f'{", ".join(lacking)}') if lacking else ''


def describe(t: PairedTest) -> str:
  """One line of numbers for a paired test."""
  lo, hi = t.diff_ci95
  head = f'{t.a} {t.mean_a:.3f} vs {t.b} {t.mean_b:.3f}: diff {t.mean_diff:+.3f} '
  if not t.runs_known:
    return (head + f'[{lo:+.3f}, {hi:+.3f}] over {t.n_images} images of one run '
            f'(image-level Wilcoxon p={t.p_images:.2g}); {ONE_SEED}')
  return (head + f'[{lo:+.3f}, {hi:+.3f}], p={t.p:.2g} ({t.n_runs} seeds x '
          f'{t.n_images} images, df={t.df:.1f})')


def _verdict(t: PairedTest, winner: str, alpha: float) -> str:
  better = t.favours(alpha)
  return INCONCLUSIVE if better is None else HOLDS if better == winner else DOES_NOT_HOLD


def _f1(res: Results, domain: str, alpha: float) -> Finding:
  why = _missing(res, domain, ('contracting', 'expanding'))
  if why:
    return _finding('F1', INCONCLUSIVE, why)
  t = res.paired('contracting', 'expanding', domain=domain)
  return _finding('F1', _verdict(t, 'contracting', alpha), describe(t))


# -- F2 and F6: shallow-to-deep against deep-to-shallow --------------------------


def _gradual_pairs(res: Results, domain: str, order: str) -> list[tuple[str, str]]:
  """[(shallow_to_deep base, deep_to_shallow base)] of one order with equal settings."""
  runs = _runs(res, domain)
  runs = runs[runs['order'] == order]
  pairs = []
  for _, g in runs.groupby(['stage_steps', 'init']):
    s2d = sorted(set(g.loc[g['direction'] == _S2D, 'base']))
    d2s = sorted(set(g.loc[g['direction'] == _D2S, 'base']))
    pairs += [(a, b) for a in s2d for b in d2s]
  return pairs


def _pooled(res: Results, pairs: list[tuple[str, str]], domain: str) -> PairedTest:
  """One paired test over several (shallow-to-deep, deep-to-shallow) pairs."""
  frames = []
  for i, (a, b) in enumerate(pairs):
    matched, keys = res.matched(a, b, domain=domain)
    frames.append(matched.assign(pair=i))
  return paired.paired_test(_S2D, _D2S, 'dice', pd.concat(frames), keys + ['pair'],
                           resampled=res.resampled)


def _subsets(res: Results, domain: str) -> dict:
  """Block set -> one base: the distinct pretrained one-stage subsets.

  A set swept under several names counts once, under the first name in
  sorted order, preset names before cumulative ones (``last`` before
  ``d2s_2``). Runs whose summary does not record their blocks (or that
  train parts of blocks) are keyed by name and trainable share instead.
  """
  runs = _runs(res, domain)
  runs = runs[(runs['init'] == 'pretrained') & (runs['stages'] == 1)]
  out: dict = {}
  for base in sorted(set(runs['base']), key=lambda b: (b.startswith(('s2d_', 'd2s_')), b)):
    run = runs[runs['base'] == base].iloc[0]
    if isinstance(run['trained'], frozenset):
      key = run['trained']
    elif run['trainable_fraction'] > 0 or pd.isna(run['trainable_fraction']):
      key = ('by name', base)
    else:
      continue
    out.setdefault(key, base)
  return out


def _layout(res: Results, domain: str) -> Layout | None:
  """The network's block layout (paper U-Net or ResNet U-Net), from the blocks its runs record."""
  blocks = [b for b in _runs(res, domain)['blocks'] if b]
  return layout_of_blocks(blocks[0]) if blocks else None


def _cumulative_pairs(res: Results, domain: str, order: str) -> list[tuple[int, str, str]]:
  """[(k, base training the k shallowest groups, base training the k deepest)]."""
  layout = _layout(res, domain)
  if layout is None:
    return []
  subsets = _subsets(res, domain)
  out = []
  for k in range(1, len(layout.groups(order))):
    a = subsets.get(cumulative(order, layout, k, _S2D))
    b = subsets.get(cumulative(order, layout, k, _D2S))
    if a and b and a != b:
      out.append((k, a, b))
  # One k alone is not the cumulative design (under flow its middle k is
  # contracting against expanding, F1's test).
  return out if len(out) >= 2 else []


def _direction_family(res: Results, domain: str, orders, alpha: float
                      ) -> tuple[str, str] | None:
  """(verdict, evidence) of the shallow-to-deep family under ``orders``; None if empty."""
  tests: list[tuple[str, PairedTest]] = []
  for order in orders:
    pairs = _gradual_pairs(res, domain, order)
    if pairs:
      tests.append((f'gradual {order} ({", ".join(f"{a} vs {b}" for a, b in pairs)})',
                    _pooled(res, pairs, domain)))
    for k, a, b in _cumulative_pairs(res, domain, order):
      tests.append((f'cumulative {order} k={k}', res.paired(a, b, domain=domain)))
  if not tests:
    return None
  if not all(t.runs_known for _, t in tests):
    return INCONCLUSIVE, '; '.join(f'{label}: {describe(t)}' for label, t in tests)
  holm = stats.holm([t.p for _, t in tests])
  won = [t.mean_diff > 0 for _, t in tests]
  significant = [p < alpha for p in holm]
  favour_s2d = sum(s and w for s, w in zip(significant, won))
  favour_d2s = sum(s and not w for s, w in zip(significant, won))
  verdict = (HOLDS if favour_s2d and not favour_d2s else
             DOES_NOT_HOLD if favour_d2s and not favour_s2d else INCONCLUSIVE)
  parts = [f'{label}: {describe(t)}, p Holm={p:.2g}' for (label, t), p in zip(tests, holm)]
  summary = (f'{favour_s2d} of {len(tests)} comparisons significantly favour '
             f'shallow-to-deep, {favour_d2s} deep-to-shallow (Holm over the {len(tests)})')
  return verdict, summary + '; ' + '; '.join(parts)


_NO_DIRECTIONS = ('needs gradual schedules in both directions (config experiments such as '
                  "{'gradual': 'depth', 'direction': 'shallow_to_deep'} and 'deep_to_shallow') "
                  'or cumulative subsets of the k shallowest and k deepest blocks '
                  '(configs/paper.py)')


def _f2(res: Results, domain: str, alpha: float) -> Finding:
  found = _direction_family(res, domain, ORDERS, alpha)
  if found is None:
    return _finding('F2', INCONCLUSIVE, _NO_DIRECTIONS)
  return _finding('F2', *found)


def _f6(res: Results, domain: str, alpha: float) -> Finding:
  verdicts, parts = {}, []
  for order in ORDERS:
    found = _direction_family(res, domain, [order], alpha)
    if found is not None:
      verdict, why = found
      verdicts[order] = verdict
      parts.append(f'{order}: {verdict} ({why})')
  if not verdicts:
    return _finding('F6', INCONCLUSIVE, _NO_DIRECTIONS)
  evidence = '; '.join(parts)
  if DOES_NOT_HOLD in verdicts.values():
    return _finding('F6', DOES_NOT_HOLD, evidence)
  missing = [o for o in ORDERS if o not in verdicts]
  if missing:
    return _finding('F6', INCONCLUSIVE, f'{evidence}; order {", ".join(missing)} not swept')
  all_hold = all(v == HOLDS for v in verdicts.values())
  return _finding('F6', HOLDS if all_hold else INCONCLUSIVE, evidence)


# -- F3: the last blocks only ------------------------------------------------------


def _f3(res: Results, domain: str, alpha: float) -> Finding:
  subsets = _subsets(res, domain)
  present = {name: subsets.get(blocks) or (name if name in _bases(res, domain) else None)
             for name, blocks in LAST_BLOCKS.items()}
  present = {k: v for k, v in present.items() if v}
  lasts = set(present.values())
  others = sorted(b for blocks, b in subsets.items() if blocks and b not in lasts)
  if not present or not others:
    return _finding('F3', INCONCLUSIVE, 'needs last (dec1 + head) or head and another '
                    f'pretrained layer subset in domain {domain!r}')
  means = res.summary(domain=domain).set_index('base')['mean']
  worst = min(lasts, key=lambda b: means[b])
  table = res.pairwise(others, reference=worst, domain=domain)
  rank = int((means > means[worst]).sum()) + 1
  head = (f'{worst} mean Dice {means[worst]:.3f}, rank {rank} of {len(means)} '
          f'({len(others)} other distinct subsets)')
  if table['n_runs'].min() < 2:
    beaten_here = int((table['mean_diff'] > 0).sum())
    return _finding('F3', INCONCLUSIVE, f'{head}; below {beaten_here} of {len(others)} in '
                    f'this run; {ONE_SEED}')
  significant = table['p_holm'] < alpha
  worse_than_all = bool((significant & (table['mean_diff'] > 0)).all())
  beaten = table.loc[significant & (table['mean_diff'] < 0), 'a'].tolist()
  evidence = (f'{head}; significantly worse (Holm) than {int(significant.sum())} of '
              f'{len(others)}')
  if beaten:
    return _finding('F3', DOES_NOT_HOLD, f'{evidence}; significantly worse than {worst}: '
                    f'{", ".join(beaten)}')
  return _finding('F3', HOLDS if worse_than_all else INCONCLUSIVE, evidence)


# -- F4: ultrasound against X-ray ----------------------------------------------------


def _effect(res: Results, domain: str) -> stats.Estimate:
  matched, keys = res.matched('contracting', 'expanding', domain=domain)
  cells = matched.assign(d=matched['a'] - matched['b']).pivot_table(
      index=[k for k in keys if k not in ('domain', 'image_id')], columns='image_id',
      values='d')
  return stats.run_mean(cells.to_numpy(), res.resampled)


def _f4(res: Results, kinds: dict[str, str], alpha: float) -> Finding:
  def usable(kind):
    return [d for d in res.domains if kinds.get(d) == kind
            and not _missing(res, d, ('contracting', 'expanding'))]
  us, xr = usable('ultrasound'), usable('xray')
  if not us or not xr:
    here = ', '.join(f'{d} ({kinds.get(d, "unknown kind")})' for d in res.domains)
    return _finding('F4', INCONCLUSIVE, 'needs contracting and expanding on an ultrasound '
                    'and an X-ray domain (load one work directory per domain); domains '
                    f'here: {here}')
  e_us, e_xr = _effect(res, us[0]), _effect(res, xr[0])
  t_xr = res.paired('contracting', 'expanding', domain=xr[0])
  diff, se, df = stats.welch(e_us, e_xr)
  p = float(2 * sps.t.sf(abs(diff / se), df)) if se > 0 else float('nan')
  evidence = (f'contracting - expanding Dice: {us[0]} {e_us.mean:+.3f} ({e_us.n_runs} '
              f'seeds), {xr[0]} {e_xr.mean:+.3f} ({e_xr.n_runs} seeds); difference '
              f'{diff:+.3f}, p={p:.2g}; {xr[0]}: {describe(t_xr)}')
  if not (e_us.runs_known and e_xr.runs_known):
    return _finding('F4', INCONCLUSIVE, f'{evidence}; {ONE_SEED}')
  if p < alpha and diff > 0:
    return _finding('F4', HOLDS, evidence)
  if t_xr.favours(alpha) == 'contracting':
    return _finding('F4', DOES_NOT_HOLD, evidence)
  return _finding('F4', INCONCLUSIVE, evidence)


# -- F5: convergence speed -----------------------------------------------------------


def _f5(res: Results, domain: str, alpha: float, fraction: float = 0.9) -> Finding:
  why = _missing(res, domain, ('shallow', 'full'))
  if why:
    return _finding('F5', INCONCLUSIVE, why)
  conv = res.convergence(fraction, reference='full')
  conv = conv[(conv['domain'] == domain) & conv['base'].isin(('shallow', 'full'))]
  conv = conv.merge(res.runs[['domain', 'experiment', 'variant']], on=['domain', 'experiment'])
  if conv['best_val_dice'].isna().all():
    return _finding('F5', INCONCLUSIVE, 'no validation curves: the engine wrote no '
                    'experiments/<name>/history.jsonl with val_dice')
  # Never reaching the target ranks after every run that did: a run that
  # stopped early (converged) without reaching it would not have reached it by
  # its cap, so it counts as its step cap + 1 (its last logged step + 1 where
  # the cap is unknown, or logged later).
  cap = conv['experiment'].map(_runs(res, domain).set_index('experiment')['steps'])
  steps = conv['steps'].fillna(np.fmax(cap, conv['last_step']) + 1)
  never = conv[conv['steps'].isna()].groupby('base').size()
  # Folds of one seed are pooled: a seed's steps are the mean over its folds.
  table = conv.assign(steps=steps).pivot_table(index=['variant', 'seed'], columns='base',
                                               values='steps').dropna()
  if table.empty:
    return _finding('F5', INCONCLUSIVE, 'no seed has curves for both shallow and full')
  d = (table['full'] - table['shallow']).to_numpy()
  evidence = (f'{_f5_convention(res, domain, fraction)}: shallow median '
              f'{table["shallow"].median():.0f}, full median {table["full"].median():.0f}; '
              f'shallow faster in {int((d > 0).sum())} of {d.size} seeds'
              + ''.join(f'; {base} never reached it in {n} run(s) (counted as its step '
                        'cap + 1)' for base, n in never.items())
              + _train_size(res, domain))
  if d.size < 2:
    return _finding('F5', INCONCLUSIVE, f'{evidence}; {ONE_SEED}')
  p = _paired_t(d)
  if np.all(d == d[0]):
    evidence += (f', exact sign test over seeds p={p:.2g} (every seed differs by {d[0]:g} '
                 'steps: no spread for a t-test)')
  else:
    evidence += f', paired t-test over seeds p={p:.2g}'
  if p < alpha:
    return _finding('F5', HOLDS if d.mean() > 0 else DOES_NOT_HOLD, evidence)
  return _finding('F5', INCONCLUSIVE, evidence)


def _f5_convention(res: Results, domain: str, fraction: float) -> str:
  """What F5 counts, and how far full's best (the bar) is from its converged value."""
  full = _runs(res, domain)
  full = full[full['base'] == 'full']
  unit = 'seed and fold' if full['fold'].notna().any() else 'seed'
  head = (f'steps until validation Dice first reaches {fraction:.0%} of full\'s '
          f'best-validation Dice in the same {unit}')
  reasons = full['stop_reason']
  if reasons.isna().all():  # older summaries: no claim about convergence
    return (head + '; full\'s best is that of its fixed number of steps (older version: '
            'no early stopping)')
  head += '; full\'s best is its converged value'
  capped = int((reasons == 'cap').sum())
  if capped:
    head += f' (full had not converged in {capped} run(s): its best is a lower bound)'
  return head


def _paired_t(d: np.ndarray) -> float:
  """Two-sided paired t-test p of the differences; with no spread, the sign test's."""
  if np.all(d == d[0]):
    return 1.0 if d[0] == 0 else 2 * 0.5 ** d.size
  return stats.crossed_mean(d[:, None]).p_value()


def _train_size(res: Results, domain: str) -> str:
  sizes = _runs(res, domain)['train_images'].dropna()
  if sizes.empty:
    return ''
  lo, hi = int(sizes.min()), int(sizes.max())
  return f'; {lo if lo == hi else f"{lo}-{hi}"} training images'
