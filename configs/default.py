"""Default sweep: which layers to fine-tune, on simulated breast ultrasound.

Pretrains a U-Net (base 16, depth 4, BatchNorm) for 400 steps on built-in
dead-leaves salient-object images (natural-image-like), then fine-tunes it on
77 simulated breast-ultrasound images (19 more for validation Dice) under
eight layer subsets x 3 seeds, 80 steps each (frozen blocks' BatchNorm:
'adapt'), and evaluates each run on 64 held-out images.

Command:    python launch/sweep.py
Variants:   python launch/sweep.py --config=configs/default.py:tiny  (seconds;
            what the tests run)
Overrides:  --config.finetune.steps=300 --config.only=full,contracting
            --config.finetune.frozen_norm=inference --config.data.folds=5
ResNet:     --config.model.encoder=resnet34 --config.pretrain.source=torchvision
            --config.pretrain.weights=resnet34.pth  (ImageNet encoder, no
            pretraining steps; image_size a multiple of 32; not yet timed)
Time:       5 min 3 s on a 2-core CPU with no accelerator, fresh work
            directory and no compilation cache (2026-12-02, README).
Result:     a table sorted by test Dice with the seed spread (full 0.86,
            contracting 0.84, expanding 0.82, scratch 0.81, shallow 0.77,
            last 0.71, deep 0.61, head 0.46) and report.md: F3 holds, F5 does
            not hold, F1 inconclusive (+0.018 [-0.019, +0.055] on 3 seeds),
            F2/F4/F6 need configs/paper.py.
"""

import ml_collections

# name -> (freeze preset, rule list or schedule, initialisation). Presets live
# in unet_jax/freeze.py; a rule list is ((pattern, 'train'|'freeze'), ...);
# schedules (unet_jax/schedules.py) are dicts such as
# {'gradual': 'depth', 'direction': 'shallow_to_deep', 'stage_steps': 50}.
EXPERIMENTS = {
    'full': ('full', 'pretrained'),
    'scratch': ('full', 'random'),
    'contracting': ('contracting', 'pretrained'),
    'expanding': ('expanding', 'pretrained'),
    'shallow': ('shallow', 'pretrained'),
    'deep': ('deep', 'pretrained'),
    'last': ('last', 'pretrained'),
    'head': ('head', 'pretrained'),
}


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.image_size = 64
  # in_channels > 1 repeats the grey images over channels (as for networks
  # built for RGB input). encoder: 'unet' (the paper's U-Net: base_width,
  # depth) or 'resnet18' | 'resnet34' | 'resnet50' (a torchvision ResNet
  # encoder, image_size a multiple of 32, with a U-Net decoder whose five
  # blocks dec5..dec1 have decoder_channels; unet_jax/resnet.py).
  config.model = dict(base_width=16, depth=4, norm='batch', group_size=8,
                      bn_momentum=0.9, in_channels=1, encoder='unet',
                      decoder_channels=(256, 128, 64, 32, 16))
  # source: dead_leaves (built in), a real saliency set read from root,
  # e.g. source='folder', root='~/data/DUTS-TR' (XPIE, DUTS, MSRA10K), or
  # 'oxford_iiit_pet' from TFDS (downloaded on first use; root = data_dir).
  # source='torchvision' (a ResNet encoder): no pretraining steps, the
  # encoder comes from weights, a torchvision state dict (.pth) or a
  # .safetensors file; grey: 'sum' (the stem's RGB filters summed for grey
  # input) or 'repeat' (needs in_channels=3).
  config.pretrain = dict(source='dead_leaves', num_images=1024, steps=400,
                         batch_size=8, learning_rate=1e-3, weight_decay=0.0, root='',
                         weights='', grey='sum')
  # val_fraction: share of the training images held out to score validation
  # Dice after every chunk (curves, TensorBoard, convergence speed).
  # source: a built-in generator (ultrasound, chest_xray, dead_leaves) with
  # num_images, or a real set (busi, udiat_b, montgomery, jsrt_scr, folder)
  # read from root, all of its images (unet_jax/data/real). on_bad='skip'
  # leaves out unusable image/mask pairs (reported) instead of stopping.
  # folds >= 2: k-fold cross-validation instead of one hold-out split (every
  # image tested once per seed; test_fraction is then unused), crossed with
  # the experiments through grid.fold.
  config.data = dict(source='ultrasound', num_images=160, test_fraction=0.4,
                     val_fraction=0.2, folds=0, root='', on_bad='error')
  config.finetune = dict(steps=80, batch_size=8, learning_rate=1e-3,
                         weight_decay=0.0,
                         # What frozen blocks' BatchNorm layers do while the
                         # others train (unet_jax/freeze.py FROZEN_NORM):
                         # 'inference' = pretrained statistics in training and
                         # evaluation; 'adapt' = batch statistics in training,
                         # running statistics follow the target data.
                         frozen_norm='adapt',
                         # >0: a leaf's learning rate ramps up over its first
                         # trained steps (re-warmup after an unfreeze).
                         rewarmup_steps=0)
  # hd95: 'max' of the two directed 95th percentiles (MONAI) or 'pooled'
  # (medpy). norm_check: score every run again with its BatchNorm statistics
  # re-estimated on the training images (summary.json 'norm_check').
  config.evaluation = dict(hd95='max', norm_check=True)
  config.experiments = {name: dict(rules=rules, init=init)
                        for name, (rules, init) in EXPERIMENTS.items()}
  # Axes crossed with the experiments; an empty tuple means the single value
  # of the field above (finetune.learning_rate, ..., seed).
  config.grid = dict(seed=(0, 1, 2), learning_rate=(), weight_decay=(), steps=(),
                     batch_size=(), frozen_norm=(), fold=())
  config.only = ''  # comma-separated experiment names; empty = all
  # How a bundle runs: 'auto' times the candidates on this hardware and keeps
  # the fastest; or one of static, per_experiment, sequential, vmap,
  # vmap_matmul, sharded_sequential, sharded_vmap (unet_jax/engine/strategies.py).
  config.strategy = 'auto'
  config.max_bundle = 0  # most experiments per compiled program; 0 = no cap
  # JAX's persistent compilation cache: reruns skip compiling ('' = off).
  config.compilation_cache = '~/.cache/unet_jax/jax'

  config.chunk_steps = 20  # steps between host updates (progress, metrics)
  # Steps between checkpoints of a bundle's state (rounded up to whole
  # chunks); 0 = only when stopped by SIGTERM/SIGINT. A rerun resumes.
  config.checkpoint_every = 40
  # 'scan': a chunk is one lax.scan; 'host': a jitted step per call; 'auto':
  # host on CPU (XLA:CPU runs conv-heavy scan bodies 14x slower), scan else.
  config.loop = 'auto'
  config.bootstrap_samples = 2000

  if arg == 'tiny':
    config.image_size = 32
    config.model.base_width = 4
    config.model.depth = 2
    config.pretrain.num_images = 32
    config.pretrain.steps = 4
    config.data.num_images = 16
    config.finetune.steps = 4
    config.chunk_steps = 2
    config.checkpoint_every = 2
    config.bootstrap_samples = 200
  elif arg:
    raise ValueError(f"unknown variant {arg!r} of configs/default.py; valid: 'tiny'")
  return config
