"""The paper's design (Amiri, Brooks, Rivaz 2019/2020), swept over seeds.

Pretrains a U-Net on dead-leaves salient-object images, then fine-tunes it on
one target domain under every layer subset the paper studies, for one
definition of "shallow/deep" (DESIGN.md F6):

- every block (``scheme=flow``: enc1 ... bottleneck ... dec1, head) or block
  group (``scheme=depth``: {enc1, dec1, head}, {enc2, dec2}, ..., {bottleneck})
  fine-tuned alone: ``alone_<blocks>``;
- cumulative subsets, shallow-to-deep (``s2d_<k>``: the k shallowest groups)
  and deep-to-shallow (``d2s_<k>``: the k deepest);
- contracting path only vs expanding path only (F1);
- gradual unfreezing in both directions (F2);
- full fine-tuning, training from scratch and the head only (F3);
- five seeds each (data split fixed, training seeds vary).

Commands (one target domain per work directory; F4 compares two):

  python launch/sweep.py --config=configs/paper.py --workdir=runs/paper-us
  python launch/sweep.py --config=configs/paper.py:dataset=chest_xray --workdir=runs/paper-xray
  python launch/sweep.py --config=configs/paper.py:scheme=depth --workdir=runs/paper-us-depth
  python launch/report.py --workdir=runs/paper-us --also=runs/paper-xray
  python launch/sweep.py --config=configs/paper.py:dataset=busi,root=~/data/Dataset_BUSI_with_GT
  python launch/sweep.py --config=configs/paper.py:smoke --workdir=/tmp/paper-smoke

Variants (comma-separated): ``scheme=flow|depth``; ``dataset=`` a built-in
source (ultrasound, chest_xray) or a real set (busi, udiat_b, montgomery,
jsrt_scr, folder) with ``root=<folder>``; ``seeds=N``; ``smoke``.

Size and time. The full design is 35 base experiments x 5 seeds = 175
fine-tuning runs (scheme=flow; 21 x 5 = 105 for depth) of 1,000 steps at
128 x 128, base width 32: about 175,000 experiment-steps, sized for one
accelerator. Not yet measured on one: the estimate for an H100 is 20-40
minutes per scheme and domain. ``smoke`` is the same design on a depth-2,
width-4 U-Net at 32 x 32 with 8 steps per run: 23 x 5 = 115 runs, about 80 s
on a 2-core CPU (measured in README.md).

What it measures: test Dice, IoU, HD95 and ASSD per image and seed, the
validation Dice curve of every run, and the findings F1-F6 in report.md
(``unet_jax.compare``): contracting vs expanding, gradual shallow-to-deep vs
deep-to-shallow, where last-blocks-only ranks, the X-ray contrast (with
``--also``), convergence speed of shallow vs full, and both schemes.
"""

import ml_collections

from unet_jax.schedules import ORDERS, block_groups

BUILT_IN = ('ultrasound', 'chest_xray')
REAL = ('busi', 'udiat_b', 'montgomery', 'jsrt_scr', 'folder')


def _parse(arg):
  options = {'scheme': 'flow', 'dataset': 'ultrasound', 'root': '', 'seeds': '5',
             'smoke': False}
  for part in filter(None, (arg or '').split(',')):
    key, eq, value = part.partition('=')
    if key == 'smoke' and not eq:
      options['smoke'] = True
    elif key in options and key != 'smoke' and eq:
      options[key] = value
    else:
      raise ValueError(f'unknown variant {part!r} of configs/paper.py; valid: '
                       'scheme=flow|depth, dataset=NAME, root=PATH, seeds=N, smoke')
  if options['scheme'] not in ORDERS:
    raise ValueError(f"scheme={options['scheme']!r}; valid: {', '.join(ORDERS)}")
  if options['dataset'] not in BUILT_IN + REAL:
    raise ValueError(f"dataset={options['dataset']!r}; valid: {', '.join(BUILT_IN + REAL)}")
  if options['dataset'] in REAL and not options['root']:
    raise ValueError(f"dataset={options['dataset']} is a real set: add root=<its folder>")
  if not options['seeds'].isdigit() or int(options['seeds']) < 1:
    raise ValueError(f"seeds={options['seeds']!r} must be a positive integer")
  return options


def _rules(blocks):
  return (('|'.join(blocks), 'train'), ('.*', 'freeze'))


def experiments(scheme: str, depth: int, steps: int) -> dict:
  """name -> {'rules': ..., 'init': ...} for the paper's design under ``scheme``."""
  groups = block_groups(scheme, depth)
  out = {}
  for group in groups:
    if group != ['head']:  # 'head' alone is the experiment 'head' below
      out['alone_' + '+'.join(group)] = dict(rules=_rules(group), init='pretrained')
  for k in range(1, len(groups)):
    out[f's2d_{k}'] = dict(rules=_rules([b for g in groups[:k] for b in g]),
                           init='pretrained')
    out[f'd2s_{k}'] = dict(rules=_rules([b for g in groups[-k:] for b in g]),
                           init='pretrained')
  # One stage per group, the last (everything trained) as long as the others.
  stage_steps = max(1, steps // (len(groups) + 1))
  for direction, short in (('shallow_to_deep', 's2d'), ('deep_to_shallow', 'd2s')):
    out[f'gradual_{short}'] = dict(
        rules={'gradual': scheme, 'direction': direction, 'stage_steps': stage_steps},
        init='pretrained')
  for name, preset, init in (('contracting', 'contracting', 'pretrained'),
                             ('expanding', 'expanding', 'pretrained'),
                             ('shallow', 'shallow', 'pretrained'),
                             ('head', 'head', 'pretrained'),
                             ('full', 'full', 'pretrained'),
                             ('scratch', 'full', 'random')):
    out[name] = dict(rules=preset, init=init)
  return out


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
                     val_fraction=0.2, root=options['root'], on_bad='error')
  steps = 8 if smoke else 1000
  config.finetune = dict(steps=steps, batch_size=8 if smoke else 16, learning_rate=1e-3,
                         weight_decay=0.0, update_frozen_stats=False, rewarmup_steps=0)
  config.experiments = experiments(options['scheme'], config.model.depth, steps)
  config.grid = dict(seed=tuple(range(int(options['seeds']))), learning_rate=(),
                     weight_decay=(), steps=(), batch_size=())
  config.only = ''
  config.strategy = 'auto'
  config.max_bundle = 0
  config.compilation_cache = '~/.cache/unet_jax/jax'
  config.chunk_steps = 4 if smoke else 100
  config.checkpoint_every = 4 if smoke else 200
  config.loop = 'auto'
  config.bootstrap_samples = 500 if smoke else 2000
  return config
