"""Which fine-tuning strategy to use on this data: the paper's subsets and the literature's.

Every strategy of README "Fine-tuning strategies" in one sweep, on the
default sweep's data (simulated breast ultrasound, dead-leaves pretraining),
3 seeds each, all in one bundle (one compiled program: the strategies are
data on the experiment axis). report.md opens with the answer: the best
strategy, those not significantly worse than it (run-aware paired tests,
Holm-corrected), their trainable parameters and training time, and plots of
Dice against both.

Commands:   python launch/sweep.py --config=configs/strategies.py --workdir=runs/strategies
            python launch/sweep.py --config=configs/strategies.py:smoke   (CPU-sized)
            add --config.data.source=chest_xray for the X-ray answer
Variants:   smoke: 11 strategies x 3 seeds; tiny: seconds (what the tests run).
            Every run trains to convergence (configs/default.py: validation
            Dice every 20 steps, patience 4, min_delta 0.005, cap 300 steps).
Time:       smoke 12 min 14 s (ultrasound) on a 2-core CPU, fresh work
            directory, 2026-12-07; the full config (87 runs) is not yet
            measured.
Result:     smoke, ultrasound: full best (Dice 0.896); not shown worse (Hsu's
            MCB): lp_ft, l2sp, contracting, lora, auto_rgn; layer_decay,
            expanding, bitfit_head, surgical_enc1, head worse; six strategies
            had runs at the 300-step cap (lower bounds). Table: README
            "Fine-tuning strategies".
"""

import importlib.util
import os

import ml_collections


def _default_config(variant):
  """configs/default.py's config: the same data, network and training."""
  spec = importlib.util.spec_from_file_location(
      '_unet_jax_default_config', os.path.join(os.path.dirname(__file__), 'default.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


# The paper's main subsets (unet_jax/freeze.py PRESETS).
SUBSETS = {
    'full': dict(rules='full', init='pretrained'),
    'scratch': dict(rules='full', init='random'),
    'contracting': dict(rules='contracting', init='pretrained'),
    'expanding': dict(rules='expanding', init='pretrained'),
    'shallow': dict(rules='shallow', init='pretrained'),
    'deep': dict(rules='deep', init='pretrained'),
    'last': dict(rules='last', init='pretrained'),
    'head': dict(rules='head', init='pretrained'),
}


def strategies(depth: int) -> dict:
  """The strategies beyond layer subsets, for a U-Net of ``depth``."""
  encoder = [f'enc{i}' for i in range(1, depth + 1)] + ['bottleneck']
  decoder = [f'dec{i}' for i in range(depth, 0, -1)] + ['head']
  out = {
      # Layer-wise learning rates: a decay along the data flow (grid.layer_decay)
      # and an explicit table (the encoder at a tenth of the rate).
      'layer_decay': dict(rules='full', init='pretrained', layer_decay=0.8,
                          decay_order='flow'),
      'encoder_lr_tenth': dict(rules={'lr': {**{b: 0.1 for b in encoder},
                                            **{b: 1.0 for b in decoder}}},
                              init='pretrained'),
      # L2-SP: pull toward the pretrained weights (grid.l2sp).
      'l2sp': dict(rules='full', init='pretrained', l2sp=1.0),
      # Parameter kinds.
      'bitfit': dict(rules='bitfit', init='pretrained'),
      'bitfit_head': dict(rules='bitfit_head', init='pretrained'),
      'norm_only': dict(rules='norm_only', init='pretrained'),
      'norm_head': dict(rules='norm_head', init='pretrained'),
      # LP-FT: the head for half the steps, then everything.
      'lp_ft': dict(rules={'lp_ft': 0.5}, init='pretrained'),
      # Auto-RGN: every tensor at a rate scaled by its relative gradient norm.
      'auto_rgn': dict(rules='full', init='pretrained', lr_scaling='rgn'),
      # Low-rank adapters on every block's dense convolutions (model.adapter_rank),
      # and the head.
      'lora': dict(rules='lora', init='pretrained'),
  }
  # Surgical fine-tuning: one block alone.
  for block in encoder + decoder:
    out[f'surgical_{block}'] = dict(rules=f'surgical:{block}', init='pretrained')
  return out


def get_config(arg=None):
  variant = arg or ''
  if variant not in ('', 'smoke', 'tiny'):
    raise ValueError(f"unknown variant {arg!r} of configs/strategies.py; valid: 'smoke', "
                     "'tiny'")
  config = _default_config('tiny' if variant == 'tiny' else None)
  depth = config.model.depth
  experiments = {**SUBSETS, **strategies(depth)}
  # Adapters of rank 4 in every network of the sweep: the 'lora' entry trains
  # them, the others leave them at zero (the plain U-Net, in the same bundle).
  config.model.adapter_rank = 4
  config.grid.layer_decay = (0.5, 0.8)
  config.grid.l2sp = (0.1, 1.0)
  # Each experiment's own training time is part of the answer: the 'static' executor
  # compiles its freeze in (one program per distinct set of trained leaves),
  # so a strategy that trains less also costs less, as it would alone; the
  # masks-as-data executors run every experiment through one program, at one
  # cost (README "Fine-tuning strategies").
  config.executor = 'static'
  if variant in ('smoke', 'tiny'):
    keep = ['full', 'contracting', 'expanding', 'head', 'layer_decay', 'l2sp', 'bitfit_head',
            'lp_ft', 'auto_rgn', 'lora', 'surgical_enc1']
    experiments = {k: experiments[k] for k in keep}
    config.grid.layer_decay = ()  # the entries' own values: 0.8 and 1.0
    config.grid.l2sp = ()
  config.experiments = ml_collections.ConfigDict(experiments)
  return config
