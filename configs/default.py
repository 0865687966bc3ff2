"""Default sweep: which layers to fine-tune, on simulated breast ultrasound.

Pretrains a U-Net (base 8, depth 4, BatchNorm) for 400 steps on built-in
dead-leaves salient-object images (natural-image-like), then fine-tunes it on
88 simulated breast-ultrasound images under eight layer subsets x 3 seeds
(frozen blocks' BatchNorm: 'adapt'), each to convergence: validation Dice on
48 more images every 20 steps, stop after 4 evaluations without a gain of
0.005 or at 300 steps, the best-validation network kept; evaluates each run
on 64 held-out images.

Command:    python launch/sweep.py
Variants:   python launch/sweep.py --config=configs/default.py:tiny  (seconds;
            what the tests run)
Overrides:  --config.finetune.steps=600 --config.finetune.epochs=40
            --config.finetune.patience=0 (every run to the cap)
            --config.only=full,contracting --config.finetune.frozen_norm=inference
            --config.data.folds=5
ResNet:     --config.model.encoder=resnet34 --config.pretrain.source=torchvision
            --config.pretrain.weights=resnet34.pth  (ImageNet encoder, no
            pretraining steps; image_size a multiple of 32; not yet timed);
            efficientnet_b0..b4 the same way (README "EfficientNet encoders")
Time:       6 min 41 s on a 2-core CPU with no accelerator, fresh work
            directory and no compilation cache (2026-12-07, README; the
            previous default, 80 fixed steps at base 16, took 6 min 38 s on
            the same machine).
Result:     a table sorted by test Dice with the seed spread and the median
            best/stop steps (full 0.90, contracting 0.89, scratch 0.87,
            expanding 0.83, shallow 0.81, deep 0.76, last 0.72, head 0.46; 21
            of 24 runs converged, 1 scratch and 2 shallow runs at the cap) and
            report.md: train full; contracting and scratch not shown worse (MCB); F1
            holds (+0.059 [+0.012, +0.107]), F3 holds, F5 does not hold,
            F2/F4/F6 need configs/paper.py.
"""

import ml_collections

from unet_jax import augment

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
  # depth), 'resnet18' | 'resnet34' | 'resnet50' (a torchvision ResNet
  # encoder; unet_jax/resnet.py) or 'efficientnet_b0' .. 'efficientnet_b4'
  # (unet_jax/efficientnet.py): image_size a multiple of 32, with smp's U-Net
  # decoder whose five blocks dec5..dec1 have decoder_channels.
  config.model = dict(base_width=8, depth=4, norm='batch', group_size=8,
                      bn_momentum=0.9, in_channels=1, encoder='unet',
                      decoder_channels=(256, 128, 64, 32, 16))
  # source: dead_leaves (built in), a real saliency set read from root,
  # e.g. source='folder', root='~/data/DUTS-TR' (XPIE, DUTS, MSRA10K), or
  # 'oxford_iiit_pet' from TFDS (downloaded on first use; root = data_dir).
  # source='torchvision' (a ResNet or EfficientNet encoder): no pretraining
  # steps, the encoder comes from weights, a torchvision or timm state dict (.pth) or a
  # .safetensors file; grey: 'sum' (the stem's RGB filters summed for grey
  # input) or 'repeat' (needs in_channels=3).
  config.pretrain = dict(source='dead_leaves', num_images=1024, steps=400,
                         batch_size=8, learning_rate=1e-3, weight_decay=0.0, root='',
                         weights='', grey='sum')
  # val_fraction: share of the training images held out to score validation
  # Dice after every chunk (curves, TensorBoard, convergence speed).
  # source: a built-in generator (ultrasound, chest_xray, dead_leaves, and
  # cardiac: three structures, cavity, wall and atrium) with num_images, or a
  # real set (busi, udiat_b, montgomery, jsrt_scr, folder) read from root,
  # all of its images (unet_jax/data/real). on_bad='skip' leaves out
  # unusable image/mask pairs (reported) instead of stopping.
  # folds >= 2: k-fold cross-validation instead of one hold-out split (every
  # image tested once per seed; test_fraction is then unused), crossed with
  # the experiments through grid.fold. split_per_seed=True: every seed draws
  # its own stratified split (its own fold partition with folds >= 2), so a
  # seed replicates the data split as well as the training (Bouthillier et
  # al. 2021) and the statistics are about the data set, not one test set
  # (README "What a replicate covers"); False: every seed shares one split.
  # empty_masks: images whose mask is empty (BUSI's 'normal' class) are
  # 'keep' (scored by the empty-mask convention and as detection in the
  # report), or left 'out_of_training', 'out_of_test' or 'out' of both.
  # intensity: the network's input, 'unit' (grey values in [0, 1]),
  # 'zscore' (each image standardised, nnU-Net's default for non-CT images) or
  # 'imagenet' (torchvision's normalisation: use it with pretrain.source=
  # 'torchvision'), for pretraining and target images alike; export's predict
  # applies it.
  # structures: '' for a built-in source's own or a real set's binary masks;
  # for label maps of several structures their names in label order,
  # 'cavity,wall,atrium' (pixel values 1, 2, 3) or 'cavity=1,wall=2,atrium=4'
  # (a 'folder' set may hold one binary mask per structure in masks/<name>/;
  # README "Several structures"). resize: how real images become squares,
  # 'stretch' (aspect not kept) or 'pad' (aspect kept, centred on black).
  config.data = dict(source='ultrasound', num_images=200, test_fraction=0.32,
                     val_fraction=0.35, folds=0, split_per_seed=False, root='',
                     on_bad='error', empty_masks='keep', intensity='unit', structures='',
                     resize='stretch')
  # Every run trains until validation Dice (scored every chunk_steps) has not
  # improved by more than min_delta for patience evaluations, or to the step
  # cap: steps, or epochs of the training images when epochs > 0. Its result
  # is the network of its best validation Dice (unet_jax/engine/stopping.py).
  # patience=0 trains every run to the cap (and still keeps the best).
  config.finetune = dict(steps=300, epochs=0, patience=4, min_delta=0.005,
                         batch_size=8, learning_rate=3e-3,
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
                     batch_size=(), frozen_norm=(), fold=(), augment=())
  # Training-time augmentation (unet_jax/augment.py, README "Augmentation"):
  # the policy every run trains with, or several crossed through grid.augment
  # (they share one compiled program: a policy is numbers in the step).
  # 'flip': a lateral flip half the time (what every sweep did before
  # policies); 'none'; 'nnunet': nnU-Net's 2D transforms (rotation at most 15
  # degrees, no elastic deformation). Every field of every policy is here
  # (--config.augmentation.nnunet.rotate_deg=30); a new name adds a policy.
  config.augment = 'flip'
  config.augmentation = {name: dict(zip(augment.NAMES, augment.values(fields)))
                         for name, fields in augment.POLICIES.items()}
  config.only = ''  # comma-separated experiment names; empty = all
  # A race instead of a fixed number of seeds (configs/race.py, README "The
  # race"): every strategy gets n0 replicates (seeds), then only the survivors
  # get more, until one is left (Kim & Nelson 2001: it is within delta Dice of
  # the best with probability 1 - alpha) or max_replicates is reached.
  # metric: 'dice', or with several structures 'dice:<structure>' for one.
  config.race = dict(enabled=False, delta=0.02, alpha=0.05, n0=5, per_round=1,
                     max_replicates=15, metric='dice')
  # How a bundle runs: 'auto' times the candidates on this hardware and keeps
  # the fastest; or one of static, per_experiment, sequential, vmap,
  # vmap_matmul, sharded_sequential, sharded_vmap (unet_jax/engine/executors.py).
  config.executor = 'auto'
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
