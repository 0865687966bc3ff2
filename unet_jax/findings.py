"""The paper's findings F1..F6 (DESIGN.md section 1), judged on a sweep's results.

Each finding is ``holds`` when a two-sided test at ``alpha`` is significant in
the claimed direction, ``does not hold`` when it is significant the other way
(or, where stated, when the claimed contrast is absent although the data could
show it), and ``inconclusive`` otherwise, including when the experiments it
needs were not run; the evidence says which. Tests are paired over test images
(each image's difference averaged over seeds) unless stated.

What each needs, by experiment ``base`` name (``configs/default.py``):

- F1: ``contracting`` and ``expanding`` on an ultrasound domain.
- F2: gradual schedules of one order (``flow`` or ``depth``) in both
  directions, same stage length and init (config ``{'gradual': ...}``);
  all such pairs are pooled.
- F3: ``last`` and/or ``head`` and at least one other pretrained one-stage
  subset that trains something; the worse of last/head must be significantly
  worse than every other one (Holm-corrected) to hold.
- F4: ``contracting`` and ``expanding`` on an ultrasound *and* an X-ray domain
  (two work directories given to ``compare.load``); holds when the
  ultrasound effect is larger (Mann-Whitney U over per-image differences),
  does not hold when F1's pattern holds on X-ray and is not smaller there.
- F5: ``shallow`` and ``full`` with ``history.jsonl`` validation curves; steps
  to 90% of ``full``'s best validation Dice, paired over seeds (Wilcoxon: at
  least six seeds can reach p < 0.05). A run that never gets there counts as
  its last logged step + 1.
- F6: F2 tested under each of the two orders; holds when shallow-to-deep wins
  under both, does not hold when deep-to-shallow wins under either.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats as sps

from unet_jax import compare, stats

if TYPE_CHECKING:
  from unet_jax.compare import PairedTest, Results

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


@dataclasses.dataclass(frozen=True)
class Finding:
  id: str
  claim: str
  verdict: str  # HOLDS, DOES_NOT_HOLD or INCONCLUSIVE
  evidence: str  # the numbers, or why the data cannot decide


def format_findings(findings: list[Finding]) -> str:
  """Plain text: one line per finding, then its evidence indented."""
  return '\n'.join(f'{f.id}  {f.verdict:<13}  {f.claim}\n      {f.evidence}' for f in findings)


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


def _bases(res: Results, domain: str) -> set[str]:
  return set(res.runs.loc[res.runs['domain'] == domain, 'base'])


def _missing(res: Results, domain: str, needed) -> str:
  lacking = [b for b in needed if b not in _bases(res, domain)]
  return (f'needs experiments {", ".join(needed)} in domain {domain!r}; missing: '
          f'{", ".join(lacking)}') if lacking else ''


def describe(t: PairedTest) -> str:
  """One line of numbers for a paired test."""
  lo, hi = t.diff_ci95
  return (f'{t.a} {t.mean_a:.3f} vs {t.b} {t.mean_b:.3f}: diff {t.mean_diff:+.3f} '
          f'[{lo:+.3f}, {hi:+.3f}], p(images)={t.p_images:.2g} (n={t.n_images}), '
          f'p(seeds)={t.p_runs:.2g} (n={t.n_runs}), r={t.rank_biserial:+.2f}')


def _verdict(t: PairedTest, winner: str, alpha: float) -> str:
  better = t.favours(alpha)
  return INCONCLUSIVE if better is None else HOLDS if better == winner else DOES_NOT_HOLD


def _f1(res: Results, domain: str, alpha: float) -> Finding:
  why = _missing(res, domain, ('contracting', 'expanding'))
  if why:
    return _finding('F1', INCONCLUSIVE, why)
  t = res.paired('contracting', 'expanding', domain=domain)
  return _finding('F1', _verdict(t, 'contracting', alpha), describe(t))


def _gradual_pairs(res: Results, domain: str) -> dict[str, list[tuple[str, str]]]:
  """order -> [(shallow_to_deep base, deep_to_shallow base)] with equal settings."""
  runs = res.runs[(res.runs['domain'] == domain) & res.runs['order'].notna()]
  pairs: dict[str, list[tuple[str, str]]] = {}
  for (order, _, _), g in runs.groupby(['order', 'stage_steps', 'init']):
    s2d = sorted(set(g.loc[g['direction'] == _S2D, 'base']))
    d2s = sorted(set(g.loc[g['direction'] == _D2S, 'base']))
    pairs.setdefault(order, []).extend((a, b) for a in s2d for b in d2s)
  return {k: v for k, v in pairs.items() if v}


def _pooled(res: Results, pairs: list[tuple[str, str]], domain: str) -> PairedTest:
  """One paired test over several (shallow-to-deep, deep-to-shallow) pairs."""
  frames = []
  for i, (a, b) in enumerate(pairs):
    matched, keys = res.matched(a, b, domain=domain)
    frames.append(matched.assign(pair=i))
  return compare.paired_test(_S2D, _D2S, 'dice', pd.concat(frames), keys + ['pair'])


_NO_GRADUAL = ('needs gradual schedules in both directions: config experiments such as '
               "{'gradual': 'depth', 'direction': 'shallow_to_deep'} and 'deep_to_shallow'")


def _f2(res: Results, domain: str, alpha: float) -> Finding:
  pairs = _gradual_pairs(res, domain)
  if not pairs:
    return _finding('F2', INCONCLUSIVE, _NO_GRADUAL)
  t = _pooled(res, [p for ps in pairs.values() for p in ps], domain)
  named = '; '.join(f'{o}: {a} vs {b}' for o, ps in pairs.items() for a, b in ps)
  return _finding('F2', _verdict(t, _S2D, alpha), f'{describe(t)} ({named})')


def _f3(res: Results, domain: str, alpha: float) -> Finding:
  present = [b for b in ('last', 'head') if b in _bases(res, domain)]
  runs = res.runs[res.runs['domain'] == domain]
  others = sorted(set(runs.loc[(runs['init'] == 'pretrained') & (runs['stages'] == 1) &
                               (runs['trainable_fraction'] > 0) &
                               ~runs['base'].isin(('last', 'head')), 'base']))
  if not present or not others:
    return _finding('F3', INCONCLUSIVE, 'needs last or head and another pretrained '
                    f'layer subset in domain {domain!r}')
  means = res.summary(domain=domain, num_samples=200).set_index('base')['mean']
  worst = min(present, key=lambda b: means[b])
  table = res.pairwise(others, reference=worst, domain=domain, num_samples=200)
  worse_than_all = bool(((table['p_holm'] < alpha) & (table['mean_diff'] > 0)).all())
  beaten = table.loc[(table['p_holm'] < alpha) & (table['mean_diff'] < 0), 'a'].tolist()
  rank = int((means > means[worst]).sum()) + 1
  evidence = (f'{worst} mean Dice {means[worst]:.3f}, rank {rank} of {len(means)}; '
              f'significantly worse (Holm) than {int((table["p_holm"] < alpha).sum())} '
              f'of {len(others)} other subsets')
  if beaten:
    return _finding('F3', DOES_NOT_HOLD, f'{evidence}; significantly worse than {worst}: '
                    f'{", ".join(beaten)}')
  return _finding('F3', HOLDS if worse_than_all else INCONCLUSIVE, evidence)


def _per_image_effect(res: Results, domain: str) -> np.ndarray:
  matched, _ = res.matched('contracting', 'expanding', domain=domain)
  return (matched['a'] - matched['b']).groupby(matched['image_id']).mean().dropna().to_numpy()


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
  us_d, xr_d = _per_image_effect(res, us[0]), _per_image_effect(res, xr[0])
  p = float(sps.mannwhitneyu(us_d, xr_d).pvalue)
  t_xr = res.paired('contracting', 'expanding', domain=xr[0])
  evidence = (f'contracting - expanding Dice: {us[0]} {us_d.mean():+.3f} (n={us_d.size}), '
              f'{xr[0]} {xr_d.mean():+.3f} (n={xr_d.size}), Mann-Whitney p={p:.2g}; '
              f'{xr[0]}: {describe(t_xr)}')
  if p < alpha and us_d.mean() > xr_d.mean():
    return _finding('F4', HOLDS, evidence)
  if t_xr.favours(alpha) == 'contracting':
    return _finding('F4', DOES_NOT_HOLD, evidence)
  return _finding('F4', INCONCLUSIVE, evidence)


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
  # Never reaching the target ranks after every run that did.
  steps = conv['steps'].fillna(conv['last_step'] + 1)
  never = conv[conv['steps'].isna()].groupby('base').size()
  table = conv.assign(steps=steps).pivot_table(index=['variant', 'seed'], columns='base',
                                               values='steps').dropna()
  if table.empty:
    return _finding('F5', INCONCLUSIVE, 'no seed has curves for both shallow and full')
  d = (table['full'] - table['shallow']).to_numpy()
  p = stats.wilcoxon(d)
  evidence = (f'steps to {fraction:.0%} of full\'s best validation Dice: shallow median '
              f'{table["shallow"].median():g}, full median {table["full"].median():g}; '
              f'shallow faster in {int((d > 0).sum())} of {d.size} seeds, Wilcoxon p={p:.2g}'
              + ''.join(f'; {base} never reached it in {n} run(s) (counted as '
                        'last step + 1)' for base, n in never.items())
              + _train_size(res, domain))
  if d.size < 6:
    evidence += '; fewer than 6 seeds cannot reach p < 0.05'
  if p < alpha:
    return _finding('F5', HOLDS if np.median(d) > 0 else DOES_NOT_HOLD, evidence)
  return _finding('F5', INCONCLUSIVE, evidence)


def _train_size(res: Results, domain: str) -> str:
  data = res.configs.get(domain, {}).get('data', {})
  if 'num_images' not in data or 'test_fraction' not in data or data.get('root'):
    return ''  # a real set: num_images does not apply
  n_test = round(data['num_images'] * data['test_fraction'])
  n_train = data['num_images'] - n_test
  n_val = round(n_train * data.get('val_fraction', 0.0))
  return f'; {n_train - n_val} training images'


def _f6(res: Results, domain: str, alpha: float) -> Finding:
  pairs = _gradual_pairs(res, domain)
  if not pairs:
    return _finding('F6', INCONCLUSIVE, _NO_GRADUAL)
  verdicts, parts = {}, []
  for order, order_pairs in sorted(pairs.items()):
    t = _pooled(res, order_pairs, domain)
    verdicts[order] = _verdict(t, _S2D, alpha)
    parts.append(f'{order}: {verdicts[order]}, {describe(t)}')
  evidence = '; '.join(parts)
  if DOES_NOT_HOLD in verdicts.values():
    return _finding('F6', DOES_NOT_HOLD, evidence)
  missing = [o for o in ('flow', 'depth') if o not in pairs]
  if missing:
    return _finding('F6', INCONCLUSIVE, f'{evidence}; order {", ".join(missing)} not swept')
  all_hold = all(v == HOLDS for v in verdicts.values())
  return _finding('F6', HOLDS if all_hold else INCONCLUSIVE, evidence)
