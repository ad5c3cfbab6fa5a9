"""``damselfly scheduler`` (the service) and ``damselfly replay`` (the offline debugger)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
from pathlib import Path

import anyio

from damselfly.events.grants import GrantSigner
from damselfly.events.ids import new_id
from damselfly.events.log import read_log
from damselfly.services.runtime.eventlog import dump
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import write_ready
from damselfly.services.runtime.signals import stop_on_signals
from damselfly.services.scheduler.metrics import SchedulerMetrics
from damselfly.services.scheduler.replay import (
    parse_weights,
    print_changes,
    print_decisions,
    replay,
)
from damselfly.services.scheduler.shell import Scheduler


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this service's subcommands to the ``damselfly`` parser."""
    p = sub.add_parser("scheduler", help="run a scheduler (owns what partitions it can lease)")
    p.add_argument("--nats", required=True, help="NATS URL")
    p.add_argument("--cluster", default="default", help="scheduler cluster id (default default)")
    p.add_argument("--data-dir", type=Path, help="where to write partitions.json")
    p.add_argument("--ready-file", type=Path, help="write endpoints here once consuming")
    p.add_argument("--lease-ttl", type=float, default=6.0, help="partition lease TTL, s")
    p.add_argument("--keepalive-timeout", type=float, default=30.0,
                   help="declare a host dead after this many silent seconds")
    p.add_argument("--snapshot-every", type=float, default=5.0, help="seconds between snapshots")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics at /metrics on this port (0: any free one)")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address for --metrics-port (default 127.0.0.1)")
    p.set_defaults(run=_run_scheduler)

    r = sub.add_parser("replay", help="run a recorded log through the scheduler core offline")
    r.add_argument("log", nargs="?", type=Path, help="a file from `damselfly events dump`")
    r.add_argument("--from-stream", action="store_true", help="read the log from --nats instead")
    r.add_argument("--nats", help="NATS URL (with --from-stream)")
    r.add_argument("--cluster", default="default", help="scheduler cluster id (default default)")
    r.add_argument("--weights",
                   help="k=v,... re-run with these weights and list the decisions that change")
    r.set_defaults(run=_run_replay)


def _run_scheduler(args: argparse.Namespace) -> int:
    if args.lease_ttl <= 0 or args.keepalive_timeout <= 0 or args.snapshot_every <= 0:
        raise ValueError("--lease-ttl, --keepalive-timeout and --snapshot-every must be > 0")
    scheduler_id = f"{socket.gethostname()}-{os.getpid()}-{new_id()[:6]}"
    grants = GrantSigner.from_env()  # the key of the upload grants (none: no grants)

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        nc = await connect(args.nats, f"damselfly-scheduler-{scheduler_id}")
        metrics = SchedulerMetrics()
        endpoints: dict[str, object] = {}
        stop_metrics = None
        if args.metrics_port is not None:
            endpoints["metrics_url"], stop_metrics = metrics.serve(args.metrics_host,
                                                                   args.metrics_port)
        try:
            scheduler = Scheduler(nc, cluster=args.cluster, scheduler_id=scheduler_id,
                                  lease_ttl=args.lease_ttl,
                                  keepalive_timeout=args.keepalive_timeout,
                                  data_dir=args.data_dir, snapshot_every=args.snapshot_every,
                                  metrics=metrics, grants=grants)

            def ready() -> None:
                if args.ready_file:
                    write_ready(args.ready_file, {"scheduler_id": scheduler_id,
                                                  "cluster": args.cluster,
                                                  "partitions": sorted(scheduler.owned),
                                                  **endpoints})

            await scheduler.run(stop, ready)
        finally:
            if stop_metrics is not None:
                stop_metrics()
            if nc.is_connected:
                await nc.drain()
            else:
                with contextlib.suppress(OSError):  # nats-py flushes into the dead socket
                    await nc.close()

    anyio.run(main)
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    if args.weights:
        parse_weights(args.weights)  # a typo fails before the log is read
    if args.from_stream == (args.log is not None):
        raise ValueError("give either a LOG file or --from-stream --nats URL")
    if args.from_stream and not args.nats:
        raise ValueError("--from-stream needs --nats URL")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.log
        if args.from_stream:
            path = Path(tmp) / "log.jsonl"
            with open(path, "w") as f:
                anyio.run(dump, args.nats, None, f)
        if not path.is_file():
            raise ValueError(f"no such log file: {path}")
        records = list(read_log(path))
    recorded = replay(records, args.cluster)
    if args.weights:
        print_changes(recorded, replay(records, args.cluster, parse_weights(args.weights)),
                      sys.stdout)
        return 0
    print_decisions(recorded, sys.stdout)
    differ, missing = recorded.mismatches()
    for event in missing:
        print(f"recorded but not replayed: {type(event).__name__} {event.id}")
    total = len(recorded.recorded)
    print(f"{len(recorded.decided)} decisions replayed; {total - len(missing)} of {total} "
          f"recorded decisions reproduced; {len(differ)} differ or were not recorded")
    return 1 if missing or any(d.decision.id in recorded.recorded for d in differ) else 0
