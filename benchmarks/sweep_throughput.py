"""Sweep throughput: experiment-steps per second, compile included, per executor.

Runs a sweep of N layer-subset experiments x S steps at the default model
size (U-Net base 16, depth 4, BatchNorm, 64x64, batch 8), or on a ResNet
U-Net (``--encoder=resnet34 --decoder_channels=256,128,64,32,16``), and
measures:

- baseline: what a user would write, one experiment at a time, each with its
  own jit and a static ``optax.partition`` freeze (``tests/reference_trainer.py``), timed
  first and again last, the faster run counting;
- each bundle executor forced (``unet_jax.engine.choices.EXECUTORS``);
- auto: the autotuner's timing plus the run with its choice;
- optionally (``--torch``) the same U-Net in a plain PyTorch loop, one
  experiment at a time, for the gap to the peer a user would reach for.
- optionally (``--largest_bundle=N``) the largest bundle that fits memory:
  the automatic choice's executor, doubling the bundle until it runs out of
  memory (or reaches N experiments, or the time budget).

Prints a table and ends with one JSON line holding every figure.

  python benchmarks/sweep_throughput.py                      # 8 x 60, ~5 min on 2 CPU cores
  python benchmarks/sweep_throughput.py --experiments=16 --steps=200 --largest_bundle=1024
                                                             # an accelerator
  python benchmarks/sweep_throughput.py --encoder=resnet34 --image_size=64
                                                             # the ResNet U-Net
  python benchmarks/sweep_throughput.py --encoder=efficientnet_b0 --image_size=64
"""

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np
import tqdm

from unet_jax import data, decoder
from unet_jax.encoders import ENCODERS, UNET, layout
from unet_jax.engine import autotune
from unet_jax.engine.experiment import Experiment
from unet_jax.engine.run import BundleData, RunOptions, Weights, run_bundle
from unet_jax.engine.step import BundleContext
from unet_jax.errors import UserError
from unet_jax.freeze import freeze_labels, norm_masks
from unet_jax.model import UNetSpec, init_model
from unet_jax.schedules import parse_schedule

# The baseline a user would write lives with the tests that hold the engine to it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
from reference_trainer import init_state, make_optimizer, make_train_chunk  # noqa: E402

# Every preset that trains something and needs no adapters (model.adapter_rank).
# The paper's layer subsets, the mix every earlier row of BENCHMARKS.md used.
SUBSETS = ('full', 'contracting', 'expanding', 'shallow', 'deep', 'last', 'head')
# --mix=strategies: one experiment of each fine-tuning strategy, in turn
# (name, rules, Experiment strategy fields); README "Fine-tuning strategies".
STRATEGY_MIX = (
    ('full', 'full', {}),
    ('l2sp', 'full', {'l2sp': 1.0}),
    ('auto_rgn', 'full', {'lr_scaling': 'rgn'}),
    ('layer_decay', 'full', {'layer_decay': 0.8}),
    ('encoder_lr', (('enc.*|bottleneck', 0.1), ('.*', 'train')), {}),
    ('bitfit_head', 'bitfit_head', {}),
    ('norm_head', 'norm_head', {}),
    ('lp_ft', {'lp_ft': 0.5}, {}),
)


def experiments(n, steps, spec, batch, mix='subsets'):
  """n experiments cycling through the mix; seeds differ, so none is a copy."""
  out = []
  for i in range(n):
    if mix == 'subsets':
      name, rules, fields = SUBSETS[i % len(SUBSETS)], SUBSETS[i % len(SUBSETS)], {}
    else:
      name, rules, fields = STRATEGY_MIX[i % len(STRATEGY_MIX)]
    out.append(Experiment(f'{name}-{i}', name, parse_schedule(rules, layout(spec), steps),
                          'pretrained', i, 1e-3, 0.0, steps, batch, 'adapt', **fields))
  return out


def run_alone(exps, spec, weights, images, masks, chunk):
  """Each experiment trained by itself, its own jit (the static executor on a bundle of
  one: its freeze compiled in): the one-at-a-time baseline of executors the
  optax.partition reference cannot express (L2-SP, Auto-RGN, layer-wise rates)."""
  start = time.perf_counter()
  for e in exps:
    run_executor('static', [e], spec, weights, images, masks, chunk)
  return time.perf_counter() - start


def run_baseline(exps, spec, weights, images, masks, chunk):
  jax.clear_caches()  # every run pays its own compiles
  graphdef = init_model(spec, 0)[0]
  start = time.perf_counter()
  for e in exps:
    rules = e.schedule.stages[0]
    optimizer = make_optimizer(freeze_labels(weights.params, rules), e.learning_rate)
    norm = norm_masks(weights.stats, weights.params, rules, e.frozen_norm)
    train_chunk = make_train_chunk(graphdef, optimizer, norm.update, e.batch_size,
                                   running=norm.running)
    state = init_state(weights.params, weights.stats, optimizer)
    key = jax.random.key(e.seed)
    for _ in range(e.steps // chunk):
      state, losses = train_chunk(state, images, masks, key, num_steps=chunk)
    jax.block_until_ready(losses)
  return time.perf_counter() - start


def run_executor(executor, exps, spec, weights, images, masks, chunk):
  jax.clear_caches()  # every run pays its own compiles
  ctx = BundleContext(spec, exps[0].batch_size)
  bar = tqdm.tqdm(disable=True)
  start = time.perf_counter()
  result = run_bundle(ctx, exps, [weights] * len(exps),
                      BundleData(images, masks, [np.arange(len(images))] * len(exps)),
                      RunOptions(executor, 'auto', chunk), bar=bar)
  return time.perf_counter() - start, result.report


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def largest_bundle(executor, spec, weights, images, masks, *, start, cap, batch,
                   seconds):
  """Doubles the bundle from ``start`` until it no longer fits memory.

  Each size compiles and trains ``executor`` for 2 steps. Stops at ``cap``
  experiments or once ``seconds`` are spent. Returns (largest that ran,
  the first size that ran out of memory or None, [(size, outcome, seconds)]).
  """
  largest, failed, trials, began, n = 0, None, [], time.perf_counter(), start
  while n <= cap and time.perf_counter() - began < seconds:
    tried = time.perf_counter()
    try:
      run_executor(executor, experiments(n, 2, spec, batch), spec, weights, images, masks, 2)
    except Exception as e:  # noqa: BLE001 - out of memory is the answer sought
      if not is_out_of_memory(e):
        raise
      trials.append((n, 'out of memory', time.perf_counter() - tried))
      failed = n
      break
    trials.append((n, 'ran', time.perf_counter() - tried))
    largest, n = n, n * 2
  return largest, failed, trials


def run_torch(n, steps, spec, size, batch):
  import torch
  from torch import nn

  def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

  class UNet(nn.Module):
    def __init__(self):
      super().__init__()
      w = [spec.base_width * 2 ** i for i in range(spec.depth + 1)]
      self.enc = nn.ModuleList([block(1 if i == 0 else w[i - 1], w[i])
                                for i in range(spec.depth)])
      self.bottleneck = block(w[-2], w[-1])
      self.up = nn.ModuleList([nn.ConvTranspose2d(w[i + 1], w[i], 2, 2)
                               for i in reversed(range(spec.depth))])
      self.dec = nn.ModuleList([block(2 * w[i], w[i]) for i in reversed(range(spec.depth))])
      self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x):
      skips = []
      for enc in self.enc:
        x = enc(x)
        skips.append(x)
        x = nn.functional.max_pool2d(x, 2)
      x = self.bottleneck(x)
      for up, dec in zip(self.up, self.dec):
        x = dec(torch.cat([up(x), skips.pop()], 1))
      return self.head(x)

  x = torch.rand(batch, 1, size, size)
  y = (x > 0.5).float()
  start = time.perf_counter()
  for _ in range(n):
    model = UNet()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(steps):
      opt.zero_grad()
      loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
      loss.backward()
      opt.step()
  return time.perf_counter() - start


def model_spec(parser: argparse.ArgumentParser, args) -> UNetSpec:
  """The network of the flags; a pyramid U-Net's widths and image size checked."""
  if args.encoder == UNET:
    return UNetSpec(base_width=args.base_width, depth=4, norm='batch')
  if args.torch:
    parser.error('--torch times the paper U-Net only; leave it out with --encoder')
  try:
    channels = tuple(int(c) for c in args.decoder_channels.split(','))
    spec = UNetSpec(encoder=args.encoder, norm='batch', decoder_channels=channels)
    decoder.check_decoder(spec)
    decoder.check_image_size(spec, args.image_size)
  except (ValueError, UserError) as e:
    parser.error(str(e))
  return spec


def describe(spec: UNetSpec, args) -> str:
  if spec.encoder == UNET:
    return f'U-Net base {args.base_width}'
  return f'{spec.encoder} U-Net (decoder {"/".join(map(str, spec.decoder_channels))})'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--experiments', type=int, default=8)
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--chunk', type=int, default=20)
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--base_width', type=int, default=16, help='the paper U-Net\'s')
  parser.add_argument('--encoder', default=UNET, choices=ENCODERS,
                      help='unet: the paper U-Net (depth 4); resnet*, efficientnet_b*: smp U-Nets')
  parser.add_argument('--decoder_channels', default='256,128,64,32,16',
                      help='a ResNet U-Net\'s five decoder widths, comma-separated')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--mix', default='subsets', choices=('subsets', 'strategies'),
                      help='subsets: the paper\'s layer subsets; strategies: one of each '
                           'fine-tuning strategy (baseline: each alone, its own jit)')
  parser.add_argument('--executors', '--strategies', dest='executors', default='',
                      help='comma-separated; default: the autotuner candidates here')
  parser.add_argument('--torch', action='store_true', help='also time plain PyTorch')
  parser.add_argument('--largest_bundle', type=int, default=0,
                      help='also double the bundle (auto\'s executor) up to this many '
                           'experiments, until it runs out of memory; 0: off')
  parser.add_argument('--largest_bundle_seconds', type=float, default=120,
                      help='time budget for --largest_bundle')
  parser.add_argument('--baseline_runs', type=int, default=2,
                      help='time the baseline first and again last; the faster counts')
  args = parser.parse_args()

  spec = model_spec(parser, args)
  _, params, stats = init_model(spec, 0)
  weights = Weights(params, stats)
  ds = data.make_dataset('ultrasound', 96, args.image_size, 0)
  exps = experiments(args.experiments, args.steps, spec, args.batch_size, args.mix)
  baseline = run_baseline if args.mix == 'subsets' else run_alone
  baseline_label = ('baseline (one jit per experiment)' if args.mix == 'subsets' else
                    'baseline (each alone, own jit)')
  total = args.experiments * args.steps
  backend, devices = jax.default_backend(), jax.device_count()
  executors = (args.executors.split(',') if args.executors else
                autotune.candidate_executors(backend, devices, args.experiments))

  rows, figures = [], {}
  # The baseline runs first and, with --baseline_runs=2, once more at the
  # end: the faster of the two counts, so run order cannot favour the engine.
  seconds = baseline(exps, spec, weights, ds.images, ds.masks, args.chunk)
  figures['baseline_exp_steps_per_s'] = total / seconds
  figures['baseline_runs_s'] = [seconds]
  rows.append((baseline_label, seconds, total / seconds, 1.0))
  print(f'baseline: {seconds:.1f}s', flush=True)
  for executor in executors + ['auto']:
    try:
      seconds, report = run_executor(executor, exps, spec, weights, ds.images, ds.masks,
                                     args.chunk)
    except Exception as e:  # noqa: BLE001 - report and go on
      print(f'{executor}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}')
      figures[f'{executor}_exp_steps_per_s'] = None
      continue
    label = f'auto (chose {report.executor})' if executor == 'auto' else executor
    if executor == 'auto':
      figures['auto_choice'] = report.executor
    figures[f'{executor}_exp_steps_per_s'] = total / seconds
    rows.append((label, seconds, total / seconds,
                 (total / seconds) / figures['baseline_exp_steps_per_s']))
    print(f'{label}: {seconds:.1f}s', flush=True)
  if args.baseline_runs > 1:
    again = baseline(exps, spec, weights, ds.images, ds.masks, args.chunk)
    print(f'baseline again: {again:.1f}s', flush=True)
    figures['baseline_runs_s'].append(again)
    seconds = min(figures['baseline_runs_s'])
    figures['baseline_exp_steps_per_s'] = total / seconds
    rows[0] = (baseline_label, seconds, total / seconds, 1.0)
    rows[1:] = [(label, sec, rate, rate / figures['baseline_exp_steps_per_s'])
                for label, sec, rate, _ in rows[1:]]
  if args.torch:
    seconds = run_torch(args.experiments, args.steps, spec, args.image_size, args.batch_size)
    figures['torch_exp_steps_per_s'] = total / seconds
    figures['auto_over_torch'] = figures['auto_exp_steps_per_s'] / figures['torch_exp_steps_per_s']
    rows.append(('plain PyTorch loop', seconds, total / seconds,
                 (total / seconds) / figures['baseline_exp_steps_per_s']))

  if args.largest_bundle:
    executor = figures.get('auto_choice') or executors[0]
    largest, failed, trials = largest_bundle(
        executor, spec, weights, ds.images, ds.masks, start=args.experiments,
        cap=args.largest_bundle, batch=args.batch_size, seconds=args.largest_bundle_seconds)
    figures.update(largest_bundle=largest, largest_bundle_executor=executor,
                   first_out_of_memory=failed, largest_bundle_trials=trials)
    for n, outcome, sec in trials:
      print(f'bundle of {n} ({executor}): {outcome} in {sec:.1f}s', flush=True)
  if figures.get('auto_exp_steps_per_s'):
    figures['auto_over_baseline'] = (figures['auto_exp_steps_per_s']
                                     / figures['baseline_exp_steps_per_s'])
  print(f'\n{args.experiments} experiments x {args.steps} steps, {describe(spec, args)}, '
        f'{args.image_size}x{args.image_size}, batch {args.batch_size}; {backend} x{devices}')
  print(f'{"run":<36} {"seconds":>8} {"exp-steps/s":>12} {"vs baseline":>12}')
  for label, sec, rate, ratio in rows:
    print(f'{label:<36} {sec:>8.1f} {rate:>12.2f} {ratio:>11.2f}x')
  figures.update(
      mix=args.mix, experiments=args.experiments, steps=args.steps, image_size=args.image_size,
      base_width=args.base_width, encoder=spec.encoder,
      decoder_channels=list(spec.decoder_channels) if spec.encoder != UNET else None,
      batch_size=args.batch_size, backend=backend,
      devices=devices, device_kind=jax.devices()[0].device_kind,
      machine=platform.machine(), processor=platform.processor(), jax=jax.__version__)
  print(json.dumps(figures))


if __name__ == '__main__':
  main()
