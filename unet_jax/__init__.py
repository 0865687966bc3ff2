"""unet_jax: which layers of a pretrained U-Net to fine-tune, as sweeps in JAX."""

from unet_jax.export import export_experiment, predict

__all__ = ['export_experiment', 'predict']
