"""The imaging modality of each data source, a fact about the data sets (no JAX).

Findings that compare modalities (F4: ultrasound against X-ray) read it;
``Results.findings(domain_kinds=...)`` adds sources it does not know (a
``folder`` set is whatever it holds).
"""

MODALITIES = {
    # built-in generators
    'ultrasound': 'ultrasound', 'cardiac': 'ultrasound', 'chest_xray': 'xray',
    'dead_leaves': 'natural',
    # real sets (unet_jax.data.real), and names results of other tools may use
    'busi': 'ultrasound', 'udiat_b': 'ultrasound', 'udiat': 'ultrasound',
    'montgomery': 'xray', 'jsrt_scr': 'xray', 'jsrt': 'xray', 'xray': 'xray',
    'oxford_iiit_pet': 'natural',
}
