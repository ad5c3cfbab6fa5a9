"""The daemon's Prometheus metrics (``/metrics`` on the local API and the upload server).

One collector reads the daemon's own counters at each scrape (``TransferStats``, the
storage's GC counts, the publisher's), and ``prometheus_client`` writes the exposition, so
several daemons in one process (the tests') never share a value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from damselfly.events.bus import Publisher
from damselfly.services.peer.storage import Storage
from damselfly.services.runtime.metrics import by_label, registry_of


@dataclass
class TransferStats:
    """The daemon's transfer counters; ``download_bytes`` and ``pieces_fetched`` by source
    kind (``peers``, or the origin's URL scheme)."""

    uploads_running: int = 0
    upload_bytes: int = 0  # on the wire: compressed, for a compressed answer
    upload_compressed: int = 0
    upload_responses: Counter[int] = field(default_factory=Counter)
    download_bytes: Counter[str] = field(default_factory=Counter)
    pieces_fetched: Counter[str] = field(default_factory=Counter)
    pieces_corrupt: int = 0

    def fetched(self, source: str, length: int) -> None:
        self.pieces_fetched[source] += 1
        self.download_bytes[source] += length


class DaemonCollector(Collector):
    def __init__(self, stats: TransferStats, storage: Storage,
                 publisher: Publisher | None) -> None:
        self._stats, self._storage, self._publisher = stats, storage, publisher

    def collect(self) -> Iterator[Metric]:
        stats, storage = self._stats, self._storage
        yield GaugeMetricFamily("damselfly_uploads_running", "Upload slots in use",
                                value=stats.uploads_running)
        yield CounterMetricFamily("damselfly_upload_bytes",
                                  "Piece bytes sent to children, as on the wire",
                                  value=stats.upload_bytes)
        yield CounterMetricFamily("damselfly_upload_compressed",
                                  "Answers sent zstd-compressed", value=stats.upload_compressed)
        yield by_label(CounterMetricFamily, "damselfly_upload_responses",
                       "Upload server answers by status (503: busy)", "code",
                       {str(code): n for code, n in stats.upload_responses.items()})
        yield CounterMetricFamily("damselfly_pieces_served", "Pieces sent whole to children",
                                  value=stats.upload_responses[206])
        yield by_label(CounterMetricFamily, "damselfly_pieces_fetched",
                       "Pieces this daemon got, by source kind (peers, or the origin's URL "
                       "scheme)", "source", stats.pieces_fetched)
        yield by_label(CounterMetricFamily, "damselfly_download_bytes",
                       "Bytes this daemon got, by source kind", "source", stats.download_bytes)
        yield CounterMetricFamily("damselfly_pieces_corrupt",
                                  "Pieces whose bytes did not match their digest",
                                  value=stats.pieces_corrupt)
        yield GaugeMetricFamily("damselfly_tasks", "Tasks on disk", value=len(storage.tasks()))
        yield GaugeMetricFamily("damselfly_storage_bytes", "Bytes the tasks' files hold",
                                value=storage.used())
        yield CounterMetricFamily("damselfly_gc_runs", "Garbage collections",
                                  value=storage.gc_runs)
        yield CounterMetricFamily("damselfly_gc_tasks_removed", "Tasks garbage-collected",
                                  value=storage.gc_removed)
        yield CounterMetricFamily("damselfly_gc_freed_bytes",
                                  "Bytes garbage collection freed", value=storage.gc_freed)
        if self._publisher is not None:
            yield by_label(CounterMetricFamily, "damselfly_events_published",
                           "Events the streams acked, by stream", "stream",
                           self._publisher.published)


def daemon_registry(stats: TransferStats, storage: Storage,
                    publisher: Publisher | None = None) -> CollectorRegistry:
    return registry_of(DaemonCollector(stats, storage, publisher))


def exposition(registry: CollectorRegistry) -> web.Response:
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
