"""The manager's Prometheus metrics at ``/metrics``: its projections' progress per stream
and the events it published, read at each scrape (``prometheus_client`` writes the
exposition)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from damselfly.events.bus import Publisher
from damselfly.projections.projector import Projector


class ManagerCollector(Collector):
    def __init__(self, projector: Projector | None, publisher: Publisher | None) -> None:
        self._projector, self._publisher = projector, publisher

    def collect(self) -> Iterator[Metric]:
        projected = CounterMetricFamily("damselfly_manager_events_projected",
                                        "Events applied to the projections, by stream",
                                        labels=["stream"])
        dead = CounterMetricFamily("damselfly_manager_events_dead_lettered",
                                   "Events the projections skipped to the dead-letter subject",
                                   labels=["stream"])
        lag = GaugeMetricFamily("damselfly_manager_consumer_lag",
                                "Events stored beyond the projections' last fetch",
                                labels=["stream"])
        stats = self._projector.stats if self._projector is not None else {}
        for stream, s in sorted(stats.items()):
            projected.add_metric([stream], s.acked)
            dead.add_metric([stream], s.dead)
            lag.add_metric([stream], s.pending)
        yield from (projected, dead, lag)
        published = CounterMetricFamily("damselfly_manager_events_published",
                                        "Events the streams acked, by stream", labels=["stream"])
        if self._publisher is not None:
            for stream, n in sorted(self._publisher.published.items()):
                published.add_metric([stream], n)
        yield published


def manager_registry(projector: Projector | None,
                     publisher: Publisher | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ManagerCollector(projector, publisher))
    return registry
