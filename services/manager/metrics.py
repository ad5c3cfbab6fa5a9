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
from damselfly.services.runtime.metrics import by_label, registry_of


class ManagerCollector(Collector):
    def __init__(self, projector: Projector | None, publisher: Publisher | None) -> None:
        self._projector, self._publisher = projector, publisher

    def collect(self) -> Iterator[Metric]:
        stats = self._projector.stats if self._projector is not None else {}
        yield by_label(CounterMetricFamily, "damselfly_manager_events_projected",
                       "Events applied to the projections, by stream", "stream",
                       {stream: s.acked for stream, s in stats.items()})
        yield by_label(CounterMetricFamily, "damselfly_manager_events_dead_lettered",
                       "Events the projections skipped to the dead-letter subject", "stream",
                       {stream: s.dead for stream, s in stats.items()})
        yield by_label(GaugeMetricFamily, "damselfly_manager_consumer_lag",
                       "Events stored beyond the projections' last fetch", "stream",
                       {stream: s.pending for stream, s in stats.items()})
        yield by_label(CounterMetricFamily, "damselfly_manager_events_published",
                       "Events the streams acked, by stream", "stream",
                       self._publisher.published if self._publisher is not None else {})


def manager_registry(projector: Projector | None,
                     publisher: Publisher | None) -> CollectorRegistry:
    return registry_of(ManagerCollector(projector, publisher))
