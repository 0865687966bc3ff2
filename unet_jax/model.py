"""The functional core: networks as a graph definition plus pure-dict weights.

``init_model`` builds the network a ``UNetSpec`` describes with random
weights, through its encoder family (``unet_jax.encoders``: the paper's U-Net
in ``unet_jax.unet``, the ResNet U-Nets in ``unet_jax.resnet``), and returns a
graph definition plus two pure-dict pytrees (parameters and BatchNorm
statistics); ``apply_model`` runs the graph on them, so the same code can be
jitted, vmapped and sharded; ``predict`` segments in evaluation mode.

BatchNorm modes. In evaluation (``train=False``) every BatchNorm layer
normalises with its running statistics. In training each layer normalises
with the batch's statistics, unless ``running`` says otherwise for it: a tree
with one flag per BatchNorm layer (:func:`norm_layer_tree` of the statistics)
that is True where the layer normalises with its running statistics in
training too, as a frozen layer does under the ``inference`` policy of
``unet_jax.freeze.norm_masks``. A flag may be a Python bool (the other branch
is never built) or a traced 0/1 scalar (both are computed and one selected,
so experiments with different flags share one program).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from flax import nnx

from unet_jax import encoders, structures

# The names readers of networks use, from where they live.
from unet_jax.layers import BatchNorm, PyTree, merge_adapters, split_model  # noqa: F401
from unet_jax.spec import NORMS, UNetSpec  # noqa: F401
from unet_jax.unet import UNet  # noqa: F401


def init_model(spec: UNetSpec, seed: int) -> tuple[nnx.GraphDef, PyTree, PyTree]:
  """Builds the network ``spec`` describes with random weights; returns its functional parts.

  ``spec.encoder`` names the family that builds it (``encoders.family``): its module's
  ``init(spec, seed)`` draws the weights.
  """
  params, stats = encoders.network_module(spec.encoder).init(spec, seed)
  return model_graphdef(spec), params, stats


@functools.lru_cache(maxsize=32)
def model_graphdef(spec: UNetSpec) -> nnx.GraphDef:
  """The graph definition ``init_model`` returns, built without drawing any weights
  (tracing a ResNet U-Net takes about 0.5 s: built once per spec)."""
  network = encoders.network_module(spec.encoder).Network
  return split_model(nnx.eval_shape(lambda: network(spec, nnx.Rngs(0))))[0]


def adapter_limit(spec: UNetSpec) -> tuple[int, str]:
  """(largest rank every adapted kernel allows, the block that sets it): a rank-r update of
  a (kh kw cin) x cout kernel needs r <= min(kh kw cin, cout); (0, '') where
  ``spec.adapter_blocks`` adapts no convolution. Read off the network's shapes."""
  shapes = nnx.state(nnx.eval_shape(
      lambda: encoders.network_module(spec.encoder).Network(
          dataclasses.replace(spec, adapter_rank=1), nnx.Rngs(0))), nnx.Param)
  flat = dict(nnx.to_flat_state(shapes))
  limits = [(min(leaf.value.shape[0], flat[path[:-1] + ('lora_b',)].value.shape[1]), str(path[0]))
            for path, leaf in flat.items() if path[-1] == 'lora_a']
  return min(limits) if limits else (0, '')


def apply_model(graphdef: nnx.GraphDef, params: PyTree, stats: PyTree,
                images: jax.Array, *, train: bool, running: PyTree = None
                ) -> tuple[jax.Array, PyTree]:
  """Runs the U-Net functionally; returns (logits, new batch statistics).

  ``running`` (training only): per BatchNorm layer, whether it normalises
  with its running statistics (module docstring); None: none does.
  ``copy=True`` lets this run under ``vmap`` of ``value_and_grad``: without it
  the BatchNorm update raises ``TraceContextError``.
  """
  model = nnx.merge(graphdef, params, stats, copy=True)
  logits = model(images, train=train, running=running)
  _, _, new_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return logits, nnx.to_pure_dict(new_stats)


def norm_layer_tree(stats_like: PyTree) -> PyTree:
  """The statistics tree with each BatchNorm layer's {'mean', 'var'} as one leaf.

  Applied to a tree of per-statistic values shaped like the statistics, it
  keeps the layer's 'mean' value: the per-layer flags ``apply_model`` reads.
  """
  if isinstance(stats_like, dict) and 'mean' in stats_like and 'var' in stats_like:
    return stats_like['mean']
  if isinstance(stats_like, dict):
    return {k: norm_layer_tree(v) for k, v in stats_like.items()}
  return stats_like


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(graphdef, params, stats, images):
  logits, _ = apply_model(graphdef, params, stats, images, train=False)
  return structures.probabilities(logits)


def predict(graphdef, params, stats, images: np.ndarray, batch_size: int = 32
            ) -> np.ndarray:
  """Structure probabilities (N, H, W, K) in evaluation mode (K = 1: foreground;
  ``unet_jax.structures``).

  The last batch is padded to ``batch_size`` so one shape compiles once.
  """
  out = []
  for i in range(0, len(images), batch_size):
    chunk = images[i:i + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                             chunk.dtype)]) if pad else chunk
    out.append(np.asarray(_predict_batch(graphdef, params, stats, padded))
               [:len(chunk)])
  return np.concatenate(out)
