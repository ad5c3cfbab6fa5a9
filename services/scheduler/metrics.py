"""The scheduler's Prometheus metrics, in one registry per scheduler (``--metrics-port``
serves them at ``/metrics`` through ``prometheus_client``'s own server)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.folded = Counter("damselfly_scheduler_events_folded",
                              "Events folded into the partitions' state, by stream",
                              ["stream"], registry=self.registry)
        self.dead_lettered = Counter("damselfly_scheduler_events_dead_lettered",
                                     "Events skipped to the dead-letter subject, by stream",
                                     ["stream"], registry=self.registry)
        self.decisions = Counter("damselfly_scheduler_decisions",
                                 "Decisions published", registry=self.registry)
        self.relays = Counter("damselfly_scheduler_relays",
                              "Parents' piece reports relayed to their children (events)",
                              registry=self.registry)
        self.decision_latency = Histogram(
            "damselfly_scheduler_decision_latency_seconds",
            "From an event's storing in its stream to the publishing of its decisions",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.lag = Gauge("damselfly_scheduler_consumer_lag",
                         "Events stored and not yet read, by stream and partition",
                         ["stream", "partition"], registry=self.registry)
        self.partitions = Gauge("damselfly_scheduler_partitions_owned",
                                "Partitions this scheduler holds the lease of",
                                registry=self.registry)

    def count_partitions(self, owned: Callable[[], int]) -> None:
        self.partitions.set_function(owned)

    def serve(self, host: str, port: int) -> tuple[str, Callable[[], None]]:
        """Serve ``/metrics`` on ``host:port`` (0: any free port) from a thread; returns its
        URL and the function that stops it."""
        server, thread = start_http_server(port, host, self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return f"http://{host}:{server.server_port}/metrics", stop
