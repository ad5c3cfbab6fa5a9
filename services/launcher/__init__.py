"""``damselfly up`` and ``damselfly demo``: the whole cluster on one machine, with its
embedded ``nats-server``, and the demo's local origin."""
