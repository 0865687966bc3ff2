"""How scores are defined where tools differ: empty masks and HD95 (no JAX).

Recorded with every result (``summary.json``) and stated in the report;
``unet_jax.metrics`` implements them.
"""

# The per-image scores, per structure and averaged (unet_jax.metrics.score_masks).
METRICS = ('dice', 'iou', 'hd95', 'assd')

EMPTY_MASK_CONVENTION = ('dice/iou: both empty -> 1.0, one empty -> 0.0; '
                         'hd95/assd: either empty -> NaN (excluded from means, counted)')

HD95_CONVENTIONS = {
    'max': 'max of the two directed 95th percentiles (MONAI, the default)',
    'pooled': '95th percentile of both directions pooled (medpy)',
}
