"""What the services' Prometheus collectors share: a family of one value per label, and a
registry of one service instance's own (``prometheus_client`` writes the exposition)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


def by_label(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, doc: str,
             label: str, values: Mapping[str, float]
             ) -> CounterMetricFamily | GaugeMetricFamily:
    """``name{label="<key>"} <value>`` for each of ``values``, in key order."""
    family = kind(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def registry_of(collector: Collector) -> CollectorRegistry:
    """A registry of its own for one collector, so several service instances in one
    process (the tests') never share a value."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return registry
