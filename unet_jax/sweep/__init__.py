"""Sweeps: settings, the grid of experiments, the work directory, what is written, the run.

- ``settings``: a config validated once into :class:`SweepSettings` (``load_config``);
- ``grid``: config.experiments x config.grid expanded into runs, grouped into bundles;
- ``run``: plan, pretrain, train the bundles, score, write (``run_sweep``);
- ``evaluate``: scoring a trained network, the BatchNorm check;
- ``checkpoint``: weights as plain orbax checkpoints;
- ``export``: one experiment as a standalone model, ``predict`` on new images.

Where each file of a work directory lives (``unet_jax.workdir``) and the typed records a
sweep writes (``unet_jax.records``) are below both the sweep and the analysis, so the
analysis imports nothing of the sweep. ``run_sweep`` and ``load_config`` are loaded on
first use.
"""

_LAZY = {'run_sweep': 'unet_jax.sweep.run', 'load_config': 'unet_jax.sweep.settings',
         'SweepSettings': 'unet_jax.sweep.settings'}

__all__ = list(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    import importlib  # noqa: PLC0415
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
