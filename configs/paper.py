"""The paper's design (Amiri, Brooks, Rivaz 2019/2020), swept over seeds.

Pretrains a U-Net on dead-leaves salient-object images, then fine-tunes it on
one target domain under every layer subset the paper studies, under both
definitions of "shallow/deep" (DESIGN.md F6) in one work directory:

- every block (flow: enc1 ... bottleneck ... dec1, head) and block group
  (depth: {enc1, dec1, head}, {enc2, dec2}, ..., {bottleneck}) fine-tuned
  alone: ``alone_<blocks>``;
- cumulative subsets, shallow-to-deep (``<scheme>_s2d_<k>``: the k shallowest
  groups) and deep-to-shallow (``<scheme>_d2s_<k>``: the k deepest), F2;
- contracting path only vs expanding path only (F1); shallow, deep, last
  (dec1 + head) and head only (F3);
- gradual unfreezing in both directions under both orders
  (``gradual_<scheme>_s2d`` / ``_d2s``, F2, F6);
- full fine-tuning and training from scratch;
- five seeds each (data split fixed, training seeds vary).

Every distinct set of blocks is swept once, under the first name it gets in
that order (presets, then blocks alone, then cumulative subsets): under the
flow order ``d2s_1`` is ``head``, ``d2s_2`` is ``last``, ``s2d_1`` is
``alone_enc1``, and the middle k are ``contracting`` / ``expanding``. The
findings recognise subsets by the blocks they train (summary.json), not by
name. With ``scheme=flow`` or ``scheme=depth`` one order is swept and names
carry no scheme prefix.

Commands (one target domain per work directory; F4 compares two):

  python launch/sweep.py --config=configs/paper.py --workdir=runs/paper-us
  python launch/sweep.py --config=configs/paper.py:dataset=chest_xray --workdir=runs/paper-xray
  python launch/report.py --workdir=runs/paper-us --also=runs/paper-xray
  python launch/sweep.py --config=configs/paper.py:dataset=busi,root=~/data/Dataset_BUSI_with_GT
  python launch/sweep.py --config=configs/paper.py:smoke --workdir=/tmp/paper-smoke

Variants (comma-separated): ``scheme=both|flow|depth`` (default both);
``dataset=`` a built-in source (ultrasound, chest_xray) or a real set (busi,
udiat_b, montgomery, jsrt_scr, folder) with ``root=<folder>``; ``seeds=N``;
``smoke``.

Size and time. The full design is 43 base experiments x 5 seeds = 215
fine-tuning runs (one scheme: flow 32, depth 20 bases) of at most 1,000 steps at
128 x 128, base width 32: each run stops once validation Dice (56 images, scored every
50 steps) has not gained 0.005 in 5 evaluations, so at most about 215,000
experiment-steps, sized for one accelerator, not yet measured on one. ``smoke`` is
the same design on a depth-2, width-4 U-Net at 32 x 32 with at most 8 steps per run:
25 x 5 = 125 runs, 2 min 4 s on a 2-core CPU (2026-12-01, before runs stopped early);
its numbers only show that every finding can be decided (it gave F1, F2 and F6
"holds").

What it measures: test Dice, IoU, HD95 and ASSD per image and seed, the
validation Dice curve of every run, and the findings F1-F6 in report.md
(``unet_jax.analysis``): contracting vs expanding, shallow-to-deep vs
deep-to-shallow (gradual and cumulative, both orders), where last-blocks-only
ranks among distinct subsets, the X-ray contrast (with ``--also``),
convergence speed of shallow vs full, and both schemes.
"""

import ml_collections

from unet_jax.block_order import ORDERS, block_groups, cumulative

BUILT_IN = ('ultrasound', 'chest_xray')
REAL = ('busi', 'udiat_b', 'montgomery', 'jsrt_scr', 'folder')


def _parse(arg):
  options = {'scheme': 'both', 'dataset': 'ultrasound', 'root': '', 'seeds': '5',
             'smoke': False}
  for part in filter(None, (arg or '').split(',')):
    key, eq, value = part.partition('=')
    if key == 'smoke' and not eq:
      options['smoke'] = True
    elif key in options and key != 'smoke' and eq:
      options[key] = value
    else:
      raise ValueError(f'unknown variant {part!r} of configs/paper.py; valid: '
                       'scheme=both|flow|depth, dataset=NAME, root=PATH, seeds=N, smoke')
  if options['scheme'] not in ORDERS + ('both',):
    raise ValueError(f"scheme={options['scheme']!r}; valid: both, {', '.join(ORDERS)}")
  if options['dataset'] not in BUILT_IN + REAL:
    raise ValueError(f"dataset={options['dataset']!r}; valid: {', '.join(BUILT_IN + REAL)}")
  if options['dataset'] in REAL and not options['root']:
    raise ValueError(f"dataset={options['dataset']} is a real set: add root=<its folder>")
  if not options['seeds'].isdigit() or int(options['seeds']) < 1:
    raise ValueError(f"seeds={options['seeds']!r} must be a positive integer")
  return options


def _rules(blocks):
  return (('|'.join(blocks), 'train'), ('.*', 'freeze'))


# Named subsets first: where another part of the design trains the same
# blocks, the sweep runs it once under the first name (findings recognise
# subsets by the blocks they train, DESIGN.md F3 and F2).
def _presets(depth: int) -> dict:
  return {'full': None, 'contracting': _blocks('contracting', depth),
          'expanding': _blocks('expanding', depth), 'shallow': _blocks('shallow', depth),
          'deep': _blocks('deep', depth), 'last': _blocks('last', depth),
          'head': _blocks('head', depth)}


def _blocks(preset: str, depth: int) -> frozenset:
  groups = {'contracting': [f'enc{i}' for i in range(1, depth + 1)] + ['bottleneck'],
            'expanding': [f'dec{i}' for i in range(1, depth + 1)] + ['head'],
            'shallow': ['enc1', 'dec1'], 'deep': [f'enc{depth}', 'bottleneck', f'dec{depth}'],
            'last': ['dec1', 'head'], 'head': ['head']}
  return frozenset(groups[preset])


def experiments(schemes, depth: int, steps: int) -> dict:
  """name -> {'rules': ..., 'init': ...}: the paper's design under each of ``schemes``.

  Every distinct set of blocks is swept once: the named presets, then each
  block group alone, then the cumulative subsets (``[<scheme>_]s2d_<k>``:
  the k shallowest groups, ``[<scheme>_]d2s_<k>``: the k deepest) that are
  not already among them; the gradual schedules in both directions; full,
  scratch. With one scheme names carry no scheme prefix.
  """
  out, seen = {}, {}

  def add(name, blocks):
    if blocks in seen:
      return
    seen[blocks] = name
    out[name] = dict(rules=_rules(sorted(blocks, key=_flow_position(depth))),
                     init='pretrained')

  for name, blocks in _presets(depth).items():
    if blocks is None:
      out[name] = dict(rules='full', init='pretrained')
    else:
      add(name, blocks)
  out['scratch'] = dict(rules='full', init='random')
  for scheme in schemes:
    for group in block_groups(scheme, depth):
      add('alone_' + '+'.join(group), frozenset(group))
  for scheme in schemes:
    prefix = f'{scheme}_' if len(schemes) > 1 else ''
    groups = block_groups(scheme, depth)
    for k in range(1, len(groups)):
      add(f'{prefix}s2d_{k}', cumulative(scheme, depth, k, 'shallow_to_deep'))
      add(f'{prefix}d2s_{k}', cumulative(scheme, depth, k, 'deep_to_shallow'))
    # One stage per group, the last (everything trained) as long as the others.
    stage_steps = max(1, steps // (len(groups) + 1))
    for direction, short in (('shallow_to_deep', 's2d'), ('deep_to_shallow', 'd2s')):
      name = f'gradual_{scheme}_{short}' if len(schemes) > 1 else f'gradual_{short}'
      out[name] = dict(rules={'gradual': scheme, 'direction': direction,
                              'stage_steps': stage_steps}, init='pretrained')
  return out


def _flow_position(depth: int):
  order = [b for g in block_groups('flow', depth) for b in g]
  return order.index


def get_config(arg=None):
  options = _parse(arg)
  smoke = options['smoke']
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.image_size = 32 if smoke else 128
  config.model = dict(base_width=4 if smoke else 32, depth=2 if smoke else 4, norm='batch',
                      group_size=8, bn_momentum=0.9, in_channels=1)
  config.pretrain = dict(source='dead_leaves', num_images=64 if smoke else 4096,
                         steps=20 if smoke else 3000, batch_size=8 if smoke else 16,
                         learning_rate=1e-3, weight_decay=0.0, root='')
  dataset = options['dataset']
  config.data = dict(source=dataset, num_images=40 if smoke else 400, test_fraction=0.3,
                     val_fraction=0.2, folds=0, split_per_seed=False,
                     root=options['root'], on_bad='error', empty_masks='keep',
                     intensity='unit')
  steps = 8 if smoke else 1000
  # Every run to convergence (configs/default.py): steps is the cap, validation
  # Dice is scored every chunk_steps, patience evaluations without a gain of
  # min_delta stop it (counted from a gradual schedule's last stage).
  config.finetune = dict(steps=steps, epochs=0, patience=2 if smoke else 5, min_delta=0.005,
                         batch_size=8 if smoke else 16, learning_rate=1e-3,
                         weight_decay=0.0, frozen_norm='adapt', rewarmup_steps=0)
  # The default's policy and check (docs/DESIGN.md section 3); cross both
  # policies with grid.frozen_norm=('inference', 'adapt').
  config.evaluation = dict(hd95='max', norm_check=True)
  schemes = ORDERS if options['scheme'] == 'both' else (options['scheme'],)
  config.experiments = experiments(schemes, config.model.depth, steps)
  config.grid = dict(seed=tuple(range(int(options['seeds']))), learning_rate=(),
                     weight_decay=(), steps=(), batch_size=(), frozen_norm=(), fold=())
  config.only = ''
  config.executor = 'auto'
  config.max_bundle = 0
  config.compilation_cache = '~/.cache/unet_jax/jax'
  config.chunk_steps = 2 if smoke else 50
  config.checkpoint_every = 4 if smoke else 200
  config.loop = 'auto'
  config.bootstrap_samples = 500 if smoke else 2000
  return config
