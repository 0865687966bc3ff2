"""unet_jax: which layers of a pretrained U-Net to fine-tune, as sweeps in JAX.

Where things are:

- ``model`` (the U-Net with named blocks), ``freeze`` (rules, presets,
  BatchNorm policies), ``schedules`` (gradual unfreezing), ``block_order``
  (shallow to deep), ``losses``, ``metrics``, ``conventions``, ``data``;
- ``engine``: many experiments as one compiled program;
- ``sweep``: settings, grid, work directory, records, the run, export;
- ``analysis``: results, run-aware statistics, findings, the report (no JAX);
- ``files``: files written whole or not at all.

``unet_jax.predict``, ``unet_jax.segment`` and ``unet_jax.export_experiment`` are loaded on first
use, so that reading results (``unet_jax.analysis``) needs no JAX.
"""

__all__ = ['export_experiment', 'predict', 'segment']


def __getattr__(name):
  if name in __all__:
    from unet_jax.sweep import export  # noqa: PLC0415 - JAX and orbax only when asked for
    return getattr(export, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
