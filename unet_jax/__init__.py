"""unet_jax: which layers of a pretrained U-Net to fine-tune, as sweeps in JAX.

``unet_jax.predict`` and ``unet_jax.export_experiment`` are loaded on first
use, so that reading results (``unet_jax.compare``) needs no JAX.
"""

__all__ = ['export_experiment', 'predict']


def __getattr__(name):
  if name in __all__:
    from unet_jax import export  # noqa: PLC0415 - JAX and orbax only when asked for
    return getattr(export, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
