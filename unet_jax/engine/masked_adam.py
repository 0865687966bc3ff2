"""Adam whose freeze mask, learning rate and weight decay are data, not structure.

``optax.partition`` needs static labels, so every layer subset compiles its
own program. Here the mask is a tree of 0/1 scalars (one per parameter leaf)
passed at each update, so experiments that differ only in what they freeze,
in a gradual schedule, or in learning rate / weight decay share one compiled
program and can be stacked on an experiment axis.

Semantics, chosen so that a frozen leaf's whole state is what the static
``optax.partition`` + ``set_to_zero`` path gives:

- a frozen leaf gets a zero update (selected with ``where``, so even a NaN
  gradient cannot leak into it) and its moments do not move;
- each leaf counts the steps it was trained (``count`` is per leaf), and the
  bias correction uses that count. A block unfrozen at step k therefore
  starts like a fresh Adam (moments 0, count 0) instead of taking a step
  ~3x too large from moments bias-corrected with count k;
- with ``rewarmup_steps > 0`` a leaf's learning rate ramps linearly over its
  first ``rewarmup_steps`` trained steps, the optional re-warmup after an
  unfreeze (it also warms up the start of training).

For leaves that are always trained the formulas are those of ``optax.adam``
(or ``optax.adamw``); the bias corrections are applied as reciprocals computed
once for all leaves, so results agree with optax to float32 rounding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class MaskedAdamState(NamedTuple):
  count: PyTree  # int32 scalar per leaf: steps this leaf has been trained
  mu: PyTree
  nu: PyTree


def masked_adam(*, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                rewarmup_steps: int = 0) -> optax.GradientTransformationExtraArgs:
  """Adam with a data mask, as an optax transformation taking extra args.

  A factory in optax's style: ``update_fn`` is most of its length, the Adam
  arithmetic per leaf with its three cases (frozen at compile time, trained
  at compile time, masked by data).

  ``update(grads, state, params, *, mask, learning_rate, weight_decay,
  lr_scale=None, l2sp=None, anchor=None)``: ``mask`` is a tree like
  ``params`` of 0/1 (or bool) scalars, or of Python bools known at trace
  time (then frozen leaves cost nothing and trained ones skip the selects;
  the arithmetic is the same); learning rate and weight decay are scalars
  that may be traced. ``lr_scale``, a tree of scalars like ``params``,
  multiplies each leaf's learning rate (layer-wise rates, Auto-RGN).
  ``l2sp`` (a scalar) with ``anchor`` (a tree like ``params``) adds L2-SP's
  pull toward the anchor, decoupled from the gradient as AdamW's decay is:
  the update of a trained leaf is ``-rate * (adam + weight_decay * p +
  l2sp * (p - anchor))``. Keyword-only because a mask
  passed where the learning rate goes would silently train everything.
  Chains with other transformations (``optax.chain`` passes the extra args
  on to it); it must come last, since its output is the update itself
  (scaled by the learning rate and negated).

  Example::

    tx = masked_adam()
    state = tx.init(params)
    updates, state = tx.update(grads, state, params, mask=mask, learning_rate=1e-3,
                               weight_decay=0.0)
    params = jax.tree.map(jnp.add, params, updates)
    # or clipped first:
    tx = optax.chain(optax.clip_by_global_norm(1.0), masked_adam())
  """

  def init_fn(params) -> MaskedAdamState:
    zeros = jax.tree.map(jnp.zeros_like, params)
    count = jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params)
    return MaskedAdamState(count, zeros, jax.tree.map(jnp.zeros_like, params))

  def update_fn(grads, state: MaskedAdamState, params=None, *, mask, learning_rate,
                weight_decay, lr_scale=None, l2sp=None, anchor=None, **extra_args):
    del extra_args  # meant for other transformations of a chain
    if params is None:
      raise ValueError('masked_adam needs params (for weight decay)')
    treedef = jax.tree.structure(grads)
    grad_leaves, counts, mus, nus, param_leaves, masks = (
        treedef.flatten_up_to(t) for t in (grads, state.count, state.mu, state.nu, params,
                                           mask))
    scales = None if lr_scale is None else treedef.flatten_up_to(lr_scale)
    anchors = None if l2sp is None else treedef.flatten_up_to(anchor)
    live = [i for i, m in enumerate(masks) if m is not False]
    # The per-leaf scalars (bias corrections, re-warmup factor) as one vector
    # op: computed leaf by leaf they were ~160 tiny kernels, a sixth of the
    # step program XLA:CPU compiled.
    if live:
      trained = jnp.stack([counts[i] for i in live]) + 1
      inverse1, inverse2 = 1 / (1 - b1 ** trained), 1 / (1 - b2 ** trained)
      rates = jnp.broadcast_to(learning_rate, trained.shape)
      if rewarmup_steps:
        rates = rates * jnp.minimum(1.0, trained / rewarmup_steps)
      if scales is not None:
        rates = rates * jnp.stack([jnp.asarray(scales[i], rates.dtype) for i in live])
    out, slot = [], {i: j for j, i in enumerate(live)}
    for i, (g, count, mu, nu, p, m) in enumerate(zip(grad_leaves, counts, mus, nus,
                                                       param_leaves, masks)):
      if m is False:  # frozen at compile time: no work, the state passes through
        out.append((jnp.zeros_like(p), count, mu, nu))
        continue
      j = slot[i]
      new_mu = (1 - b1) * g + b1 * mu
      new_nu = (1 - b2) * (g * g) + b2 * nu
      new_count = count + 1
      mu_hat = new_mu * inverse1[j].astype(g.dtype)
      nu_hat = new_nu * inverse2[j].astype(g.dtype)
      u = mu_hat / (jnp.sqrt(nu_hat + 0.0) + eps)
      u = u + weight_decay * p
      if anchors is not None:
        u = u + l2sp * (p - anchors[i])
      u = -rates[j] * u
      if m is True:
        out.append((u, new_count, new_mu, new_nu))
        continue
      m = jnp.asarray(m).astype(bool)
      out.append((jnp.where(m, u, jnp.zeros_like(u)), jnp.where(m, new_count, count),
                  jnp.where(m, new_mu, mu), jnp.where(m, new_nu, nu)))
    updates, count, mu, nu = (jax.tree.unflatten(treedef, parts) for parts in zip(*out))
    return updates, MaskedAdamState(count, mu, nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def apply_masked(params, updates, mask):
  """params + updates on trained leaves; frozen leaves are returned as they are.

  A Python-bool mask leaf selects at trace time: a frozen leaf is returned as
  the very same array.
  """
  def leaf(p, u, m):
    if isinstance(m, bool):
      return p + u if m else p
    return jnp.where(jnp.asarray(m).astype(bool), p + u, p)
  return jax.tree.map(leaf, params, updates, mask)
