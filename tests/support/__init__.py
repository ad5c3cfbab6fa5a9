"""Harnesses the tests (and benchmarks) share: origins, swarms of child services,
registries, a manager, and the one way to wait."""
