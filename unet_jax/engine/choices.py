"""Names of the engine's choices, without JAX, for settings and readers."""

# How a bundle runs (unet_jax.engine.executors, .per_experiment).
EXECUTORS = ('static', 'per_experiment', 'sequential', 'vmap', 'vmap_matmul',
              'sharded_sequential', 'sharded_vmap')
SHARDED = ('sharded_sequential', 'sharded_vmap')
# Those that train a whole bundle as one program, whose shape is the bundle's size.
BATCHED = ('sequential', 'vmap', 'vmap_matmul', 'sharded_sequential', 'sharded_vmap')
# How a chunk of steps runs (unet_jax.engine.loops.resolve_loop).
LOOPS = ('auto', 'scan', 'host')
