"""Data generators: images per second, compile excluded, and compile time.

For each source and size: the batch program is traced and compiled (timed
alone: the compile column), run once to warm up, then timed over
``--repeats`` batches. A machine shared with other jobs only ever slows a
run down, so the best repeat is the figure (the median is printed beside
it). A last column times the public call, ``num`` images through
``make_dataset`` (fixed-size batches, copies to numpy), compiled beforehand.

Prints a table and ends with one JSON line holding every figure.

  python benchmarks/data_speed.py                          # 3 sources at 128 px, ~1 min on 2 cores
  python benchmarks/data_speed.py --sizes=64,128,256 --sources=ultrasound
"""

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from unet_jax import data
from unet_jax.data import chest_xray, dead_leaves, fields, ultrasound

# source -> (its one-image function, its spec for a size)
GENERATORS = {
    'ultrasound': (ultrasound.breast_image, lambda size: ultrasound.BreastScan(size=size)),
    'dead_leaves': (dead_leaves.dead_leaves_image,
                    lambda size: dead_leaves.DeadLeaves(size=size)),
    'chest_xray': (chest_xray.chest_image, lambda size: chest_xray.ChestXray(size=size)),
}


def measure(source, size, batch, repeats, num):
  """Figures for one source and size: compile s, images/s (best, median), API images/s."""
  image_fn, make_spec = GENERATORS[source]
  jax.clear_caches()
  fields.batch_program.cache_clear()
  key = jax.random.key(0)
  start = time.perf_counter()
  program = fields.batch_program(image_fn, make_spec(size)).lower(
      key, jnp.arange(batch)).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(program(key, jnp.arange(batch)))
  seconds = []
  for r in range(repeats):
    indices = jnp.arange((r + 1) * batch, (r + 2) * batch)
    start = time.perf_counter()
    jax.block_until_ready(program(key, indices))
    seconds.append(time.perf_counter() - start)
  data.make_dataset(source, num, size, seed=0)  # compiles make_dataset's program
  api = []
  for r in range(api_repeats(repeats)):
    start = time.perf_counter()
    data.make_dataset(source, num, size, seed=r)
    api.append(time.perf_counter() - start)
  return dict(compile_s=compile_s, images_per_s=batch / min(seconds),
              median_images_per_s=batch / statistics.median(seconds),
              api_images_per_s=num / min(api))


def api_repeats(repeats):
  return max(1, repeats // 3)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sources', default='ultrasound,dead_leaves,chest_xray')
  parser.add_argument('--sizes', default='128')
  parser.add_argument('--batch', type=int, default=64,
                      help='images per batch program (make_dataset uses 64)')
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--num', type=int, default=256, help='images per make_dataset call')
  args = parser.parse_args()
  sources = args.sources.split(',')
  sizes = [int(s) for s in args.sizes.split(',')]
  if args.repeats < 1:
    parser.error('--repeats must be at least 1')

  figures, rows = {}, []
  for source in sources:
    for size in sizes:
      result = measure(source, size, args.batch, args.repeats, args.num)
      figures[f'{source}_{size}'] = result
      rows.append((source, size, result))
      print(f'{source} {size}: {result["images_per_s"]:.0f} images/s', flush=True)

  print(f'\nbest of {args.repeats} batches (median beside it); compile = trace + XLA compile '
        f'of the batch program; make_dataset: {args.num} images, best of '
        f'{api_repeats(args.repeats)}, compiled beforehand')
  print(f'{"source":<12} {"size":>5} {"batch":>6} {"images/s":>9} {"(median)":>9} '
        f'{"compile s":>10} {"make_dataset img/s":>19}')
  for source, size, r in rows:
    print(f'{source:<12} {size:>5} {args.batch:>6} {r["images_per_s"]:>9.0f} '
          f'{r["median_images_per_s"]:>9.0f} {r["compile_s"]:>10.2f} '
          f'{r["api_images_per_s"]:>19.0f}')
  figures.update(batch=args.batch, repeats=args.repeats, num=args.num,
                 backend=jax.default_backend(), devices=jax.device_count(),
                 device_kind=jax.devices()[0].device_kind, machine=platform.machine(),
                 processor=platform.processor(), jax=jax.__version__)
  print(json.dumps(figures))


if __name__ == '__main__':
  main()
