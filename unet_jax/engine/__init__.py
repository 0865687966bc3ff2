"""The bundle engine: many experiments trained as one compiled program.

- ``experiment``: one experiment, what the engine trains;
- ``step``: one experiment's training step with masks, policy and data as data;
- ``masked_adam``: Adam with the freeze mask, learning rate and weight decay as data;
- ``executors``: mapping the step over the experiment axis (vmap, lax.map, shard_map);
- ``loops``: a chunk of steps as one ``lax.scan`` or a step called from Python;
- ``per_experiment``: the ``static`` and ``per_experiment`` executors, experiment by experiment;
- ``execution``: compile options, CPU worker threads, splitting and placing a bundle;
- ``autotune``: timing the executors on the hardware at hand;
- ``run``: a bundle from restore through the chunk loop to its results (``run_bundle``);
- ``resume``: bundle checkpoints and stop signals;
- ``distributed``: several processes, gathering, who writes;
- ``choices``: the names of executors and loops (no JAX).
"""
